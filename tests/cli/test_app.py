"""The CLI through typer's CliRunner: every documented command, and bad input as one line + exit 2."""

import json
import shutil
import subprocess
import sys

from typer.testing import CliRunner

from edgeshrink import __version__
from edgeshrink.cli import app
from tests.conftest import make_texts, write_csv

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, match):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0]
    assert "Traceback" not in result.output


def test_version_and_help():
    assert invoke("--version").stdout.strip() == f"edgeshrink {__version__}"
    for command in ("doctor", "families", "finetune", "export", "predict", "bench", "quantize", "prune", "distill", "data",
                    "data prepare", "data list", "sparsify", "route", "route calibrate", "route eval"):
        result = invoke(*command.split(), "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout


def test_doctor_json(tmp_path):
    result = invoke("doctor", "--json", tmp_path / "d.json")
    assert result.exit_code == 0 and "int8" in result.stdout
    info = json.loads((tmp_path / "d.json").read_text())
    assert info["versions"]["python"] and "isa" in info["cpu"]


def test_export_predict_bench_end_to_end(tiny_model, tiny_csv, tmp_path):
    bundle = tmp_path / "bundle"
    result = invoke("export", tiny_model, "--out", bundle, "--optimize", "fusion", "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert "validated max-abs-diff" in result.stdout
    assert json.loads((tmp_path / "m.json").read_text())["export"]["optimization"] == "fusion:bert"

    result = invoke("predict", bundle, "a good film", "dull plot", "--json", "-")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    assert [p["text"] for p in payload["predictions"]] == ["a good film", "dull plot"]

    result = invoke("bench", tiny_model, bundle, "--data", tiny_csv, "--threads", "1", "--seq-lengths", "16",
                    "--batch-sizes", "4", "--latency-runs", "5", "--json", tmp_path / "b.json", "--md", tmp_path / "b.md")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert [c["kind"] for c in report["candidates"]] == ["pytorch-eager", "onnx-bundle"]
    assert "p50 ms" in (tmp_path / "b.md").read_text() and "Latency, batch 1" in result.stdout


def test_bad_inputs_are_one_line_errors(tiny_model, tiny_bundle, tmp_path):
    no_text = write_csv(tmp_path / "no_text.csv", [("x", "positive")], header=("body", "label"))
    odd_labels = write_csv(tmp_path / "odd.csv", [(t, "neutral") for t, _ in make_texts(30)])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_bundle, corrupt)
    (corrupt / "model.onnx").write_bytes(b"\x00garbage")
    existing = tmp_path / "existing"
    existing.mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["export", tmp_path / "missing", "--out", tmp_path / "o"], "does not exist"),
        (["export", tmp_path, "--out", tmp_path / "o"], "not a model directory"),
        (["export", "bert-base/uncased", "--out", tmp_path / "o"], "works offline"),
        (["finetune", tiny_model, "--data", no_text, "--out", tmp_path / "o"], "no text column 'text'"),
        (["bench", tiny_bundle, "--data", odd_labels, "--threads", "1"], "head does not have"),
        (["predict", corrupt, "hello"], "corrupt or was modified"),
        (["export", tiny_model, "--out", existing], "already exists (pass --force"),
        (["export", tiny_model, "--out", tmp_path / "a_file" / "out"], "cannot create"),
        (["bench", tiny_bundle, "--threads", "one"], "comma-separated list of integers"),
        (["export", tiny_model, "--out", tmp_path / "o2", "--optimize", "turbo"], "optimize"),
        (["data", "prepare", "no-such-set"], "unknown built-in data set"),
        (["quantize", tiny_bundle, "--method", "int2", "--out", tmp_path / "q1"], "method"),
        (["quantize", tiny_bundle, "--method", "fp16", "--target", "tpu", "--out", tmp_path / "q2"], "target"),
        (["quantize", tiny_bundle, "--method", "fp16", "--out", tiny_bundle], "must be a new directory"),
        (["quantize", corrupt, "--method", "fp16", "--out", tmp_path / "q3"], "corrupt or was modified"),
        (["quantize", tiny_bundle, "--method", "int4-weight", "--grid", "gguf", "--out", tmp_path / "q4"],
         "--grid applies to text-generation models; a text-classification model takes --method, "),
        (["bench", tiny_bundle, "--data", "sentiment-movies"], "edgeshrink data prepare sentiment-movies"),
    ]
    for args, match in cases:
        assert_one_line_error(invoke(*args), match)
    # nothing half-written next to the outputs that were refused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "corrupt", "existing", "no_text.csv", "odd.csv"]


