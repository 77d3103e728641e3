import json

import pytest

from edgeshrink.compress.prune import prune
from edgeshrink.compress.prune.encoder import PruneConfig, layer_indices
from edgeshrink.errors import EdgeshrinkError
from tests.conftest import make_texts, write_csv


def _logits(model, tokenizer, texts):
    import torch

    with torch.inference_mode():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def test_removal_that_keeps_everything_changes_nothing(tiny_model):
    import torch

    from edgeshrink.models.torch_text import load_classifier

    model, tok = load_classifier(tiny_model)
    texts = [t for t, _ in make_texts(8)]
    before = _logits(model, tok, texts)
    from edgeshrink.models import arch, surgery

    family = arch.family_of(model.config)
    surgery.keep_blocks(model, family, [0, 1])
    for i, layer in enumerate(model.bert.encoder.layer):  # all neurons, in any order
        surgery.keep_ffn(model, family, i, torch.randperm(layer.intermediate.dense.out_features))
    surgery.keep_heads(model, family, {0: [0, 1], 1: [0, 1]})  # every head
    torch.testing.assert_close(_logits(model, tok, texts), before, rtol=0, atol=1e-5)


def test_layer_strategies():
    assert layer_indices(6, 2, "uniform") == [0, 5]
    assert layer_indices(6, 3, "uniform") == [0, 2, 5]
    assert layer_indices(6, 2, "first") == [0, 1] and layer_indices(6, 2, "last") == [4, 5]
    assert layer_indices(6, [5, 1], "uniform") == [1, 5] and layer_indices(6, None, "first") == list(range(6))
    with pytest.raises(EdgeshrinkError, match="out of range"):
        layer_indices(6, [6], "uniform")
    with pytest.raises(EdgeshrinkError, match="has 6"):
        layer_indices(6, 7, "uniform")


def test_pruned_student_is_smaller_reloads_and_exports(tiny_model, tmp_path):
    import torch

    from edgeshrink.export import export
    from edgeshrink.models.torch_text import load_classifier

    data = write_csv(tmp_path / "d.csv", make_texts(200))
    record = prune(tiny_model, tmp_path / "student", PruneConfig(layers=1, heads_keep=0.5, ffn_keep=0.5,
                                                                              importance_examples=64), data=str(data))
    p = record["prune"]
    assert p["kept_layers"] == [1] and p["heads_per_layer"] == 1 and p["ffn_per_layer"] == 32
    assert p["parameters"] < p["teacher_parameters"]
    student, tok = load_classifier(tmp_path / "student")
    layer = student.bert.encoder.layer[0]
    assert layer.attention.self.query.out_features == 16 and layer.intermediate.dense.out_features == 32
    assert json.loads((tmp_path / "student" / "edgeshrink.json").read_text())["prune"] == p
    manifest = export(tmp_path / "student", tmp_path / "bundle")
    assert manifest["validation"]["ok"]
    assert manifest["flops_per_example"]["64"] < export(tiny_model, tmp_path / "teacher")["flops_per_example"]["64"]
    assert torch.isfinite(_logits(student, tok, ["good film"])).all()


def test_bad_inputs(tiny_model, tmp_path):
    data = write_csv(tmp_path / "d.csv", make_texts(50))
    with pytest.raises(EdgeshrinkError, match="not smaller than its teacher"):
        prune(tiny_model, tmp_path / "s", PruneConfig(), data=str(data))
    for bad in ({"ffn_keep": 0}, {"heads_keep": 1.5}, {"layers": 0}, {"layers": [1, 1]}):
        with pytest.raises(EdgeshrinkError):
            PruneConfig.build(**bad)
    assert not (tmp_path / "s").exists()


def test_vocabulary_pruning_keeps_in_vocabulary_text_identical(tiny_model, tmp_path):
    import torch

    from edgeshrink.models.torch_text import load_classifier

    rows = [("good film", "positive"), ("bad plot", "negative"), ("the actor was dull", "negative"),
            ("a superb story", "positive")] * 20
    data = write_csv(tmp_path / "d.csv", rows)
    record = prune(tiny_model, tmp_path / "s", PruneConfig(vocab=True), data=str(data))
    vocab = record["prune"]["vocabulary"]
    assert vocab["vocab_size"] < vocab["teacher_vocab_size"]
    teacher, teacher_tok = load_classifier(tiny_model)
    student, student_tok = load_classifier(tmp_path / "s")
    assert student.get_input_embeddings().weight.shape[0] == vocab["vocab_size"]
    in_vocab = ["good film", "the actor was dull", "a superb story bad"]
    for text in in_vocab:  # the same pieces, and the same logits
        assert student_tok.tokenize(text) == teacher_tok.tokenize(text)
    torch.testing.assert_close(_logits(student, student_tok, in_vocab), _logits(teacher, teacher_tok, in_vocab),
                               rtol=0, atol=1e-5)
    # a word that needs a dropped piece becomes the unknown token
    assert student_tok.tokenize("music") == ["[UNK]"] and teacher_tok.tokenize("music") == ["music"]
    ids = student_tok("good film")["input_ids"]
    assert ids[0] == student_tok.cls_token_id and ids[-1] == student_tok.sep_token_id


def test_vocabulary_pruned_student_runs_on_the_device(tiny_model, tmp_path):
    from edgeshrink.export import export
    from edgeshrink.runtime import load

    data = write_csv(tmp_path / "d.csv", make_texts(100))
    prune(tiny_model, tmp_path / "s", PruneConfig(vocab=True, layers=1), data=str(data))
    manifest = export(tmp_path / "s", tmp_path / "b")
    assert manifest["validation"]["ok"]
    result = load(tmp_path / "b").predict(["good film", "completely unseen words xyzzy"])
    assert len(result.labels) == 2
