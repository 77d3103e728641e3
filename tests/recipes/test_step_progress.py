"""A recipe's steps report their progress: in a log, the verbs' counts come through as throttled lines with
the step's name and the time left (not `step 1/3 finetune ...` and then silence until the step ends)."""

import re

from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.recipes.executors import step_progress
from tests.conftest import make_texts, write_csv

RECIPE = """\
version: 1
name: progress
model: {model}
data: {data}
steps:
  - finetune: {{epochs: 2, batch_size: 4, max_length: 32}}
  - export: {{}}
  - bench: {{threads: [1], seq_lengths: [16], throughput_batch_sizes: [4], latency_runs: 5, rounds: 1, warmup_runs: 1}}
"""


def test_a_recipe_run_into_a_log_shows_each_steps_counts_with_the_time_left(tiny_model, tmp_path):
    recipe = tmp_path / "progress.yaml"
    recipe.write_text(RECIPE.format(model=tiny_model, data=write_csv(tmp_path / "d.csv", make_texts(120))))
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "out")])  # stderr: not a terminal
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    train = [line for line in lines if line.startswith("step 1/3 finetune: train ")]
    total = int(re.search(r"/(\d+)", train[-1].split("train ")[1]).group(1))
    assert total >= 40 and 5 <= len(train) <= 14, train  # every tenth of the way, not one line per step
    assert train[-1].startswith(f"step 1/3 finetune: train {total}/{total}")
    assert any(line.endswith("s left)") for line in train), train
    assert any(line.startswith("step 1/3 finetune: epoch 1: loss ") for line in lines), lines
    assert any(line.startswith("step 3/3 bench: timing ") for line in lines), lines
    assert "\r" not in result.stderr and "\x1b" not in result.stderr  # no terminal redraws in a log
    # a rerun is all cached: one line per step
    again = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "out")])
    assert [line for line in again.stderr.splitlines() if line.startswith("step ")] == [
        line for line in again.stderr.splitlines() if line.startswith("step ") and ": cached (" in line]


def test_step_progress_takes_both_callback_styles():
    messages = []
    report = step_progress("step 2/5 bench", messages.append)
    report("peak GEMM measured")
    report("timing", total=3)
    for _ in range(3):
        report("timing", advance=1)
    report("validating prompt 1/4")
    assert messages == ["step 2/5 bench: peak GEMM measured", "step 2/5 bench: timing 1/3",
                        "step 2/5 bench: timing 2/3", "step 2/5 bench: timing 3/3",
                        "step 2/5 bench: validating prompt 1/4"]
