import json
import os
import shutil
import subprocess
import sys

import pytest

from edgeshrink.compress import METHODS, LLMQuantConfig, QuantConfig, quantize
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export import ExportConfig, export
from tests.conftest import make_texts, write_csv

# Each registered method, the weight types its bundle must contain, and its config for a tiny model.
CASES = {
    "dynamic-int8": ({"int8"}, {}),
    "static-int8": ({"int8"}, {"calibration_method": "percentile", "calibration_batch_size": 4}),
    "int4-weight": ({"int4"}, {"block_size": 16}),
    "fp16": ({"fp16"}, {}),
    "auto": (set(), {"block_size": 16, "tolerance": 0.0}),
}


def test_every_registered_method_has_a_test():
    assert set(METHODS) == set(CASES)


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("qdata") / "d.csv", make_texts(300))


def _progress_log():
    seen = []
    return seen, lambda description, advance=0, total=None: seen.append((description, advance, total))


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_produces_a_runtime_bundle(method, tiny_bundle, data_csv, tmp_path):
    expected_types, options = CASES[method]
    seen, progress = _progress_log()
    out = tmp_path / method
    manifest = quantize(tiny_bundle, out, QuantConfig(method=method, **options), data=str(data_csv), progress=progress)
    q = manifest["quantization"]
    assert q["method"] == method and q["config"]["method"] == method
    assert expected_types <= set(q["weights"]["bytes_by_type"])
    ev = q["evaluation"]
    assert ev["accuracy"]["n"] == ev["source_accuracy"]["n"] == 45  # the test split of 300 rows
    assert 0 <= ev["mcnemar"]["p_value"] <= 1
    assert q["parent"]["model_sha256"] == json.loads((tiny_bundle / "manifest.json").read_text())["files"]["model.onnx"]["sha256"]
    if method in ("static-int8", "auto"):
        assert q["calibration_split_sha256"]
    if method == "static-int8":  # streamed in batches, every calibration example seen once
        assert sum(a for d, a, t in seen if d == "calibrating") == q["calibration_examples"] == 45
    if method == "auto":
        assert q["tolerance_met"] and q["per_node"] and all(n["precision"] in ("int4", "int8", "fp32")
                                                            for n in q["per_node"])
    # the quantized bundle runs in a process without torch
    code = (f"import sys; from edgeshrink.runtime import load; r = load({str(out)!r}).predict(['good film', 'dull']); "
            "assert len(r.labels) == 2; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_dynamic_int8_on_a_fused_graph(tiny_model, data_csv, tmp_path):
    """The DefaultTensorType pitfall: fused graphs must quantize without the user knowing about it."""
    export(tiny_model, tmp_path / "fused", ExportConfig(optimize="fusion"))
    manifest = quantize(tmp_path / "fused", tmp_path / "q", QuantConfig(method="dynamic-int8"), data=str(data_csv))
    assert "int8" in manifest["quantization"]["weights"]["bytes_by_type"]


def test_int4_shrinks_embeddings_only_when_asked(tiny_bundle, tmp_path):
    with_emb = quantize(tiny_bundle, tmp_path / "a", QuantConfig(method="int4-weight", block_size=16, evaluate=False))
    without = quantize(tiny_bundle, tmp_path / "b", QuantConfig(method="int4-weight", block_size=16,
                                                                 quantize_embeddings=False, evaluate=False))
    assert with_emb["size_bytes"] < without["size_bytes"]


def test_bad_inputs(tiny_bundle, data_csv, tmp_path):
    q = tmp_path / "q"
    quantize(tiny_bundle, q, QuantConfig(method="dynamic-int8", evaluate=False))
    with pytest.raises(EdgeshrinkError, match="already quantized with the same method"):
        quantize(q, tmp_path / "qq", QuantConfig(method="dynamic-int8", evaluate=False))
    with pytest.raises(EdgeshrinkError, match="must be a new directory"):
        quantize(tiny_bundle, tiny_bundle, QuantConfig(method="fp16"))
    small = write_csv(tmp_path / "small.csv", make_texts(40))
    with pytest.raises(EdgeshrinkError, match="needs at least 16 calibration examples, got 6"):
        quantize(tiny_bundle, tmp_path / "s", QuantConfig(method="static-int8"), data=str(small))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "tokenizer.json").write_text("{}")
    with pytest.raises(EdgeshrinkError, match="corrupt or was modified"):
        quantize(broken, tmp_path / "b", QuantConfig(method="fp16"))
    for llm_only in ({"grid": "gguf"}, {"head_bits": 8}):  # a language model's fields: not a classifier's config
        with pytest.raises(EdgeshrinkError, match=f"{next(iter(llm_only))}: unknown key"):
            QuantConfig.build(method="int4-weight", **llm_only)
    with pytest.raises(EdgeshrinkError, match="LLMQuantConfig does not apply to a text-classification model .* "
                                              "give a QuantConfig"):
        quantize(tiny_bundle, tmp_path / "g", LLMQuantConfig(method="int4-weight"))
    with pytest.raises(EdgeshrinkError, match="method"):
        QuantConfig.build(method="int2")
    with pytest.raises(EdgeshrinkError, match="target"):
        QuantConfig.build(method="fp16", target="tpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "q", "small.csv"]


def test_recipe_keys_hash_the_unsplit_config():
    """Recipe cache keys hash key_form(): the one QuantConfig every bundle took before issue 26 split it, with
    that config's defaults where a value was not given (LLM block_size now defaults to 32, classifiers' to 128)."""
    unsplit = {"version": 1, "method": "int4-weight", "target": "host", "per_channel": True, "weight_type": None,
               "activation_type": None, "reduce_range": None, "op_types": None, "calibration_method": "minmax",
               "calibration_samples": 512, "calibration_batch_size": 16, "block_size": None, "symmetric": True,
               "quantize_embeddings": True, "accuracy_level": 4, "grid": "auto", "head_bits": None,
               "fp16_block_list": [], "tolerance": 0.5, "max_eval_examples": None, "evaluate": True}
    assert LLMQuantConfig(method="int4-weight", accuracy_level=4).key_form() == unsplit
    assert LLMQuantConfig.from_dict({"method": "int4-weight", "block_size": 32, "head_bits": 8}).key_form() == {
        **unsplit, "accuracy_level": None, "block_size": 32, "head_bits": 8}
    assert QuantConfig(method="dynamic-int8").key_form() == {**unsplit, "method": "dynamic-int8", "accuracy_level": None}
    assert QuantConfig(method="fp16").to_dict()["block_size"] == 128 and "grid" not in QuantConfig(method="fp16").to_dict()


def test_targets_resolve_to_types():
    assert QuantConfig(method="static-int8", target="avx2").resolved()["reduce_range"] is True
    assert QuantConfig(method="static-int8", target="arm64").resolved()["activation_type"] == "int8"
    vnni = QuantConfig(method="static-int8", target="avx512-vnni", weight_type="uint8").resolved()
    assert vnni == {"target": "avx512-vnni", "weight_type": "uint8", "activation_type": "uint8", "reduce_range": False}
    assert QuantConfig(method="fp16").resolved()["target"] in ("avx2", "avx512-vnni", "arm64")


@pytest.mark.parametrize("options", [
    {"method": "static-int8", "calibration_method": "entropy", "per_channel": False, "target": "arm64"},
    {"method": "static-int8", "calibration_method": "minmax", "calibration_samples": 20},
    {"method": "int4-weight", "symmetric": False, "block_size": 32},
    {"method": "dynamic-int8", "weight_type": "uint8", "per_channel": False},
    {"method": "fp16", "fp16_block_list": ["Softmax"]},
], ids=lambda o: "-".join(str(v) for v in o.values()))
def test_method_options(options, tiny_bundle, data_csv, tmp_path):
    manifest = quantize(tiny_bundle, tmp_path / "q", QuantConfig(evaluate=False, **options), data=str(data_csv))
    q = manifest["quantization"]
    assert q["config"] == QuantConfig(evaluate=False, **options).to_dict()
    if options.get("calibration_samples"):
        assert q["calibration_examples"] == 20
    if options["method"] == "fp16":
        assert "Softmax" in q["fp32_op_types"]
    if options.get("weight_type") == "uint8":
        assert "uint8" in q["weights"]["bytes_by_type"] and "int8" not in q["weights"]["bytes_by_type"]
    from edgeshrink.runtime import load

    assert len(load(tmp_path / "q").predict(["good film"]).labels) == 1


@pytest.mark.parametrize("method", ["static-int8", "dynamic-int8"])
def test_int8_of_a_tensor_bundle_calibrates_and_scores_on_its_split(method, cnn_bundle, digits_sample, tmp_path):
    """Calibration arrays from the calibration split, scoring on the test split (checked against the bundle's hash)."""
    import numpy as np

    seen, progress = _progress_log()
    source = json.loads((cnn_bundle / "manifest.json").read_text())
    manifest = quantize(cnn_bundle, tmp_path / "q", QuantConfig(method=method, calibration_batch_size=8),
                        data=digits_sample, progress=progress)
    q = manifest["quantization"]
    assert "int8" in q["weights"]["bytes_by_type"] and manifest["size_bytes"] < source["size_bytes"] / 2
    assert manifest["split"] == source["split"] and manifest["task"] == "tensor-classification"
    ev = q["evaluation"]
    assert ev["accuracy"]["n"] == ev["source_accuracy"]["n"] == source["split"]["sizes"]["test"]
    assert ev["source_accuracy"]["value"] == pytest.approx(source["test_accuracy_source"])
    assert abs(ev["accuracy_drop_points"]) <= 5  # 59 test images: 5 points is 3 of them
    if method == "static-int8":
        n = source["split"]["sizes"]["calibration"]
        assert q["calibration_examples"] == n == sum(a for d, a, t in seen if d == "calibrating")
        assert q["calibration_split_sha256"] == source["split"]["sha256"] and q["op_types"] == "all"
    code = (f"import sys, numpy as np; from edgeshrink.runtime import load; "
            f"r = load({str(tmp_path / 'q')!r}).predict(np.zeros((3, 1, 8, 8), np.float32)); "
            "assert len(r.labels) == 3; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert np.isfinite(ev["mcnemar"]["p_value"])


def test_wrong_kind_of_calibration_data(cnn_bundle, tiny_bundle, data_csv, digits_sample, tmp_path):
    with pytest.raises(EdgeshrinkError, match="takes tensors; data 'd.csv' is text"):
        quantize(cnn_bundle, tmp_path / "a", QuantConfig(method="static-int8"), data=str(data_csv))
    with pytest.raises(EdgeshrinkError, match="auto needs text calibration data"):
        quantize(cnn_bundle, tmp_path / "b", QuantConfig(method="auto"), data=digits_sample)
    with pytest.raises(EdgeshrinkError, match="takes text; data 'digits' is images"):
        quantize(tiny_bundle, tmp_path / "c", QuantConfig(method="static-int8"), data="digits")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_quantize_reads_the_recorded_data_from_another_directory(trained_bundle, tmp_path, monkeypatch):
    """Made from the CSV's directory with its absolute path; quantized from elsewhere, reading it again."""
    data, model, bundle = trained_bundle
    record = json.loads((model / "edgeshrink.json").read_text())
    assert record["data"]["source"] == str(data.resolve()) and record["data"]["name"] == "data.csv"
    source = json.loads((bundle / "manifest.json").read_text())
    assert source["split"] == record["data"]["split"] and source["split"]["data"]["source"] == str(data.resolve())
    monkeypatch.chdir(tmp_path)
    manifest = quantize(bundle, "q", QuantConfig(method="static-int8", calibration_batch_size=8))
    q = manifest["quantization"]
    assert q["calibration_split_sha256"] == source["split"]["sha256"] and manifest["split"] == source["split"]
    assert q["evaluation"]["accuracy"]["n"] == source["split"]["sizes"]["test"] == 45


def test_quantize_data_points_at_a_copy_and_refuses_other_rows(trained_bundle, tmp_path):
    data, _, bundle = trained_bundle
    copy = shutil.copy(data, tmp_path / "moved.csv")
    manifest = quantize(bundle, tmp_path / "a", QuantConfig(method="dynamic-int8"), data=str(copy))
    assert manifest["quantization"]["evaluation"]["accuracy"]["n"] == 45
    recorded = json.loads((bundle / "manifest.json").read_text())["split"]["sha256"]
    other = write_csv(tmp_path / "other.csv", make_texts(300, seed=9))
    with pytest.raises(EdgeshrinkError, match=f"does not give the split this bundle was made with: split sha256 "
                                              f"[0-9a-f]{{12}} != recorded {recorded[:12]}"):
        quantize(bundle, tmp_path / "b", QuantConfig(method="dynamic-int8"), data=str(other))
    assert not (tmp_path / "b").exists()


def test_quantize_of_a_bundle_whose_data_moved_or_was_recorded_by_short_name(trained_bundle, tmp_path):
    data, _, bundle = trained_bundle
    for name, edit, match in (
            ("moved", lambda split: {**split, "data": {**split["data"], "source": str(tmp_path / "gone.csv")}},
             "gone.csv, which is not there any more: pass --data"),
            ("old", lambda split: {k: v for k, v in split.items() if k != "data"},  # before sources were resolved
             "only as 'data.csv', not a built-in data set")):
        edited = tmp_path / name
        shutil.copytree(bundle, edited)
        manifest = json.loads((edited / "manifest.json").read_text())
        manifest["split"] = edit(manifest["split"])
        (edited / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(EdgeshrinkError, match=match):
            quantize(edited, tmp_path / f"{name}-q", QuantConfig(method="fp16"))
        assert quantize(edited, tmp_path / f"{name}-q", QuantConfig(method="fp16"), data=str(data))["quantization"]


def _listing(directory):
    """Every entry of ``directory`` (links as links), its bytes or link target, and the directory's own mtime:
    a file created and removed again in it (ORT's model-inferred.onnx) still changes the mtime."""
    entries = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        entries[rel] = ("link", os.readlink(path)) if path.is_symlink() else \
            ("dir", None) if path.is_dir() else ("file", path.read_bytes())
    return entries, directory.stat().st_mtime_ns


@pytest.mark.parametrize("method", sorted(CASES))
def test_quantize_never_writes_into_its_source_nor_copies_what_is_not_listed(method, tiny_bundle, data_csv,
                                                                              tmp_path):
    """Issue 25, items 1 and 2: ORT wrote model-inferred.onnx beside the source model, through a symlink put
    there; unlisted files and symlinks in the source were copied into the output (as their targets). Now the
    gate refuses such a source in one line, and a clean source is never written into."""
    source, victim, secret = tmp_path / "B", tmp_path / "victim", tmp_path / "secret"
    shutil.copytree(tiny_bundle, source)
    victim.write_text("victim")
    secret.write_text("secret")
    config = QuantConfig(method=method, evaluate=False, **CASES[method][1])
    for name, make, rule in [("model-inferred.onnx", lambda p: p.symlink_to(victim), "symbolic link"),
                             ("notes.txt", lambda p: p.symlink_to(secret), "symbolic link"),
                             ("stray.txt", lambda p: p.write_text("not listed"), "not listed in the manifest")]:
        make(source / name)
        with pytest.raises(EdgeshrinkError, match=f"{name}.*{rule}"):
            quantize(source, tmp_path / "Q", config, data=str(data_csv))
        (source / name).unlink()
        assert not (tmp_path / "Q").exists()
    assert victim.read_bytes() == b"victim" and secret.read_bytes() == b"secret"
    os.utime(source, ns=(10**18, 10**18))
    before = _listing(source)
    read_only = os.geteuid() != 0  # root writes anyway: there the directory's mtime tells
    if read_only:
        for path in [source, *source.iterdir()]:
            path.chmod(0o555 if path.is_dir() else 0o444, follow_symlinks=False)
    try:
        manifest = quantize(source, tmp_path / "Q", config, data=str(data_csv))
    finally:
        if read_only:
            source.chmod(0o755)
    assert _listing(source) == before
    listed = set(json.loads((tiny_bundle / "manifest.json").read_text())["files"])
    assert set(manifest["files"]) == listed
    assert sorted(p.name for p in (tmp_path / "Q").iterdir()) == sorted(listed | {"manifest.json"})
    assert not any(p.is_symlink() for p in (tmp_path / "Q").rglob("*"))


def test_quantize_refuses_a_listed_file_that_is_a_symlink(tiny_bundle, tmp_path):
    source = tmp_path / "B"
    shutil.copytree(tiny_bundle, source)
    outside = tmp_path / "tokenizer.json"
    (source / "tokenizer.json").rename(outside)
    (source / "tokenizer.json").symlink_to(outside)  # same bytes, so its hash matches the manifest
    with pytest.raises(EdgeshrinkError, match=r"tokenizer\.json.*symbolic link"):
        quantize(source, tmp_path / "Q", QuantConfig(method="fp16", evaluate=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B", "tokenizer.json"]


def test_two_quantize_processes_on_one_out_cannot_both_succeed(tiny_bundle, tmp_path):
    """Issue 25, item 10: both exited 0 and the second replaced the first without --force."""
    out = tmp_path / "Q"
    command = [sys.executable, "-m", "edgeshrink", "quantize", str(tiny_bundle), "--method", "fp16", "--out", str(out),
               "--no-eval"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read().strip()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2]
    (refusal,) = [err for code, err in results if code == 2]
    assert len(refusal.splitlines()) == 1
    assert f"another edgeshrink process is writing {out}" in refusal or "already exists" in refusal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Q"]
