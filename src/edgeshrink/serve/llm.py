"""OpenAI-compatible language-model services: `serve-cloud` and `serve` on an LLM bundle.

    POST /v1/chat/completions   {"model", "messages", "max_tokens"?, "temperature"?, "top_p"?, "stream"?, "stop"?,
                                 "seed"?, "edgeshrink"?: {"route": "auto" | "device" | "cloud"}}
    POST /v1/completions        {"model", "prompt", ...}             GET /v1/models
    POST /v1/speculate          (cloud) the target's distributions after a drafted continuation, one pass
    GET  /healthz, /readyz, /metrics, /docs                           as the classifier services

Responses and stream chunks (server-sent events, ``data: {...}`` then ``data: [DONE]``) follow OpenAI's
shapes, so the official ``openai`` client works; each also carries ``edgeshrink``: who answered
(``device``, ``cloud``, ``device-fallback``), the device's calibrated confidence, and why it fell back.

The device service generates on the device and, with ``--cloud URL`` (any OpenAI-compatible server) and
a router calibrated on an answer signal (mean-logprob, min-logprob, neg-mean-entropy), escalates answers
whose confidence is below the threshold: it then relays the cloud's stream. When the cloud fails —
refused, slow past the deadline, 5xx, breaker open, over budget, or broken mid-stream — the device
answers: its own answer if the cloud sent nothing, else it continues from the text the cloud sent, so
the client always gets one whole answer, flagged ``device-fallback`` with the reason.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.serve.config import ServeConfig


# -- requests -----------------------------------------------------------------------------------------
class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class RouteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    route: Literal["auto", "device", "cloud"] = Field("auto", description="auto: the router decides; device: never "
                                                      "escalate (private); cloud: always escalate")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Sampling(BaseModel):
    """The options both endpoints share (OpenAI's names and defaults; unsupported values are refused)."""
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Default: what the context leaves after the prompt, "
                                   "at most the service's default (chat) or 16 (completions).")
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0)
    user: str | None = None
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    edgeshrink: RouteOptions | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not s for s in stops):
            raise EdgeshrinkError("stop: an empty string would stop before the first token; give non-empty strings")
        if len(stops) > 4:
            raise EdgeshrinkError(f"stop: at most 4 strings, got {len(stops)}")
        return tuple(stops)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]


class SpeculateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[int] = Field(min_length=1, description="The accepted sequence: prompt and generated tokens.")
    draft: list[int] = Field(min_length=1, max_length=32, description="The drafted continuation to verify.")
    temperature: float = Field(0.0, ge=0, le=2, allow_inf_nan=False)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    session: str | None = Field(None, max_length=128, description="Reuse this client's KV cache between rounds.")