def test_entry_point_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeshrink", "predict", str(tmp_path / "nope"), "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: bundle {tmp_path / 'nope'} does not exist"


def test_quantize_command(tiny_bundle, tiny_csv, tmp_path):
    result = invoke("quantize", tiny_bundle, "--method", "dynamic-int8", "--out", tmp_path / "q", "--data", tiny_csv,
                    "--json", tmp_path / "q.json")
    assert result.exit_code == 0, result.output
    assert "dynamic-int8" in result.stdout and "% of the source" in result.stdout and "McNemar" in result.stdout
    manifest = json.loads((tmp_path / "q.json").read_text())
    assert manifest["quantization"]["evaluation"]["accuracy"]["n"] == 30
    again = invoke("quantize", tmp_path / "q", "--method", "dynamic-int8", "--out", tmp_path / "qq")
    assert_one_line_error(again, "already quantized with the same method")


def test_quantize_command_rereads_the_recorded_data_from_anywhere(trained_bundle, tmp_path, monkeypatch):
    data, _, bundle = trained_bundle
    monkeypatch.chdir(tmp_path)  # not the directory the bundle was made from
    result = invoke("quantize", bundle, "--method", "dynamic-int8", "--out", "q")
    assert result.exit_code == 0, result.output
    assert "McNemar" in result.stdout and (tmp_path / "q" / "manifest.json").exists()
    moved = shutil.copy(data, tmp_path / "moved.csv")
    assert invoke("quantize", bundle, "--method", "fp16", "--out", "q2", "--data", moved).exit_code == 0
    recorded = json.loads((bundle / "manifest.json").read_text())["split"]["sha256"]
    other = write_csv(tmp_path / "other.csv", make_texts(300, seed=9))
    assert_one_line_error(invoke("quantize", bundle, "--method", "fp16", "--out", "q3", "--data", other),
                          f"!= recorded {recorded[:12]}")
    assert not (tmp_path / "q3").exists()


def test_prune_command(tiny_model, tiny_csv, tmp_path):
    result = invoke("prune", tiny_model, "--data", tiny_csv, "--out", tmp_path / "s", "--layers", "1", "--ffn", "0.5",
                    "--importance-examples", "32")
    assert result.exit_code == 0, result.output
    assert "layers [1]" in result.stdout and "32 FFN neurons" in result.stdout
    assert_one_line_error(invoke("prune", tiny_model, "--data", tiny_csv, "--out", tmp_path / "t", "--layers", "x"),
                          "--layers must be a count")
    assert_one_line_error(invoke("prune", tiny_model, "--data", tiny_csv, "--out", tmp_path / "t"),
                          "not smaller than its teacher")


