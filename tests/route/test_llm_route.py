"""The router over language models: a prompted device LLM and a fine-tuned cloud LLM, from the CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.models.finetune import finetune
from edgeshrink.models.finetune.decoder import LLMFinetuneConfig
from edgeshrink.route.confidence import confidence_scores, fit_confidence, fit_platt
from edgeshrink.errors import EdgeshrinkError
from tests.conftest import write_csv
from tests.families import make_causal_lm
from tests.models.test_llm_finetune import separable_rows


def test_platt_scaling_recovers_a_known_calibration():
    rng = np.random.default_rng(0)
    scores = rng.normal(-3.0, 1.5, 20000)  # a log-probability-like signal
    truth_t, truth_b = 0.8, 2.5
    correct = rng.random(scores.size) < 1 / (1 + np.exp(-(scores / truth_t + truth_b)))
    t, b = fit_platt(scores, correct)
    assert abs(t - truth_t) < 0.08 and abs(b - truth_b) < 0.25


def test_answer_signals_need_a_language_model():
    probs = np.array([[0.9, 0.1], [0.4, 0.6]])
    with pytest.raises(EdgeshrinkError, match="language model"):
        fit_confidence("mean-logprob", probs, None, np.array([0, 1]))
    fitted = fit_confidence("mean-logprob", probs, {"mean-logprob": np.array([-0.1, -2.0])}, np.array([0, 0]))
    high, low = confidence_scores("mean-logprob", probs, {"mean-logprob": np.array([-0.1, -2.0])}, fitted)
    assert high > low  # T > 0 keeps the signal's order


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-route")
    data = write_csv(root / "cues.csv", separable_rows(400))
    quick = LLMExportConfig(validation_prompts=2, validation_new_tokens=4)
    base = make_causal_lm("llama", root / "base")
    finetune(str(base), root / "tuned", LLMFinetuneConfig(epochs=4, batch_size=16, learning_rate=3e-3), data=str(data))
    export_llm(root / "tuned", root / "cloud", quick)
    finetune(str(base), root / "weak", LLMFinetuneConfig(epochs=0.5, batch_size=16, learning_rate=1e-3), data=str(data))
    export_llm(root / "weak", root / "device", quick)
    return root, data


@pytest.mark.parametrize("signal", ["max-prob", "mean-logprob"])
def test_calibrate_and_eval_a_language_model_pair(pair, signal, tmp_path):
    root, data = pair
    runner = CliRunner()
    result = runner.invoke(app, ["route", "calibrate", "--device", str(root / "device"), "--cloud", str(root / "cloud"),
                                 "--data", str(data), "--policy", "budget", "--budget", "0.3", "--signal", signal])
    assert result.exit_code == 0, result.output
    router = json.loads((root / "device" / "router.json").read_text())
    assert router["prompt"]["labels"] == ["negative", "positive"] and router["signal"] == signal
    assert (router["bias"] is None) == (signal == "max-prob")
    result = runner.invoke(app, ["route", "eval", "--device", str(root / "device"), "--cloud", str(root / "cloud"),
                                 "--resplits", "5", "--alphas", "0.1", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["cloud_only"]["accuracy"] >= 0.9 and report["n"] == 60
    assert abs(report["escalated_fraction"] - 0.3) < 0.15
    assert set(report["signals"]) == {"max-prob", "margin", "neg-entropy", "mean-logprob", "min-logprob",
                                      "neg-mean-entropy"}
    assert all(0 <= row["auroc"] <= 1 for row in report["signals"].values())
    assert "confidence signals of the language model" in result.output
    assert {row["risk_is"] for row in report["guarantee_check"]} == {"error", "disagreement"}


def test_router_runs_a_language_model_bundle_at_run_time(pair):
    from edgeshrink.route.router import Router
    from edgeshrink.runtime import load
    from edgeshrink.runtime.prompted import PromptedLLM

    root, _ = pair
    CliRunner().invoke(app, ["route", "calibrate", "--device", str(root / "device"), "--cloud", str(root / "cloud"),
                             "--data", str(root / "cues.csv"), "--policy", "budget", "--budget", "0.5"])
    prompt = json.loads((root / "device" / "router.json").read_text())["prompt"]
    router = Router.from_bundle(root / "device", cloud=PromptedLLM(load(root / "cloud"), prompt))
    answers = router.predict(["the plot great film", "awful music", "cast ending"], cloud_only=[False, False, True])
    assert answers[2].source == "cloud" and answers[2].reason == "cloud only"
    assert all(a.label in ("negative", "positive") for a in answers)


def test_bad_router_options_for_language_models_are_one_line_errors(pair, trained_bundle, tmp_path):
    import shutil

    root, data = pair
    csv, _, trained = trained_bundle
    bundle = shutil.copytree(trained, tmp_path / "classifier")  # calibrate writes into it
    runner = CliRunner()
    result = runner.invoke(app, ["route", "calibrate", "--device", str(bundle), "--cloud", str(bundle),
                                 "--data", str(csv), "--signal", "mean-logprob", "--policy", "budget",
                                 "--budget", "0.2"])
    assert result.exit_code == 2 and "language model" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["route", "calibrate", "--device", str(root / "device"), "--cloud", str(root / "tuned"),
                                 "--data", str(data), "--policy", "budget", "--budget", "0.2"])
    assert result.exit_code == 2 and "export it to a bundle first" in result.output
    result = runner.invoke(app, ["route", "calibrate", "--device", str(root / "device"), "--cloud", str(root / "cloud"),
                                 "--data", str(data), "--policy", "budget", "--budget", "0.2", "--signal",
                                 "mean-logprob", "--no-temperature"])
    assert result.exit_code == 2 and "Platt" in result.output
