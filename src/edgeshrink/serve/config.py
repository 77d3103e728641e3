"""Settings of `edgeshrink serve` (device side) and `edgeshrink serve-cloud`: one config object each.

Every limit has a default a small service can live with; all of them are configurable from the CLI
(flags) or a YAML/JSON file (``--config``). API keys are never part of a config: they come from an
environment variable whose *name* is configured (``api_key_env``), so they do not end up in files or logs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edgeshrink.config import Config
from edgeshrink.deploy.canary import CanaryConfig
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.monitor import MonitorConfig
from edgeshrink.runtime.sampling import DEFAULT_REPETITION_PENALTY


class LimitsConfig(Config):
    max_text_chars: int = Field(20_000, ge=1)  # per text
    # longer texts: "truncate" cuts them to max_text_chars (the answer says so), "reject" answers 413
    long_text: Literal["truncate", "reject"] = "truncate"
    max_texts: int = Field(64, ge=1)  # per request
    max_body_bytes: int = Field(1_000_000, ge=256)
    requests_per_second: float = Field(100.0, ge=0)  # per client (the API key it proved, else its address); 0: none
    burst: int = Field(200, ge=1)  # token bucket size per client


class BatchConfig(Config):
    """Micro-batching: texts of concurrent requests run through the model together."""

    max_batch_size: int = Field(16, ge=1)  # texts per model call; 1 = no batching
    # 0: each batch takes what is queued when the model is free (no added wait; concurrent load still
    # batches, since requests queue while a batch runs); > 0: the first text also waits this long for company
    max_wait_ms: float = Field(0.0, ge=0)


class CloudConfig(Config):
    """How the device service calls the cloud model."""

    url: str
    connect_timeout_s: float = Field(0.5, gt=0)
    read_timeout_s: float = Field(2.0, gt=0)
    deadline_ms: float = Field(1500.0, gt=0)  # the whole escalation, retries included; then device-fallback
    retries: int = Field(2, ge=0)  # extra attempts after a failed one, while the deadline allows
    backoff_ms: float = Field(25.0, ge=0)  # before retry k: backoff_ms * 2**(k-1)
    breaker_failures: int = Field(5, ge=1)  # consecutive failed escalations that open the circuit breaker
    breaker_reset_s: float = Field(5.0, gt=0)  # open this long, then one probe request (half-open)
    budget_texts_per_minute: int | None = Field(None, ge=0)  # cloud spend cap; beyond it: device-fallback
    api_key_env: str | None = None  # environment variable holding the cloud's API key
    # classifiers: how to call the cloud — "edgeshrink" (POST /v1/classify) or "v2", the Open Inference
    # Protocol (KServe v2) of Triton, KServe, Seldon and serve-cloud, which needs the model's name below
    protocol: Literal["edgeshrink", "v2"] = "edgeshrink"
    model: str | None = None  # the model name the cloud serves (v2; language models: the OpenAI-compatible one)
    # who decides what goes to the cloud: "router", the bundle's router.json (required), or "cloud-on-request":
    # only requests that ask for it (classifiers: cloud_only; language models: edgeshrink.route "cloud")
    route: Literal["router", "cloud-on-request"] = "router"
    # language models: how the cloud continues an answer the device started (token-level handoff): "tokens",
    # POST /v1/completions with the prompt as token ids (edgeshrink serve-cloud, vLLM, llama.cpp's server; the
    # router's calibration already asks for the same vocabulary); "text", the same on the rendered text (any
    # OpenAI-compatible completions endpoint with the same chat template); "none": it cannot (a chat-only API):
    # no handoff, whole answers are routed
    handoff: Literal["tokens", "text", "none"] = "tokens"

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        from urllib.parse import urlparse

        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"the cloud URL must be http(s)://host[:port], got {url!r}")
        return url.rstrip("/")


def no_router(bundle, calibrate: str) -> EdgeshrinkError:
    """The one-line refusal of a device service given a cloud but no router to decide what goes there."""
    return EdgeshrinkError(f"{bundle} has no router.json to decide what goes to the cloud: calibrate one with "
                           f"`{calibrate}`, or pass --route cloud-on-request to send the cloud only the requests "
                           f"that ask for it")


class LLMConfig(Config):
    """Language-model services (OpenAI-compatible endpoints)."""

    max_tokens_limit: int = Field(1024, ge=1)  # the most new tokens one request may ask for
    # chat completions that do not say (completions: 16, as OpenAI), cut to what the context leaves after the prompt
    default_max_tokens: int = Field(256, ge=1)
    model_name: str | None = None  # the name at /v1/models (default: the bundle directory's name)
    speculate_sessions: int = Field(4, ge=1)  # cloud: KV caches kept for /v1/speculate clients
    # the repetition penalty of requests that do not give one (vLLM's extension field; 1: off)
    repetition_penalty: float = Field(DEFAULT_REPETITION_PENALTY, gt=0, allow_inf_nan=False)
    # prompt lookup on every answer: drafts are the tokens after the latest earlier match of the last n (down to 2)
    # tokens of prompt + answer, checked in the same pass (Generator.stream; the same output; 0: off)
    prompt_lookup: int = Field(0, ge=0, le=16)
    # the device service's routing with a cloud: "handoff", stream the device's tokens at once and hand the rest of
    # the answer to the cloud at the first token below the router's handoff threshold (route calibrate --handoff);
    # "answer", the device's whole answer is scored, then kept or escalated; "auto": handoff when the router has a
    # handoff threshold and the cloud can continue a prefix (cloud.handoff), else answer
    policy: Literal["auto", "handoff", "answer"] = "auto"


class UpdateConfig(Config):
    """The device service updating itself from a channel (serve/updates.py)."""

    version: int = 1
    source: str  # the channel: http(s)://host[:port]/path, or a directory
    every_s: float = Field(60.0, gt=0)  # between checks
    timeout_s: float = Field(300.0, gt=0)  # one whole check and download
    stall_s: float = Field(10.0, gt=0)  # the longest a read of the channel may wait for data
    store: str | None = None  # the version store (default: BUNDLE.versions, beside the bundle)
    keep: int = Field(3, ge=2)  # versions kept on disk, the current one included
    watch_requests: int = Field(400, ge=1)  # texts a new version answers before it is accepted
    max_error_rate: float = Field(0.01, ge=0, le=1)  # of its model calls, while it is watched
    min_errors: int = Field(3, ge=1)  # failed calls before the error rate can roll it back
    canary: CanaryConfig = CanaryConfig()


class ServeConfig(Config):
    version: int = 1
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # 0: an ephemeral port (printed at start)
    threads: int | None = Field(None, ge=1)  # ONNX Runtime intra-op threads (None: its default)
    api_key_env: str | None = None  # clients must send this variable's value in X-API-Key
    # pages on these origins may call the service (CORS; a web pack's route() escalating from a browser), e.g.
    # "http://127.0.0.1:8080"; "*" allows any origin
    cors_origins: list[str] = Field(default_factory=list)
    limits: LimitsConfig = LimitsConfig()
    batch: BatchConfig = BatchConfig()
    cloud: CloudConfig | None = None  # device service only: where to escalate
    llm: LLMConfig = LLMConfig()
    monitor: MonitorConfig = MonitorConfig()  # device service with a router: drift signals, audit, recalibration
    # PEM public keys a bundle must be signed by (empty: $EDGESHRINK_TRUST if set, else no signature required)
    trust: list[str] = Field(default_factory=list)
    update: UpdateConfig | None = None  # device service: update itself from a channel (needs a trust list)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        import re

        for origin in origins:  # an origin is scheme://host[:port], nothing after it (what browsers send)
            if origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
                raise ValueError(f"a CORS origin is http(s)://host[:port] with no path, or *; got {origin!r}")
        return origins
