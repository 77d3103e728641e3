import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.classify import TextRecipe, check_targets
from edgeshrink.recipes.runner import LOCK_FILE, run
from tests.conftest import make_texts, make_tiny_cnn, write_csv
from tests.recipes.test_schema import GOOD


@pytest.fixture(scope="module")
def recipe(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    data = write_csv(root / "d.csv", make_texts(200))
    path = root / "tiny.yaml"
    path.write_text(GOOD.format(model=tiny_model, data=data))
    return path, root


def test_run_meets_targets_writes_report_and_reruns_from_cache(recipe, tmp_path):
    path, _ = recipe
    messages = []
    report = run(path, tmp_path / "out", progress=messages.append)
    assert [s["step"] for s in report["steps"]] == ["prune", "distill", "export", "quantize", "bench"]
    assert not any(s["cached"] for s in report["steps"])
    assert {t["target"].split(" ")[0] for t in report["targets"]} == {
        "max_size_mb", "max_latency_ms", "max_accuracy_drop", "min_size_reduction", "min_speedup",
        "min_accuracy_fraction", "peer.min_speedup", "peer.min_size_reduction", "peer.max_accuracy_drop"}
    assert report["all_targets_met"] and report["recipe_sha256"]
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Recipe report: tiny")
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page  # self-contained: plots inside
    assert report["plots"] == ["accuracy_vs_latency.png", "accuracy_vs_size.png"]
    assert [m["role"] for m in report["models"]] == ["cloud", "peer", "device"]
    peer = report["models"][1]
    assert peer["size_mb"] < report["models"][0]["size_mb"]  # the peer is the INT8 cloud model
    assert "peer (optimum + ORT dynamic INT8)" in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["name"] == "tiny"
    again = run(path, tmp_path / "out")
    assert all(s["cached"] for s in again["steps"]) and again["wall_seconds_this_run"] < 30
    assert again["targets"] == report["targets"]


def test_a_moved_run_directory_still_reruns_from_its_cache(recipe, tmp_path):
    path, _ = recipe
    run(path, tmp_path / "first")
    (tmp_path / "first").rename(tmp_path / "moved")
    again = run(path, tmp_path / "moved")
    assert all(s["cached"] for s in again["steps"]) and again["all_targets_met"]
    assert Path(again["device_bundle"]).is_relative_to(tmp_path / "moved")
    assert (Path(again["device_bundle"]) / "manifest.json").exists()
    stored = [json.loads(p.read_text()) for p in (tmp_path / "moved" / "cache").glob("*/step.json")]
    assert stored and not any(str(tmp_path) in json.dumps(r) for r in stored)  # no absolute paths kept


def test_an_edited_step_reruns_from_there(recipe, tmp_path):
    path, root = recipe
    run(path, tmp_path / "out")
    edited = root / "edited.yaml"
    edited.write_text(path.read_text().replace("{method: dynamic-int8}", "{method: fp16}"))
    report = run(edited, tmp_path / "out")
    assert [s["cached"] for s in report["steps"]] == [True, True, True, False, False]


def test_impossible_target_is_reported_with_the_miss(recipe, tmp_path):
    path, root = recipe
    hard = root / "hard.yaml"
    hard.write_text(path.read_text().replace("max_size_mb: 10", "max_size_mb: 0.001"))
    report = run(hard, tmp_path / "out")
    size = next(t for t in report["targets"] if t["target"] == "max_size_mb")
    assert not size["met"] and size["miss"] == pytest.approx(size["value"] - 0.001)
    assert not report["all_targets_met"]


def test_missing_data_fails_before_any_step(recipe, tmp_path):
    path, root = recipe
    bad = root / "nodata.yaml"
    bad.write_text(path.read_text().replace(str(root / "d.csv"), str(root / "missing.csv")))
    with pytest.raises(EdgeshrinkError, match="missing.csv"):
        run(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "cache").exists() or not any((tmp_path / "out" / "cache").iterdir())


HOLD_LOCK = """import sys; from pathlib import Path; from edgeshrink.recipes.runner import run_dir_lock
with run_dir_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def another_run_holding(out: Path):
    """Another process that holds ``out``'s lock, as a running `edgeshrink run` would, until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        if holder.poll() is None:
            holder.stdin.close()
            holder.wait(10)


def _contents(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_second_run_on_a_directory_in_use_refuses_at_once(recipe, tmp_path):
    path, _ = recipe
    out = tmp_path / "out"
    with another_run_holding(out) as holder:
        before = _contents(out)
        assert before == {LOCK_FILE: str(holder.pid).encode()}
        message = f"run directory {out} is in use by another edgeshrink run (pid {holder.pid})"
        with pytest.raises(EdgeshrinkError) as err:
            run(path, out)
        assert str(err.value) == message
        cli = subprocess.run([sys.executable, "-m", "edgeshrink", "run", str(path), "--out", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2 and cli.stderr.strip() == f"error: {message}", cli.stderr
        assert _contents(out) == before  # nothing touched: no cache, no report, the holder's pid kept


def test_a_lock_left_by_a_dead_run_does_not_block(recipe, tmp_path):
    path, _ = recipe
    out = tmp_path / "out"
    with another_run_holding(out) as holder:
        holder.kill()  # as a crash or kill -9 would: the lock file stays, naming a dead process
        holder.wait(10)
    assert (out / LOCK_FILE).read_text() == str(holder.pid)
    report = run(path, out)
    assert report["all_targets_met"] and (out / LOCK_FILE).read_text() == str(os.getpid())


def test_search_runs_every_candidate_and_chooses(recipe, tmp_path):
    path, root = recipe
    searched = root / "search.yaml"
    searched.write_text(path.read_text().replace("{layers: 1, ffn_keep: 0.5, vocab: true}",
                                                 "{layers: 1, ffn_keep: 0.5, vocab: true, search: {ffn_keep: [0.25, 0.5]}}"))
    report = run(searched, tmp_path / "out")
    assert [c["choices"] for c in report["candidates"]] == [{"steps.0.prune.ffn_keep": 0.25},
                                                           {"steps.0.prune.ffn_keep": 0.5}]
    assert all(c["all_targets_met"] for c in report["candidates"])
    calibration = [c["calibration_accuracy"] for c in report["candidates"]]  # the choice is made on these
    assert all(0 <= a <= 1 for a in calibration)
    p50 = [c["models"][-1]["p50_ms"] for c in report["candidates"]]
    assert report["chosen"] == max(range(2), key=lambda i: (calibration[i], -p50[i]))
    assert "## Search" in (text := (tmp_path / "out" / "report.md").read_text()) and "calibration acc %" in text
    kept = list((tmp_path / "out" / "cache").glob("*-bench-*/calibration.json"))
    assert len(kept) == 2 and json.loads(kept[0].read_text())["split"] == "calibration"


def test_the_choice_is_made_on_calibration_accuracy_not_test():
    from edgeshrink.recipes.classify import choose

    def candidate(calibration, test, p50=5.0):
        return {"all_targets_met": True, "pruned": None, "targets": [], "calibration_accuracy": calibration,
                "models": [{"accuracy": test, "p50_ms": p50}]}

    assert choose([candidate(0.80, 0.90), candidate(0.85, 0.70)]) == 1
    assert choose([candidate(0.85, 0.90, p50=9.0), candidate(0.85, 0.70, p50=4.0)]) == 1  # tie: the faster
    assert choose([{**candidate(None, 0.7)}, {**candidate(None, 0.9)}]) == 1  # no calibration figure: test


def test_search_stops_a_path_early_and_names_the_missed_target(recipe, tmp_path):
    path, root = recipe
    strict = root / "strict.yaml"
    strict.write_text(path.read_text().replace("max_accuracy_drop: 50", "min_accuracy: 0.999"))
    report = run(strict, tmp_path / "out")
    assert not report["all_targets_met"] and [s["step"] for s in report["steps"]] == ["prune", "distill"]
    missed = report["targets"][0]
    assert missed["target"].startswith("min_accuracy") and missed["found_after"] == "distill"
    assert missed["miss"] == pytest.approx(0.999 - missed["value"])


def _reports(policy: str):
    def cand(size, p50, acc):
        return {"size_bytes": size, "accuracy": {"value": acc}, "latency": [{"threads": 1, "seq_len": 64, "p50_ms": p50}]}

    bench = {"candidates": [cand(90e6, 45.0, 0.84), cand(24e6, 44.0, 0.839), cand(7e6, 10.0, 0.83)],
             "roles": ["cloud", "peer", "device"]}
    route = {"escalated_fraction": 0.2, "cloud_only": {"accuracy": 0.84}, "hybrid": {"accuracy": 0.842},
             "router": {"policy": policy, "alpha": 0.02, "delta": 0.1}, "realised_risk": {"error": 0.021}}
    return bench, route


def test_peer_and_guarantee_targets():
    recipe = TextRecipe.model_validate({"name": "t", "model": "m", "data": "d", "steps": [{"export": {}}], "targets": {
        "peer": {"min_speedup": 3, "min_size_reduction": 2.5, "max_accuracy_drop": 0},
        "router": {"alpha": 0.05, "delta": 0.05}}})
    rows = {r["target"].split(" ")[0]: r for r in check_targets(recipe, *_reports("risk"))}
    assert rows["peer.min_speedup"]["value"] == pytest.approx(4.4) and rows["peer.min_speedup"]["met"]
    assert rows["peer.min_size_reduction"]["value"] == pytest.approx(24 / 7)
    drop = rows["peer.max_accuracy_drop"]
    assert not drop["met"] and drop["value"] == pytest.approx(0.9) and drop["miss"] == pytest.approx(0.9)
    assert rows["router.alpha"]["met"] and rows["router.alpha"]["value"] == 0.02
    assert not rows["router.delta"]["met"]  # calibrated at delta 0.1, the target asks 0.05
    budget = {r["target"].split(" ")[0]: r for r in check_targets(recipe, *_reports("budget"))}
    assert not budget["router.alpha"]["met"] and "no guarantee" in budget["router.alpha"]["note"]


def test_peer_targets_need_a_peer():
    recipe = TextRecipe.model_validate({"name": "t", "model": "m", "data": "d", "steps": [{"export": {}}],
                                        "targets": {"peer": {"min_speedup": 3}}})
    bench, route = _reports("risk")
    bench["candidates"].pop(1)
    bench["roles"] = ["cloud", "device"]
    with pytest.raises(EdgeshrinkError, match="no peer pipeline"):
        check_targets(recipe, bench, route)


CNN_RECIPE = """\
version: 1
name: tiny-cnn
model: {model}
data: {{source: digits, sample: 400}}
steps:
  - finetune: {{epochs: 10, learning_rate: 5.0e-3, threads: 1}}
  - prune-channels: {{channels_keep: 0.5, recover_epochs: 2, threads: 1}}
  - export: {{}}
  - quantize: {{method: static-int8}}
  - bench: {{threads: [1], throughput_batch_sizes: [4], latency_runs: 10, rounds: 2, warmup_runs: 2}}
targets:
  min_size_reduction: 2.5
  max_accuracy_drop: 20
  min_speedup: 0.1
  max_latency_ms: {{value: 100, threads: 1}}
"""


def test_cnn_recipe_runs_end_to_end_and_reruns_from_cache(tmp_path):
    """The plain-PyTorch path: train, prune channels, export (cloud = the unpruned CNN), static INT8, bench."""
    model = make_tiny_cnn(tmp_path / "init")
    path = tmp_path / "cnn.yaml"
    path.write_text(CNN_RECIPE.format(model=model))
    report = run(path, tmp_path / "out")
    assert [s["step"] for s in report["steps"]] == ["finetune", "prune-channels", "export", "quantize", "bench"]
    assert report["all_targets_met"], report["targets"]
    targets = {t["target"]: t for t in report["targets"]}
    assert "min_speedup (p50, 1 thread, batch 1, vs the cloud bundle)" in targets  # no tokens for images
    assert "max_latency_ms (p50, 1 thread, batch 1)" in targets
    assert targets["min_size_reduction (x smaller than the cloud bundle)"]["value"] > 2.5
    assert [m["role"] for m in report["models"]] == ["cloud", "device"] and report["peer_bundle"] is None
    cloud = json.loads((Path(report["cloud_bundle"]) / "manifest.json").read_text())
    device = json.loads((Path(report["device_bundle"]) / "manifest.json").read_text())
    assert cloud["architecture"]["channels"] == [8, 16] and device["architecture"]["channels"] == [4, 8]
    assert device["quantization"]["method"] == "static-int8" and device["split"] == cloud["split"]
    assert report["split"]["dataset"] == "digits" and report["split"]["sha256"] == cloud["split"]["sha256"]
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Recipe report: tiny-cnn")
    assert (tmp_path / "out" / "report.html").exists() and report["plots"]
    again = run(path, tmp_path / "out")
    assert all(s["cached"] for s in again["steps"]) and again["targets"] == report["targets"]


def test_run_signs_the_device_bundle_it_chose(recipe, tmp_path):
    """`run --sign-key`: the chosen device bundle is signed, and a rerun still comes from the cache."""
    from typer.testing import CliRunner

    from edgeshrink.cli import app
    from edgeshrink.runtime import load
    from edgeshrink.signing import new_keys

    path, _ = recipe
    key, pub = new_keys(tmp_path / "keys")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--sign-key", str(key), "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["signed"]["key_id"] and "signed" in result.stdout
    load(report["device_bundle"], trust=[pub])
    again = run(path, out)
    assert all(s["cached"] for s in again["steps"])
    load(again["device_bundle"], trust=[pub])
