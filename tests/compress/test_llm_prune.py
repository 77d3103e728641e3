"""Depth pruning of causal LMs: blocks chosen by importance, physically removed; the student exports and runs."""

import json

import pytest
import torch
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.compress.prune import prune
from edgeshrink.compress.prune.decoder import LLMPruneConfig
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
    record = prune(model, tmp_path / "same", LLMPruneConfig(drop_blocks=0), data=text)
    assert record["prune"]["dropped_blocks"] == [] and record["prune"]["kept_blocks"] == [0, 1, 2, 3]
    ids = [5, 17, 42, 9, 33, 7]
    assert torch.equal(_logits(model, ids), _logits(tmp_path / "same", ids))


def test_importance_is_deterministic_and_the_student_exports_and_generates(teacher, text, tmp_path):
    family, model = teacher
    config = LLMPruneConfig(drop_blocks=2, calibration_documents=6, max_tokens=32)
    first = prune(model, tmp_path / "a", config, data=text)
    second = prune(model, tmp_path / "b", config, data=text)
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
    record = prune(model, tmp_path / strategy, LLMPruneConfig(drop_blocks=2, importance=strategy), data=text)
    assert record["prune"]["dropped_blocks"] == dropped and record["prune"]["scores"] is None


def test_bad_requests_are_one_line_and_write_nothing(teacher, text, tmp_path):
    _, model = teacher
    for config, message in ((LLMPruneConfig(drop_blocks=4), "at least one must stay"),
                            (LLMPruneConfig(blocks=[0, 9]), "do not exist")):
        with pytest.raises(EdgeshrinkError, match=message):
            prune(model, tmp_path / "x", config, data=text)
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


def _masked_teacher_logits(model_dir, ids, ffn_kept, groups_kept):
    """The teacher with the pruned FFN neurons and heads zeroed where they enter the down/output projection."""
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = net.config
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    with torch.no_grad():
        for i, layer in enumerate(net.model.layers):
            ffn_mask = torch.zeros(config.intermediate_size, dtype=torch.bool)
            ffn_mask[ffn_kept[i]] = True
            layer.mlp.down_proj.weight[:, ~ffn_mask] = 0
            for h in range(heads):
                if h // (heads // kv) not in groups_kept[i]:
                    layer.self_attn.o_proj.weight[:, h * head_dim:(h + 1) * head_dim] = 0
        return net(input_ids=torch.tensor([ids])).logits[0]


def test_width_pruning_equals_zeroing_what_was_cut_and_exports(teacher, text, tmp_path):
    import numpy as np

    family, model = teacher
    config = LLMPruneConfig(ffn_keep=0.5, heads_keep=0.5, calibration_documents=6, max_tokens=32)
    record = prune(model, tmp_path / "narrow", config, data=text)["prune"]
    again = prune(model, tmp_path / "again", config, data=text)["prune"]
    assert record["width_scores"] == again["width_scores"]  # deterministic
    student = json.loads((tmp_path / "narrow" / "config.json").read_text())
    assert (student["intermediate_size"], student["num_attention_heads"], student["num_key_value_heads"]) == (64, 2, 1)
    assert record["dropped_blocks"] == [] and len(record["kv_groups"]) == 4
    ffn_kept = [sorted(np.argsort(-np.asarray(s), kind="stable")[:64]) for s in record["width_scores"]["ffn"]]
    ids = [5, 17, 42, 9, 33, 7]
    expected = _masked_teacher_logits(model, ids, ffn_kept, record["kv_groups"])
    assert torch.allclose(_logits(tmp_path / "narrow", ids), expected, atol=1e-5)
    manifest = export_llm(tmp_path / "narrow", tmp_path / "bundle", LLMExportConfig(validation_prompts=2,
                                                                                     validation_new_tokens=8))
    assert manifest["validation"]["ok"] and manifest["cost"]["matmul_parameters"] < _matmuls(model)
    assert len(load(tmp_path / "bundle").generate("a good film", max_new_tokens=4, ignore_eos=True).token_ids) == 4


def test_depth_and_width_together(teacher, text, tmp_path):
    _, model = teacher
    record = prune(model, tmp_path / "both", LLMPruneConfig(drop_blocks=1, ffn_keep=0.25, calibration_documents=4,
                                                                max_tokens=32), data=text)["prune"]
    assert len(record["kept_blocks"]) == 3 and len(record["width_scores"]["ffn"]) == 3 and record["ffn_neurons"] == 32


@pytest.mark.parametrize("values, message", [({"ffn_keep": 1.0}, "less than 1"), ({"ffn_keep": 0}, "greater than 0"),
                                             ({"heads_keep": 1.5}, "less than 1"), ({}, "give drop_blocks or blocks")])
def test_ratios_outside_zero_one_are_refused(values, message):
    with pytest.raises(EdgeshrinkError, match=message):
        LLMPruneConfig.from_dict(values)


def test_a_cut_that_keeps_everything_is_refused(teacher, text, tmp_path):
    _, model = teacher
    with pytest.raises(EdgeshrinkError, match="keeps all of them"):
        prune(model, tmp_path / "x", LLMPruneConfig(heads_keep=0.9), data=text)  # 2 KV groups: 0.9 keeps both
    assert not (tmp_path / "x").exists()
    result = CliRunner().invoke(app, ["prune", str(model), "--data", text, "--out", str(tmp_path / "y"), "--ffn", "1.2"])
    assert result.exit_code == 2 and "ffn_keep" in result.stderr and not (tmp_path / "y").exists()
