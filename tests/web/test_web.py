"""`edgeshrink pack --target web|mobile` and `serve-web`: the web runtime (web/assets/edgeshrink.mjs) under Node's
onnxruntime-web against the Python runtime, the demo page in headless Chromium (Debian's chromium through
playwright-core), the ORT-format model against the bundle, and the refusals (one line, exit 2, nothing written).
Every text-classification family's parity runs in tests/test_conformance.py (test_route_runtime_bench_and_serve)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.runtime import load
from tests.conftest import make_texts, make_tiny_bert, write_csv
from tests.web.node import TEXTS, assert_same_as_python, browser_run, node_run

runner = CliRunner()
CHAT = [{"role": "user", "content": "a good film"}]


@pytest.fixture(scope="module")
def routed(trained_bundle, tmp_path_factory):
    """A cloud bundle (another random model) and a fine-tuned device bundle (confidences spread out) whose
    router escalates about half the texts."""
    from edgeshrink.export import ExportConfig, export
    from edgeshrink.route.calibrate import RouteConfig, calibrate

    root = tmp_path_factory.mktemp("web-routed")
    data = write_csv(root / "d.csv", make_texts(400, seed=3))
    tiny_bundle = trained_bundle[2]
    cloud = root / "cloud"
    export(make_tiny_bert(root / "cloud-model", seed=1), cloud, ExportConfig(), force=True)
    device = root / "device"
    shutil.copytree(tiny_bundle, device)
    calibrate(device, cloud, str(data), RouteConfig(policy="budget", budget=0.5))
    return {"cloud": cloud, "device": device, "data": data, "root": root}


@pytest.fixture(scope="module")
def llm_int4(tiny_llm_bundle, tmp_path_factory):
    from edgeshrink.compress import LLMQuantConfig, quantize

    out = tmp_path_factory.mktemp("web-llm") / "int4"
    quantize(tiny_llm_bundle, out, LLMQuantConfig(method="int4-weight", evaluate=False, answer_prompts=0))
    return out


def _pack(*args) -> object:
    return runner.invoke(app, ["pack", *map(str, args)])


def _one_error(result, message: str) -> None:
    """Exit 2 with one 'error:' line holding ``message`` (progress lines may precede it), no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr, result.stderr


# -- web: Node --------------------------------------------------------------------------------------------------
def test_int8_bundle_with_router_matches_python_in_node(routed, tmp_path):
    from edgeshrink.compress import QuantConfig, quantize
    from edgeshrink.route.calibrate import RouteConfig, calibrate

    int8 = tmp_path / "int8"
    quantize(routed["device"], int8, QuantConfig(method="dynamic-int8", evaluate=False))
    assert "MatMulInteger" in (int8 / "model.onnx").read_bytes().decode("latin-1")
    calibrate(int8, routed["cloud"], str(routed["data"]), RouteConfig(policy="budget", budget=0.5))
    result = _pack(int8, "--target", "web", "--out", tmp_path / "web", "--json", tmp_path / "pack.json")
    assert result.exit_code == 0, result.output
    assert "onnxruntime-web 1.30.0" in result.stdout
    record = json.loads((tmp_path / "pack.json").read_text())
    assert record["sizes"]["runtime_wasm_bytes"] > 1e6 and record["files"]["model/model.onnx"]["sha256"] == \
        json.loads((int8 / "manifest.json").read_text())["files"]["model.onnx"]["sha256"]
    texts = TEXTS + [t for t, _ in make_texts(40, seed=11)]
    reply = assert_same_as_python(int8, tmp_path / "web", texts)
    assert set(reply["reasons"]) >= {"confident", "not confident", "truncated"}  # both sides of the threshold


