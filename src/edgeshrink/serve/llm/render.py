"""Rendering: a routed answer (``Routing.answer``'s pieces) as OpenAI's JSON response or as server-sent events
(``data: {...}`` chunks, then ``data: [DONE]``), counted in the service's metrics.

    render = Render("smollm2", generator.tokenizer, metrics, error)
    return await render.respond(request, body, path, ("chat.completion", "chat.completion.chunk"), pieces, ids,
                                cancel)
"""

from __future__ import annotations

import json
import time
import uuid

import anyio

from fastapi.responses import JSONResponse, StreamingResponse

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.serve.gate import error_body


class Render:
    """``name``: the served model; ``error(status, message, path)``: the service's one-line error response.

    Every response and stream chunk names the model that wrote it (``model``): a chunk, the model of its text;
    the whole response and the last chunk, the model that finished the answer (the device, when it finished an
    answer the cloud could not). A text chunk's ``edgeshrink.span`` says whether the device or the cloud wrote it,
    and the end's ``edgeshrink.spans`` lists the answer's spans in order: ``{"source", "model", "chars"}``
    (a handed-off answer: device, then cloud)."""

    def __init__(self, name: str, tokenizer, metrics, error):
        self.name, self.tokenizer, self.metrics, self.error = name, tokenizer, metrics, error

    def payload(self, kind: str, piece: str | None, finish: str | None, request_id: str, model: str,
                extra: dict | None = None, usage: dict | None = None, first: bool = False) -> dict:
        """One stream chunk, or (piece = the whole text, ``kind`` not a chunk) one complete response."""
        if kind == "chat.completion.chunk":
            delta = ({"role": "assistant"} if first else {}) | ({"content": piece} if piece else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        elif kind == "chat.completion":
            choice = {"index": 0, "message": {"role": "assistant", "content": piece}, "finish_reason": finish}
        else:  # text_completion (whole or chunk)
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        body = {"id": request_id, "object": kind, "created": int(time.time()), "model": model, "choices": [choice]}
        if usage is not None:
            body["usage"] = usage
        if extra is not None:
            body["edgeshrink"] = extra
        return body

    def record(self, end: dict, ids, text: str, received: float, first_at: float | None) -> dict:
        """Count the answer by who gave it (latency, tokens, time to its first token, time per output token);
        the usage it reports."""
        source = end["source"]
        self.metrics.texts.labels(source=source).inc()
        self.metrics.latency.labels(source=source).observe(time.perf_counter() - received)
        usage = self.usage(ids, text, end.pop("completion_tokens", None))
        self.metrics.answered(source, usage["prompt_tokens"], usage["completion_tokens"],
                              None if first_at is None else first_at - received, end.pop("decode_s", None))
        return usage

    def usage(self, ids, text: str, completion: int | None) -> dict:
        if completion is None:  # the cloud's answer: count it with this tokenizer
            completion = len(self.tokenizer.encode(text, add_special_tokens=False).ids) if text else 0
        return {"prompt_tokens": len(ids), "completion_tokens": completion, "total_tokens": len(ids) + completion}

    async def respond(self, request, body, path: str, kinds: tuple[str, str], pieces, ids, cancel, received: float):
        """``pieces`` as one JSON response (``kinds[0]``) or, when ``body.stream``, as events (``kinds[1]``).
        ``received``: when the request came in (``time.perf_counter()``), for its latency and time to first token."""
        request_id = f"{'chatcmpl' if kinds[0] == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if not body.stream:
            texts, end, first_at, spans = [], {}, None, []
            try:
                async for piece, about in pieces:  # (text, its Author), last (None, the end's facts)
                    if piece is None:
                        end = about
                    elif piece:
                        first_at = first_at or time.perf_counter()
                        texts.append(piece)
                        add_span(spans, piece, about)
            except EdgeshrinkError as exc:
                return self.error(400, str(exc), path)
            end["spans"] = spans
            text = "".join(texts)
            for stop in body.stops():  # the text ends before the first stop string
                text = text.split(stop, 1)[0]
            usage = self.record(end, ids, text, received, first_at)
            self.metrics.requests.labels(path=path, status="200").inc()
            return JSONResponse(self.payload(kinds[0], text, end.pop("finish"), request_id, end.pop("model"), end,
                                             usage))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(self.events(request, path, kinds[1], pieces, ids, cancel, request_id, include_usage,
                                             received),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def events(self, request, path: str, kind: str, pieces, ids, cancel, request_id: str, include_usage: bool,
                     received: float):
        first, texts, first_at, spans, ended = True, [], None, [], False
        try:
            async for piece, about in pieces:  # (text, its Author), last (None, the end's facts)
                if await request.is_disconnected():
                    return
                if piece is not None:
                    if piece:
                        first_at = first_at or time.perf_counter()
                        texts.append(piece)
                        add_span(spans, piece, about)
                        yield sse(self.payload(kind, piece, None, request_id, about.model, {"span": about.source},
                                               first=first))
                        first = False
                    continue
                end = about
                end["spans"] = spans
                usage = self.record(end, ids, "".join(texts), received, first_at)
                yield sse(self.payload(kind, None, end.pop("finish"), request_id, end.pop("model"), end,
                                       usage if include_usage else None, first=first))
            self.metrics.requests.labels(path=path, status="200").inc()
            ended = True
            yield "data: [DONE]\n\n"
        except EdgeshrinkError as exc:  # after the first byte the status is sent: say it in the stream
            ended = True
            yield sse(error_body(500, str(exc), path))
        finally:
            cancel.set()
            if not ended:  # the client went away (Starlette cancels the stream, or it was seen disconnected)
                self.metrics.rejected.labels(reason="client_disconnected").inc()
            # close the answer now, not when it is collected, shielded from the cancellation: a cloud stream it
            # holds is closed (the cloud stops generating) and the device's generation stops, so the next request
            # finds nothing left running
            with anyio.CancelScope(shield=True):
                await pieces.aclose()


def add_span(spans: list[dict], piece: str, author) -> None:
    """Extend the answer's spans by ``piece`` written by ``author`` (an Author: model and source)."""
    if spans and spans[-1]["source"] == author.source and spans[-1]["model"] == author.model:
        spans[-1]["chars"] += len(piece)
    else:
        spans.append({"source": author.source, "model": author.model, "chars": len(piece)})


def sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"
