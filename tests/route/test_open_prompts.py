"""Open prompts: agreement is "the cloud's greedy answer is the device's", checked in one cloud pass."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.route.open_prompts import open_answers, render_prompt
from edgeshrink.runtime import load
from tests.conftest import write_csv
from tests.families import make_causal_lm
from tests.runtime.test_speculative import noisy_copy

WORDS = ["a good film", "the plot", "music and cast", "why", "tell me", "a story", "of the sea", "again"]


def prompts(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 4))) for _ in range(n)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("open")
    quick = LLMExportConfig(validation_prompts=2, validation_new_tokens=4)
    export_llm(make_causal_lm("llama", root / "cloud-model", max_position_embeddings=256), root / "cloud", quick)
    export_llm(noisy_copy(root / "cloud-model", root / "device-model", noise=0.04), root / "device", quick)
    calibration = write_csv(root / "cal.csv", [(p,) for p in prompts(300, 0)], header=("text",))
    held_out = write_csv(root / "test.csv", [(p,) for p in prompts(200, 1)], header=("text",))
    return root, calibration, held_out


def test_agreement_is_the_clouds_own_greedy_answer(pair):
    root, _, _ = pair
    device, cloud = load(root / "device"), load(root / "cloud")
    texts = prompts(24, 5)
    answers = open_answers(device, cloud, texts, answer_tokens=6)
    for i, text in enumerate(texts):
        chat = render_prompt("{text}", text)
        mine, theirs = device.generate(chat, 6), cloud.generate(chat, 6)
        assert answers.agree[i] == (mine.token_ids == theirs.token_ids), text
    assert 0 < answers.agree.mean() < 1  # both outcomes occur
    assert (answers.agreed_tokens[answers.agree] == answers.answer_tokens[answers.agree]).all()


def test_calibrate_and_eval_an_open_prompt_router(pair, tmp_path):
    root, calibration, held_out = pair
    runner = CliRunner()
    result = runner.invoke(app, ["route", "calibrate", "--device", str(root / "device"), "--cloud", str(root / "cloud"),
                                 "--data", str(calibration), "--label-column", "", "--task", "open", "--label-free", "--signal",
                                 "mean-logprob", "--policy", "budget", "--budget", "0.4", "--answer-tokens", "6"])
    assert result.exit_code == 0, result.output
    router = json.loads((root / "device" / "router.json").read_text())
    assert router["task"] == "open" and router["n"] == 300 and 0 < router["calibration"]["agreement_rate"] < 1
    result = runner.invoke(app, ["route", "eval", "--device", str(root / "device"), "--cloud", str(root / "cloud"),
                                 "--data", str(held_out), "--label-column", "", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["n"] == 200 and abs(report["escalated_fraction"] - 0.4) < 0.15
    assert report["hybrid"]["agreement"] >= report["device_only"]["agreement"]
    assert "greedy answer" in result.output
    # Without held-out prompts the eval refuses to reuse the calibration rows; bad options are one line.
    result = runner.invoke(app, ["route", "eval", "--device", str(root / "device"), "--cloud", str(root / "cloud")])
    assert result.exit_code == 2 and "held-out prompts" in result.output
    for extra in (["--signal", "max-prob"], ["--policy", "accuracy", "--max-drop", "0.01"]):
        result = runner.invoke(app, ["route", "calibrate", "--device", str(root / "device"), "--cloud",
                                     str(root / "cloud"), "--data", str(calibration), "--label-column", "", "--task",
                                     "open", "--policy", "budget", "--budget", "0.4", *extra])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_task_open_calibrates_on_the_built_in_prompts_with_progress_in_a_log(pair, tmp_path, monkeypatch):
    """--task open without --data: the built-in open-prompts (here from 400 stand-in headlines), label-free on
    mean-logprob by default; in a log (CliRunner is not a terminal) the per-prompt progress is a dozen lines with
    the time left, for calibrate and eval alike (issue 27)."""
    import shutil

    from edgeshrink.data import builtin

    root, _, _ = pair
    topics = ("business", "entertainment", "politics", "sport", "tech")
    heads = [f"{p} {i}" for i, p in enumerate(prompts(400, 7))]
    monkeypatch.setattr(builtin, "_bbc_articles",
                        lambda: [(topics[i % 5], f"{topics[i % 5]}/{i:03d}", f"{h}\n\nbody") for i, h in enumerate(heads)])
    builtin.prepare("open-prompts")
    device = shutil.copytree(root / "device", tmp_path / "device")
    runner = CliRunner()
    result = runner.invoke(app, ["route", "calibrate", "--device", str(device), "--cloud", str(root / "cloud"),
                                 "--task", "open", "--policy", "budget", "--budget", "0.4", "--answer-tokens", "6"])
    assert result.exit_code == 0, result.output
    router = json.loads((device / "router.json").read_text())
    assert router["data"]["name"] == "open-prompts" and router["label_free"] and router["signal"] == "mean-logprob"
    n = router["n"]
    assert n == 60  # the calibration split: 15% of 400
    done = [line for line in result.output.splitlines() if "prompts answered and checked" in line]
    assert done[0].startswith("calibration split: prompts answered") and done[0].endswith(f" 1/{n}")
    assert done[-1].endswith(f" {n}/{n}") and 10 <= len(done) <= 13, done
    assert all("s left)" in line for line in done[1:-1]) and "loading the device and cloud models" in result.output
    result = runner.invoke(app, ["route", "eval", "--device", str(device), "--cloud", str(root / "cloud")])
    assert result.exit_code == 0, result.output
    assert "open-prompts" in result.output and "routing the test split: prompts answered" in result.output
    assert "give --data" in runner.invoke(app, ["route", "calibrate", "--device", str(device), "--cloud",
                                                str(root / "cloud"), "--policy", "budget", "--budget", "0.4"]).output


def test_per_token_agreement_and_the_handoff_section(pair, tmp_path):
    """Per token: the cloud's teacher-forced agreement (the leading run is agreed_tokens); `--handoff` adds the
    token-level threshold, its guarantee and the curve to the router."""
    import shutil

    root, calibration, _ = pair
    device, cloud = load(root / "device"), load(root / "cloud")
    answers = open_answers(device, cloud, prompts(24, 7), answer_tokens=6)
    for i in range(24):
        same = answers.token_agree[i]
        assert len(same) == len(answers.token_logprobs[i]) == answers.answer_tokens[i]
        assert answers.agreed_tokens[i] == (len(same) if same.all() else int(np.argmin(same)))
        assert np.all(answers.token_logprobs[i] <= 0) and np.all(answers.token_entropies[i] >= 0)
        assert np.all((answers.token_margins[i] >= 0) & (answers.token_margins[i] <= 1))
    routed = tmp_path / "device"
    shutil.copytree(root / "device", routed)
    result = CliRunner().invoke(app, ["route", "calibrate", "--device", str(routed), "--cloud", str(root / "cloud"),
                                      "--data", str(calibration), "--label-column", "", "--task", "open", "--policy",
                                      "budget", "--budget", "0.4", "--answer-tokens", "6", "--handoff", "--alpha",
                                      "0.2"])
    assert result.exit_code == 0, result.output
    assert "handoff (300 prompts):" in result.output and "handoff guarantee:" in result.output
    router = json.loads((routed / "router.json").read_text())
    handoff = router["handoff"]
    assert handoff["signal"] == "logprob" and handoff["prompts"] == 300 and handoff["curve"]
    # the drift watch's references: per answer, as the services observe them
    assert handoff["reference"]["n"] == 300 and len(handoff["reference"]["scores"]) == 300
    assert 0 <= handoff["answers_not_the_clouds"] <= 1
    assert (handoff["threshold"] is None) != ("of the answers are not the cloud's own" in result.output)
    assert router["reference"]["routed"] == 300 and 0 <= router["reference"]["escalated"] <= 300
    if handoff["threshold"] is not None:
        assert 0 < handoff["device_token_share"] <= 1 and handoff["disagreement_among_kept"] <= 0.2 + 0.1
    refused = CliRunner().invoke(app, ["route", "calibrate", "--device", str(routed), "--cloud", str(root / "cloud"),
                                       "--data", str(calibration), "--policy", "budget", "--budget", "0.4",
                                       "--alpha", "0.1", "--handoff"])
    assert refused.exit_code == 2 and "task open" in refused.output
    refused = CliRunner().invoke(app, ["route", "calibrate", "--device", str(routed), "--cloud", str(root / "cloud"),
                                       "--data", str(calibration), "--label-column", "", "--task", "open", "--policy",
                                       "budget", "--budget", "0.4", "--handoff"])
    assert refused.exit_code == 2 and "handoff needs alpha" in refused.output
    for flag in (["--handoff-loss", "answer"], ["--handoff-signal", "margin"]):  # without --handoff: not ignored
        refused = CliRunner().invoke(app, ["route", "calibrate", "--device", str(routed), "--cloud", str(root / "cloud"),
                                           "--data", str(calibration), "--label-column", "", "--task", "open",
                                           "--policy", "budget", "--budget", "0.4", "--alpha", "0.2", *flag])
        assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused.output
        assert "go with handoff (--handoff)" in refused.output

    evaluated = CliRunner().invoke(app, ["route", "eval", "--device", str(routed), "--cloud", str(root / "cloud"),
                                         "--data", str(pair[2]), "--label-column", "", "--resplits", "20", "--json",
                                         str(tmp_path / "e.json")])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "e.json").read_text())["handoff"]
    at = report["at_threshold"]
    assert report["prompts"] == 200 and 0 <= at["device_token_share"] <= 1 and len(report["curve"]) == 21
    # handing off where the device is unsure makes whole answers agree at least as often as the device alone
    assert at["whole_answer_agreement"] >= json.loads((tmp_path / "e.json").read_text())["device_only"]["agreement"]
    assert "handoff (logprob, 200 prompts): the device writes" in evaluated.output
    assert "handoff guarantee check: held in" in evaluated.output
