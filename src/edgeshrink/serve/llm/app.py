"""The language-model services' endpoints (see the package doc). Both factories take (bundle, config,
faults=None), like the classifier services' (the task registry's "serve" and "serve-cloud" entries)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import Request

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.confidence import ANSWER_SIGNALS
from edgeshrink.route.router import has_router, read_router
from edgeshrink.runtime.generate import Generator
from edgeshrink.runtime.sampling import Sampling as SpecSampling
from edgeshrink.runtime.speculative import CachedModel, verified
from edgeshrink.serve.app import ErrorResponse, base_app
from edgeshrink.serve.config import ServeConfig, no_router
from edgeshrink.serve.gate import protected
from edgeshrink.serve.llm.render import Render
from edgeshrink.serve.llm.request import ChatRequest, CompletionRequest, Refused, SpeculateRequest, prepare
from edgeshrink.serve.llm.routing import Engine, Routing
from edgeshrink.serve.llm_client import OpenAICloud
from edgeshrink.serve.metrics import LLMMetrics


def llm_device_app(bundle: str | Path, config: ServeConfig, faults: Path | None = None):
    """The device service on an LLM bundle: generates, and with ``config.cloud`` escalates per its router."""
    return llm_app(bundle, config, "device", faults)


def llm_cloud_app(bundle: str | Path, config: ServeConfig, faults: Path | None = None):
    """The cloud service on an LLM bundle: answers everything itself, and verifies drafts (/v1/speculate)."""
    return llm_app(bundle, config, "cloud", faults)


def llm_app(bundle: str | Path, config: ServeConfig, role: Literal["device", "cloud"], faults: Path | None = None):
    """The OpenAI-compatible service on an LLM bundle (see the package doc)."""
    on_request = role == "device" and config.cloud is not None and config.cloud.route == "cloud-on-request"
    if role == "device" and config.cloud is not None and not on_request and not has_router(bundle):
        raise no_router(bundle, f"edgeshrink route calibrate --device {bundle} --cloud CLOUD_BUNDLE --task open "
                                f"--policy budget --budget 0.3")
    generator = Generator(bundle, threads=config.threads, trust=config.trust or None)
    metrics = LLMMetrics()
    engine = Engine(generator, on_model_cpu=metrics.model_cpu.inc, prompt_lookup=config.llm.prompt_lookup,
                    on_drafts=lambda drafted, accepted: (metrics.draft_tokens.inc(drafted),
                                                         metrics.accepted_tokens.inc(accepted)))
    name = config.llm.model_name or Path(bundle).name
    state = {"ready": False}
    router = read_router(bundle) if role == "device" and has_router(bundle) else None
    if router is not None and config.cloud is not None and router["signal"] not in ANSWER_SIGNALS:
        raise EdgeshrinkError(f"{bundle}'s router uses {router['signal']!r}, which free generations do not "
                              f"give: calibrate it with --signal {' | '.join(ANSWER_SIGNALS)}")
    routing = Routing(engine, role, router, metrics, on_request=on_request, name=name,
                      handoff_via=config.cloud.handoff if config.cloud is not None else "none", policy=config.llm.policy)
    if role == "device" and config.cloud is not None and config.llm.policy == "handoff" and not on_request:
        why = routing.handoff_unavailable()
        if why is not None:
            raise EdgeshrinkError(f"--llm-policy handoff: {why}")

    watching = config.monitor.audit_fraction > 0 or config.monitor.recalibrate
    if role == "device" and watching and (config.cloud is None or on_request):
        raise EdgeshrinkError("the audit and recalibration need the cloud's answers: give --cloud URL"
                              if config.cloud is None else "the audit and recalibration watch the router's decisions: "
                              "they go with --route router")
    if role == "device" and router is not None and config.cloud is not None and not on_request:
        from edgeshrink.serve.llm.watch import LLMWatch

        routing.watch = LLMWatch(bundle, router, routing.policy_of("auto"), config.monitor, metrics, routing.confidence)

    @asynccontextmanager
    async def lifespan(app):
        if config.cloud is not None:
            routing.cloud = OpenAICloud(config.cloud, metrics)
        await asyncio.to_thread(generator.generate, "Hi", 1)  # one warm-up call: ready means answering
        state["ready"] = True
        yield
        state["ready"] = False
        for task in list(getattr(routing.watch, "pending", ())):  # audits and recalibrations in flight
            task.cancel()
        if routing.cloud is not None:
            await routing.cloud.close()

    def ready_info():
        return {"router": routing.router is not None, "cloud": config.cloud.url if config.cloud else None,
                "route": config.cloud.route if config.cloud else None,
                "breaker": routing.cloud.breaker.state if routing.cloud else None,
                "policy": routing.policy_of("auto") if routing.cloud and routing.router else None,
                "handoff_threshold": (routing.handoff or {}).get("threshold"),
                "context_length": generator.context_length,
                **({"drift": routing.watch.status()} if routing.watch else {})}

    app, error = base_app(f"{role} language-model service", f"edgeshrink {role} service, OpenAI-compatible: model "
                          f"{name}.", name, config, metrics, state, lifespan, ready_info, faults)
    responses = {c: {"model": ErrorResponse} for c in (400, 401, 404, 413, 415, 422, 429)}
    render = Render(name, generator.tokenizer, metrics, error)

    @protected(app, "/v1/models", "GET", response_model=dict)
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "edgeshrink"}]}

    async def respond(request: Request, body, path: str, kinds: tuple[str, str]):
        received = time.perf_counter()
        try:
            prepared = await prepare(body, path, generator, name, config.llm)
        except Refused as refused:
            return error(refused.status, str(refused), path)
        refusal = routing.refusal(prepared.route)
        if refusal is not None:
            return error(422, refusal, path)
        cancel = threading.Event()
        return await render.respond(request, body, path, kinds, routing.answer(prepared, cancel), prepared.ids,
                                    cancel, received)

    @protected(app, "/v1/chat/completions", response_model=dict, responses=responses)
    async def chat_completions(body: ChatRequest, request: Request):
        return await respond(request, body, "/v1/chat/completions", ("chat.completion", "chat.completion.chunk"))

    @protected(app, "/v1/completions", response_model=dict, responses=responses)
    async def completions(body: CompletionRequest, request: Request):
        return await respond(request, body, "/v1/completions", ("text_completion", "text_completion"))

    @protected(app, "/v1/monitor", "GET", response_model=dict)
    async def monitor():
        """The router's watch: every drift signal, the audit estimate, recalibrations."""
        if routing.watch is None:
            return error(404, "this service has no router to watch", "/v1/monitor")
        return routing.watch.report()

    if role == "cloud":
        install_speculate(app, engine, config.llm.speculate_sessions, metrics, error, responses)
    return app


