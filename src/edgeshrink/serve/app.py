"""The HTTP services: the cloud model (`serve-cloud`) and the device service (`serve`), one API.

    POST /v1/classify  {"texts": ["...", ...], "private": [false, ...]?, "cloud_only": [...]?}
                       -> {"results": [{label, probabilities, source, confidence, latency_ms, ...}], "model": ...}
    GET  /healthz      the process is up          GET /readyz   the model is loaded and answering
    GET  /metrics      Prometheus text             GET /openapi.json, /docs (Swagger UI, served offline)

Bad requests get a 4xx with {"error": "<one line>"}: a missing or wrong API key (401) and too many
requests from one client (429), checked before the body is read (serve/gate.py); a body over the limit
(413), not JSON (415), invalid JSON or types, JSON nested too deeply, empty texts, too many or too long
texts. The device service answers every valid request: when the cloud is down, slow past the deadline,
failing, behind an open circuit breaker or over budget, the device's answer comes back with
``source: device-fallback`` and the reason.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Literal, NamedTuple

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.serve.batcher import MicroBatcher
from edgeshrink.serve.config import ServeConfig
from edgeshrink.serve.gate import Gate, Guard, error_response, protected, route_label
from edgeshrink.serve.metrics import ClassifierMetrics, Metrics


DOCS_ASSETS = "/docs-assets"


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, description="Texts to classify (non-empty strings).")
    private: list[bool] | None = Field(None, description="Per text: never leaves the device.")
    cloud_only: list[bool] | None = Field(None, description="Per text: always answered by the cloud.")


class TextResult(BaseModel):
    label: str
    probabilities: dict[str, float]
    source: Literal["device", "cloud", "device-fallback"]
    confidence: float = Field(description="Device: the router's calibrated signal; cloud: the top probability.")
    latency_ms: float
    reason: str = Field(description="Why this source answered (confident, not confident, private, ...).")
    fallback_reason: str | None = None
    truncated_chars: int = Field(0, description="Characters cut by the service's max_text_chars.")
    truncated_tokens: bool = Field(False, description="The model cut the text at its max_length.")


class ClassifyResponse(BaseModel):
    results: list[TextResult]
    model: str
    version: int | None = Field(None, description="The release version that answered (a device service that "
                                                  "updates itself: one complete version per request).")


class ErrorResponse(BaseModel):
    error: str


def _one_line(errors) -> str:
    """A validation error list → one readable line."""
    parts = []
    for err in errors[:3]:
        if err.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({(err.get('ctx') or {}).get('error', 'parse error')})")
            continue
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")


def base_app(title: str, description: str, model_name: str, config: ServeConfig, metrics: Metrics, state: dict,
             lifespan, extra_ready=None, faults: Path | None = None):
    """What every service shares: body limits, one-line errors, /healthz, /readyz, /metrics, /docs, and the
    fault drills of ``faults`` (see ``install_faults``).

    Returns (app, error): ``error(status, message, route)`` is a counted JSON error response. Endpoints
    registered with ``gate.protected`` are behind the API key and the rate limit."""
    guard = Guard(config, metrics)
    # A device is often offline: FastAPIOffline serves /docs with Swagger UI's JS and CSS from this process
    # (under DOCS_ASSETS) instead of a CDN. Like /docs and /openapi.json, they need no API key.
    # ReDoc is off: one docs page is enough.
    app = FastAPIOffline(title=title, version="1", lifespan=lifespan, redoc_url=None, static_url=DOCS_ASSETS,
                         description=description)
    app.state.metrics = metrics
    app.add_middleware(Gate, max_bytes=config.limits.max_body_bytes, metrics=metrics, guard=guard)
    if config.cors_origins:  # outermost: a page's preflight is answered before the gate, its errors carry the headers
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-API-Key", "Authorization"], max_age=600)

    error = partial(error_response, metrics)  # error(status, message, route, headers=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        metrics.rejected.labels(reason="invalid").inc()
        return error(422, _one_line(exc.errors()), route_label(request.scope))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), route_label(request.scope), getattr(exc, "headers", None))

    @app.exception_handler(EdgeshrinkError)
    async def _model_error(request: Request, exc: EdgeshrinkError):
        # the served bundle failed on this request (a graph that does not fit its manifest, say): the message
        # names local paths, so it goes to the service's log and the client gets one line without them
        print(f"edgeshrink serve: {exc}", file=sys.stderr, flush=True)
        return error(500, "the model could not answer this request (the service's log says why)",
                     route_label(request.scope))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug: say so in one line, keep serving
        return error(500, f"internal error: {type(exc).__name__}", route_label(request.scope))

    @app.get("/healthz", response_model=dict)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=dict, responses={503: {"model": ErrorResponse}})
    async def readyz():
        if not state["ready"]:
            return JSONResponse({"error": "not ready"}, status_code=503)
        return {"status": "ready", "model": model_name, **(extra_ready() if extra_ready else {})}

    @app.get("/metrics", response_class=Response)
    async def metrics_text():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if faults is not None:
        install_faults(app, faults)
    return app, error


def build_app(title: str, model_name: str, labels: list[str], infer, config: ServeConfig, answer,
              on_startup=None, on_shutdown=None, extra_ready=None, batcher=MicroBatcher, faults: Path | None = None):
    """The shared HTTP layer. ``infer(texts)`` runs in the micro-batcher's thread and returns one row per
    text; ``answer(request, texts, rows, cut, started)`` turns a request's rows into TextResults.
    ``batcher``: the class that batches concurrent texts (MicroBatcher; Ray Serve's: ray_engine.ServeBatcher)."""
    metrics = ClassifierMetrics()
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app):
        running = batcher(infer, config.batch.max_batch_size, config.batch.max_wait_ms,
                          on_batch=metrics.batch_size.observe, on_model_cpu=metrics.model_cpu.inc)
        running.start()
        app.state.batcher = running
        if on_startup:
            await on_startup(app)
        await running.run([labels[0]])  # one warm-up call: ready means answering
        state["ready"] = True
        yield
        state["ready"] = False
        await running.stop()
        if on_shutdown:
            await on_shutdown(app)

    app, error = base_app(title, f"edgeshrink {title}: model {model_name}, labels {', '.join(labels)}.",
                                 model_name, config, metrics, state, lifespan, extra_ready, faults)
    responses = {c: {"model": ErrorResponse} for c in (400, 401, 413, 415, 422, 429)}
    limits = config.limits

    def check_texts(raw: list[str], path: str) -> tuple[list[str], list[int]] | JSONResponse:
        """The texts as the model gets them (cut to max_text_chars) and the characters cut, or the refusal."""
        if len(raw) > limits.max_texts:
            metrics.rejected.labels(reason="too_many_texts").inc()
            return error(413, f"{len(raw)} texts in one request; at most {limits.max_texts}", path)
        texts, cut = [], []
        for i, text in enumerate(raw):
            if not text.strip():
                metrics.rejected.labels(reason="empty_text").inc()
                return error(422, f"texts.{i}: empty text", path)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # JSON escapes can spell lone surrogates
                metrics.rejected.labels(reason="invalid").inc()
                return error(422, f"texts.{i}: not valid Unicode (character {exc.start})", path)
            if len(text) > limits.max_text_chars and limits.long_text == "reject":
                metrics.rejected.labels(reason="text_too_long").inc()
                return error(413, f"texts.{i}: {len(text)} characters; at most {limits.max_text_chars}", path)
            cut.append(max(0, len(text) - limits.max_text_chars))
            texts.append(text[:limits.max_text_chars])
        return texts, cut

    # What other protocols on this app (oip.py) share with /v1/classify.
    app.state.edgeshrink = SimpleNamespace(metrics=metrics, error=error, check_texts=check_texts,
                                           ready=lambda: state["ready"], responses=responses)

    @protected(app, "/v1/classify", response_model=ClassifyResponse, responses=responses)
    async def classify(body: ClassifyRequest, request: Request):
        started = time.perf_counter()
        path = "/v1/classify"
        for name in ("private", "cloud_only"):
            flags = getattr(body, name)
            if flags is not None and len(flags) != len(body.texts):
                metrics.rejected.labels(reason="invalid").inc()
                return error(422, f"{name}: one flag per text ({len(body.texts)}), got {len(flags)}", path)
        if body.private and body.cloud_only and any(p and c for p, c in zip(body.private, body.cloud_only)):
            return error(422, "a text cannot be both private and cloud_only", path)
        checked = check_texts(body.texts, path)
        if isinstance(checked, JSONResponse):
            return checked
        texts, cut = checked
        rows = await request.app.state.batcher.run(texts)
        results = await answer(request, body, texts, rows, cut, started)
        metrics.requests.labels(path=path, status="200").inc()
        for r in results:
            metrics.texts.labels(source=r.source).inc()
            metrics.latency.labels(source=r.source).observe(r.latency_ms / 1000)
        return ClassifyResponse(results=results, model=model_name, version=getattr(request.state, "version", None))

    return app


