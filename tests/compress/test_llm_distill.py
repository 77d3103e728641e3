"""Distillation of a pruned causal LM from its teacher: top-k KL, resumable, NaN stop, refusals."""

import json

import pytest
import torch

import edgeshrink.compress.distill.decoder as llm_distill
from edgeshrink.compress.distill import distill
from edgeshrink.compress.distill.decoder import LLMDistillConfig, pack_sequences, topk_kl
from edgeshrink.compress.prune import prune
from edgeshrink.compress.prune.decoder import LLMPruneConfig
from edgeshrink.errors import EdgeshrinkError
from tests.conftest import make_texts
from tests.families import make_causal_lm

FAST = dict(epochs=2, sequence_tokens=32, batch_size=4, train_tokens=32 * 12, top_k=8, calibration_windows=3,
            precision="fp32", learning_rate=1e-3, patience=2)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("distill-text") / "text.txt"
    path.write_text("\n\n".join(t for t, _ in make_texts(90, seed=7)))
    return str(path)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def pair(request, tmp_path_factory, text):
    root = tmp_path_factory.mktemp(f"distill-{request.param}")
    teacher = make_causal_lm(request.param, root / "teacher", tie_word_embeddings=True, num_hidden_layers=4)
    prune(teacher, root / "student", LLMPruneConfig(blocks=[1, 2]), data=text)
    return teacher, root / "student"


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_healing_lowers_calibration_perplexity_and_keeps_the_tables(pair, text, tmp_path):
    teacher, student = pair
    record = distill(teacher, student, tmp_path / "healed", LLMDistillConfig(**FAST), data=text)["distill"]
    ppl = record["calibration_perplexity"]
    assert ppl["after"] < ppl["before"]  # the best epoch is kept, and training on the teacher's KL helps
    assert [h["epoch"] for h in record["history"]] == [1, 2] and record["train_sequences"] == 12
    before, after = _weights(student), _weights(tmp_path / "healed")
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])  # frozen tables
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert any("layers.0." in k for k in changed)
    saved = json.loads((tmp_path / "healed" / "edgeshrink.json").read_text())
    assert saved["prune"]["kept_blocks"] == [0, 3]  # the prune record travels on
    assert not (tmp_path / "healed.partial").exists()


def test_hidden_state_loss_trains_too(pair, text, tmp_path):
    teacher, student = pair
    config = LLMDistillConfig(**{**FAST, "epochs": 1, "gamma_hidden": 1.0})
    record = distill(teacher, student, tmp_path / "h", config, data=text)["distill"]
    assert record["calibration_perplexity"]["after"] < record["calibration_perplexity"]["before"]


def test_resume_after_interruption_equals_uninterrupted(pair, text, tmp_path, monkeypatch):
    teacher, student = pair
    config = LLMDistillConfig(**FAST)
    distill(teacher, student, tmp_path / "a", config, data=text)
    calls = {"n": 0}
    real = llm_distill.DecoderDistillation.batches

    def interrupt_in_second_epoch(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(llm_distill.DecoderDistillation, "batches", interrupt_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, student, tmp_path / "b", config, data=text)
    assert (tmp_path / "b.partial" / "checkpoint.pt").exists() and not (tmp_path / "b").exists()
    monkeypatch.setattr(llm_distill.DecoderDistillation, "batches", real)
    record = distill(teacher, student, tmp_path / "b", config, data=text)
    assert [h["epoch"] for h in record["distill"]["history"]] == [1, 2]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_checkpoint(pair, text, tmp_path):
    teacher, student = pair
    config = LLMDistillConfig(**{**FAST, "learning_rate": 1e30})
    with pytest.raises(EdgeshrinkError, match="the loss became nan|the loss became inf"):
        distill(teacher, student, tmp_path / "x", config, data=text)
    assert not (tmp_path / "x").exists() and (tmp_path / "x.partial").exists()


def test_refusals(pair, text, tmp_path):
    teacher, student = pair
    with pytest.raises(EdgeshrinkError, match="not smaller than its teacher"):
        distill(teacher, teacher, tmp_path / "same", LLMDistillConfig(**FAST), data=text)
    other = make_causal_lm("llama", tmp_path / "other", num_hidden_layers=1)
    vocab = json.loads((other / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["zzzz"] = max(vocab["model"]["vocab"].values()) + 1
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    with pytest.raises(EdgeshrinkError, match="tokenizer differs from the teacher's"):
        distill(teacher, other, tmp_path / "o", LLMDistillConfig(**FAST), data=text)
    with pytest.raises(EdgeshrinkError, match="unknown key"):
        LLMDistillConfig.from_dict({"epochz": 2})
    with pytest.raises(EdgeshrinkError, match="fewer than one batch"):
        distill(teacher, student, tmp_path / "t", LLMDistillConfig(**{**FAST, "train_tokens": 32}), data=text)


def test_topk_kl_is_zero_for_the_teacher_itself_and_exact_when_k_covers_the_vocabulary():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 10), torch.randn(2, 5, 10)
    top = torch.log_softmax(teacher, -1).topk(10, -1)
    assert topk_kl(teacher, top.values, top.indices, 1.0).abs() < 1e-6
    exact = torch.nn.functional.kl_div(torch.log_softmax(student, -1), torch.log_softmax(teacher, -1),
                                       log_target=True, reduction="none").sum(-1).mean()
    assert torch.allclose(topk_kl(student, top.values, top.indices, 1.0), exact, atol=1e-5)
    top3 = torch.log_softmax(teacher, -1).topk(3, -1)
    assert 0 <= topk_kl(student, top3.values, top3.indices, 1.0) <= exact + 1e-6  # coarsening never adds


def test_sequences_are_packed_with_eos_between_documents(pair):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pair[0])
    seqs = pack_sequences(tok, ["a b c d e f g h", "i j k l m n"], 6, None)
    assert all(len(s) == 6 for s in seqs) and tok.eos_token_id in sum(seqs, [])
    assert len(pack_sequences(tok, ["a b c d e f g h"] * 20, 6, 12)) == 2


def test_cli_builds_and_heals_a_student(pair, text, tmp_path):
    from typer.testing import CliRunner

    from edgeshrink.cli import app

    teacher, _ = pair
    text = tmp_path / "more.txt"  # the CLI's sequences are 256 tokens: enough text for a few batches
    text.write_text("\n\n".join(t for t, _ in make_texts(600, seed=3)))
    text = str(text)
    args = ["distill", "--teacher", str(teacher), "--data", text, "--out", str(tmp_path / "s"), "--drop-blocks", "1",
            "--ffn", "0.5", "--epochs", "1", "--train-tokens", "2000", "--json", str(tmp_path / "r.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "r.json").read_text())
    assert len(record["prune"]["kept_blocks"]) == 3 and record["prune"]["ffn_neurons"] == 64
    assert "calibration perplexity" in result.stdout and (tmp_path / "s" / "config.json").exists()
    refused = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--data", text, "--out",
                                       str(tmp_path / "t"), "--drop-blocks", "1", "--label-free"])
    assert refused.exit_code == 2 and "--label-free applies to text-classification models" in refused.stderr
    missing = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--data", text, "--out", str(tmp_path / "m"),
                                       "--drop-blocks", "1", "--extra-text", str(tmp_path / "none.txt")])
    assert missing.exit_code == 2 and "none.txt" in missing.stderr and not (tmp_path / "m.student").exists()
