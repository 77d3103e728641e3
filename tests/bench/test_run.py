import pytest

from edgeshrink.bench import BenchConfig, bench
from edgeshrink.bench.flops import flops_at
from edgeshrink.bench.report import to_markdown
from edgeshrink.errors import EdgeshrinkError
from tests.conftest import make_texts, write_csv

FAST = BenchConfig(threads=[1], seq_lengths=[16, 256], throughput_batch_sizes=[4], latency_runs=6, rounds=2,
                   throughput_runs=1, warmup_runs=1)


def test_bench_bundle_against_eager(tiny_model, tiny_bundle, tiny_csv):
    report = bench([tiny_model, tiny_bundle], FAST, data=str(tiny_csv))
    eager, onnx = report["candidates"]
    assert (eager["kind"], onnx["kind"]) == ("pytorch-eager", "onnx-bundle")
    assert onnx["torch_imported"] is False and eager["torch_imported"] is True
    assert onnx["agreement_with_first"] == 1.0  # same weights, same predictions
    assert eager["accuracy"]["n"] == 30 and eager["accuracy"]["value"] == onnx["accuracy"]["value"]
    assert onnx["peak_rss_bytes"] > 10e6 and onnx["size_bytes"] > 0
    for cand in report["candidates"]:
        # 256 is above the model's max_length (128): that cell is skipped, not silently truncated
        assert [r["seq_len"] for r in cand["latency"]] == [16]
        row = cand["latency"][0]
        assert row["n"] == 6 and row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["limit_ms"] > 0 and row["times_limit"] == pytest.approx(row["p50_ms"] / row["limit_ms"])
        assert cand["throughput"][0]["batch"] == 4 and cand["throughput"][0]["examples_per_s"] > 0
    assert eager["latency"][0]["speedup_vs_first"] == 1.0
    assert report["peak_gemm_gflops"]["1"] > 0.5
    md = to_markdown(report)
    assert "| tiny-bert | pytorch-eager |" in md and "Throughput" in md


def test_bench_rejects_data_with_unknown_labels(tiny_bundle, tmp_path):
    path = write_csv(tmp_path / "d.csv", [(t, "neutral") for t, _ in make_texts(40)])
    with pytest.raises(EdgeshrinkError, match="head does not have: \\['neutral'\\]"):
        bench([tiny_bundle], FAST, data=str(path))


def test_bench_rejects_non_candidates(tmp_path):
    with pytest.raises(EdgeshrinkError, match="does not exist"):
        bench([tmp_path / "nope"], FAST)
    with pytest.raises(EdgeshrinkError, match="neither a device bundle nor"):
        bench([tmp_path], FAST)


def test_flops_at_interpolates_quadratically():
    table = {str(s): 10 + 3 * s + 0.5 * s * s for s in (8, 16, 32, 64)}
    assert flops_at(table, 32) == table["32"]
    assert flops_at(table, 48) == pytest.approx(10 + 3 * 48 + 0.5 * 48 * 48)
    assert flops_at({"fixed": 7}, None) == 7.0 and flops_at({}, 8) is None


def test_bench_tensor_bundle(tmp_path):
    import torch

    from edgeshrink.export import export_module

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    export_module(net, (torch.randn(4, 1, 8, 8),), tmp_path / "mlp", labels=[str(i) for i in range(10)])
    report = bench([tmp_path / "mlp"], FAST)
    (cand,) = report["candidates"]
    assert cand["task"] == "tensor-classification" and "accuracy" not in cand
    assert [r["seq_len"] for r in cand["latency"]] == [None]
    assert cand["latency"][0]["flops"] == 2 * 64 * 10
    assert cand["throughput"][0]["examples_per_s"] > 0


def test_bench_scores_tensor_bundles_on_the_image_test_split(cnn_bundle, digits_sample, tiny_bundle, tiny_csv):
    import json

    report = bench([cnn_bundle, cnn_bundle], FAST, data=digits_sample)
    first, second = report["candidates"]
    recorded = json.loads((cnn_bundle / "manifest.json").read_text())
    assert report["data"]["sha256"] == recorded["split"]["sha256"]
    assert first["accuracy"]["n"] == recorded["split"]["sizes"]["test"]
    assert first["accuracy"]["value"] == pytest.approx(recorded["test_accuracy_source"])  # ONNX = torch
    assert second["agreement_with_first"] == 1.0 and first["torch_imported"] is False
    assert [r["seq_len"] for r in first["latency"]] == [None]
    with pytest.raises(EdgeshrinkError, match="is a text-classification model; data 'digits' is images"):
        bench([tiny_bundle], FAST, data=digits_sample)
    with pytest.raises(EdgeshrinkError, match="is a tensor-classification model; data 'tiny.csv' is text"):
        bench([cnn_bundle], FAST, data=str(tiny_csv))


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(tiny_bundle, tiny_csv, tmp_path):
    """The README's Python API example as a plain script: spawn would re-run it in each worker (its top level
    writes outputs that then exist); the workers start from edgeshrink's own module instead."""
    import subprocess
    import sys
    from pathlib import Path

    runs = tmp_path / "runs.txt"
    script = tmp_path / "example.py"
    script.write_text(
        "from pathlib import Path\n"
        "from edgeshrink.bench import BenchConfig, bench\n"
        f"with open({str(runs)!r}, 'a') as f:\n"
        "    f.write('ran\\n')\n"
        f"report = bench([{str(tiny_bundle)!r}], BenchConfig(threads=[1], seq_lengths=[16], throughput_batch_sizes=[2],"
        " latency_runs=6, rounds=2, throughput_runs=1, warmup_runs=1),"
        f" data={str(tiny_csv)!r})\n"
        "print(report['candidates'][0]['kind'])\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": f"{root / 'src'}:{root}"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "onnx-bundle"
    assert runs.read_text() == "ran\n"  # once: the worker did not run the script again
