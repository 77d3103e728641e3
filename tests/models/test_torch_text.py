"""Loading the model a user brings: each broken directory gives one line naming the file, and nothing is written."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.torch_text import load_classifier
from tests.conftest import make_texts, write_csv
from tests.families import SPECIALS, special_roles, make_family_model

runner = CliRunner()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _cli_refuses(args, match, out):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize("cut", ["truncated", "garbage"])
def test_corrupt_weights_file(tiny_model, tiny_csv, tmp_path, cut):
    model = _copy(tiny_model, tmp_path / "model")
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3] if cut == "truncated" else b"not a safetensors file")
    with pytest.raises(EdgeshrinkError, match="model.safetensors is corrupt or truncated"):
        load_classifier(model)
    _cli_refuses(["export", model, "--out", tmp_path / "bundle"], "corrupt or truncated", tmp_path / "bundle")
    _cli_refuses(["finetune", model, "--data", tiny_csv, "--out", tmp_path / "ft"], "corrupt or truncated",
                 tmp_path / "ft")


def test_model_without_tokenizer(tiny_model, tmp_path):
    model = _copy(tiny_model, tmp_path / "model")
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    _cli_refuses(["export", model, "--out", tmp_path / "bundle"], "has no tokenizer", tmp_path / "bundle")


def test_unsupported_family(tiny_model, tmp_path):
    model = _copy(tiny_model, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    _cli_refuses(["export", model, "--out", tmp_path / "bundle"], "'gpt2' is not a supported model family",
                 tmp_path / "bundle")


def test_weights_that_do_not_match_the_config(tiny_model, tmp_path):
    model = _copy(tiny_model, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    _cli_refuses(["export", model, "--out", tmp_path / "bundle"], "do not match", tmp_path / "bundle")


def test_base_model_without_head_exports_with_a_warning(tmp_path):
    """The packaged MiniLM is a base model: its head is new. Export must validate (one head, in both the
    ONNX file and the reference) and say that the head is untrained."""
    from transformers import AutoModel

    full = make_family_model("bert", tmp_path / "full")
    AutoModel.from_pretrained(full).save_pretrained(tmp_path / "base")  # the encoder alone: no classifier
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(full / name, tmp_path / "base" / name)
    _, _ = load_classifier(tmp_path / "base")
    result = runner.invoke(app, ["export", str(tmp_path / "base"), "--out", str(tmp_path / "bundle"), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert "no trained classification head" in result.stderr and "edgeshrink finetune" in result.stderr
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["classification_head"] == "untrained" and manifest["validation"]["ok"]


def test_trained_model_reports_a_trained_head(tiny_model):
    model, _ = load_classifier(tiny_model)
    assert model.edgeshrink_untrained_head is False


def test_token_type_ids_only_for_families_that_take_them(tmp_path):
    """DistilBERT and MPNet with a BERT WordPiece tokenizer (which makes token_type_ids) fine-tune."""
    from transformers import BertTokenizerFast

    from edgeshrink.models.finetune import FinetuneConfig, finetune

    data = write_csv(tmp_path / "d.csv", make_texts(120))
    for name in ("distilbert", "mpnet"):
        model = make_family_model(name, tmp_path / name)
        bert_tok = BertTokenizerFast(vocab_file=str(model / "vocab.txt"), **special_roles(SPECIALS[name]))
        for stale in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (model / stale).unlink(missing_ok=True)
        bert_tok.save_pretrained(model)
        _, tokenizer = load_classifier(model)
        assert "token_type_ids" not in tokenizer(["a film"])
        record = finetune(model, tmp_path / f"{name}-ft", FinetuneConfig(epochs=1, max_length=32), data=str(data))
        assert record["test"]["n"] > 0


def test_roberta_usable_length_is_positions_minus_offset(tmp_path):
    """RoBERTa's positions start after padding_idx: 72 positions hold 70 tokens, and export must use 70."""
    from edgeshrink.export import ExportConfig, export

    model = make_family_model("roberta", tmp_path / "roberta", max_position_embeddings=72)
    manifest = export(model, tmp_path / "bundle", ExportConfig(max_length=128))
    assert manifest["max_length"] == 70 and manifest["validation"]["ok"]


def test_sentence_transformers_layout_resolves_to_its_transformer(tiny_model, tmp_path):
    from edgeshrink.models.sources import resolve_model

    root = tmp_path / "st"
    shutil.copytree(tiny_model, root / "0_Transformer")
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    assert resolve_model(root) == root / "0_Transformer"


def test_head_pruned_model_keeps_its_head_when_loaded_with_the_same_labels(tmp_path):
    """finetune loads with label names: weights that still fit (the trained head) must survive, as in from_pretrained."""
    import torch

    from edgeshrink.compress.prune import prune
    from edgeshrink.compress.prune.encoder import PruneConfig

    data = write_csv(tmp_path / "d.csv", make_texts(120))
    model = make_family_model("roberta", tmp_path / "roberta")
    prune(model, tmp_path / "cut", PruneConfig(heads_keep=0.5, importance_examples=16), data=str(data))
    plain, _ = load_classifier(tmp_path / "cut")
    relabelled, _ = load_classifier(tmp_path / "cut", label_names=("negative", "positive"))
    for name, weight in plain.classifier.state_dict().items():
        torch.testing.assert_close(relabelled.classifier.state_dict()[name], weight, rtol=0, atol=0)
