"""The conformance matrix: every registered family through every verb, on a tiny model built here.

A family joins by its registry entry (models/arch.py); operations the registry says do not apply
must be refused in one line, everything else must work: finetune, export with validation, every
quantize method, every structured prune operation, distillation with each loss, unstructured
pruning, route calibrate + eval, the torch-free runtime, bench of a PyTorch candidate and the HTTP
service answering a request. The plain-PyTorch CNN path runs the verbs that apply to a tensor model
and must refuse the text-only ones in one line.
"""

from __future__ import annotations

import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.arch import FAMILIES, OPERATIONS, unique_families
from tests.conftest import make_texts, write_csv
from tests.families import make_family_model

NAMES = [f.name for f in unique_families("encoder")]


@pytest.fixture(scope="module", params=NAMES)
def fam(request, tmp_path_factory):
    """Per family: a fine-tuned tiny model, its data, and its validated fp32 bundle."""
    from edgeshrink.export import export
    from edgeshrink.models.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp(request.param)
    data = write_csv(root / "data.csv", make_texts(300, seed=5))
    base = make_family_model(request.param, root / "base")
    record = finetune(base, root / "cloud", FinetuneConfig(epochs=1, batch_size=16, max_length=48, learning_rate=1e-3,
                                                           threads=1), data=str(data))
    manifest = export(root / "cloud", root / "bundle")
    return {"name": request.param, "family": FAMILIES[FAMILIES[request.param].model_types[0]], "root": root,
            "data": str(data), "base": base, "cloud": root / "cloud", "bundle": root / "bundle",
            "record": record, "manifest": manifest}


def _logits(model, tokenizer, texts):
    import torch

    with torch.inference_mode():
        return model(**tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")).logits


def test_registry_paths_match_the_model(fam):
    from edgeshrink.models.torch_text import load_classifier

    model, tokenizer = load_classifier(fam["cloud"])
    family = fam["family"]
    blocks = family.block_list(model)
    assert len(blocks) == (1 if family.shared_blocks else model.config.num_hidden_layers)
    for block in blocks:
        attn, ffn = family.attention_of(block), family.ffn_of(block)
        width = attn.heads * attn.head_size
        assert attn.heads == model.config.num_attention_heads
        assert attn.q.out_features == attn.k.out_features == attn.v.out_features == attn.o.in_features == width
        assert ffn.up.out_features == ffn.down.in_features == getattr(model.config, family.ffn_size_key)
    assert list(tokenizer(["a film"]).keys()) == sorted(family.inputs(model.config), key=["input_ids",
                                                        "token_type_ids", "attention_mask"].index)


def test_finetune_and_export_validate(fam):
    manifest = fam["manifest"]
    assert fam["record"]["test"]["n"] > 0
    assert manifest["validation"]["ok"] and manifest["family"] == fam["family"].name
    assert manifest["classification_head"] == "trained"
    assert [i["name"] for i in manifest["inputs"]] == [n for n in ["input_ids", "attention_mask", "token_type_ids"]
                                                       if n in fam["family"].inputs(_config(fam))]


@pytest.mark.parametrize("level", ["basic", "fusion"])
def test_export_optimized_validates(fam, level, tmp_path):
    from edgeshrink.export import ExportConfig, export

    manifest = export(fam["cloud"], tmp_path / level, ExportConfig(optimize=level))
    assert manifest["validation"]["ok"]
    expected = f"fusion:{fam['family'].ort_fusion}" if level == "fusion" and fam["family"].ort_fusion else "basic"
    assert manifest["export"]["optimization"] == expected


def _config(fam):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(fam["cloud"])


def test_usable_max_length_runs_in_torch_and_onnx(fam, tmp_path):
    import numpy as np
    import torch

    from edgeshrink.export import ExportConfig, export
    from edgeshrink.models.torch_text import load_classifier
    from edgeshrink.runtime import load

    config = _config(fam)
    usable = fam["family"].max_length(config)
    model, _ = load_classifier(fam["cloud"])
    ids = torch.full((1, usable), 10, dtype=torch.long)
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    manifest = export(fam["cloud"], tmp_path / "long", ExportConfig(max_length=10_000))
    assert manifest["max_length"] == usable
    predictor = load(tmp_path / "long")
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((1, usable), np.int64),
             "token_type_ids": np.zeros((1, usable), np.int64)}
    got = predictor.run({k: feeds[k] for k in predictor.input_types})
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_zeroed_gate_equals_removed_head(fam):
    import torch

    from edgeshrink.models import surgery
    from edgeshrink.models.torch_text import load_classifier

    family = fam["family"]
    texts = [t for t, _ in make_texts(6, seed=2)]
    model, tokenizer = load_classifier(fam["cloud"])
    gates, remove = surgery.head_gates(model, family)
    with torch.no_grad():
        gates[:, 1] = 0.0
    gated = _logits(model, tokenizer, texts)
    remove()
    n = gates.shape[1]
    surgery.keep_heads(model, family, {i: [h for h in range(n) if h != 1] for i in range(gates.shape[0])})
    torch.testing.assert_close(_logits(model, tokenizer, texts), gated, rtol=0, atol=2e-5)