def test_llm_int4_greedy_tokens_match_python_in_node(llm_int4, tmp_path):
    from edgeshrink.web.pack import pack_web

    pack_web(llm_int4, tmp_path / "web")
    python = load(llm_int4)
    assert python.manifest["quantization"]["method"] == "int4-weight"
    for prompt in ["a good film", CHAT]:
        want = python.generate(prompt, max_new_tokens=12, ignore_eos=True)
        reply = node_run(tmp_path / "web", {"generate": prompt, "options": {"maxNewTokens": 12, "ignoreEos": True},
                                            "logits_of": python.encode(prompt)})
        assert "error" not in reply, reply["error"]
        assert reply["generation"]["tokenIds"] == want.token_ids
        assert reply["generation"]["text"] == want.text
        assert reply["generation"]["promptTokens"] == len(python.encode(prompt))  # same chat template, same ids
        np.testing.assert_allclose(reply["generation"]["logprobs"], want.logprobs, atol=1e-3)
        np.testing.assert_allclose(reply["last_logits"], python.logits(python.encode(prompt))[-1], atol=1e-3)
    # sampling and penalties run (their draws are the runtime's own: seeded, repeatable)
    options = {"maxNewTokens": 8, "temperature": 0.8, "topP": 0.9, "topK": 20, "seed": 3, "repetitionPenalty": 1.1,
               "ignoreEos": True}
    first, again = (node_run(tmp_path / "web", {"generate": "a film", "options": options}) for _ in range(2))
    assert first["generation"]["tokenIds"] == again["generation"]["tokenIds"] and len(first["generation"]["tokenIds"]) == 8
    bad = node_run(tmp_path / "web", {"generate": "a film", "options": {"temperature": -1}})
    assert bad["error_name"] == "EdgeshrinkError" and "temperature" in bad["error"]


def test_tampered_or_unsafe_bundle_is_refused_by_the_web_runtime(routed, tmp_path):
    from edgeshrink.web.pack import pack_web

    pack_web(routed["device"], tmp_path / "web")
    model = tmp_path / "web" / "model" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    reply = node_run(tmp_path / "web", {"classify": ["a good film"]})
    assert reply["error"] == "bundle file model.onnx is corrupt or was modified (sha256 does not match the manifest)"

    size = (tmp_path / "web" / "model" / "tokenizer.json").stat().st_size
    pack_web(routed["device"], tmp_path / "web3")
    grown = tmp_path / "web3" / "model" / "tokenizer.json"
    grown.write_bytes(grown.read_bytes() + b" " * 1000)
    reply = node_run(tmp_path / "web3", {"classify": ["a good film"]})
    assert reply["error"] == (f"bundle file tokenizer.json is corrupt or was modified ({size + 1000} bytes, the manifest "
                              f"says at most {size})")

    pack_web(routed["device"], tmp_path / "web2")
    manifest_path = tmp_path / "web2" / "model" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../etc/passwd"] = manifest["files"].pop("tokenizer.json")
    manifest["tokenizer"]["file"] = "../../etc/passwd"
    manifest_path.write_text(json.dumps(manifest))
    reply = node_run(tmp_path / "web2", {"classify": ["a good film"]})
    assert "points outside the bundle" in reply["error"]


def test_signed_bundle_is_checked_by_the_web_runtime(routed, tmp_path):
    """`load(url, {trust})`: the signature is checked with WebCrypto before the model is used; a wrong key, a file
    changed with the manifest re-hashed to match, and an unsigned bundle are refused in one line."""
    from edgeshrink.signing import new_keys, sign_bundle
    from edgeshrink.web.pack import pack_web
    from tests.bundle_edit import edit, entry

    key, pub = new_keys(tmp_path / "keys")
    _, other_pub = new_keys(tmp_path / "keys", name="other")
    bundle = Path(shutil.copytree(routed["device"], tmp_path / "signed"))
    sign_bundle(bundle, key)
    pack_web(bundle, tmp_path / "web")
    assert (tmp_path / "web" / "model" / "signature.sigstore.json").exists()
    reply = node_run(tmp_path / "web", {"classify": ["a good film"], "trust": [pub.read_text()]})
    assert "error" not in reply, reply.get("error")
    want = node_run(tmp_path / "web", {"classify": ["a good film"]})
    assert reply["logits"] == want["logits"]
    reply = node_run(tmp_path / "web", {"classify": ["a good film"], "trust": [other_pub.read_text()]})
    assert reply["error"].endswith("is not signed by a trusted key: refused")
    reply = node_run(tmp_path / "web", {"classify": ["a good film"], "trust": [other_pub.read_text(), pub.read_text()]})
    assert "error" not in reply

    pack_web(bundle, tmp_path / "tampered")
    tokenizer = tmp_path / "tampered" / "model" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"[UNK]"', '"[UNK2]"', 1))
    edit(tmp_path / "tampered" / "model", lambda m: m["files"].__setitem__("tokenizer.json", entry(tokenizer)))
    reply = node_run(tmp_path / "tampered", {"classify": ["a good film"], "trust": [pub.read_text()]})
    assert "files differ from what was signed (manifest.json changed)" in reply["error"]

    pack_web(routed["device"], tmp_path / "unsigned")
    reply = node_run(tmp_path / "unsigned", {"classify": ["a good film"], "trust": [pub.read_text()]})
    assert "is not signed (no signature.sigstore.json) and a trust list is given" in reply["error"]


