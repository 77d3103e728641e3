import pytest

from edgeshrink.compress.distill import encoder as distill_module
from edgeshrink.compress.distill import distill
from edgeshrink.compress.distill.encoder import DistillConfig
from edgeshrink.compress.prune import prune
from edgeshrink.compress.prune.encoder import PruneConfig
from edgeshrink.errors import EdgeshrinkError
from tests.conftest import make_texts, write_csv

FAST = dict(epochs=2, batch_size=16, learning_rate=1e-3, max_length=32)


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = write_csv(root / "d.csv", make_texts(160))
    prune(tiny_model, root / "student", PruneConfig(layers=1, ffn_keep=0.5, vocab=True), data=str(data))
    return tiny_model, root / "student", str(data), root


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_distill_trains_and_records(setup, tmp_path):
    teacher, student, data, _ = setup
    record = distill(teacher, student, tmp_path / "out", DistillConfig(gamma_hidden=1.0, **FAST), data=data)
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert record["test"]["n"] == 24 and record["prune"]["kept_layers"] == [1]
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert not (tmp_path / "out.partial").exists()  # work directory cleaned up after success


def test_resume_after_interruption_equals_uninterrupted(setup, tmp_path, monkeypatch):
    import torch

    teacher, student, data, _ = setup
    config = DistillConfig(**FAST)
    distill(teacher, student, tmp_path / "a", config, data=data)

    calls = {"n": 0}
    real_batches = distill_module.EncoderDistillation.batches

    def interrupt_in_second_epoch(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_batches(*args)

    monkeypatch.setattr(distill_module.EncoderDistillation, "batches", interrupt_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, student, tmp_path / "b", config, data=data)
    assert (tmp_path / "b.partial" / "checkpoint.pt").exists() and not (tmp_path / "b").exists()
    monkeypatch.setattr(distill_module.EncoderDistillation, "batches", real_batches)
    record = distill(teacher, student, tmp_path / "b", config, data=data)
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_inputs(setup, tmp_path, tiny_model):
    teacher, student, data, root = setup
    with pytest.raises(EdgeshrinkError, match="not smaller than its teacher"):
        distill(teacher, teacher, tmp_path / "o", DistillConfig(**FAST), data=data)
    other = root / "other-teacher"
    from tests.conftest import make_tiny_bert

    make_tiny_bert(other)
    (other / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nzebra\n")
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab_file=str(other / "vocab.txt")).save_pretrained(other)
    with pytest.raises(EdgeshrinkError, match="does not match the teacher's"):
        distill(other, student, tmp_path / "o", DistillConfig(**FAST), data=data)
    with pytest.raises(EdgeshrinkError, match="at least one"):
        DistillConfig.build(alpha_ce=0, beta_kd=0)
    assert not (tmp_path / "o").exists()


def test_nan_loss_stops_and_keeps_checkpoint(setup, tmp_path):
    teacher, student, data, _ = setup
    with pytest.raises(EdgeshrinkError, match=r"loss became nan at step 1 \(epoch 1\)"):
        distill(teacher, student, tmp_path / "n", DistillConfig(epochs=1, learning_rate=1e-3, max_length=32,
                                                                        temperature=1e-45), data=data)
    assert (tmp_path / "n.partial").exists() and not (tmp_path / "n").exists()


def test_augmented_texts_are_distilled_without_labels(setup, tmp_path):
    teacher, student, data, _ = setup
    config = DistillConfig.from_dict({**FAST, "epochs": 1, "augment": {"copies": 2}})
    record = distill(teacher, student, tmp_path / "aug", config, data=data)
    assert record["augmented_examples"] == 2 * record["train_examples"]
    assert record["distill"]["augment"]["copies"] == 2
    assert DistillConfig.from_json(config.to_json()) == config


def test_attention_map_loss_follows_kept_heads(setup, tmp_path):
    teacher, _, data, root = setup
    student = root / "student-heads"
    prune(teacher, student, PruneConfig(layers=[1], heads_keep=0.5, vocab=True), data=data)
    record = distill(teacher, student, tmp_path / "att", DistillConfig(delta_attention=1.0, **FAST), data=data)
    assert record["distill"]["delta_attention"] == 1.0 and len(record["history"]) == 2


def test_attention_map_loss_needs_the_same_tokenization(setup, tmp_path):
    teacher, student, _, _ = setup
    other = write_csv(tmp_path / "other.csv", [("zebra good film", "positive"), ("quokka bad film", "negative")] * 40)
    with pytest.raises(EdgeshrinkError, match="tokenize like the teacher"):
        distill(teacher, student, tmp_path / "o", DistillConfig(delta_attention=1.0, **FAST), data=str(other))
    distill(teacher, student, tmp_path / "o", DistillConfig(**FAST), data=str(other), force=True)  # fine without it


def test_attention_loss_compares_each_head_with_its_teacher_head():
    import torch

    from edgeshrink.compress.distill.encoder import _attention_loss

    teacher_attn = [torch.softmax(torch.randn(2, 4, 5, 5), -1) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    student = [teacher_attn[2][:, [1, 3]]]  # student layer 0 = teacher layer 2, heads 1 and 3 kept
    assert _attention_loss(student, teacher_attn, [2], [[1, 3]], mask).item() == 0
    assert _attention_loss(student, teacher_attn, [2], [[0, 3]], mask).item() > 0
