"""The device service's way to the cloud: async HTTP with timeouts, a deadline, bounded retries, a
circuit breaker and a spend budget. It never raises: it returns the cloud's answers or the reason
there are none (the caller then answers from the device, flagged ``device-fallback``).

Breaker: after ``breaker_failures`` consecutive failed escalations it opens and no call is made for
``breaker_reset_s``; then one request probes the cloud (half-open): success closes it, failure opens it
again for another period.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass

import httpx

from edgeshrink.serve.config import CloudConfig


@dataclass
class CloudResult:
    labels: list[str] | None  # None: no answer, see reason
    probabilities: list[dict[str, float]] | None
    reason: str | None  # why there is no answer: breaker_open, budget, timeout, deadline, unreachable, http_5xx,
    # bad_response; a stream also stream_broken
    attempts: int


class CloudFailed(Exception):
    """No complete answer from the cloud after ``attempts`` tries; ``reason`` says why (see CloudResult)."""

    def __init__(self, reason: str, attempts: int = 0):
        super().__init__(reason)
        self.reason, self.attempts = reason, attempts


class AttemptFailed(Exception):
    """One attempt's own failure (an HTTP refusal, a malformed answer); ``retry``: whether another may help."""

    def __init__(self, reason: str, retry: bool = True):
        super().__init__(reason)
        self.reason, self.retry = reason, retry

    @classmethod
    def http(cls, status: int) -> AttemptFailed:
        # a 4xx other than 429 is the cloud refusing this request: retrying will not help
        return cls(f"http_{status // 100}xx", retry=status >= 500 or status == 429)


class CircuitBreaker:
    def __init__(self, failures: int, reset_s: float, on_change=None, clock=time.monotonic):
        self.failures_to_open, self.reset_s, self.clock = failures, reset_s, clock
        self.on_change = on_change or (lambda state: None)
        self.state, self.failures, self.opened_at, self.probing = "closed", 0, 0.0, False

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one probe at a time."""
        if self.state == "open" and self.clock() - self.opened_at >= self.reset_s:
            self._set("half-open")
        if self.state == "closed":
            return True
        if self.state == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def release(self) -> None:
        self.probing = False

    def record(self, ok: bool) -> None:
        self.probing = False
        if ok:
            self.failures = 0
            if self.state != "closed":
                self._set("closed")
            return
        self.failures += 1
        if self.state == "half-open" or self.failures >= self.failures_to_open:
            self.opened_at = self.clock()
            self._set("open")

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.on_change(state)


class Budget:
    """At most ``per_minute`` texts to the cloud in any sliding minute."""

    def __init__(self, per_minute: int | None, clock=time.monotonic):
        self.per_minute, self.clock, self.sent = per_minute, clock, deque()

    def take(self, n: int) -> bool:
        if self.per_minute is None:
            return True
        now = self.clock()
        while self.sent and now - self.sent[0][0] >= 60:
            self.sent.popleft()
        if sum(k for _, k in self.sent) + n > self.per_minute:
            return False
        self.sent.append((now, n))
        return True


class CloudConnection:
    """An async HTTP client to the cloud with the breaker and the budget, counting calls in ``metrics``."""

    def __init__(self, config: CloudConfig, metrics=None, headers: dict | None = None):
        self.config, self.metrics = config, metrics
        timeout = httpx.Timeout(connect=config.connect_timeout_s, read=config.read_timeout_s,
                                write=config.read_timeout_s, pool=config.connect_timeout_s)
        self.http = httpx.AsyncClient(base_url=config.url, timeout=timeout, headers=headers or {})
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_s, self._breaker_changed)
        self.budget = Budget(config.budget_texts_per_minute)

    def _breaker_changed(self, state: str) -> None:
        if self.metrics:
            self.metrics.breaker_transitions.labels(to=state).inc()
            self.metrics.breaker_state.set(0 if state == "closed" else 1)

    def _count(self, outcome: str) -> None:
        if self.metrics:
            self.metrics.cloud_calls.labels(outcome=outcome).inc()

    async def exchange(self, texts: int, attempt, deadline_ms: float | None = None):
        """The retry loop every cloud call shares: yield what ``attempt()`` (an async generator making one HTTP
        exchange) yields, or raise ``CloudFailed``. Until the first item, the deadline covers everything and
        failures are retried with backoff (5xx, 429, timeouts, refused connections, a stream cut short);
        after it nothing is retried (the caller already passed it on) and a broken exchange is
        ``stream_broken``. ``attempt`` raises ``AttemptFailed`` for failures it sees itself."""
        if not self.breaker.allow():
            raise CloudFailed("breaker_open")
        if not self.budget.take(texts):
            self.breaker.release()  # nothing was sent: neither a success nor a failure
            raise CloudFailed("budget")
        deadline = time.monotonic() + (deadline_ms or self.config.deadline_ms) / 1000
        attempts, reason = 0, "unreachable"
        while attempts <= self.config.retries:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "deadline"
                break
            attempts += 1
            started = False
            try:
                async with asyncio.timeout(remaining) as scope, aclosing(attempt()) as items:
                    async for item in items:
                        scope.reschedule(None)
                        started = True
                        yield item
                self._count("ok")
                self.breaker.record(True)
                return
            except TimeoutError:
                reason, retry = "deadline", False
            except httpx.TimeoutException:
                reason, retry = "stream_broken" if started else "timeout", True
            except httpx.HTTPError:
                reason, retry = "stream_broken" if started else "unreachable", True
            except AttemptFailed as failed:
                reason, retry = failed.reason, failed.retry
            self._count(reason)
            pause = self.config.backoff_ms / 1000 * 2 ** (attempts - 1)  # before the next attempt
            if started or not retry or attempts > self.config.retries or time.monotonic() + pause >= deadline:
                break
            await asyncio.sleep(pause)
        self.breaker.record(False)
        raise CloudFailed(reason, attempts)

    async def close(self) -> None:
        await self.http.aclose()


class CloudClient(CloudConnection):
    """edgeshrink's own protocol: ``POST /v1/classify`` on `serve-cloud`."""

    def __init__(self, config: CloudConfig, metrics=None, labels: list[str] | None = None):
        headers = {"X-API-Key": os.environ.get(config.api_key_env, "")} if config.api_key_env else {}
        super().__init__(config, metrics, headers)
        self.labels = labels

    async def classify(self, texts: list[str], deadline_ms: float | None = None) -> CloudResult:
        tries = 0

        async def attempt():  # one POST; parse raises ValueError, KeyError, TypeError or IndexError when malformed
            nonlocal tries
            tries += 1
            response = await self.send(texts)
            if response.status_code != 200:
                raise AttemptFailed.http(response.status_code)
            try:
                answer = self.parse(response, len(texts))
            except (ValueError, KeyError, TypeError, IndexError):
                raise AttemptFailed("bad_response", retry=False) from None
            yield answer

        try:
            (labels, probabilities), = [answer async for answer in self.exchange(len(texts), attempt, deadline_ms)]
        except CloudFailed as failed:
            return CloudResult(None, None, failed.reason, failed.attempts)
        return CloudResult(labels, probabilities, None, tries)

    def send(self, texts: list[str]):
        return self.http.post("/v1/classify", json={"texts": texts})

    def parse(self, response, n: int) -> tuple[list[str], list[dict | None]]:
        results = response.json()["results"]
        labels = [r["label"] for r in results]
        probs = [r.get("probabilities") for r in results]
        if len(labels) != n or not all(isinstance(y, str) for y in labels):
            raise ValueError("wrong number or type of answers")
        if self.labels is not None and set(labels) - set(self.labels):
            raise ValueError("labels the device does not know")
        if not all(p is None or (isinstance(p, dict) and all(
                isinstance(k, str) and isinstance(v, (int, float)) for k, v in p.items())) for p in probs):
            raise ValueError("malformed probabilities")
        return labels, probs


