"""What a request passes before its endpoint runs: the API key, the rate limit and the body's limits.

``Gate`` (ASGI middleware) finds the request's route first. On an endpoint registered with ``protected``
it checks the key and the client's rate before reading the body, so an unauthenticated or throttled
client learns nothing about its body and costs no parsing. Then the body: its size (413), UTF-8 (400), a
JSON content type where the endpoint takes JSON (415) and its nesting depth (422). Metrics are labelled
with the route's template (``/v2/models/{name}/infer``), never the raw path, so clients cannot grow
``/metrics`` with made-up paths: a path that matches no route is ``other``.
"""

from __future__ import annotations

import hmac
import os
import re
import time

import numpy as np
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Match

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.serve.config import ServeConfig

UNKNOWN_ROUTE = "other"
# Far deeper than any request of these APIs (a chat message with content parts is 5 levels), far below the
# depth at which Python's JSON parser gives up with a RecursionError (~1000).
MAX_JSON_DEPTH = 64
BINARY_HEADER = b"inference-header-content-length"  # the Open Inference Protocol's binary bodies (oip.py)


class Protected(APIRoute):
    """An endpoint behind the API key and the rate limit (``Gate`` checks them before the body is read)."""


def protected(app, path: str, method: str = "POST", **options):
    """Register the decorated endpoint at ``path`` as ``Protected``; ``options`` as ``app.post``'s."""
    def register(endpoint):
        app.router.add_api_route(path, endpoint, methods=[method], route_class_override=Protected, **options)
        return endpoint
    return register


def matched_route(scope):
    """The route that will answer ``scope`` (a full match first, else one whose method differs), or None."""
    partial = None
    for route in scope["app"].router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
        if match == Match.PARTIAL and partial is None:
            partial = route
    return partial


def route_label(scope) -> str:
    """The metrics label of a request: its route's template, or ``other``."""
    route = matched_route(scope)
    return getattr(route, "path", None) or UNKNOWN_ROUTE


# The OpenAI-compatible routes answer errors in OpenAI's shape, which its clients read (the official `openai`
# client shows error.message); every other route keeps edgeshrink's {"error": "one line"}.
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models")
OPENAI_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, label: str) -> dict:
    if not label.startswith(OPENAI_ROUTES):
        return {"error": message}
    kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}


def error_response(metrics, status: int, message: str, label: str, headers=None) -> JSONResponse:
    """A counted one-line JSON error (``error_body``: edgeshrink's shape, or OpenAI's on its routes)."""
    metrics.requests.labels(path=label, status=str(status)).inc()
    return JSONResponse(error_body(status, message, label), status_code=status, headers=headers)


class RateLimiter:
    """A token bucket per client: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        tokens, last = self.buckets.get(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self.buckets) > 10_000:  # forget idle clients rather than grow without bound
            self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < 60}
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            return False
        self.buckets[client] = (tokens - 1, now)
        return True


class Guard:
    """The API key and the rate limit. A client is the key it proved, or else its address: a key the client
    merely sends (none configured, or a wrong one) is no identity, or each made-up key would get a fresh
    bucket — and wrong-key guesses are limited per address like any other request."""

    def __init__(self, config: ServeConfig, metrics):
        self.key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if config.api_key_env and not self.key:
            raise EdgeshrinkError(f"api_key_env is {config.api_key_env!r} but that environment variable is empty")
        self.limiter = RateLimiter(config.limits.requests_per_second, config.limits.burst)
        self.rate, self.metrics = config.limits.requests_per_second, metrics

    def refusal(self, request: Request, label: str) -> JSONResponse | None:
        address = f"address {request.client.host if request.client else '?'}"
        if self.key is not None and not self._authenticated(request):
            if not self.limiter.allow(address):
                return self._throttled(label)
            self.metrics.rejected.labels(reason="auth").inc()
            return error_response(self.metrics, 401, "missing or wrong API key (header X-API-Key or Authorization: "
                                                     "Bearer)", label)
        if not self.limiter.allow("api key" if self.key is not None else address):
            return self._throttled(label)
        return None

    def _authenticated(self, request: Request) -> bool:
        sent = request.headers.get("x-api-key")
        bearer = request.headers.get("authorization", "")
        if sent is None and bearer.lower().startswith("bearer "):  # how OpenAI clients send their key
            sent = bearer[7:].strip()
        return sent is not None and hmac.compare_digest(sent.encode(), self.key.encode())

    def _throttled(self, label: str) -> JSONResponse:
        self.metrics.rejected.labels(reason="rate_limited").inc()
        return error_response(self.metrics, 429, f"over {self.rate:g} requests per second", label,
                              {"Retry-After": "1"})


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)  # unterminated: to the end (stays linear)


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``[`` and ``{`` nest deeper than ``limit`` in JSON text (strings skipped), checked before parsing."""
    if raw.count(b"[") + raw.count(b"{") <= limit:  # the usual body: no need to look closer
        return False
    codes = np.frombuffer(_JSON_STRING.sub(b"", raw), dtype=np.uint8)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int32) - np.isin(codes, (ord("]"), ord("}")))
    return bool(np.cumsum(steps).max(initial=0) > limit)


class Gate:
    """ASGI middleware: the API key and rate limit of protected endpoints, then the body's limits (see the
    module doc), each refused in one line before anything parses the body."""

    def __init__(self, app, max_bytes: int, metrics, guard: Guard):
        self.app, self.max_bytes, self.metrics, self.guard = app, max_bytes, metrics, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = matched_route(scope)
        label = getattr(route, "path", None) or UNKNOWN_ROUTE
        if isinstance(route, Protected):
            refused = self.guard.refusal(Request(scope), label)
            if refused is not None:
                return await refused(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        too_large = f"request body over {self.max_bytes} bytes"
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(scope, receive, send, 413, too_large, "body_too_large", label)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, 413, too_large, "body_too_large", label)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if BINARY_HEADER not in headers:  # a binary body's JSON header is checked by oip.py
            refused = self._check_text(body, headers, route)
            if refused is not None:
                return await self._refuse(scope, receive, send, *refused, label)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    def _check_text(body: bytes, headers: dict, route) -> tuple[int, str, str] | None:
        """(status, message, reason) when a text body is refused, else None."""
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return 400, f"the body is not UTF-8 (byte {exc.start})", "not_utf8"
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        mime = content_type.split(";", 1)[0].strip().lower()  # JSON as FastAPI parses it: application/(*+)json
        json_body = mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))
        if getattr(route, "body_field", None) is not None and not json_body:
            got = repr(content_type[:80]) if content_type else "none"
            return 415, f"Content-Type must be application/json, got {got}", "content_type"
        if json_too_deep(body):
            return 422, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "invalid"
        return None

    async def _refuse(self, scope, receive, send, status: int, message: str, reason: str, label: str):
        self.metrics.rejected.labels(reason=reason).inc()
        await error_response(self.metrics, status, message, label)(scope, receive, send)
