"""Depth pruning of causal LMs: blocks chosen by importance, physically removed; the student exports and runs."""

import json

import pytest
import torch
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.compress.llm_prune import LLMPruneConfig, prune_llm
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.runtime import load
from tests.conftest import make_texts
from tests.families import make_causal_lm

FAMILIES = ["llama", "gemma3"]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("prune-text") / "text.txt"
    path.write_text("\n\n".join(t for t, _ in make_texts(60, seed=5)))
    return str(path)


@pytest.fixture(scope="module", params=FAMILIES)
def teacher(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"prune-{request.param}")
    layers = {"num_hidden_layers": 4}
    if request.param == "gemma3":  # one global layer among sliding ones: layer_types must follow the cut
        layers["layer_types"] = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    return request.param, make_causal_lm(request.param, root / "teacher", tie_word_embeddings=True, **layers)


def _logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return net(input_ids=torch.tensor([ids])).logits[0]


def test_nothing_dropped_is_the_same_model(teacher, text, tmp_path):
    _, model = teacher
    record = prune_llm(model, tmp_path / "same", LLMPruneConfig(drop_blocks=0), data=text)
    assert record["prune"]["dropped_blocks"] == [] and record["prune"]["kept_blocks"] == [0, 1, 2, 3]
    ids = [5, 17, 42, 9, 33, 7]
    assert torch.equal(_logits(model, ids), _logits(tmp_path / "same", ids))


def test_importance_is_deterministic_and_the_student_exports_and_generates(teacher, text, tmp_path):
    family, model = teacher
    config = LLMPruneConfig(drop_blocks=2, calibration_documents=6, max_tokens=32)
    first = prune_llm(model, tmp_path / "a", config, data=text)
    second = prune_llm(model, tmp_path / "b", config, data=text)
    assert first["prune"]["scores"] == second["prune"]["scores"]
    bi = first["prune"]["scores"]["block-influence"]
    assert len(bi) == 4 and all(-1e-9 <= s <= 2 for s in bi)
    expected = sorted(sorted(range(4), key=lambda i: bi[i])[:2])
    assert first["prune"]["dropped_blocks"] == expected
    student = json.loads((tmp_path / "a" / "config.json").read_text())
    assert student["num_hidden_layers"] == 2
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert net.lm_head.weight.data_ptr() == net.get_input_embeddings().weight.data_ptr()  # still tied
    if family == "gemma3":
        kept = first["prune"]["kept_blocks"]
        teacher_types = json.loads((model / "config.json").read_text())["layer_types"]
        assert student["layer_types"] == [teacher_types[i] for i in kept]
    manifest = export_llm(tmp_path / "a", tmp_path / "bundle", LLMExportConfig(validation_prompts=2,
                                                                                 validation_new_tokens=8))
    assert manifest["validation"]["ok"] and manifest["cost"]["matmul_parameters"] < _matmuls(model)
    assert len(load(tmp_path / "bundle").generate("a good film", max_new_tokens=4, ignore_eos=True).token_ids) == 4


def _matmuls(model_dir) -> int:
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("strategy, dropped", [("first", [0, 1]), ("last", [2, 3]), ("uniform", [1, 3])])
def test_positional_choices(teacher, text, tmp_path, strategy, dropped):
    _, model = teacher
    record = prune_llm(model, tmp_path / strategy, LLMPruneConfig(drop_blocks=2, importance=strategy), data=text)
    assert record["prune"]["dropped_blocks"] == dropped and record["prune"]["scores"] is None


def test_bad_requests_are_one_line_and_write_nothing(teacher, text, tmp_path):
    _, model = teacher
    for config, message in ((LLMPruneConfig(drop_blocks=4), "at least one must stay"),
                            (LLMPruneConfig(blocks=[0, 9]), "do not exist")):
        with pytest.raises(EdgeshrinkError, match=message):
            prune_llm(model, tmp_path / "x", config, data=text)
        assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="not both"):
        LLMPruneConfig(drop_blocks=1, blocks=[1])
    result = CliRunner().invoke(app, ["prune", str(model), "--data", text, "--out", str(tmp_path / "y"),
                                      "--drop-blocks", "4"])
    assert result.exit_code == 2 and "at least one must stay" in result.stderr and not (tmp_path / "y").exists()


def test_cli_prunes_a_decoder(teacher, text, tmp_path):
    _, model = teacher
    result = CliRunner().invoke(app, ["prune", str(model), "--data", text, "--out", str(tmp_path / "s"),
                                      "--drop-blocks", "1", "--importance", "angular", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "r.json").read_text())
    assert len(record["prune"]["dropped_blocks"]) == 1 and "dropped blocks" in result.stdout
