"""The registry itself: entries are consistent, refusals are one line, the README's table is generated."""

from pathlib import Path

import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models import arch


def test_readme_table_is_generated_from_the_registry():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- families:start -->\n", 1)[1].split("\n<!-- families:end -->", 1)[0]
    assert table.strip() == arch.families_table().strip(), "README table is stale: python -m edgeshrink.models.arch"


def test_every_entry_is_complete():
    for family in arch.FAMILIES.values():
        assert family.operations <= arch.ALL_OPERATIONS
        assert set(family.refusals) == arch.ALL_OPERATIONS - family.operations, family.name
        assert family.test_config and family.tokenizer in ("wordpiece", "bpe", "unigram")


def test_unknown_family_and_refusal_are_one_line():
    with pytest.raises(EdgeshrinkError, match="'gpt2' is not a supported encoder family .supported: albert"):
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
