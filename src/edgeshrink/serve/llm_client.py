"""The device service's way to an OpenAI-compatible cloud (edgeshrink `serve-cloud`, llama.cpp's server, vLLM,
Ollama, a hosted LLM), and the HTTP target for speculative decoding.

``OpenAICloud.stream(path, payload)`` yields the cloud's text pieces as they arrive (server-sent events), on
``CloudConnection.exchange``'s retries, deadline, breaker and budget: a stream broken after its first piece ends
with ``CloudFailed("stream_broken")``, and the device finishes the answer from the text relayed so far.
"""

from __future__ import annotations

import json
import os
import uuid

import httpx
import numpy as np

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.serve.cloud_client import AttemptFailed, CloudConnection
from edgeshrink.serve.config import CloudConfig


class OpenAICloud(CloudConnection):
    def __init__(self, config: CloudConfig, metrics=None):
        headers = {"Authorization": f"Bearer {os.environ.get(config.api_key_env, '')}"} if config.api_key_env else {}
        super().__init__(config, metrics, headers)
        self.name = config.model or "cloud"  # the model asked for, until the cloud's chunks name theirs

    def stream(self, path: str, payload: dict):
        """(text piece, finish_reason or None, the model the chunk names) from the cloud's stream, as an async
        iterator; see the module doc."""
        payload = {**payload, "stream": True, **({"model": self.config.model} if self.config.model else {})}

        async def attempt():
            async with self.http.stream("POST", path, json=payload) as response:
                if response.status_code != 200:
                    raise AttemptFailed.http(response.status_code)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    piece, finish, model = _piece(data)
                    if piece is None:
                        raise AttemptFailed("bad_response", retry=False)
                    if piece or finish:
                        yield piece, finish, model or self.name
            raise AttemptFailed("stream_broken")  # ended without [DONE]

        return self.exchange(1, attempt)


    async def verify(self, tokens: list[int], draft: list[int]) -> list[bool]:
        """Whether the cloud, greedy, would have chosen each token of ``draft`` after ``tokens`` and the draft
        before it: one teacher-forced pass on a `serve-cloud` (POST /v1/speculate, up to 32 draft tokens), within
        the deadline, breaker and budget of every cloud call (raises CloudFailed)."""
        body = {"tokens": tokens, "draft": draft[:32], "temperature": 0.0, "prompt_tokens": len(tokens)}

        async def attempt():
            response = await self.http.post("/v1/speculate", json=body)
            if response.status_code != 200:
                raise AttemptFailed.http(response.status_code)
            try:
                dists = response.json()["distributions"]
                picks = [int(d["ids"][int(np.argmax(d["probs"]))]) for d in dists]
            except (ValueError, KeyError, IndexError, TypeError):
                raise AttemptFailed("bad_response", retry=False) from None
            if len(picks) != len(body["draft"]) + 1:
                raise AttemptFailed("bad_response", retry=False)
            yield [pick == token for pick, token in zip(picks, body["draft"])]

        agree = []
        async for agree in self.exchange(1, attempt):  # one item; read to the end, so the call is counted
            pass
        return agree


def _piece(data: str) -> tuple[str | None, str | None, str | None]:
    """The text, finish reason and model name of one OpenAI stream chunk (chat or completion); (None, None, None)
    if malformed."""
    try:
        chunk = json.loads(data)
        choice = chunk["choices"][0]
        text = choice["delta"].get("content") if "delta" in choice else choice.get("text")
        if text is not None and not isinstance(text, str):
            return None, None, None
        model = chunk.get("model")
        return text or "", choice.get("finish_reason"), model if isinstance(model, str) and model else None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None, None


class HTTPTarget:
    """Speculative decoding's target over HTTP: one POST /v1/speculate per round to a `serve-cloud` of the
    same tokenizer, which keeps a KV cache of the accepted prefix per ``session``."""

    def __init__(self, url: str, session: str | None = None, timeout_s: float = 30.0, api_key: str | None = None):
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                                 headers={"X-API-Key": api_key} if api_key else {})
        self.session = session or uuid.uuid4().hex
        self.passes = 0  # = round trips

    def verify(self, tokens: list[int], draft: list[int], sampling,
               prompt_tokens: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        response = self.http.post("/v1/speculate", json={
            "tokens": tokens, "draft": draft, "temperature": sampling.temperature, "top_k": sampling.top_k,
            "top_p": sampling.top_p, "repetition_penalty": sampling.repetition_penalty,
            "frequency_penalty": sampling.frequency_penalty, "presence_penalty": sampling.presence_penalty,
            "prompt_tokens": prompt_tokens, "session": self.session})
        self.passes += 1
        if response.status_code != 200:
            raise EdgeshrinkError(f"the cloud refused a speculation round: HTTP {response.status_code} "
                                  f"{response.text[:200]}")
        return [(np.array(d["ids"]), np.array(d["probs"])) for d in response.json()["distributions"]]

    def close(self) -> None:
        self.http.close()
