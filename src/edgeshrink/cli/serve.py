"""`edgeshrink serve` (the device service) and `edgeshrink serve-cloud` (the cloud model over HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeshrink.cli._common import config_help, handled

BATCH, LIMITS = "edgeshrink.serve.config:BatchConfig", "edgeshrink.serve.config:LimitsConfig"
CLOUD, MONITOR = "edgeshrink.serve.config:CloudConfig", "edgeshrink.route.monitor:MonitorConfig"
LLM = "edgeshrink.serve.config:LLMConfig"
UPDATE = "edgeshrink.serve.config:UpdateConfig"

Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(help="Port (0: a free one, printed at start).")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="ServeConfig as YAML/JSON; flags override it.")]
Threads = Annotated[Optional[int], typer.Option(help="ONNX Runtime threads (default: its own).")]
ApiKeyEnv = Annotated[Optional[str], typer.Option(help="Require X-API-Key equal to this environment variable.")]
BatchSize = Annotated[Optional[int], typer.Option(help=config_help(BATCH, "max_batch_size", "Micro-batching: most texts per model call."))]
MaxWait = Annotated[Optional[float], typer.Option(help=config_help(BATCH, "max_wait_ms", "Micro-batching: extra wait for company, ms (0: take what is queued)."))]
MaxChars = Annotated[Optional[int], typer.Option(help=config_help(LIMITS, "max_text_chars", "Longest text in characters."))]
LongText = Annotated[Optional[str], typer.Option(help=config_help(LIMITS, "long_text", "Longer texts: truncate (reported) | reject (413)."))]
MaxTexts = Annotated[Optional[int], typer.Option(help=config_help(LIMITS, "max_texts", "Most texts per request."))]
MaxBody = Annotated[Optional[int], typer.Option(help=config_help(LIMITS, "max_body_bytes", "Largest request body in bytes."))]
CorsOrigin = Annotated[Optional[list[str]], typer.Option(
    "--cors-origin", metavar="ORIGIN", help="Let pages on this origin call the service (CORS), e.g. http://127.0.0.1:8080 (a page "
    "packed with `edgeshrink pack --target web` escalating to it); repeatable; * allows any origin.")]
Rate = Annotated[Optional[float], typer.Option(help=config_help(LIMITS, "requests_per_second", "Requests per second per client (0: no limit)."))]
Trust = Annotated[Optional[list[Path]], typer.Option(
    "--trust", metavar="KEY.pub", help="Serve only bundles signed by this public key (repeatable; default: "
    "$EDGESHRINK_TRUST); checked before any other file of the bundle is opened.")]
PromptLookup = Annotated[Optional[int], typer.Option(help="Language models: prompt lookup on every answer, drafting the tokens "
                                                     "after the latest earlier match of the last N (down to 2) tokens of "
                                                     "prompt + answer, checked in the same pass: the same output, fewer "
                                                     "passes where answers copy their input (0: off) [default: 0]")]


def _config(config_file: Path | None, flags: dict, limits: dict, batch: dict, cloud: dict | None = None,
            monitor: dict | None = None, llm: dict | None = None, update: dict | None = None):
    import yaml

    from edgeshrink._yaml import safe_load
    from edgeshrink.errors import EdgeshrinkError
    from edgeshrink.serve.config import ServeConfig

    raw: dict = {}
    if config_file is not None:
        if not config_file.is_file():
            raise EdgeshrinkError(f"config file {config_file} does not exist")
        try:
            raw = safe_load(config_file.read_text(encoding="utf-8"), config_file) or {}
        except yaml.YAMLError as exc:
            raise EdgeshrinkError(f"{config_file}: not valid YAML/JSON ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(raw, dict):
            raise EdgeshrinkError(f"{config_file}: expected a mapping of ServeConfig keys")
    raw.update({k: v for k, v in flags.items() if v is not None})
    for section, values in (("limits", limits), ("batch", batch), ("cloud", cloud or {}), ("monitor", monitor or {}),
                            ("llm", llm or {}), ("update", update or {})):
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            raw[section] = {**(raw.get(section) or {}), **values}
    return ServeConfig.from_dict(raw)


@handled
def serve_cloud(model: Annotated[str, typer.Argument(help="The cloud model: a bundle or a PyTorch model directory.")],
                host: Host = "127.0.0.1", port: Port = 8001, config_file: ConfigFile = None, threads: Threads = None,
                api_key_env: ApiKeyEnv = None, max_batch_size: BatchSize = None, max_wait_ms: MaxWait = None,
                max_text_chars: MaxChars = None, long_text: LongText = None, max_texts: MaxTexts = None,
                max_body_bytes: MaxBody = None, rate: Rate = None, prompt_lookup: PromptLookup = None,
                cors_origin: CorsOrigin = None, trust: Trust = None,
                publish: Annotated[Optional[Path], typer.Option(
                    "--publish", metavar="DIR", help="Also serve this update channel (`edgeshrink publish`) at "
                    "/v1/channel/, for devices' `serve --update-from URL/v1/channel`.")] = None,
                faults: Annotated[Optional[Path], typer.Option(
                    help="Fault drills: a JSON file read per request ({\"delay_ms\": N} or {\"status\": 500}).")] = None,
                engine: Annotated[str, typer.Option(help="uvicorn (this process) | ray (Ray Serve replicas; "
                                                    "pip install 'edgeshrink[ray]').")] = "uvicorn",
                address: Annotated[Optional[str], typer.Option(help="--engine ray: the Ray cluster (auto, "
                                                               "ray://host:10001; default: a new local Ray).")] = None,
                replicas: Annotated[Optional[int], typer.Option(help="--engine ray: replicas (1).")] = None,
                min_replicas: Annotated[Optional[int], typer.Option(help="--engine ray: autoscaling lower bound.")] = None,
                max_replicas: Annotated[Optional[int], typer.Option(help="--engine ray: autoscaling upper bound.")] = None,
                replica_cpus: Annotated[Optional[float], typer.Option(help="--engine ray: CPUs per replica (1).")] = None,
                ) -> None:
    """Serve the cloud model over HTTP: POST /v1/classify, the Open Inference Protocol (KServe v2) under /v2,
    /healthz, /readyz, /metrics, /docs; a language-model bundle: the OpenAI-compatible /v1/chat/completions,
    /v1/completions, /v1/models and /v1/speculate. --engine ray runs the classifier service on Ray Serve."""
    from edgeshrink import tasks
    from edgeshrink.errors import EdgeshrinkError
    from edgeshrink.serve.server import bind, serve

    config = _config(config_file, {"host": host, "port": port, "threads": threads, "api_key_env": api_key_env,
                                   "cors_origins": cors_origin or None, "trust": [str(k) for k in trust or []] or None},
                     {"max_text_chars": max_text_chars, "long_text": long_text, "max_texts": max_texts,
                      "max_body_bytes": max_body_bytes, "requests_per_second": rate},
                     {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms},
                     llm={"prompt_lookup": prompt_lookup})
    ray_flags = {"address": address, "replicas": replicas, "min_replicas": min_replicas,
                 "max_replicas": max_replicas, "replica_cpus": replica_cpus}
    if engine not in ("uvicorn", "ray"):
        raise EdgeshrinkError(f"unknown engine {engine!r}; expected uvicorn or ray")
    if engine == "uvicorn" and any(v is not None for v in ray_flags.values()):
        raise EdgeshrinkError("--address, --replicas, --min/max-replicas and --replica-cpus apply to --engine ray")
    impl = tasks.of_model(model).implementation("serve-cloud")
    impl.refuse_flags({"--engine": engine if engine == "ray" else None, "--prompt-lookup": prompt_lookup})
    if config.port:
        bind(config.host, config.port).close()  # a port in use fails before the model loads
    if engine == "ray":
        if publish is not None:
            raise EdgeshrinkError("--publish goes with --engine uvicorn (serve the channel folder with any web server)")
        from edgeshrink.serve.ray_engine import RayServeConfig, serve_on_ray

        return serve_on_ray(model, config, RayServeConfig.build(**ray_flags), faults)
    app = impl.function()(model, config, faults)
    if publish is not None:
        from edgeshrink.serve.channel import CHANNEL_PATH, install_channel

        install_channel(app, publish)
        typer.echo(f"update channel {publish} at {CHANNEL_PATH}/")
    serve(app, config.host, config.port)

@handled
def serve_device(bundle: Annotated[Path, typer.Argument(help="The device bundle (with router.json to escalate).")],
                 cloud: Annotated[Optional[str], typer.Option(help="Cloud service URL, http(s)://host:port.")] = None,
                 host: Host = "127.0.0.1", port: Port = 8000, config_file: ConfigFile = None, threads: Threads = None,
                 api_key_env: ApiKeyEnv = None, max_batch_size: BatchSize = None, max_wait_ms: MaxWait = None,
                 max_text_chars: MaxChars = None, long_text: LongText = None, max_texts: MaxTexts = None,
                 max_body_bytes: MaxBody = None, rate: Rate = None, prompt_lookup: PromptLookup = None,
                 cors_origin: CorsOrigin = None,
                 deadline_ms: Annotated[Optional[float], typer.Option(help=config_help(CLOUD, "deadline_ms", "Escalation deadline, ms, retries included."))] = None,
                 retries: Annotated[Optional[int], typer.Option(help=config_help(CLOUD, "retries", "Retries within the deadline."))] = None,
                 connect_timeout_s: Annotated[Optional[float], typer.Option(help=config_help(CLOUD, "connect_timeout_s", "Cloud connect timeout, s."))] = None,
                 read_timeout_s: Annotated[Optional[float], typer.Option(help=config_help(CLOUD, "read_timeout_s", "Cloud read timeout, s."))] = None,
                 breaker_failures: Annotated[Optional[int], typer.Option(help=config_help(CLOUD, "breaker_failures", "Failures that open the breaker."))] = None,
                 breaker_reset_s: Annotated[Optional[float], typer.Option(help=config_help(CLOUD, "breaker_reset_s", "Seconds open before a probe."))] = None,
                 cloud_budget: Annotated[Optional[int], typer.Option(help=config_help(CLOUD, "budget_texts_per_minute", "Most texts to the cloud per minute (none: no cap)."))] = None,
                 cloud_api_key_env: Annotated[Optional[str], typer.Option(help="Env variable with the cloud's API key.")] = None,
                 cloud_protocol: Annotated[Optional[str], typer.Option(
                     help=config_help(CLOUD, "protocol", "Classifiers: edgeshrink (POST /v1/classify) | v2 (the Open "
                                      "Inference Protocol of Triton, KServe, Seldon and serve-cloud; needs "
                                      "--cloud-model)."))] = None,
                 cloud_model: Annotated[Optional[str], typer.Option(help="The model name the cloud serves (v2: at "
                                                                    "/v2/models/NAME; language models: the "
                                                                    "OpenAI-compatible one).")] = None,
                 audit_fraction: Annotated[Optional[float], typer.Option(
                     help=config_help(MONITOR, "audit_fraction", "Share of requests the cloud also checks (device "
                                      "answers: in the background, within the cloud budget): the audited "
                                      "disagreement."))] = None,
                 recalibrate: Annotated[Optional[bool], typer.Option(
                     "--recalibrate", help="When a drift signal fires, recalibrate label-free from the audit "
                                           "sample (router-<sha>.json, the old router kept).")] = None,
                 recalibrate_alpha: Annotated[Optional[float], typer.Option(
                     help="Recalibrate with the risk policy at this α (label-free: disagreement with the "
                          "cloud); default: the router's own policy.")] = None,
                 drift_window: Annotated[Optional[int], typer.Option(help=config_help(MONITOR, "window", "Requests each drift test looks at."))] = None,
                 drift_p_value: Annotated[Optional[float], typer.Option(help=config_help(MONITOR, "p_value",
                                                                                    "A drift signal fires below this p-value."))] = None,
                 trust: Trust = None,
                 update_from: Annotated[Optional[str], typer.Option(
                     help="Update this service from a channel: http(s)://host/path (e.g. a cloud's /v1/channel) or a "
                          "folder. New releases are verified (signature, hashes, newer version), checked by their "
                          "canary, swapped in without dropping a request, and rolled back automatically when their "
                          "errors or drift signals cross their bounds. Needs --trust.")] = None,
                 update_every: Annotated[Optional[float], typer.Option(help=config_help(UPDATE, "every_s", "Seconds between channel checks."))] = None,
                 update_store: Annotated[Optional[Path], typer.Option(help="Where versions are kept (default: BUNDLE.versions).")] = None,
                 update_watch: Annotated[Optional[int], typer.Option(help=config_help(UPDATE, "watch_requests", "Texts a new version answers, watched, before it is accepted."))] = None,
                 route: Annotated[Optional[str], typer.Option(help=config_help(
                     CLOUD, "route", "Who sends requests to the cloud: router (the bundle's router.json, required) | "
                     "cloud-on-request (only requests that ask: cloud_only, or edgeshrink.route \"cloud\")."))] = None,
                 llm_policy: Annotated[Optional[str], typer.Option(help=config_help(
                     LLM, "policy", "Language models with a cloud: handoff (stream the device's tokens, hand the rest "
                     "to the cloud at the first token below the router's handoff threshold) | answer (score the "
                     "device's whole answer, then keep it or escalate) | auto (handoff when the router has a "
                     "handoff threshold and the cloud can continue a prefix)."))] = None,
                 handoff_via: Annotated[Optional[str], typer.Option(help=config_help(
                     CLOUD, "handoff", "How the cloud continues a device's prefix: tokens (/v1/completions with token "
                     "ids: serve-cloud, vLLM, llama.cpp) | text (the rendered text) | none (it cannot: no "
                     "handoff)."))] = None,
                 ) -> None:
    """Serve the device bundle over HTTP, escalating to the cloud per router.json, falling back when it fails."""
    from edgeshrink import tasks
    from edgeshrink.errors import EdgeshrinkError
    from edgeshrink.serve.server import bind, serve

    cloud_flags = {"url": cloud, "deadline_ms": deadline_ms, "retries": retries,
                   "connect_timeout_s": connect_timeout_s, "read_timeout_s": read_timeout_s,
                   "breaker_failures": breaker_failures, "breaker_reset_s": breaker_reset_s,
                   "budget_texts_per_minute": cloud_budget, "api_key_env": cloud_api_key_env, "model": cloud_model,
                   "protocol": cloud_protocol, "route": route, "handoff": handoff_via}
    if cloud is None and any(v is not None for v in cloud_flags.values()):
        raise EdgeshrinkError("cloud options given without --cloud URL")
    monitor_flags = {"audit_fraction": audit_fraction, "recalibrate": recalibrate, "window": drift_window,
                     "p_value": drift_p_value,
                     "recalibrate_policy": None if recalibrate_alpha is None else {"policy": "risk",
                                                                                   "alpha": recalibrate_alpha}}
    if recalibrate_alpha is not None and not recalibrate:
        raise EdgeshrinkError("--recalibrate-alpha goes with --recalibrate")
    update_flags = {"source": update_from, "every_s": update_every, "watch_requests": update_watch,
                    "store": str(update_store) if update_store is not None else None}
    if update_from is None and any(v is not None for v in update_flags.values()):
        raise EdgeshrinkError("update options given without --update-from CHANNEL")
    config = _config(config_file, {"host": host, "port": port, "threads": threads, "api_key_env": api_key_env,
                                   "cors_origins": cors_origin or None, "trust": [str(k) for k in trust or []] or None},
                     {"max_text_chars": max_text_chars, "long_text": long_text, "max_texts": max_texts,
                      "max_body_bytes": max_body_bytes, "requests_per_second": rate},
                     {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms},
                     cloud_flags if cloud is not None else None, monitor_flags,
                     {"prompt_lookup": prompt_lookup, "policy": llm_policy},
                     update=update_flags if update_from is not None else None)
    impl = tasks.of_model(bundle).implementation("serve")
    protocol = config.cloud.protocol if config.cloud is not None else None
    impl.refuse_flags({"--cloud-protocol": protocol if protocol != "edgeshrink" else None,
                       "--prompt-lookup": prompt_lookup, "--llm-policy": llm_policy,
                       "--handoff-via": config.cloud.handoff if config.cloud is not None and handoff_via else None,
                       "--update-from": config.update.source if config.update is not None else None})
    if config.port:
        bind(config.host, config.port).close()
    app = impl.function()(bundle, config)
    if config.cloud is not None:
        typer.echo(f"escalating to {config.cloud.url}: " + (
            "only requests that ask for the cloud (--route cloud-on-request)" if config.cloud.route == "cloud-on-request"
            else f"as {bundle}'s router.json decides"))
    if config.update is not None:
        typer.echo(f"updating from {config.update.source} every {config.update.every_s:g} s")
    serve(app, config.host, config.port)


def register(app: typer.Typer) -> None:
    app.command("serve-cloud")(serve_cloud)
    app.command("serve")(serve_device)