def test_head_pruned_model_saves_and_reloads_identically(fam, tmp_path):
    """The loader builds at full width, cuts to the kept heads recorded in config.json, then loads."""
    import torch

    from edgeshrink.models import arch, surgery
    from edgeshrink.models.torch_text import load_classifier

    family = fam["family"]
    model, tokenizer = load_classifier(fam["cloud"])
    n_blocks = len(family.block_list(model))
    kept = {i: [0, 2, 3] if family.same_heads_every_layer or i % 2 else [1, 3] for i in range(n_blocks)}
    surgery.keep_heads(model, family, kept)
    setattr(model.config, arch.KEPT_HEADS_KEY, {str(i): heads for i, heads in kept.items()})
    texts = [t for t, _ in make_texts(6, seed=4)]
    before = _logits(model, tokenizer, texts)
    model.save_pretrained(tmp_path / "cut")
    tokenizer.save_pretrained(tmp_path / "cut")
    reloaded, tokenizer = load_classifier(tmp_path / "cut")
    torch.testing.assert_close(_logits(reloaded, tokenizer, texts), before, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["dynamic-int8", "static-int8", "int4-weight", "fp16", "auto"])
def test_quantize(fam, method, tmp_path):
    from edgeshrink.compress import QuantConfig, quantize
    from edgeshrink.runtime import load

    config = QuantConfig(method=method, calibration_samples=32, max_eval_examples=32 if method == "auto" else None)
    manifest = quantize(fam["bundle"], tmp_path / method, config)  # re-reads the data the bundle records
    assert manifest["quantization"]["method"] == method
    assert manifest["quantization"]["evaluation"]["accuracy"]["n"] > 0
    assert len(load(tmp_path / method).predict(["a good film"]).labels) == 1


PRUNE = {"drop_layers": {"layers": 2}, "prune_heads": {"heads_keep": 0.5}, "prune_ffn": {"ffn_keep": 0.5},
         "prune_vocab": {"vocab": True}}


@pytest.mark.parametrize("operation", list(PRUNE))
def test_prune(fam, operation, tmp_path):
    from edgeshrink.compress.prune import prune
    from edgeshrink.compress.prune.encoder import PruneConfig
    from edgeshrink.export import export
    from edgeshrink.models.torch_text import load_classifier

    config = PruneConfig(importance_examples=64, **PRUNE[operation])
    if not fam["family"].applies(operation):
        with pytest.raises(EdgeshrinkError, match=f"cannot {OPERATIONS[operation]}.*what applies"):
            prune(fam["cloud"], tmp_path / "student", config, data=fam["data"])
        assert not (tmp_path / "student").exists()
        return
    record = prune(fam["cloud"], tmp_path / "student", config, data=fam["data"])
    assert record["prune"]["parameters"] < record["prune"]["teacher_parameters"]
    student, tokenizer = load_classifier(tmp_path / "student")
    family = fam["family"]
    block = family.block_list(student)[0]
    if operation == "prune_heads":
        assert family.attention_of(block).heads == 2
    if operation == "prune_ffn":
        assert family.ffn_of(block).up.out_features == 32
    if operation == "prune_vocab":  # the training text tokenizes to the same pieces and gives the same logits
        import torch

        teacher, teacher_tok = load_classifier(fam["cloud"])
        texts = [t for t, _ in make_texts(20, seed=5)]
        assert [teacher_tok.convert_ids_to_tokens(i) for i in teacher_tok(texts)["input_ids"]] == \
            [tokenizer.convert_ids_to_tokens(i) for i in tokenizer(texts)["input_ids"]]
        assert tokenizer.pad_token_id == student.config.pad_token_id
        torch.testing.assert_close(_logits(student, tokenizer, texts), _logits(teacher, teacher_tok, texts),
                                   rtol=0, atol=1e-5)
    assert export(tmp_path / "student", tmp_path / "bundle")["validation"]["ok"]


