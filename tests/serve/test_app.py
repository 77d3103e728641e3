"""The services over real HTTP: the API, limits and bad input (4xx, never 5xx), auth, metrics, batching."""

import concurrent.futures as cf
import json
import random
import re
import string
import subprocess
import sys

import httpx
import pytest

from edgeshrink.client import Client, ServiceError
from edgeshrink.serve.metrics import parse
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


def test_cloud_on_request_sends_only_the_texts_that_ask(start, serve_models):
    """No router.json, --route cloud-on-request: the device answers, the cloud only cloud_only texts (issue 27)."""
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0)
    device = start("serve", serve_models["plain"], "--cloud", cloud.url, "--route", "cloud-on-request", "--port", 0)
    with Client(device.url) as client:
        results = client.classify(TEXTS[:3], cloud_only=[False, True, False])
        assert [r["source"] for r in results] == ["device", "cloud", "device"]
        assert [r["reason"] for r in results] == ["cloud on request", "cloud only", "cloud on request"]
        assert client.classify(TEXTS[:1], private=[True])[0]["reason"] == "private"
        assert client.metrics()["edgeshrink_escalations_total"] == 1
    ready = httpx.get(f"{device.url}/readyz").json()
    assert ready["route"] == "cloud-on-request" and ready["router"] is False and ready["cloud"] == cloud.url


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


def test_metrics_label_route_templates_not_raw_paths(start, serve_models):
    """Made-up paths, with or without the key, add a bounded number of series to /metrics (issue 25, item 7)."""
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0, "--rate", 0, "--max-body-bytes", 1000,
                  "--api-key-env", "MY_KEY", env={"MY_KEY": "k"})
    rng = random.Random(0)
    before = set(parse(httpx.get(f"{cloud.url}/metrics").text))
    with httpx.Client(base_url=cloud.url) as http:
        for i in range(200):
            junk = "".join(rng.choices(string.ascii_letters + string.digits, k=12))
            path = rng.choice([f"/{junk}", f"/v1/{junk}", f"/v2/models/{junk}/infer", f"/v2/models/{junk}/ready",
                               f"/docs-assets/{junk}"])
            response = http.get(path, headers={"X-API-Key": "k"} if i % 2 else {})
            assert response.status_code in (401, 404, 405), (path, response.text)
            if i % 20 == 0:  # refused by the body limit before any endpoint runs
                assert http.post(f"/{junk}", content=b"x" * 2000).status_code == 413
        added = set(parse(http.get("/metrics").text)) - before
    labels = {re.search(r'path="([^"]*)"', name).group(1) for name in added if 'path="' in name}
    templates = {"other", "/v2/models/{name}/infer", "/v2/models/{name}/ready"}
    assert templates <= labels <= templates | {"/docs-assets"}
    assert len(added) <= 20  # a counter and its _created per (route, status), the rejection reasons


def test_rate_limit_keys_on_the_proven_identity_not_a_sent_key(start, serve_models, tmp_path):
    """A made-up X-API-Key is no identity, and wrong-key guesses are limited per address (issue 25, item 8)."""
    config = tmp_path / "serve.yaml"
    config.write_text("limits: {requests_per_second: 0.01, burst: 5}\n")  # no refill within the test
    open_service = start("serve", serve_models["plain"], "--port", 0, "--config", config)
    url = f"{open_service.url}/v1/classify"
    statuses = [httpx.post(url, json={"texts": ["a"]}, headers={"X-API-Key": f"made-up-{i}"}).status_code
                for i in range(20)]
    assert statuses == [200] * 5 + [429] * 15
    keyed = start("serve", serve_models["plain"], "--port", 0, "--config", config, "--api-key-env", "MY_KEY",
                  env={"MY_KEY": "right"})
    url = f"{keyed.url}/v1/classify"
    with httpx.Client() as http:
        guesses = [http.post(url, json={"texts": ["a"]}, headers={"X-API-Key": f"guess-{i}"}).status_code
                   for i in range(300)]
        assert guesses == [401] * 5 + [429] * 295
        # the key's own bucket: the guesses from this address did not spend it
        right = [http.post(url, json={"texts": ["a"]}, headers={"X-API-Key": "right"}).status_code for _ in range(6)]
    assert right == [200] * 5 + [429]
    m = Client(keyed.url, api_key="right").metrics()
    assert m['edgeshrink_rejected_requests_total{reason="auth"}'] == 5
    assert m['edgeshrink_rejected_requests_total{reason="rate_limited"}'] == 296