def test_distill_command_builds_and_trains_a_student(tiny_model, tiny_csv, tmp_path):
    result = invoke("distill", "--teacher", tiny_model, "--data", tiny_csv, "--out", tmp_path / "d", "--layers", "1",
                    "--vocab", "--epochs", "1", "--json", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stdout
    record = json.loads((tmp_path / "d.json").read_text())
    assert record["prune"]["kept_layers"] == [1] and record["prune"]["vocabulary"]
    assert (tmp_path / "d.student" / "config.json").exists()
    assert_one_line_error(invoke("distill", "--teacher", tiny_model, "--data", tiny_csv, "--out", tmp_path / "e"),
                          "give --student")


def test_sparsify_command(tiny_model, tiny_csv, tmp_path):
    result = invoke("sparsify", tiny_model, "--data", tiny_csv, "--out", tmp_path / "s", "--sparsity", "0.4",
                    "--one-shot", "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert "40.0% of encoder linear weights are zero" in result.stdout and "no faster" in result.stdout
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["sparsify"]["finetune"] is None and record["sparsify"]["scope"] == "global"
    result = invoke("sparsify", tiny_model, "--data", tiny_csv, "--out", tmp_path / "g", "--sparsity", "0.3",
                    "--scope", "per-layer", "--steps", "2", "--epochs", "1", "--json", tmp_path / "g.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "g.json").read_text())["sparsify"]["finetune"]["epochs"] == 1
    assert_one_line_error(invoke("sparsify", tiny_model, "--data", tiny_csv, "--out", tmp_path / "t", "--sparsity", "1.5"),
                          "sparsity")
    assert_one_line_error(invoke("sparsify", tiny_model, "--data", tiny_csv, "--out", tmp_path / "t", "--one-shot",
                                 "--epochs", "2"), "--one-shot does not fine-tune")
    assert not (tmp_path / "t").exists()


def test_run_recipe_command(tiny_model, tmp_path):
    from tests.recipes.test_schema import GOOD

    data = write_csv(tmp_path / "d.csv", make_texts(200))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(GOOD.format(model=tiny_model, data=data))
    result = invoke("run", recipe, "--out", tmp_path / "out", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "all targets met: yes" in result.stdout and "met  max_size_mb" in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == "edgeshrink-recipe-report/1"
    recipe.write_text(GOOD.format(model=tiny_model, data=data).replace("  - export: {}", "  - exprot: {}"))
    assert_one_line_error(invoke("run", recipe, "--out", tmp_path / "o2"), "unknown step 'exprot'")


def test_prune_channels_command(trained_cnn, tmp_path):
    result = runner.invoke(app, ["prune-channels", str(trained_cnn), "--data", "digits", "--out",
                                     str(tmp_path / "p"), "--channels", "0.5", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert "pruned CNN" in result.output and (tmp_path / "p" / "edgeshrink.json").exists()
    bad = runner.invoke(app, ["prune-channels", str(trained_cnn), "--data", "digits", "--out",
                                  str(tmp_path / "q"), "--channels", "0"])
    assert bad.exit_code == 2 and "channels_keep" in bad.output and not (tmp_path / "q").exists()


def test_hostile_yaml_is_one_line_and_exit_2(tmp_path):
    from tests.recipes.test_schema import alias_bomb

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 20_000 + "]" * 20_000)
    assert_one_line_error(invoke("run", bomb, "--out", tmp_path / "o1"), "its aliases expand to more than 10000 nodes")
    assert_one_line_error(invoke("run", deep, "--out", tmp_path / "o2"), "line 1: nested deeper than 64 levels")
    assert_one_line_error(invoke("serve-cloud", tmp_path / "model", "--config", bomb), "an alias bomb?")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml", "deep.yaml"]


def test_finetune_refuses_one_class_data(tiny_model, tmp_path):
    one_class = write_csv(tmp_path / "pos.csv", [(t, "positive") for t, _ in make_texts(40)])
    assert_one_line_error(invoke("finetune", tiny_model, "--data", one_class, "--out", tmp_path / "o"),
                          "data 'pos.csv' has one class ('positive') in 40 examples: training a classifier needs at "
                          "least 2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pos.csv"]


def test_predict_and_generate_each_point_to_the_other(tiny_bundle, tmp_path):
    from edgeshrink.export.llm import LLMExportConfig, export_llm
    from tests.families import make_causal_lm

    llm = tmp_path / "llm"
    export_llm(make_causal_lm("llama", tmp_path / "llm-model"), llm,
               LLMExportConfig(validation_prompts=1, validation_new_tokens=2))
    assert_one_line_error(invoke("predict", llm, "x"),
                          f"{llm} is a language-model bundle: use `edgeshrink generate {llm} PROMPT`")
    assert_one_line_error(invoke("generate", tiny_bundle, "x"),
                          f"{tiny_bundle} is a text-classification bundle, not a language model: use `edgeshrink "
                          f"predict {tiny_bundle} TEXT`")
    # an empty stop string used to end every answer before its first token, with exit 0
    short = ("--max-new-tokens", "2")
    assert_one_line_error(invoke("generate", llm, "x", "--stop", "", *short), "--stop: a stop string cannot be empty")
    assert_one_line_error(invoke("generate", llm, "x", "--stop", "film", "--stop", "", *short), "cannot be empty")
    result = invoke("generate", llm, "x", "--stop", " ", *short)  # whitespace is a stop string
    assert result.exit_code == 0, result.output