class OIPCloudClient(CloudClient):
    """The Open Inference Protocol (KServe v2): ``POST /v2/models/MODEL/infer`` on Triton, KServe, Seldon or
    `serve-cloud`. The texts go as the BYTES input ``text``; the answer is read from the ``logits`` output
    through the classification extension (``score:index:label``, every label), so the cloud's label names come
    back with its scores, whatever order its outputs have; probabilities are their softmax."""

    def send(self, texts: list[str]):  # device_app refuses v2 without the model's name (--cloud-model)
        k = len(self.labels) if self.labels else 1
        return self.http.post(f"/v2/models/{self.config.model}/infer", json={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
            "outputs": [{"name": "logits", "parameters": {"classification": k}}]})

    def parse(self, response, n: int) -> tuple[list[str], list[dict | None]]:
        output = next(o for o in response.json()["outputs"] if o["name"] == "logits")
        if output["datatype"] != "BYTES" or len(output["shape"]) != 2 or output["shape"][0] != n:
            raise ValueError("not a classification output of one row per text")
        k, data = output["shape"][1], output["data"]
        if len(data) != n * k:
            raise ValueError("wrong number of classification entries")
        labels, probs = [], []
        for row in range(n):
            scores = {}
            for entry in data[row * k:(row + 1) * k]:
                score, _, label = entry.split(":", 2)
                scores[label] = float(score)
            if not scores or (self.labels is not None and set(scores) - set(self.labels)):
                raise ValueError("labels the device does not know")
            top = max(scores.values())
            weights = {label: math.exp(s - top) for label, s in scores.items()}
            total = sum(weights.values())
            labels.append(max(scores, key=scores.get))
            probs.append({label: round(w / total, 6) for label, w in weights.items()})
        return labels, probs


# How the device service talks to its cloud: CloudConfig.protocol -> the client class.
CLOUD_PROTOCOLS: dict[str, type[CloudClient]] = {"edgeshrink": CloudClient, "v2": OIPCloudClient}