# -- web: refusals ----------------------------------------------------------------------------------------------
def test_pack_refuses_bad_input_in_one_line(routed, cnn_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(routed["device"], bad)
    (bad / "tokenizer.json").write_text((bad / "tokenizer.json").read_text().replace("[UNK]", "[UNX]", 1))
    cases = [
        ([bad, "--target", "web"], "bundle file tokenizer.json is corrupt or was modified"),
        ([bad, "--target", "mobile"], "bundle file tokenizer.json is corrupt or was modified"),
        ([cnn_bundle, "--target", "web"], "the web runtime does not run that task (it runs text-classification, "
                                          "text-generation)"),
        ([routed["device"], "--target", "phone"], "unknown target 'phone'"),
        ([routed["device"], "--target", "mobile", "--platform", "riscv"], "unknown platform 'riscv'"),
        ([routed["device"], "--target", "web", "--platform", "arm"], "--platform applies to --target mobile"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        _one_error(_pack(*args, "--out", out), message)
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_pack_without_node_modules_is_one_line(routed, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESHRINK_WEB_MODULES", str(tmp_path / "nowhere"))
    _one_error(_pack(routed["device"], "--target", "web", "--out", tmp_path / "web"), "onnxruntime-web is not installed")
    assert not (tmp_path / "web").exists()


# -- mobile -----------------------------------------------------------------------------------------------------
def _ort_outputs(path, feeds):
    from edgeshrink.runtime.bundle import open_session

    session = open_session(path, threads=1)
    return session.run(None, feeds)


def test_mobile_pack_loads_and_gives_the_bundles_outputs(routed, llm_int4, tmp_path):
    for bundle, platform in [(routed["device"], "arm"), (llm_int4, "x86")]:
        out = tmp_path / f"mobile-{bundle.name}"
        result = _pack(bundle, "--target", "mobile", "--platform", platform, "--out", out, "--json", "-")
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout[result.stdout.index("{"):])
        assert record["platform"] == platform and record["check"]["max_abs_difference"] <= 1e-3
        assert (out / "model.ort").read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier
        assert "com.microsoft" in (out / "required_operators.config").read_text() or \
            "ai.onnx" in (out / "required_operators.config").read_text()
        assert {"tokenizer.json", "manifest.json", "pack.json"} <= {p.name for p in out.iterdir()}
        feeds = load(bundle).check_feeds()
        for got, want in zip(_ort_outputs(out / "model.ort", feeds), _ort_outputs(bundle / "model.onnx", feeds)):
            np.testing.assert_allclose(got, want, atol=1e-4)


def _gbq_model(path, data_type, zero_points: bool):
    """A GatherBlockQuantized embedding table with a 4-bit initializer (and optional 4-bit zero points)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    rows, cols, block = 6, 64, 32
    low, high = (0, 16) if data_type == TensorProto.UINT4 else (-8, 8)
    q = rng.integers(low, high, size=(rows, cols))
    data = helper.make_tensor("table", data_type, [rows, cols], q.flatten().tolist())
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [rows, cols // block],
                                rng.uniform(0.01, 0.1, rows * cols // block).astype(np.float32).tolist())
    inits, inputs = [data, scales], ["table", "ids", "scales"]
    if zero_points:
        z = rng.integers(low, high, size=(rows, cols // block))
        inits.append(helper.make_tensor("zeros", data_type, [rows, cols // block], z.flatten().tolist()))
        inputs.append("zeros")
    node = helper.make_node("GatherBlockQuantized", inputs, ["out"], domain="com.microsoft", block_size=block,
                            gather_axis=0, quantize_axis=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    onnx.save(model, path)
    return model


@pytest.mark.parametrize("kind,zero_points", [("UINT4", False), ("UINT4", True), ("INT4", False), ("INT4", True)])
def test_four_bit_tables_are_rewritten_exactly(kind, zero_points, tmp_path):
    import onnx

    from edgeshrink.web.mobile import rewrite_four_bit

    model = _gbq_model(tmp_path / "m.onnx", getattr(onnx.TensorProto, kind), zero_points)
    ids = {"ids": np.array([0, 3, 5, 3], np.int64)}
    want = _ort_outputs(tmp_path / "m.onnx", ids)[0]
    assert np.abs(want).max() > 0
    rewritten = rewrite_four_bit(model)
    assert "table" in rewritten and all(t.data_type == onnx.TensorProto.UINT8 for t in model.graph.initializer
                                        if t.name in ("table", "zeros"))
    onnx.save(model, tmp_path / "r.onnx")
    np.testing.assert_array_equal(_ort_outputs(tmp_path / "r.onnx", ids)[0], want)


def test_four_bit_weights_without_a_packed_form_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.INT4, [4, 4], [1, -2, 3, -4] * 4)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]), helper.make_node("MatMul", ["x", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [w, helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    onnx.save(model, bundle / "model.onnx")
    from edgeshrink.export.bundle import write_manifest

    write_manifest(bundle, {"task": "tensor-classification", "labels": ["a", "b", "c", "d"],
                            "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}]})
    _one_error(_pack(bundle, "--target", "mobile", "--out", tmp_path / "out"),
               "4-bit initializer 'w' (used by DequantizeLinear) has no uint8-packed form")
    assert not (tmp_path / "out").exists()


# -- the demo page in Chromium ----------------------------------------------------------------------------------
def test_demo_page_in_chromium_classifies_escalates_falls_back_and_streams(routed, llm_int4, tmp_path, start):
    from edgeshrink.web.pack import pack_web

    pack_web(routed["device"], tmp_path / "web", demo=True)
    pack_web(llm_int4, tmp_path / "llm-web", demo=True)
    page = start("serve-web", tmp_path / "web", "--port", "0")
    llm_page = start("serve-web", tmp_path / "llm-web", "--port", "0")
    origin = page.url
    cloud = start("serve-cloud", routed["cloud"], "--port", "0", "--cors-origin", origin)
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"delay_ms": 3000}))
    slow = start("serve-cloud", routed["cloud"], "--port", "0", "--cors-origin", origin, "--faults", faults)
    texts = [t for t, _ in make_texts(30, seed=4)]
    reply = browser_run({"url": origin + "/", "screenshot": str(tmp_path / "demo.png"), "steps": [
        {"route": texts, "cloud": {"url": cloud.url}},
        {"route": texts[:4], "cloud": {"url": slow.url, "deadlineMs": 400}, "cloud_only": True},
        {"type": "a good film", "cloud": cloud.url},
        {"route": texts[:6], "cloud": {"url": cloud.url, "protocol": "v2", "model": routed["cloud"].name},
         "cloud_only": True}]})
    assert "error" not in reply, reply
    assert reply["state"]["ready"] and reply["state"]["isolated"], reply  # COOP/COEP: threads available
    routed_texts, fallback, typed, over_v2 = reply["steps"]
    # the Open Inference Protocol (KServe v2) from the page: the cloud's labels, reason "cloud only"
    assert [r["source"] for r in over_v2] == ["cloud"] * 6 and {r["reason"] for r in over_v2} == {"cloud only"}
    assert [r["label"] for r in over_v2] == load(routed["cloud"]).predict(texts[:6]).labels
    python = load(routed["device"])
    from edgeshrink.route.router import Router, read_router

    router = Router(python, None, read_router(routed["device"]))
    scores, reasons, escalate = router.decide(python.predict(texts))
    # the page runs 2 wasm threads (Node's parity runs 1): sums in another order move the logits by ~1e-6, so a
    # text whose confidence lies within 1e-4 of the threshold may fall either side; every other decides alike
    np.testing.assert_allclose([r["confidence"] for r in routed_texts], scores, atol=1e-4)
    clear = [abs(s - router.threshold) > 1e-4 for s in scores]
    assert sum(clear) >= 20
    assert [r["reason"] for r, c in zip(routed_texts, clear) if c] == [r for r, c in zip(reasons, clear) if c]
    assert [r["source"] for r in routed_texts] == ["cloud" if r["reason"] in ("not confident", "truncated") else "device"
                                                   for r in routed_texts]
    assert "cloud" in {r["source"] for r in routed_texts} and "device" in {r["source"] for r in routed_texts}
    cloud_labels = load(routed["cloud"]).predict([t for t, r in zip(texts, routed_texts) if r["source"] == "cloud"]).labels
    assert [r["label"] for r in routed_texts if r["source"] == "cloud"] == cloud_labels
    # the cloud stalls past the 400 ms deadline: the device's answers, within the deadline, flagged
    assert {r["source"] for r in fallback} == {"device-fallback"}
    assert {r["fallback_reason"] for r in fallback} == {"deadline"}
    assert all(r["latency_ms"] < 1500 for r in fallback)
    assert typed["last"]["label"] in ("negative", "positive") and typed["last"]["label"] in typed["shown"]
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    python_llm = load(llm_int4)
    want = python_llm.generate(CHAT, max_new_tokens=6, ignore_eos=True)
    reply = browser_run({"url": llm_page.url + "/", "steps": [{"stream": CHAT, "options": {"maxNewTokens": 6, "ignoreEos": True}}]})
    assert "error" not in reply, reply
    streamed = reply["steps"][0]
    assert streamed["ids"] == want.token_ids and streamed["pieces"] == 6 and streamed["decodeTokensPerS"] > 0


def test_tampered_model_is_refused_in_the_browser_before_it_runs(routed, tmp_path, start):
    from edgeshrink.web.pack import pack_web

    pack_web(routed["device"], tmp_path / "web", demo=True)
    model = tmp_path / "web" / "model" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0x40
    model.write_bytes(bytes(data))
    page = start("serve-web", tmp_path / "web", "--port", "0")
    reply = browser_run({"url": page.url + "/", "steps": [{"route": ["a good film"]}]})
    assert reply["state"]["ready"] is False
    assert reply["state"]["error"] == "bundle file model.onnx is corrupt or was modified (sha256 does not match the manifest)"
    assert "refused" in reply["status"] and reply["steps"] == []


def test_serve_web_sets_isolation_headers_and_refuses_a_plain_folder(routed, tmp_path, start):
    import httpx

    from edgeshrink.web.pack import pack_web

    pack_web(routed["device"], tmp_path / "web")
    page = start("serve-web", tmp_path / "web", "--port", "0")
    wasm = httpx.get(page.url + "/vendor/ort-wasm-simd-threaded.wasm")
    assert wasm.status_code == 200 and wasm.headers["content-type"] == "application/wasm"
    assert wasm.headers["cross-origin-opener-policy"] == "same-origin"
    assert wasm.headers["cross-origin-embedder-policy"] == "require-corp"
    assert httpx.get(page.url + "/edgeshrink.mjs").headers["content-type"] == "text/javascript"
    assert httpx.get(page.url + "/vendor/").status_code == 404  # no listings
    _one_error(runner.invoke(app, ["serve-web", str(routed["device"]), "--port", "0"]), "is not a web folder")


def test_serve_cloud_cors_origin(routed, start):
    import httpx

    origin = "http://127.0.0.1:8123"
    cloud = start("serve-cloud", routed["cloud"], "--port", "0", "--cors-origin", origin)
    preflight = httpx.options(cloud.url + "/v1/classify", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == origin
    answer = httpx.post(cloud.url + "/v1/classify", json={"texts": ["a good film"]}, headers={"Origin": origin})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == origin
    other = httpx.post(cloud.url + "/v1/classify", json={"texts": ["a good film"]},
                       headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    _one_error(runner.invoke(app, ["serve-cloud", str(routed["cloud"]), "--cors-origin", "127.0.0.1:8080/x"]),
               "a CORS origin is http(s)://host[:port]")


# -- the real tokenizers ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_tokenizers_give_the_python_runtimes_ids(tmp_path):
    """tokenizers.js on the packaged MiniLM's WordPiece and SmolLM2's byte-level BPE: the ids of the Python runtime
    (Hugging Face `tokenizers`) on real texts of every built-in text set, and SmolLM2's decoded text."""
    from edgeshrink.data.builtin import load_builtin_rows, prepare
    from edgeshrink.models.llm import import_llm
    from edgeshrink.models.sources import resolve_model
    from edgeshrink.runtime.predictor import load_tokenizer
    from edgeshrink.web.pack import node_modules, write_runtime

    texts = ["", " ", "  two  spaces ", "tab\there\nnew line\r\n", "Ünïcödé café — “quotes” … 😀🎉", "中文 日本語 한국어",
             "<|im_start|>user\nHi<|im_end|>", "[CLS] [SEP] [MASK] [UNK]", "ß straße İstanbul", "\u200b\u00a0x"]
    for name in ("sentiment-movies", "sentiment-tweets", "sentiment-products", "bbc-news"):
        prepare(name)
        texts += [row["text"][:2000] for row in load_builtin_rows(name)[:120]]
    write_runtime(tmp_path / "runtime", node_modules())
    for path in (resolve_model("minilm") / "tokenizer.json", import_llm("smollm2") / "tokenizer.json"):
        python = load_tokenizer(path)
        reply = node_run(tmp_path / "runtime", {"tokenize": texts, "tokenizer": str(path)})
        want = [e.ids for e in python.encode_batch(texts)]
        assert reply["ids"] == want, next(t for t, a, b in zip(texts, reply["ids"], want) if a != b)
        if "smollm2" in str(path):
            assert reply["decoded"] == [python.decode(ids, skip_special_tokens=True) for ids in want]