def test_prune_twice_composes_onto_the_first_teacher(fam, tmp_path):
    """A student cut from a cut student equals the first teacher cut once by the composed record."""
    import torch

    from edgeshrink.compress.distill import distill
    from edgeshrink.compress.distill.encoder import DistillConfig
    from edgeshrink.compress.prune import prune
    from edgeshrink.compress.prune.encoder import PruneConfig
    from edgeshrink.models import arch, surgery
    from edgeshrink.models.torch_text import load_classifier

    family = fam["family"]
    layers = {"layers": 2} if family.applies("drop_layers") else {}
    prune(fam["cloud"], tmp_path / "a", PruneConfig(importance_examples=32, heads_keep=0.75), data=fam["data"])
    record = prune(tmp_path / "a", tmp_path / "b", PruneConfig(importance_examples=32, heads_keep=0.67,
                                                                            **layers), data=fam["data"])
    twice, tokenizer = load_classifier(tmp_path / "b")
    once, _ = load_classifier(fam["cloud"])
    if layers:
        surgery.keep_blocks(once, family, record["prune"]["kept_layers"])
    kept = {int(i): h for i, h in getattr(twice.config, arch.KEPT_HEADS_KEY).items()}
    assert all(len(h) == 2 for h in kept.values()) and record["prune"]["cuts"] == 2
    surgery.keep_heads(once, family, kept)
    texts = [t for t, _ in make_texts(6, seed=8)]
    torch.testing.assert_close(_logits(twice, tokenizer, texts), _logits(once, tokenizer, texts), rtol=0, atol=0)
    with pytest.raises(EdgeshrinkError, match="was cut from another model"):
        distill(tmp_path / "a", tmp_path / "b", tmp_path / "d", DistillConfig(epochs=1), data=fam["data"])
    assert not (tmp_path / "d").exists()


@pytest.fixture(scope="module")
def student(fam):
    from edgeshrink.compress.prune import prune
    from edgeshrink.compress.prune.encoder import PruneConfig

    cut = {"heads_keep": 0.5, "ffn_keep": 0.5}
    if fam["family"].applies("drop_layers"):
        cut["layers"] = 2
    prune(fam["cloud"], fam["root"] / "student", PruneConfig(importance_examples=64, **cut), data=fam["data"])
    return fam["root"] / "student"


@pytest.mark.parametrize("loss", ["kd", "hidden", "attention"])
def test_distill(fam, student, loss, tmp_path):
    from edgeshrink.compress.distill import distill
    from edgeshrink.compress.distill.encoder import DistillConfig

    weights = {"kd": {}, "hidden": {"gamma_hidden": 1.0}, "attention": {"delta_attention": 1.0}}[loss]
    record = distill(fam["cloud"], student, tmp_path / "device", DistillConfig(epochs=1, batch_size=16, max_train_examples=64, **weights), data=fam["data"])
    assert record["test"]["n"] > 0 and len(record["history"]) == 1
    if loss == "kd":  # the distilled student reloads (kept heads) and exports validated
        from edgeshrink.export import export

        assert export(tmp_path / "device", tmp_path / "bundle")["validation"]["ok"]


def test_sparsify(fam, tmp_path):
    from edgeshrink.compress.sparsify import SparsifyConfig, sparsify

    record = sparsify(fam["cloud"], fam["data"], tmp_path / "sparse", SparsifyConfig(sparsity=0.5, steps=1, finetune=None))
    assert record["sparsify"]["sparsity_targeted"] == pytest.approx(0.5, abs=0.01)