def test_the_key_is_checked_before_the_body_and_bodies_get_clear_refusals(start, serve_models):
    """No key: 401 whatever the body (issue 25, item 9). With it: what is wrong with the body, in one line
    (item 19: a wrong content type, JSON nested 100,000 deep)."""
    secret = "s3cret"
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0, "--rate", 0, "--api-key-env", "MY_KEY",
                  env={"MY_KEY": secret})
    v2 = f"/v2/models/{serve_models['cloud'].name}/infer"
    deep = b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = [("/v1/classify", b"{not json", "application/json", 422, "the body is not valid JSON"),
             ("/v1/classify", b'{"texts": "a"}', "application/json", 422, "texts: Input should be a valid list"),
             ("/v1/classify", b'{"texts": ["a"]}', "text/plain", 415,
              "Content-Type must be application/json, got 'text/plain'"),
             ("/v1/classify", b'{"texts": ["a"]}', None, 415, "Content-Type must be application/json, got none"),
             ("/v1/classify", deep, "application/json", 422, "JSON nested deeper than 64 levels"),
             ("/v1/classify", b'{"texts": ["\xff"]}', "application/json", 400, "not UTF-8"),
             ("/v1/classify", b"x" * 1_100_000, "application/json", 413, "over 1000000 bytes"),
             (v2, b"{not json", "application/json", 400, "the body is not valid JSON"),
             (v2, deep, "application/json", 422, "JSON nested deeper than 64 levels")]
    for path, body, content_type, status, words in cases:
        headers = {"content-type": content_type} if content_type else {}
        refused = httpx.post(cloud.url + path, content=body, headers=headers)
        assert refused.status_code == 401 and "API key" in refused.json()["error"], (path, body[:20], refused.text)
        answered = httpx.post(cloud.url + path, content=body, headers=headers | {"X-API-Key": secret})
        assert answered.status_code == status and words in answered.json()["error"], (path, body[:20], answered.text)
        assert "\n" not in answered.json()["error"]
    # the binary protocol's JSON header is checked where it is parsed
    head = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answered = httpx.post(cloud.url + v2, content=head + b"\x00",
                          headers={"Inference-Header-Content-Length": str(len(head)), "X-API-Key": secret})
    assert answered.status_code == 400 and answered.json()["error"] == "JSON nested deeper than 64 levels"
    assert "Traceback" not in cloud.stderr()


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


def test_json_nesting_is_measured_outside_strings_in_linear_time():
    import time

    from edgeshrink.serve.gate import MAX_JSON_DEPTH, json_too_deep

    assert not json_too_deep(json.dumps({"texts": ["[" * 1000, '{"[' * 1000, "\\" * 99]}).encode())
    assert not json_too_deep(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert json_too_deep(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert json_too_deep(b'{"a": "[", "b": ' + b"[" * 100 + b"]" * 100 + b"}")
    started = time.perf_counter()  # unterminated strings full of escapes: no backtracking
    for body in (b"[" * 100 + b'"\\"' * 300_000, b'"' + b"[\\" * 500_000, b'["' * 500_000, b"[" * 1_000_000):
        json_too_deep(body)
    assert time.perf_counter() - started < 2.0


def test_a_bundle_that_fails_on_a_request_is_a_one_line_500_and_bad_bundles_do_not_start(start, serve_models,
                                                                                          tmp_path):
    """Issue 25, item 12: malformed manifests gave tracebacks and 500s. Now the gate refuses them at start in
    one line, and a bundle that loads but fails on an input answers that request with a 500 that names no
    local path, and keeps serving."""
    from tests import bundle_edit as be

    bad = be.copy_bundle(serve_models["plain"], tmp_path / "bad")
    be.edit(bad, lambda m: m["tokenizer"].__setitem__("pad_id", 10**12))
    refused = subprocess.run([sys.executable, "-m", "edgeshrink", "serve", str(bad), "--port", "0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "tokenizer.pad_id" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    long = be.copy_bundle(serve_models["plain"], tmp_path / "long")
    be.edit(long, lambda m: m.__setitem__("max_length", 4096))  # past the model's 128 positions
    device = start("serve", long, "--port", 0, "--rate", 0)
    url = f"{device.url}/v1/classify"
    failed = httpx.post(url, json={"texts": ["good " * 1000]})
    assert failed.status_code == 500 and "could not answer" in failed.json()["error"]
    assert str(tmp_path) not in failed.text
    assert httpx.post(url, json={"texts": ["a good film"]}).status_code == 200
    assert "model.onnx failed to run" in device.stderr() and "Traceback" not in device.stderr()
