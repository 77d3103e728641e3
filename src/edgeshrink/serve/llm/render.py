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

from fastapi.responses import JSONResponse, StreamingResponse

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.serve.gate import error_body


class Render:
    """``name``: the served model; ``error(status, message, path)``: the service's one-line error response."""

    def __init__(self, name: str, tokenizer, metrics, error):
        self.name, self.tokenizer, self.metrics, self.error = name, tokenizer, metrics, error

    def payload(self, kind: str, piece: str | None, finish: str | None, request_id: str, extra: dict | None = None,
                usage: dict | None = None, first: bool = False) -> dict:
        """One stream chunk, or (piece = the whole text, ``kind`` not a chunk) one complete response."""
        if kind == "chat.completion.chunk":
            delta = ({"role": "assistant"} if first else {}) | ({"content": piece} if piece else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        elif kind == "chat.completion":
            choice = {"index": 0, "message": {"role": "assistant", "content": piece}, "finish_reason": finish}
        else:  # text_completion (whole or chunk)
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        body = {"id": request_id, "object": kind, "created": int(time.time()), "model": self.name, "choices": [choice]}
        if usage is not None:
            body["usage"] = usage
        if extra is not None:
            body["edgeshrink"] = extra
        return body

    def record(self, extra: dict) -> dict:
        """Count the answer by who gave it, with its latency; ``extra`` without its start time."""
        latency = time.perf_counter() - extra.pop("started")
        self.metrics.texts.labels(source=extra["source"]).inc()
        self.metrics.latency.labels(source=extra["source"]).observe(latency)
        return extra

    def usage(self, ids, text: str, completion: int | None) -> dict:
        if completion is None:  # the cloud's answer: count it with this tokenizer
            completion = len(self.tokenizer.encode(text, add_special_tokens=False).ids) if text else 0
        return {"prompt_tokens": len(ids), "completion_tokens": completion, "total_tokens": len(ids) + completion}

    async def respond(self, request, body, path: str, kinds: tuple[str, str], pieces, ids, cancel):
        """``pieces`` as one JSON response (``kinds[0]``) or, when ``body.stream``, as events (``kinds[1]``)."""
        request_id = f"{'chatcmpl' if kinds[0] == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if not body.stream:
            texts, extra = [], {}
            try:
                async for piece, end in pieces:
                    if piece is not None:
                        texts.append(piece)
                    else:
                        extra = end
            except EdgeshrinkError as exc:
                return self.error(400, str(exc), path)
            extra = self.record(extra)
            text = "".join(texts)
            for stop in body.stops():  # the text ends before the first stop string
                text = text.split(stop, 1)[0]
            usage = self.usage(ids, text, extra.pop("completion_tokens", None))
            self.metrics.requests.labels(path=path, status="200").inc()
            return JSONResponse(self.payload(kinds[0], text, extra.pop("finish"), request_id, extra, usage))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(self.events(request, path, kinds[1], pieces, ids, cancel, request_id, include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def events(self, request, path: str, kind: str, pieces, ids, cancel, request_id: str, include_usage: bool):
        first, texts = True, []
        try:
            async for piece, end in pieces:
                if await request.is_disconnected():
                    cancel.set()
                    self.metrics.rejected.labels(reason="client_disconnected").inc()
                    return
                if piece is not None:
                    if piece:
                        texts.append(piece)
                        yield sse(self.payload(kind, piece, None, request_id, first=first))
                        first = False
                    continue
                end = self.record(end)
                completion, finish = end.pop("completion_tokens", None), end.pop("finish")
                usage = self.usage(ids, "".join(texts), completion) if include_usage else None
                yield sse(self.payload(kind, None, finish, request_id, end, usage, first=first))
            self.metrics.requests.labels(path=path, status="200").inc()
            yield "data: [DONE]\n\n"
        except EdgeshrinkError as exc:  # after the first byte the status is sent: say it in the stream
            yield sse(error_body(500, str(exc), path))
        finally:
            cancel.set()


def sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"