def probabilities_dict(labels: list[str], row: np.ndarray) -> dict[str, float]:
    return {label: round(float(p), 6) for label, p in zip(labels, row)}


def length_groups(texts: list[str], max_padding: float = 0.25) -> list[list[int]]:
    """Indices of ``texts`` in groups of similar length: padding every text of a group to its longest may
    add at most ``max_padding`` to the group's characters (a proxy for tokens). Measured here: a batch
    of random texts padded to the longest costs 1.6x the same texts one by one (cost is linear in tokens
    on this CPU), so a micro-batch runs as a few length groups rather than one padded block."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    groups: list[list[int]] = []
    total = 0
    for i in order:
        n = len(texts[i]) or 1
        if groups and (len(groups[-1]) + 1) * n <= (1 + max_padding) * (total + n):
            groups[-1].append(i)
            total += n
        else:
            groups.append([i])
            total = n
    return groups


def check_text_model(predictor) -> None:
    """The HTTP API answers texts: a model of a task it does not serve (a CNN's tensors) is refused in one line
    by the task registry (a predictor without a task is a text classifier from before tasks were recorded)."""
    from edgeshrink import tasks

    tasks.named(getattr(predictor, "task", "text-classification")).implementation("serve")


class Row(NamedTuple):
    """One text's answer from the model thread."""
    label: str
    probabilities: np.ndarray
    truncated: bool  # cut at the model's max_length
    logits: np.ndarray
    unknown: bool | None  # a token outside the vocabulary (None: the tokenizer has no unknown token)


def predict_rows(predictor):
    """A batch function over a predictor: a Row per text."""
    def infer(texts: list[str]) -> list[Row]:
        rows: list = [None] * len(texts)
        for group in length_groups(texts):
            pred = predictor.predict([texts[i] for i in group], batch_size=len(group))
            logits = pred.logits if pred.logits is not None else np.log(np.maximum(pred.probabilities, 1e-30))
            unknown = getattr(pred, "unknown", None) or [None] * len(group)
            for i, row in zip(group, zip(pred.labels, pred.probabilities, pred.truncated, logits, unknown)):
                rows[i] = Row(*row)
        return rows
    return infer


def install_faults(app, faults: Path) -> None:
    """Fault drills, read per request from a JSON file: ``delay_ms`` stalls the answer, ``status`` fails it,
    ``break_after_chunks`` cuts a stream after that many chunks (as a crashed server would),
    ``chunk_delay_ms`` slows every chunk of a stream (time to kill the server mid-stream)."""

    @app.middleware("http")
    async def drill(request, call_next):
        path = request.url.path
        answering = (path.startswith("/v1/") and path != "/v1/models") or (path.startswith("/v2/models/")
                                                                          and path.endswith("/infer"))
        if not answering or not faults.exists():
            return await call_next(request)
        try:
            fault = json.loads(faults.read_text())
        except (OSError, ValueError):
            fault = {}
        if fault.get("delay_ms"):
            await asyncio.sleep(float(fault["delay_ms"]) / 1000)
        if fault.get("status"):
            return JSONResponse({"error": "injected fault"}, status_code=int(fault["status"]))
        response = await call_next(request)
        limit, pause = fault.get("break_after_chunks"), float(fault.get("chunk_delay_ms") or 0) / 1000
        if (limit is None and not pause) or not hasattr(response, "body_iterator"):
            return response
        inner = response.body_iterator

        async def drilled():
            count = 0
            async for chunk in inner:
                if limit is not None and count >= int(limit):
                    raise ConnectionAbortedError("injected fault: stream cut")
                count += 1
                if pause:
                    await asyncio.sleep(pause)
                yield chunk

        response.body_iterator = drilled()
        return response