# -- the model worker ---------------------------------------------------------------------------------
class Engine:
    """One generator, one generation at a time (requests queue), run in a thread and streamed to asyncio."""

    def __init__(self, generator):
        self.g = generator
        self.lock = threading.Lock()

    async def stream(self, ids: list[int], max_tokens: int, options: dict, cancel: threading.Event):
        """Yield Tokens, then a dict (the generator's info). Setting ``cancel`` stops after the next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def work():
            info: dict = {}
            try:
                with self.lock:
                    for token in self.g.stream(ids, max_tokens, info=info, **options):
                        loop.call_soon_threadsafe(queue.put_nowait, token)
                        if cancel.is_set():
                            info["stop_reason"] = "cancelled"
                            break
                loop.call_soon_threadsafe(queue.put_nowait, info)
            except Exception as exc:  # noqa: BLE001 - handed to the request, which answers in one line
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, dict):
                    return
        finally:
            cancel.set()


def finish_reason(stop_reason: str) -> str:
    return "length" if stop_reason == "length" else "stop"


# -- the app ------------------------------------------------------------------------------------------
def llm_app(bundle: str | Path, config: ServeConfig, role: Literal["device", "cloud"], faults: Path | None = None):
    """The OpenAI-compatible service on an LLM bundle (see the module doc)."""
    from edgeshrink.route.confidence import ANSWER_SIGNALS, confidence_scores
    from edgeshrink.route.router import has_router, read_router, threshold_of
    from edgeshrink.runtime.generate import Generator
    from edgeshrink.runtime.prompted import answer_signals
    from edgeshrink.serve.app import ErrorResponse, base_app, install_faults
    from edgeshrink.serve.gate import protected
    from edgeshrink.serve.metrics import Metrics

    generator = Generator(bundle, threads=config.threads)
    engine = Engine(generator)
    name = config.llm.model_name or Path(bundle).name
    metrics = Metrics()
    state = {"ready": False}
    router = None
    if role == "device" and has_router(bundle):
        router = read_router(bundle)
        if config.cloud is not None and router["signal"] not in ANSWER_SIGNALS:
            raise EdgeshrinkError(f"{bundle}'s router uses {router['signal']!r}, which free generations do not "
                                  f"give: calibrate it with --signal {' | '.join(ANSWER_SIGNALS)}")
    holder: dict = {}
    sessions: OrderedDict = OrderedDict()  # cloud: speculation KV caches, least recently used first

    @asynccontextmanager
    async def lifespan(app):
        if config.cloud is not None:
            from edgeshrink.serve.llm_client import OpenAICloud

            holder["cloud"] = OpenAICloud(config.cloud, metrics)
        await asyncio.to_thread(generator.generate, "Hi", 1)  # one warm-up call: ready means answering
        state["ready"] = True
        yield
        state["ready"] = False
        if "cloud" in holder:
            await holder["cloud"].close()

    def ready_info():
        cloud = holder.get("cloud")
        return {"router": router is not None, "cloud": config.cloud.url if config.cloud else None,
                "breaker": cloud.breaker.state if cloud else None, "context_length": generator.context_length}

    app, error = base_app(f"{role} language-model service", f"edgeshrink {role} service, OpenAI-compatible: model "
                          f"{name}.", name, config, metrics, state, lifespan, ready_info)
    responses = {c: {"model": ErrorResponse} for c in (400, 401, 404, 413, 415, 422, 429)}

    @protected(app, "/v1/models", "GET", response_model=dict)
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "edgeshrink"}]}

    async def prepare(body, path: str):
        """(prompt ids, max tokens, generator options, route) or an error response."""
        if body.model != name:
            return error(404, f"model {body.model!r} is not served here; GET /v1/models lists {name!r}", path)
        chat = isinstance(body, ChatRequest)
        asked = (body.max_completion_tokens or body.max_tokens) if chat else body.max_tokens
        if asked is not None and asked > config.llm.max_tokens_limit:
            return error(422, f"max_tokens {asked} is over this service's limit of {config.llm.max_tokens_limit}",
                         path)
        try:
            stops = body.stops()
        except EdgeshrinkError as exc:
            return error(422, str(exc), path)
        if chat:
            if generator.chat_template is None:
                return error(400, f"model {name} has no chat template: use /v1/completions", path)
            prompt = [{"role": m.role, "content": m.text()} for m in body.messages]
        else:
            prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
            if len(prompts) != 1 or not prompts[0]:
                return error(422, "prompt: one non-empty string", path)
            prompt = prompts[0]
        try:  # in a thread: a chat template may take long to render, and the service must keep answering
            ids = await asyncio.to_thread(generator.encode, prompt)
        except EdgeshrinkError as exc:
            return error(400, str(exc), path)
        if not ids:
            return error(422, "the prompt is empty", path)
        # Not asked: OpenAI's default (chat: the service's, completions: 16), cut to what the context leaves.
        room = generator.context_length - len(ids)
        max_tokens = asked or max(1, min(config.llm.default_max_tokens if chat else 16, config.llm.max_tokens_limit,
                                         room))
        if len(ids) + max_tokens > generator.context_length:
            return error(400, f"the prompt's {len(ids)} tokens + max_tokens {max_tokens} exceed the context length "
                              f"{generator.context_length}", path)
        options = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "stop": stops}
        route = body.edgeshrink.route if body.edgeshrink else "auto"
        return ids, max_tokens, options, route

    def payload(kind: str, piece: str | None, finish: str | None, request_id: str, extra: dict | None = None,
                usage: dict | None = None, first: bool = False) -> dict:
        """One stream chunk, or (piece = the whole text, ``kind`` not a chunk) one complete response."""
        created = int(time.time())
        if kind == "chat.completion.chunk":
            delta = ({"role": "assistant"} if first else {}) | ({"content": piece} if piece else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        elif kind == "chat.completion":
            choice = {"index": 0, "message": {"role": "assistant", "content": piece}, "finish_reason": finish}
        else:  # text_completion (whole or chunk)
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        body = {"id": request_id, "object": kind, "created": created, "model": name, "choices": [choice]}
        if usage is not None:
            body["usage"] = usage
        if extra is not None:
            body["edgeshrink"] = extra
        return body

    async def answer(request: Request, body, path: str):
        """The answer's pieces as (text, None) and, last, (None, {finish, source, ...}): the routing happens here."""
        prepared = await prepare(body, path)
        if isinstance(prepared, JSONResponse):
            return prepared, None
        ids, max_tokens, options, route = prepared
        cloud = holder.get("cloud")
        chat = isinstance(body, ChatRequest)
        if role == "device" and route == "cloud" and cloud is None:
            return error(422, "edgeshrink.route is 'cloud' but this service has no cloud (--cloud URL)", path), None
        cancel = threading.Event()

        async def device_pieces(prefix_ids, budget, end: dict, before: int = 0):
            """Stream the device's tokens as text, then ``end`` with the finish reason and the token count."""
            count = 0
            async for item in engine.stream(prefix_ids, budget, options, cancel):
                if isinstance(item, dict):
                    yield None, end | {"finish": finish_reason(item["stop_reason"]), "completion_tokens": before + count}
                else:
                    count += 1
                    yield item.text, None

        async def pieces():
            started = time.perf_counter()
            if role == "cloud" or cloud is None or route == "device" or (route == "auto" and router is None):
                reason = "no router" if role == "device" and router is None else \
                    ("private" if route == "device" else "cloud model")
                async for piece in device_pieces(ids, max_tokens, {"source": "cloud" if role == "cloud" else "device",
                                                                   "reason": reason, "started": started}):
                    yield piece
                return
            # The device answers first (unless sent to the cloud), then the router decides.
            device_tokens, device_info, confidence = [], {}, None
            if route == "auto":
                async for item in engine.stream(ids, max_tokens, options, cancel):
                    if isinstance(item, dict):
                        device_info = item
                    else:
                        device_tokens.append(item)
                signals = answer_signals([(t.logprob, t.entropy) for t in device_tokens])
                fitted = {"temperature": float(router["temperature"]), "bias": router.get("bias")}
                confidence = float(confidence_scores(router["signal"], np.zeros((1, 2)),
                                                     {k: np.array([v]) for k, v in signals.items()}, fitted)[0])
                if confidence >= threshold_of(router):
                    for token in device_tokens:
                        yield token.text, None
                    yield None, {"finish": finish_reason(device_info["stop_reason"]), "source": "device",
                                 "confidence": confidence, "reason": "confident",
                                 "completion_tokens": len(device_tokens), "started": started}
                    return
            metrics.escalations.inc()
            request_payload = {"messages": [m.model_dump(exclude_none=True) for m in body.messages]} if chat \
                else {"prompt": body.prompt}
            request_payload |= {"max_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p}
            if body.stop:
                request_payload["stop"] = body.stop
            if body.seed is not None:
                request_payload["seed"] = body.seed
            from edgeshrink.serve.llm_client import CloudFailed

            sent, finish = [], "stop"
            try:
                async for piece, reason in cloud.stream(path, request_payload):
                    if piece:
                        sent.append(piece)
                        yield piece, None
                    if reason:
                        finish = reason
                yield None, {"finish": finish, "source": "cloud", "confidence": confidence,
                             "reason": "cloud only" if route == "cloud" else "not confident",
                             "completion_tokens": None, "started": started}
                return
            except CloudFailed as failed:
                fallback_reason = failed.reason
            metrics.fallbacks.labels(reason=fallback_reason).inc()
            extra = {"source": "device-fallback", "confidence": confidence, "fallback_reason": fallback_reason,
                     "cloud_chars": len("".join(sent)), "started": started,
                     "reason": "cloud only" if route == "cloud" else "not confident"}
            if not sent and device_info:  # the device's own answer is ready
                for token in device_tokens:
                    yield token.text, None
                yield None, extra | {"finish": finish_reason(device_info["stop_reason"]),
                                     "completion_tokens": len(device_tokens)}
                return
            # Continue from what the cloud sent (or from nothing): the answer stays whole.
            so_far = "".join(sent)
            cont = ids + (generator.tokenizer.encode(so_far, add_special_tokens=False).ids if so_far else [])
            budget = max_tokens - (len(cont) - len(ids))
            if budget <= 0 or len(cont) + budget > generator.context_length:
                yield None, extra | {"finish": "length", "completion_tokens": len(cont) - len(ids)}
                return
            async for piece in device_pieces(cont, budget, extra, before=len(cont) - len(ids)):
                yield piece

        return pieces(), (ids, cancel)

    def record(extra: dict) -> dict:
        latency = time.perf_counter() - extra.pop("started")
        metrics.texts.labels(source=extra["source"]).inc()
        metrics.latency.labels(source=extra["source"]).observe(latency)
        return extra

    async def respond(request: Request, body, path: str, kinds: tuple[str, str]):
        stream, meta = await answer(request, body, path)
        if meta is None:
            return stream  # an error response
        ids, cancel = meta
        request_id = f"{'chatcmpl' if kinds[0] == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if not body.stream:
            texts, extra = [], {}
            try:
                async for piece, end in stream:
                    if piece is not None:
                        texts.append(piece)
                    else:
                        extra = end
            except EdgeshrinkError as exc:
                return error(400, str(exc), path)
            extra = record(extra)
            text = _cut_at_stop("".join(texts), body.stops())
            completion = extra.pop("completion_tokens", None)
            usage = _usage(generator, ids, text, completion)
            metrics.requests.labels(path=path, status="200").inc()
            return JSONResponse(payload(kinds[0], text, extra.pop("finish"), request_id, extra, usage))

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events():
            first, texts = True, []
            try:
                async for piece, end in stream:
                    if await request.is_disconnected():
                        cancel.set()
                        metrics.rejected.labels(reason="client_disconnected").inc()
                        return
                    if piece is not None:
                        if piece:
                            texts.append(piece)
                            yield _sse(payload(kinds[1], piece, None, request_id, first=first))
                            first = False
                        continue
                    end = record(end)
                    completion = end.pop("completion_tokens", None)
                    finish = end.pop("finish")
                    usage = _usage(generator, ids, "".join(texts), completion) if include_usage else None
                    yield _sse(payload(kinds[1], None, finish, request_id, end, usage, first=first))
                metrics.requests.labels(path=path, status="200").inc()
                yield "data: [DONE]\n\n"
            except EdgeshrinkError as exc:  # after the first byte the status is sent: say it in the stream
                yield _sse({"error": str(exc)})
            finally:
                cancel.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @protected(app, "/v1/chat/completions", response_model=dict, responses=responses)
    async def chat_completions(body: ChatRequest, request: Request):
        return await respond(request, body, "/v1/chat/completions", ("chat.completion", "chat.completion.chunk"))

    @protected(app, "/v1/completions", response_model=dict, responses=responses)
    async def completions(body: CompletionRequest, request: Request):
        return await respond(request, body, "/v1/completions", ("text_completion", "text_completion"))

    if role == "cloud":
        from edgeshrink.runtime.speculative import CachedModel, Sampling as SpecSampling, distribution

        @protected(app, "/v1/speculate", response_model=dict, responses=responses)
        async def speculate(body: SpeculateRequest):
            path = "/v1/speculate"
            vocabulary = generator.tokenizer.get_vocab_size()
            if any(not 0 <= t < vocabulary for t in body.tokens + body.draft):
                return error(422, f"token ids must be in [0, {vocabulary})", path)
            if len(body.tokens) + len(body.draft) > generator.context_length:
                return error(400, f"{len(body.tokens) + len(body.draft)} tokens exceed the context length "
                                  f"{generator.context_length}", path)
            sampling = SpecSampling(body.temperature, body.top_k, body.top_p)

            def run():
                with engine.lock:
                    key = body.session or ""
                    model = sessions.pop(key, None) or CachedModel(generator)
                    sessions[key] = model
                    while len(sessions) > config.llm.speculate_sessions:
                        sessions.popitem(last=False)
                    rows = model.logits(body.tokens + body.draft, rows=len(body.draft) + 1)
                return [distribution(row, sampling) for row in rows[-(len(body.draft) + 1):]]

            dists = await asyncio.to_thread(run)
            if any(len(ids) > 4096 for ids, _ in dists):
                return error(422, "the sampling distribution has over 4096 tokens: give top_k (≤ 4096) or a "
                                  "smaller top_p", path)
            metrics.requests.labels(path=path, status="200").inc()
            return {"distributions": [{"ids": ids.tolist(), "probs": probs.tolist()} for ids, probs in dists]}

    if faults is not None:
        install_faults(app, faults)
    return app


def _cut_at_stop(text: str, stops) -> str:
    for s in stops:
        if s in text:
            text = text[:text.index(s)]
    return text


def _usage(generator, ids, text: str, completion: int | None) -> dict:
    if completion is None:  # the cloud's answer: count it with this tokenizer
        completion = len(generator.tokenizer.encode(text, add_special_tokens=False).ids) if text else 0
    return {"prompt_tokens": len(ids), "completion_tokens": completion, "total_tokens": len(ids) + completion}


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"
