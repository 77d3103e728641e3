"""A small client for edgeshrink's services (the device service and the cloud model service).

    from edgeshrink.client import Client
    with Client("http://127.0.0.1:8000") as client:
        for r in client.classify(["a gorgeous, witty film", "a dull mess"]):
            print(r["label"], r["source"], r["confidence"])

Errors from the service (4xx/5xx) raise ``ServiceError`` with the status and the service's one-line message.
"""

from __future__ import annotations

import os


class ServiceError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 10.0):
        import httpx

        key = api_key if api_key is not None else os.environ.get("EDGESHRINK_API_KEY")
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                                 headers={"X-API-Key": key} if key else {})

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _check(self, response):
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ServiceError(response.status_code, message)
        return response

    def classify(self, texts: list[str], private: list[bool] | None = None,
                 cloud_only: list[bool] | None = None) -> list[dict]:
        """One result per text: label, probabilities, source (device | cloud | device-fallback), confidence,
        latency_ms, reason, fallback_reason, truncated_chars, truncated_tokens."""
        flags = {"private": private, "cloud_only": cloud_only}  # per text; sent only when given
        body = {"texts": list(texts), **{name: list(v) for name, v in flags.items() if v is not None}}
        return self._check(self.http.post("/v1/classify", json=body)).json()["results"]

    def ready(self) -> bool:
        return self.http.get("/readyz").status_code == 200

    def metrics(self) -> dict[str, float]:
        from edgeshrink.serve.metrics import parse

        return parse(self._check(self.http.get("/metrics")).text)
