"""The registry itself: entries are consistent, refusals are one line, the README's table is generated."""

from pathlib import Path

import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models import arch, surgery


def test_reference_table_is_generated_from_the_registry():
    readme = (Path(__file__).resolve().parents[2] / "docs" / "reference.md").read_text()
    table = readme.split("<!-- families:start -->\n", 1)[1].split("\n<!-- families:end -->", 1)[0]
    assert table.strip() == arch.families_table().strip(), "docs/reference.md table is stale: python -m edgeshrink.models.arch"


def test_every_entry_is_complete():
    for family in arch.FAMILIES.values():
        assert family.operations <= arch.ALL_OPERATIONS
        assert set(family.refusals) == arch.ALL_OPERATIONS - family.operations, family.name
        assert family.test_config and family.tokenizer in ("wordpiece", "bpe", "unigram")


def test_unknown_family_and_refusal_are_one_line():
    with pytest.raises(EdgeshrinkError, match="'gpt2' is not a supported model family .supported: albert"):
        arch.family_of({"model_type": "gpt2"})
    with pytest.raises(EdgeshrinkError) as info:
        arch.FAMILIES["albert"].check("drop_layers")
    message = str(info.value)
    assert "\n" not in message and message.startswith("ALBERT: cannot drop layers") and "prune attention heads" in message


def test_usable_length_counts_the_position_offset():
    class Config:
        max_position_embeddings, pad_token_id = 514, 1

    assert arch.FAMILIES["roberta"].max_length(Config) == 512
    assert arch.FAMILIES["bert"].max_length(Config) == 514


@pytest.mark.parametrize("family_name, overrides", [
    ("deberta-v2", {"share_att_key": False}),  # separate pos_key/pos_query projections, sliced with q/k/v
    ("deberta-v2", {"relative_attention": False, "position_biased_input": True, "type_vocab_size": 2}),  # v2-style
    ("albert", {"num_hidden_layers": 4}),  # one shared block at four depths
])
def test_zeroed_gate_equals_removed_head_in_variants(family_name, overrides, tmp_path):
    import torch

    from edgeshrink.models.torch_text import load_classifier
    from tests.conftest import make_texts
    from tests.families import make_family_model

    model, tokenizer = load_classifier(make_family_model(family_name, tmp_path / "m", **overrides))
    family = arch.family_of(model.config)
    texts = [t for t, _ in make_texts(5, seed=3)]

    def logits():
        with torch.inference_mode():
            return model(**tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")).logits

    gates, remove = surgery.head_gates(model, family)
    with torch.no_grad():
        gates[:, 2] = 0.0
    gated = logits()
    remove()
    surgery.keep_heads(model, family, {i: [0, 1, 3] for i in range(gates.shape[0])})
    torch.testing.assert_close(logits(), gated, rtol=0, atol=2e-5)
    assert list(tokenizer(["x"]).keys()) == [k for k in ("input_ids", "token_type_ids", "attention_mask")
                                             if k in family.inputs(model.config)]


def test_families_as_data():
    data = arch.families_data()
    assert [f["name"] for f in data] == [f.name for f in arch.unique_families()]
    albert = next(f for f in data if f["name"] == "albert")
    assert albert["operations"]["drop_layers"] is False and "drop_layers" in albert["refusals"]


def test_structured_edits_refuse_albert_with_several_layer_groups(tmp_path):
    from edgeshrink.models import surgery
    from edgeshrink.models.torch_text import load_classifier
    from tests.families import make_family_model

    model, _ = load_classifier(make_family_model("albert", tmp_path / "m", num_hidden_groups=2, inner_group_num=1))
    with pytest.raises(EdgeshrinkError, match="ALBERT: structured pruning supports num_hidden_groups = 1 only"):
        surgery.keep_heads(model, arch.family_of(model.config), {0: [0, 1]})


def test_mpnet_refuses_different_heads_per_layer(tmp_path):
    from edgeshrink.models import surgery
    from edgeshrink.models.torch_text import load_classifier
    from tests.families import make_family_model

    model, _ = load_classifier(make_family_model("mpnet", tmp_path / "m"))
    with pytest.raises(EdgeshrinkError, match="every layer must keep the same heads"):
        surgery.keep_heads(model, arch.family_of(model.config), {0: [0, 1], 1: [0, 2], 2: [0, 1]})


def test_gemma3_chat_template_and_stop_tokens():
    """Gemma 3 GGUFs carry no chat template: the registry's renders Gemma's turn format; <end_of_turn> ends it."""
    from types import SimpleNamespace

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    gemma = arch.FAMILIES["gemma3_text"]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(gemma.chat_template).render(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi "},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Capital of France?"}],
        add_generation_prompt=True, bos_token="<bos>")
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                    "<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n")
    vocab = SimpleNamespace(get_vocab=lambda: {"<eos>": 1, "<end_of_turn>": 106})
    assert gemma.stop_token_ids(vocab) == [106] and arch.FAMILIES["llama"].stop_token_ids(vocab) == []
