"""The Open Inference Protocol (KServe v2) on serve-cloud, checked with a real client (tritonclient's HTTP client)
against a real server: health, metadata, inference in JSON and binary, the classification extension, the same
answers as /v1/classify, one-line errors; and the device service escalating over v2."""

import json

import httpx
import numpy as np
import pytest

from edgeshrink.runtime.predictor import softmax
from edgeshrink.serve.oip import ProtocolError, bytes_elements, classification, serialize_bytes
from tests.conftest import make_texts

http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

TEXTS = [t for t, _ in make_texts(12, seed=9)] + ["très bien, ça 🎬"]


@pytest.fixture(scope="module")
def cloud(serve_models):
    from edgeshrink.serve.process import ServerProcess

    with ServerProcess(["serve-cloud", serve_models["cloud"], "--port", 0, "--max-texts", 20]) as server:
        yield server, serve_models["cloud"].name


def _client(server):
    return http.InferenceServerClient(server.url.split("//", 1)[1])


def _text_input(texts, binary=True, shape=None):
    tensor = http.InferInput("text", shape or [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object).reshape(shape or [len(texts)]),
                               binary_data=binary)
    return tensor


def test_health_and_metadata_with_tritonclient(cloud):
    server, name = cloud
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert not client.is_model_ready("another")
    assert set(client.get_server_metadata()["extensions"]) == {"binary_tensor_data", "classification"}
    meta = client.get_model_metadata(name)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [("logits", "FP32", [-1, 2]),
                                                                                ("label", "BYTES", [-1])]
    assert client.get_model_metadata(name, "1") == meta


@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_infer_gives_the_answers_of_v1_classify(cloud, binary_in, binary_out):
    server, name = cloud
    v1 = httpx.post(server.url + "/v1/classify", json={"texts": TEXTS}).json()["results"]
    result = _client(server).infer(name, [_text_input(TEXTS, binary_in)],
                                   outputs=[http.InferRequestedOutput("logits", binary_data=binary_out),
                                            http.InferRequestedOutput("label", binary_data=binary_out)])
    logits, labels = result.as_numpy("logits"), result.as_numpy("label")
    assert logits.dtype == np.float32 and logits.shape == (len(TEXTS), 2)
    assert [y.decode() if isinstance(y, bytes) else y for y in labels] == [r["label"] for r in v1]
    expected = np.array([[r["probabilities"]["negative"], r["probabilities"]["positive"]] for r in v1])
    assert np.abs(softmax(logits) - expected).max() < 2e-6


def test_no_outputs_named_gives_both_in_binary_and_an_n_by_1_input_works(cloud):
    server, name = cloud
    result = _client(server).infer(name, [_text_input(TEXTS[:3], shape=[3, 1])], request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    assert result.as_numpy("logits").shape == (3, 2) and result.as_numpy("label").shape == (3,)
    assert all(o["parameters"]["binary_data_size"] > 0 for o in result.get_response()["outputs"])


def test_classification_extension_is_tritons_score_index_label(cloud):
    server, name = cloud
    client = _client(server)
    plain = client.infer(name, [_text_input(TEXTS[:4])], outputs=[http.InferRequestedOutput("logits")])
    ranked = client.infer(name, [_text_input(TEXTS[:4])],
                          outputs=[http.InferRequestedOutput("logits", class_count=2)]).as_numpy("logits")
    assert ranked.shape == (4, 2)
    for row, logits in zip(ranked, plain.as_numpy("logits")):
        entries = [x.decode().split(":") for x in row]
        assert [int(i) for _, i, _ in entries] == list(np.argsort(-logits, kind="stable"))
        assert [float(s) for s, _, _ in entries] == pytest.approx(sorted(logits, reverse=True), abs=1e-6)
        assert {label for *_, label in entries} == {"negative", "positive"}


@pytest.mark.parametrize("body, status, message", [
    ({"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, 400, "unknown input 'txt'"),
    ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, 400, "is BYTES, got 'FP32'"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["x"]}]}, 400, "shape [2] but 1 elements"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["x", "y"]}]}, 400, "shape [n] or [n, 1]"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [3]}]}, 400, "data must be strings"),
    ({"inputs": []}, 400, "exactly one input"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}], "outputs": [{"name": "probs"}]},
     400, "unknown output 'probs'"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["  "]}]}, 422, "empty text"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [21], "data": ["x"] * 21}]}, 413, "at most 20"),
])
def test_bad_requests_get_one_line_errors(cloud, body, status, message):
    server, name = cloud
    response = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body)
    assert response.status_code == status and message in response.json()["error"]
    assert "\n" not in response.json()["error"]