def install_speculate(app, engine: Engine, max_sessions: int, metrics, error, responses) -> None:
    """POST /v1/speculate: the target's distributions after a drafted continuation, in one pass, keeping up to
    ``max_sessions`` clients' KV caches (least recently used first out)."""
    generator = engine.g
    sessions: OrderedDict = OrderedDict()

    @protected(app, "/v1/speculate", response_model=dict, responses=responses)
    async def speculate(body: SpeculateRequest):
        path = "/v1/speculate"
        vocabulary = generator.tokenizer.get_vocab_size()
        if any(not 0 <= t < vocabulary for t in body.tokens + body.draft):
            return error(422, f"token ids must be in [0, {vocabulary})", path)
        if len(body.tokens) + len(body.draft) > generator.context_length:
            return error(400, f"{len(body.tokens) + len(body.draft)} tokens exceed the context length "
                              f"{generator.context_length}", path)
        if body.prompt_tokens > len(body.tokens):
            return error(422, f"prompt_tokens {body.prompt_tokens} is more than the {len(body.tokens)} tokens given",
                         path)
        sampling = SpecSampling(body.temperature, body.top_k, body.top_p, body.repetition_penalty,
                                body.frequency_penalty, body.presence_penalty)

        def run():
            with engine.lock:
                started = time.thread_time()
                key = body.session or ""
                model = sessions.pop(key, None) or CachedModel(generator)
                sessions[key] = model
                while len(sessions) > max_sessions:
                    sessions.popitem(last=False)
                rows = model.logits(body.tokens + body.draft, rows=len(body.draft) + 1)
                engine.on_model_cpu(time.thread_time() - started)
            return verified(rows[-(len(body.draft) + 1):], body.tokens + body.draft, body.prompt_tokens,
                            len(body.tokens), sampling)

        dists = await asyncio.to_thread(run)
        if any(len(ids) > 4096 for ids, _ in dists):
            return error(422, "the sampling distribution has over 4096 tokens: give top_k (≤ 4096) or a "
                              "smaller top_p", path)
        metrics.requests.labels(path=path, status="200").inc()
        return {"distributions": [{"ids": ids.tolist(), "probs": probs.tolist()} for ids, probs in dists]}
