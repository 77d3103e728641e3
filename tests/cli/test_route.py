import json
import shutil

from tests.cli.test_app import assert_one_line_error, invoke
from tests.conftest import make_texts, make_tiny_bert, write_csv


def test_route_calibrate_and_eval(tiny_bundle, tmp_path):
    device = tmp_path / "device"
    shutil.copytree(tiny_bundle, device)
    cloud = make_tiny_bert(tmp_path / "cloud", seed=1)
    data = write_csv(tmp_path / "d.csv", make_texts(800, seed=3))
    result = invoke("route", "calibrate", "--device", device, "--cloud", cloud, "--data", data, "--policy", "risk",
                    "--alpha", "0.3", "--delta", "0.2", "--cloud-cost-per-1000", "3", "--device-energy-mj", "2",
                    "--json", tmp_path / "c.json")
    assert result.exit_code == 0, result.output
    assert "router (risk, max-prob) written" in result.stdout and "temperature" in result.stdout
    router = json.loads((tmp_path / "c.json").read_text())
    assert router["cost"]["cloud_cost_per_1000"] == 3 and (device / "router.json").exists()
    result = invoke("route", "eval", "--device", device, "--cloud", cloud, "--data", data, "--resplits", "5",
                    "--alphas", "0.3", "--plots", tmp_path / "plots", "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert "hybrid" in result.stdout and "guarantee check" in result.stdout
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["schema"] == "edgeshrink-route-eval/1" and len(report["guarantee_check"]) == 2
    assert report["cost"]["hybrid"]["device_energy_per_1000_mj"] == 2000
    assert report["cost"]["cloud_only"]["per_1000_requests"] == 3
    assert (tmp_path / "plots" / "coverage_risk.png").exists()


def test_route_bad_input(tiny_bundle, tiny_model, tmp_path):
    device = tmp_path / "device"
    shutil.copytree(tiny_bundle, device)
    data = write_csv(tmp_path / "d.csv", make_texts(200))
    base = ("route", "calibrate", "--device", device, "--cloud", tiny_model, "--data", data)
    assert_one_line_error(invoke(*base, "--alpha", "1.5"), "alpha")
    assert_one_line_error(invoke(*base, "--alpha", "0.02", "--delta", "0"), "delta")
    assert_one_line_error(invoke(*base, "--alpha", "0.01"), "needs at least 230 examples")
    assert_one_line_error(invoke(*base, "--policy", "budget"), "needs budget")
    assert_one_line_error(invoke("route", "eval", "--device", device, "--cloud", tiny_model, "--text-column", "t"),
                          "--text-column/--label-column/--label-map go with --data")
    assert_one_line_error(invoke("route", "eval", "--device", device, "--cloud", tiny_model, "--data", data),
                          "no calibrated router")
    other = make_tiny_bert(tmp_path / "other", labels=("bad", "good"))
    assert_one_line_error(invoke("route", "calibrate", "--device", device, "--cloud", other, "--data", data,
                                 "--policy", "budget", "--budget", "0.2"), "different label sets")
    assert invoke(*base, "--policy", "budget", "--budget", "0.2").exit_code == 0
    text = (device / "router.json").read_text()
    (device / "router.json").write_text(text.replace('"budget": 0.2', '"budget": 0.9'))
    assert_one_line_error(invoke("route", "eval", "--device", device, "--cloud", tiny_model, "--data", data),
                          "router.json is corrupt or was modified")


def test_route_eval_on_small_data_skips_the_checks_it_cannot_run(tiny_bundle, tmp_path, monkeypatch):
    """600 rows: 90 calibration + 90 test examples, 90 per guarantee-check draw: too few at α = 0.01 and 0.02."""
    device = tmp_path / "device"
    shutil.copytree(tiny_bundle, device)
    cloud = make_tiny_bert(tmp_path / "cloud", seed=1)
    small = write_csv(tmp_path / "small.csv", make_texts(600, seed=4))
    result = invoke("route", "calibrate", "--device", device, "--cloud", cloud, "--data", small, "--policy", "budget",
                    "--budget", "0.3")
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path / "cloud")  # eval re-reads the router's recorded data from any directory
    result = invoke("route", "eval", "--device", device, "--cloud", cloud, "--resplits", "5", "--json",
                    tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # rich wraps long lines
    assert "hybrid" in text and "guarantee check" in text
    assert ("skipped (error at α=0.01, disagreement at α=0.01): the calibration set is too small for alpha=0.01, "
            "delta=0.1: it needs at least 230 examples") in text and "got 90" in text
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["n"] == 90 and report["data"] == "small.csv"
    for part in ("device_only", "cloud_only", "hybrid"):
        assert 0 <= report[part]["accuracy"] <= 1
    skipped = {(g["risk_is"], g["alpha"]): g["skipped"] for g in report["guarantee_check"] if g["skipped"]}
    assert set(skipped) == {(mode, a) for mode in ("error", "disagreement") for a in (0.01, 0.02)}
    assert "needs at least 230 examples" in skipped["error", 0.01] and "got 90" in skipped["error", 0.01]
    ran = [g for g in report["guarantee_check"] if not g["skipped"]]
    assert [(g["risk_is"], g["alpha"]) for g in ran] == [("error", 0.05), ("disagreement", 0.05)]
    assert all(0 <= g["population"]["held_fraction"] <= 1 for g in ran)
    assert report["same_split_as_calibration"] and report["calibration_split_sha256"] == report["split"]["sha256"]
    # other data (a domain shift) is evaluated, and said to be other data
    other = write_csv(tmp_path / "other.csv", make_texts(600, seed=5))
    result = invoke("route", "eval", "--device", device, "--cloud", cloud, "--data", other, "--resplits", "0")
    assert result.exit_code == 0, result.output
    assert "note: other.csv does not give the split the router was calibrated on" in " ".join(result.stdout.split())
    # the recorded data, changed since: refused, naming both hashes
    write_csv(small, make_texts(600, seed=6))
    changed = invoke("route", "eval", "--device", device, "--cloud", cloud)
    assert_one_line_error(changed, f"!= recorded {report['calibration_split_sha256'][:12]}")
    assert "does not give the split this router was made with" in changed.stderr
