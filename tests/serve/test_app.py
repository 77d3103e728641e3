"""The services over real HTTP: the API, limits and bad input (4xx, never 5xx), auth, metrics, batching."""

import concurrent.futures as cf
import json

import httpx
import pytest

from edgeshrink.client import Client, ServiceError
from tests.conftest import make_texts

TEXTS = [t for t, _ in make_texts(40, seed=5)]


def test_cloud_service_answers_and_describes_itself(start, serve_models):
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0)
    with Client(cloud.url) as client:
        results = client.classify(TEXTS[:3])
        assert [r["source"] for r in results] == ["cloud"] * 3
        assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in results)
        assert client.ready()
        assert client.metrics()['edgeshrink_texts_total{source="cloud"}'] == 3
    assert httpx.get(f"{cloud.url}/healthz").json() == {"status": "ok"}
    schema = httpx.get(f"{cloud.url}/openapi.json").json()
    assert "/v1/classify" in schema["paths"] and "ClassifyRequest" in schema["components"]["schemas"]


def test_device_service_routes_with_rules(start, serve_models):
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0)
    device = start("serve", serve_models["device"], "--cloud", cloud.url, "--port", 0)
    with Client(device.url) as client:
        results = client.classify(TEXTS)
        sources = {r["source"] for r in results}
        assert sources == {"device", "cloud"}  # budget 0.5: some of each
        assert all(r["reason"] == "not confident" for r in results if r["source"] == "cloud")
        private = client.classify(TEXTS[:4], private=[True] * 4)
        assert {r["source"] for r in private} == {"device"} and {r["reason"] for r in private} == {"private"}
        forced = client.classify(TEXTS[:2], cloud_only=[True, True])
        assert [r["source"] for r in forced] == ["cloud", "cloud"]
        m = client.metrics()
    escalated = sum(r["source"] == "cloud" for r in results) + 2
    assert m["edgeshrink_escalations_total"] == escalated
    assert m['edgeshrink_cloud_calls_total{outcome="ok"}'] == 2


def test_bad_requests_get_4xx_with_one_line(start, serve_models):
    device = start("serve", serve_models["plain"], "--port", 0, "--max-texts", 4, "--max-body-bytes", 5000,
                   "--max-text-chars", 50, "--rate", 0)
    url = f"{device.url}/v1/classify"
    json_header = {"content-type": "application/json"}
    cases = [
        (b"not json", 422, "not valid JSON"),
        (b'{"texts": [1, 2]}', 422, "texts.0"),
        (b'{"texts": "abc"}', 422, "valid list"),
        (b'{"texts": []}', 422, "at least 1"),
        (b'{"texts": ["ok", "  "]}', 422, "texts.1: empty text"),
        (b'{"texts": ["a"], "extra": 1}', 422, "extra"),
        (b'{"texts": ["a"], "private": [true, false]}', 422, "one flag per text"),
        (b'\xff\xfe{"texts": ["a"]}', 400, "not UTF-8"),
        (b'{"texts": ["\xff"]}', 400, "not UTF-8 (byte 12)"),
        (b'{"texts": ["ok", "\\ud800"]}', 422, "texts.1: not valid Unicode"),
        (json.dumps({"texts": ["a"] * 5}).encode(), 413, "at most 4"),
        (json.dumps({"texts": ["a" * 6000]}).encode(), 413, "over 5000 bytes"),
    ]
    for body, status, words in cases:
        response = httpx.post(url, content=body, headers=json_header)
        assert response.status_code == status, (body[:40], response.text)
        assert words in response.json()["error"] and "\n" not in response.json()["error"]
    long = httpx.post(url, json={"texts": ["word " * 30]}).json()["results"][0]
    assert long["truncated_chars"] == 100 and long["source"] == "device"
    assert "Traceback" not in device.stderr()


def test_long_text_reject_policy_and_rate_limit(start, serve_models):
    device = start("serve", serve_models["plain"], "--port", 0, "--max-text-chars", 20, "--long-text", "reject",
                   "--rate", 1)
    url = f"{device.url}/v1/classify"
    assert httpx.post(url, json={"texts": ["x" * 21]}).status_code == 413
    statuses = [httpx.post(url, json={"texts": ["short"]}).status_code for _ in range(250)]
    assert 429 in statuses and set(statuses) <= {200, 429}  # burst 200, then 1 per second
    metrics = Client(device.url).metrics()
    assert metrics['edgeshrink_rejected_requests_total{reason="rate_limited"}'] == statuses.count(429)


def test_api_key_required_and_never_logged(start, serve_models):
    secret = "s3cret-key-value"
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0, "--api-key-env", "MY_KEY",
                  env={"MY_KEY": secret})
    url = f"{cloud.url}/v1/classify"
    assert httpx.post(url, json={"texts": ["a"]}).status_code == 401
    assert httpx.post(url, json={"texts": ["a"]}, headers={"X-API-Key": "wrong"}).status_code == 401
    with Client(cloud.url, api_key=secret) as client:
        assert client.classify(["a"])[0]["source"] == "cloud"
        assert client.metrics()['edgeshrink_rejected_requests_total{reason="auth"}'] == 2
    with pytest.raises(ServiceError) as err, Client(cloud.url, api_key="nope") as client:
        client.classify(["a"])
    assert err.value.status == 401
    # the device service passes the key on to the cloud, read from its own environment variable
    device = start("serve", serve_models["device"], "--cloud", cloud.url, "--port", 0,
                   "--cloud-api-key-env", "CLOUD_KEY", env={"CLOUD_KEY": secret})
    with Client(device.url) as client:
        assert "cloud" in {r["source"] for r in client.classify(TEXTS)}
    assert secret not in cloud.stderr() and secret not in device.stderr()


def test_concurrent_requests_are_micro_batched(start, serve_models):
    device = start("serve", serve_models["plain"], "--port", 0, "--max-batch-size", 8, "--max-wait-ms", 20)

    def one(text):
        with Client(device.url) as client:
            return client.classify([text])[0]["label"]

    with cf.ThreadPoolExecutor(16) as pool:
        labels = list(pool.map(one, TEXTS[:32]))
    with Client(device.url) as client:
        alone = [r["label"] for r in client.classify(TEXTS[:32])]
        m = client.metrics()
    assert labels == alone  # each request got its own rows back
    batches = m["edgeshrink_batch_size_count"] - 2  # less the warm-up call and the 32-text request
    assert 1 <= batches < 32  # fewer model calls than requests: they were batched
    assert m["edgeshrink_model_cpu_seconds_total"] > 0  # the model worker's CPU time is booked


def test_length_groups_bound_padding_and_cover_every_text():
    from edgeshrink.serve.app import length_groups

    texts = ["a" * n for n in (5, 100, 6, 7, 98, 300, 5, 101)]
    groups = length_groups(texts, max_padding=0.25)
    assert sorted(i for g in groups for i in g) == list(range(len(texts)))
    for g in groups:
        lengths = [len(texts[i]) for i in g]
        assert len(g) * max(lengths) <= 1.25 * sum(lengths)
    assert len(groups) == 3  # ~5-7, ~98-101, 300
