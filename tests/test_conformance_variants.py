"""The conformance matrix beyond each family's usual checkpoint: configs that vary the padding id (and with it the
position offset of RoBERTa-style learned positions), the length of the position table and the token types.

Every variant either exports validated, with a max_length that holds (a text of exactly that many tokens runs
through the device runtime as it does in PyTorch, a longer one is truncated), or is refused in one line. The
PyTorch model itself decides which: refused exactly when it cannot classify MIN_LENGTH ordinary tokens. The
models are not fine-tuned: the random head saved with each is enough to hold ONNX against PyTorch.
"""

from __future__ import annotations

import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.arch import unique_families
from tests.conftest import make_texts, write_csv
from tests.families import make_family_model

VARIANTS = {
    "pad-0": {"pad_token_id": 0, "max_position_embeddings": 70},  # issue 25's MPNet (its padding_idx stays 1)
    "pad-3": {"pad_token_id": 3, "max_position_embeddings": 40},  # RoBERTa's positions then start after id 3
    "positions-8": {"max_position_embeddings": 8},  # enough without an offset, too few after one
    "types-0": {"type_vocab_size": 0},  # DeBERTa-v3's; the other families embed a token type for every token
    "types-1": {"type_vocab_size": 1},
    "types-2": {"type_vocab_size": 2},
}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One thread for torch and ONNX Runtime: fastest on models this small, and still fast on a busy machine."""
    import torch

    from edgeshrink.runtime.bundle import THREADS_ENV

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv(THREADS_ENV, "1")
    yield
    torch.set_num_threads(threads)


def _has_token_types(family) -> bool:
    return family.token_type_ids != "no" or "type_vocab_size" in family.test_config


CASES = [pytest.param(family, variant, id=f"{family.name}-{variant}") for family in unique_families("encoder")
         for variant in VARIANTS if not variant.startswith("types") or _has_token_types(family)]


def _runs(net, n: int) -> bool:
    """Whether the PyTorch model classifies ``n`` tokens, none of them special (ids 0-4) or padding."""
    import torch

    ids = torch.arange(n)[None] % (net.config.vocab_size - 5) + 5
    try:
        with torch.inference_mode():
            net(input_ids=ids, attention_mask=torch.ones_like(ids))
    except (IndexError, RuntimeError):  # a position or token type past its embedding table
        return False
    return True


def _text_of(tokenizer, n: int) -> str:
    """A text the bundle's tokenizer turns into exactly ``n`` tokens, special tokens included (the test Unigram
    tokenizers spell "good" letter by letter: pieces are added while they fit)."""
    def count(text):
        return len(tokenizer.encode(text).ids)

    text = ""
    while count(text) < n:
        text = next(t for t in (text + " good", text + " a", text + "a") if count(text) < count(t) <= n)
    return text


@pytest.mark.parametrize("family, variant", CASES)
def test_variant_exports_validated_or_is_refused_in_one_line(family, variant, tmp_path):
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    from edgeshrink.export import ExportConfig, export
    from edgeshrink.models.arch import MIN_LENGTH
    from edgeshrink.runtime import load

    model = make_family_model(family.name, tmp_path / "model", num_hidden_layers=1, **VARIANTS[variant])
    net = AutoModelForSequenceClassification.from_pretrained(model).eval()
    bundle = tmp_path / "bundle"
    if not _runs(net, MIN_LENGTH):
        with pytest.raises(EdgeshrinkError) as refusal:
            export(model, bundle)
        assert "\n" not in str(refusal.value) and str(refusal.value).startswith(family.label)
        assert not bundle.exists()
        return

    manifest = export(model, bundle, ExportConfig(max_length=10_000))  # as long as the model allows
    max_length = manifest["max_length"]
    assert manifest["validation"]["ok"] and _runs(net, max_length)
    if getattr(net.base_model.embeddings, "position_embeddings", None) is not None:  # a table of absolute positions
        assert not _runs(net, max_length + 1), "max_length leaves positions unused"

    predictor = load(bundle)
    text = _text_of(predictor.tokenizer, max_length)
    assert predictor.predict([text, text + " good"]).truncated == [False, True]
    feeds, _ = predictor.encode([text])
    with torch.inference_mode():
        want = net(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in feeds.items()}).logits.numpy()
    np.testing.assert_allclose(predictor.run(feeds), want, atol=1e-4)


def test_mpnet_with_pad_0_finetunes_and_exports_the_length_its_record_says(tmp_path):
    """Issue 25, item 15: MPNet's positions start after padding_idx 1 whatever pad_token_id says, so 70 positions hold
    68 tokens. The record said 69 and export died in ONNX Runtime (position_embeddings/Gather: idx=70)."""
    from edgeshrink.export import export
    from edgeshrink.models.finetune import FinetuneConfig, finetune

    base = make_family_model("mpnet", tmp_path / "base", pad_token_id=0, max_position_embeddings=70)
    data = write_csv(tmp_path / "data.csv", make_texts(60, seed=3))
    record = finetune(base, tmp_path / "cloud", FinetuneConfig(epochs=1, batch_size=16, threads=1), data=str(data))
    manifest = export(tmp_path / "cloud", tmp_path / "bundle")
    assert record["max_length"] == manifest["max_length"] == 68 and manifest["validation"]["ok"]


def test_a_config_without_the_pad_id_its_positions_start_after_is_refused():
    from edgeshrink.models.arch import FAMILIES

    class Config:
        max_position_embeddings, pad_token_id = 514, None

    with pytest.raises(EdgeshrinkError, match="^RoBERTa: config.json has no pad_token_id, and this family's "
                                              "positions start after it$"):
        FAMILIES["roberta"].max_length(Config)
    assert FAMILIES["mpnet"].max_length(Config) == 512  # MPNet's padding_idx is 1 whatever the config says
    assert FAMILIES["bert"].max_length(Config) == 514


def test_refusals_name_the_rule(tmp_path):
    from edgeshrink.export import export

    with pytest.raises(EdgeshrinkError, match=r"^RoBERTa: max_position_embeddings 8 leaves 4 usable tokens "
                                              r"\(max_position_embeddings - pad_token_id - 1\); at least 8 are needed$"):
        export(make_family_model("roberta", tmp_path / "r", pad_token_id=3, max_position_embeddings=8), tmp_path / "b")
    with pytest.raises(EdgeshrinkError, match=r"^BERT \(MiniLM\): type_vocab_size 0 leaves no token type"):
        export(make_family_model("bert", tmp_path / "t", type_vocab_size=0), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_validation_longer_than_max_length_is_refused_in_one_line(tmp_path):
    from edgeshrink.export import ExportConfig, export

    model = make_family_model("mpnet", tmp_path / "m", max_position_embeddings=40)
    with pytest.raises(EdgeshrinkError, match=r"^validation shape \(1, 39\) is longer than the export's max_length 38$"):
        export(model, tmp_path / "b", ExportConfig(validation_shapes=[(1, 8), (1, 39)]))
    assert not (tmp_path / "b").exists()
    with pytest.raises(EdgeshrinkError, match="ExportConfig: validation_shapes"):
        ExportConfig.from_dict({"validation_shapes": [[0, 8]]})


def test_an_input_the_model_cannot_take_fails_validation_in_one_line(tmp_path):
    """What export validation met in issue 25: ONNX Runtime refusing a position past the table. One line, no traceback."""
    import numpy as np

    from edgeshrink.export import export
    from edgeshrink.export.validate import validate_outputs

    model = make_family_model("bert", tmp_path / "m", max_position_embeddings=16)
    export(model, tmp_path / "b")
    feeds = {"input_ids": np.full((1, 17), 7, np.int64), "attention_mask": np.ones((1, 17), np.int64),
             "token_type_ids": np.zeros((1, 17), np.int64)}
    with pytest.raises(EdgeshrinkError, match=r"^the exported model fails on a validation input of shape \[1, 17\]: "
                                              r"\[ONNXRuntimeError\]") as failure:
        validate_outputs(str(tmp_path / "b" / "model.onnx"), lambda f: np.zeros((1, 2)), [feeds], 1e-4)
    assert "\n" not in str(failure.value)
