"""The device service's way to an OpenAI-compatible cloud (edgeshrink `serve-cloud`, llama.cpp's server, vLLM,
Ollama, a hosted LLM), and the HTTP target for speculative decoding.

``OpenAICloud.stream(path, payload)`` yields the cloud's text pieces as they arrive (server-sent events).
It raises ``CloudFailed(reason, sent)`` when there is no complete answer: before the first piece it
retries within the deadline (5xx, 429, timeouts, refused connections), with the circuit breaker and the
spend budget of ``CloudConnection``; after the first piece nothing is retried (the caller already streamed
it) and a broken stream ends with ``stream_broken``. ``sent`` is the text received so far, so the
device can finish the answer from there.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import numpy as np

from edgeshrink.serve.cloud_client import CloudConnection
from edgeshrink.serve.config import CloudConfig


class CloudFailed(Exception):
    def __init__(self, reason: str, sent: str = "", attempts: int = 0):
        super().__init__(reason)
        self.reason, self.sent, self.attempts = reason, sent, attempts


class OpenAICloud(CloudConnection):
    def __init__(self, config: CloudConfig, metrics=None):
        headers = {"Authorization": f"Bearer {os.environ.get(config.api_key_env, '')}"} if config.api_key_env else {}
        super().__init__(config, metrics, headers)

    async def stream(self, path: str, payload: dict):
        """Yield (text piece, finish_reason or None) from the cloud's stream; see the module doc."""
        import httpx

        refused = self.admit(1)
        if refused:
            raise CloudFailed(refused)
        payload = {**payload, "stream": True, **({"model": self.config.model} if self.config.model else {})}
        deadline = time.monotonic() + self.config.deadline_ms / 1000
        attempts, reason, sent = 0, "unreachable", []
        while attempts <= self.config.retries:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "deadline"
                break
            attempts += 1
            try:
                # The deadline covers everything up to the first piece (connect, headers, first event); after
                # it, only the read timeout between pieces applies.
                async with asyncio.timeout(remaining) as scope:
                    async with self.http.stream("POST", path, json=payload) as response:
                        if response.status_code != 200:
                            reason = f"http_{response.status_code // 100}xx"
                            self._count(reason)
                            if response.status_code < 500 and response.status_code != 429:
                                break  # the cloud refused this request: retrying will not help
                        else:
                            async for line in response.aiter_lines():
                                if not line.startswith("data:"):
                                    continue
                                data = line[5:].strip()
                                if data == "[DONE]":
                                    self._count("ok")
                                    self.breaker.record(True)
                                    return
                                piece, finish = _piece(data)
                                if piece is None:
                                    reason = "bad_response"
                                    self._count(reason)
                                    break
                                if piece or finish:
                                    scope.reschedule(None)
                                    sent.append(piece)
                                    yield piece, finish
                            else:
                                reason = "stream_broken"  # ended without [DONE]
                                self._count(reason)
                            if sent or reason == "bad_response":
                                break
            except TimeoutError:
                reason = "deadline"
                self._count(reason)
                break
            except httpx.TimeoutException:
                reason = "timeout" if not sent else "stream_broken"
                self._count(reason)
            except httpx.HTTPError:
                reason = "unreachable" if not sent else "stream_broken"
                self._count(reason)
            if sent:
                break  # what was streamed cannot be taken back: the device finishes it
            if not await self.backoff(attempts, deadline):
                break
        self.breaker.record(False)
        raise CloudFailed(reason, "".join(sent), attempts)


def _piece(data: str) -> tuple[str | None, str | None]:
    """The text and finish reason of one OpenAI stream chunk (chat or completion); (None, None) if malformed."""
    try:
        choice = json.loads(data)["choices"][0]
        text = choice["delta"].get("content") if "delta" in choice else choice.get("text")
        if text is not None and not isinstance(text, str):
            return None, None
        return text or "", choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None


class HTTPTarget:
    """Speculative decoding's target over HTTP: one POST /v1/speculate per round to a `serve-cloud` of the
    same tokenizer, which keeps a KV cache of the accepted prefix per ``session``."""

    def __init__(self, url: str, session: str | None = None, timeout_s: float = 30.0, api_key: str | None = None):
        import uuid

        import httpx

        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                                 headers={"X-API-Key": api_key} if api_key else {})
        self.session = session or uuid.uuid4().hex
        self.passes = 0  # = round trips

    def verify(self, tokens: list[int], draft: list[int], sampling) -> list[tuple[np.ndarray, np.ndarray]]:
        from edgeshrink.errors import EdgeshrinkError

        response = self.http.post("/v1/speculate", json={
            "tokens": tokens, "draft": draft, "temperature": sampling.temperature, "top_k": sampling.top_k,
            "top_p": sampling.top_p, "session": self.session})
        self.passes += 1
        if response.status_code != 200:
            raise EdgeshrinkError(f"the cloud refused a speculation round: HTTP {response.status_code} "
                                  f"{response.text[:200]}")
        return [(np.array(d["ids"]), np.array(d["probs"])) for d in response.json()["distributions"]]

    def close(self) -> None:
        self.http.close()