def test_route_runtime_bench_and_serve(fam, tmp_path):
    import shutil

    from starlette.testclient import TestClient

    from edgeshrink.bench import BenchConfig, bench
    from edgeshrink.route.calibrate import RouteConfig, calibrate
    from edgeshrink.route.evaluate import EvalConfig, evaluate
    from edgeshrink.runtime import load
    from edgeshrink.serve.config import ServeConfig
    from edgeshrink.serve.device import device_app

    device = tmp_path / "device"
    shutil.copytree(fam["bundle"], device)
    router = calibrate(device, fam["cloud"], fam["data"], RouteConfig(policy="budget", budget=0.3))
    assert router["calibration"]["escalation_rate"] <= 0.3 + 1e-9
    report = evaluate(device, fam["cloud"], fam["data"], EvalConfig(resplits=0))
    assert 0 <= report["on_device_fraction"] <= 1 and report["n"] > 0

    prediction = load(device).predict(["a good film", "a dull boring plot " * 40])
    assert prediction.truncated == [False, True]

    # the device bundle only: its worker never imports torch. Benching each family's eager cloud model too cost
    # ~12 s a family in spawned torch workers, and the eager path is the same loader that calibrate just ran
    # (tests/bench/test_run.py benches a cloud model against its bundle).
    result = bench([device],
                   BenchConfig(threads=[1], seq_lengths=[16], throughput_batch_sizes=[4], latency_runs=5,
                               throughput_runs=1, rounds=1, warmup_runs=1, max_accuracy_examples=20), data=fam["data"])
    assert len(result["candidates"]) == 1 and result["candidates"][0]["torch_imported"] is False

    with TestClient(device_app(device, ServeConfig())) as client:
        answer = client.post("/v1/classify", json={"texts": ["a good film"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["label"] in ("negative", "positive")

    # the same bundle, router included, packed for the web and run by onnxruntime-web in Node: the Python
    # runtime's logits, labels, truncation and router decisions (tests/web/node.py)
    from edgeshrink.web.pack import pack_web
    from tests.web.node import assert_same_as_python

    pack_web(device, tmp_path / "web")
    assert_same_as_python(device, tmp_path / "web")


# -- the plain-PyTorch CNN path: the verbs that apply to a tensor model, and one-line refusals of the rest ------
@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    from edgeshrink.data import DataConfig
    from edgeshrink.export import export
    from edgeshrink.models.finetune import FinetuneConfig, finetune
    from tests.conftest import make_tiny_cnn

    root = tmp_path_factory.mktemp("cnn-path")
    data = DataConfig(source="digits", sample=300)
    finetune(make_tiny_cnn(root / "init"), root / "cnn", FinetuneConfig(epochs=3, learning_rate=5e-3, threads=1), data=data)
    export(root / "cnn", root / "bundle")
    return {"root": root, "data": data, "model": root / "cnn", "bundle": root / "bundle"}


@pytest.mark.parametrize("method", ["dynamic-int8", "static-int8", "int4-weight", "fp16"])
def test_cnn_quantize(cnn, method, tmp_path):
    from edgeshrink.compress import QuantConfig, quantize

    manifest = quantize(cnn["bundle"], tmp_path / method, QuantConfig(method=method, calibration_batch_size=8))
    assert manifest["quantization"]["evaluation"]["accuracy"]["n"] > 0


def test_cnn_prune_channels_route_bench(cnn, tmp_path):
    import shutil

    import numpy as np

    from edgeshrink.bench import BenchConfig, bench
    from edgeshrink.compress.channels import ChannelPruneConfig, prune_channels
    from edgeshrink.export import export
    from edgeshrink.route.calibrate import RouteConfig, calibrate
    from edgeshrink.route.evaluate import EvalConfig, evaluate
    from edgeshrink.runtime import load

    record = prune_channels(cnn["model"], cnn["data"], tmp_path / "pruned", ChannelPruneConfig(channels_keep=0.5))
    assert record["prune_channels"]["parameters"] < record["prune_channels"]["teacher_parameters"]
    export(tmp_path / "pruned", tmp_path / "device")
    assert len(load(tmp_path / "device").predict(np.zeros((2, 1, 8, 8), np.float32)).labels) == 2
    shutil.copytree(tmp_path / "device", tmp_path / "routed")
    router = calibrate(tmp_path / "routed", cnn["bundle"], cnn["data"], RouteConfig(policy="budget", budget=0.3))
    assert router["calibration"]["escalation_rate"] <= 0.3 + 1e-9
    assert evaluate(tmp_path / "routed", cnn["bundle"], cnn["data"], EvalConfig(resplits=0, latency_samples=5))["n"] > 0
    report = bench([cnn["bundle"], tmp_path / "device"],
                   BenchConfig(threads=[1], throughput_batch_sizes=[4], latency_runs=5, throughput_runs=1, rounds=1,
                               warmup_runs=1), data=cnn["data"])
    assert len(report["candidates"]) == 2


def test_cnn_refuses_text_verbs_in_one_line(cnn, tmp_path):
    from edgeshrink.compress.distill import distill
    from edgeshrink.compress.prune import prune
    from edgeshrink.compress.prune.encoder import PruneConfig
    from edgeshrink.compress.sparsify import sparsify
    from edgeshrink.serve.config import ServeConfig
    from edgeshrink.serve.device import device_app

    for call in (lambda: distill(cnn["model"], cnn["model"], tmp_path / "a", data=cnn["data"]),
                 lambda: sparsify(cnn["model"], cnn["data"], tmp_path / "b"),
                 lambda: prune(cnn["model"], tmp_path / "c", PruneConfig(layers=1), data=cnn["data"]),
                 lambda: device_app(cnn["bundle"], ServeConfig())):
        with pytest.raises(EdgeshrinkError) as info:
            call()
        assert "\n" not in str(info.value) and ("CNN" in str(info.value) or "tensors" in str(info.value))
    assert not any((tmp_path / name).exists() for name in "abc")