def test_unknown_model_version_and_broken_binary_bodies(cloud):
    server, name = cloud
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    assert httpx.post(f"{server.url}/v2/models/other/infer", json=body).status_code == 404
    assert httpx.post(f"{server.url}/v2/models/{name}/versions/2/infer", json=body).status_code == 404
    assert httpx.post(f"{server.url}/v2/models/{name}/versions/1/infer", json=body).status_code == 200
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": 9}}]}).encode()
    for binary, message in ((serialize_bytes([b"\xff\xfe"]), "does not fit"),
                            (b"\x05\x00\x00\x00\xff\xfe\xfd\xfc\xfb", "not UTF-8"),
                            (b"\x09\x00\x00\x00abc\x00\x00", "inside an element")):
        response = httpx.post(f"{server.url}/v2/models/{name}/infer", content=head + binary,
                              headers={"Inference-Header-Content-Length": str(len(head))})
        assert response.status_code == 400 and message in response.json()["error"], response.text
    response = httpx.post(f"{server.url}/v2/models/{name}/infer", content=b"{}",
                          headers={"Inference-Header-Content-Length": "99"})
    assert response.status_code == 400 and "does not fit a body of 2 bytes" in response.json()["error"]
    with pytest.raises(InferenceServerException, match="unknown model"):
        _client(server).infer("other", [_text_input(["x"])])


def test_v2_needs_the_api_key_like_v1(serve_models, start):
    server = start("serve-cloud", serve_models["cloud"], "--port", 0, "--api-key-env", "CLOUD_KEY",
                   env={"CLOUD_KEY": "s3cret"})
    name = serve_models["cloud"].name
    with pytest.raises(InferenceServerException, match="API key"):
        _client(server).infer(name, [_text_input(["x"])])
    result = _client(server).infer(name, [_text_input(["x"])], headers={"X-API-Key": "s3cret"})
    assert result.as_numpy("label").shape == (1,)


def test_the_device_escalates_over_v2_with_the_answers_of_v1(serve_models, start):
    from edgeshrink.client import Client

    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0)
    answers = []
    for over in ([], ["--cloud-protocol", "v2", "--cloud-model", serve_models["cloud"].name]):
        device = start("serve", serve_models["device"], "--cloud", cloud.url, "--port", 0, *over)
        with Client(device.url) as client:
            answers.append(client.classify(TEXTS))
    v1, v2 = answers
    assert any(r["source"] == "cloud" for r in v1)
    assert [(r["label"], r["source"]) for r in v1] == [(r["label"], r["source"]) for r in v2]
    for a, b in zip(v1, v2):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=2e-6)


def test_device_refuses_v2_without_a_model_name(serve_models, start):
    from edgeshrink.errors import EdgeshrinkError

    with pytest.raises(EdgeshrinkError, match="--cloud-protocol v2 needs --cloud-model"):
        start("serve", serve_models["device"], "--cloud", "http://127.0.0.1:9", "--port", 0, "--cloud-protocol", "v2")


def test_bytes_serialisation_round_trips_and_rejects_truncation():
    values = [b"", b"a", "é🎬".encode(), b"x" * 300]
    assert bytes_elements(serialize_bytes(values)) == values
    with pytest.raises(ProtocolError, match="inside an element"):
        bytes_elements(serialize_bytes([b"abc"])[:-1])
    with pytest.raises(ProtocolError, match="element's length"):
        bytes_elements(b"\x01\x00")
    rows = classification(np.array([[0.5, 2.0, -1.0]], dtype=np.float32), ["a", "b", "c"], 2)
    assert rows == [["2.000000:1:b", "0.500000:0:a"]]
