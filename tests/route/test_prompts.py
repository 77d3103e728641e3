"""Prompt configs: validation, round trip, built-in vs generic prompts, balanced few-shot draws."""

import pytest

from edgeshrink.data.sources import Examples
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.prompts import GENERIC_USER, PROMPTS, PromptConfig, prompt_for, read_prompt


def _examples(name="mine", n=40):
    labels = ["neg", "pos", "mixed"]
    return Examples(name, [str(i) for i in range(n)], [f"text {i}" for i in range(n)], [labels[i % 3] for i in range(n)],
                    tuple(labels))


def test_config_checks_itself_and_round_trips():
    config = PromptConfig(user="Q: {text}", labels=["a", "b"], answers={"a": "yes"}, few_shot=2)
    assert PromptConfig.from_json(config.to_json()) == config
    for bad in ({"user": "no placeholder"}, {"labels": ["a"], "answers": {"z": "w"}},
                {"labels": ["a", "b"], "answers": {"a": "b"}}, {"colour": 1}, {"few_shot": -1}):
        with pytest.raises(EdgeshrinkError):
            PromptConfig.from_dict(bad)


def test_built_in_prompt_else_generic_with_the_labels_filled_in():
    assert prompt_for(_examples("sentiment-movies")).user == PROMPTS["sentiment-movies"].user
    generic = prompt_for(_examples())
    assert generic.user == GENERIC_USER and generic.labels == ["neg", "pos", "mixed"] and generic.shots == []


def test_few_shot_draws_cover_every_label_and_are_seeded():
    data = _examples()
    chosen = prompt_for(data, shots=data, few_shot=3, seed=1)
    assert sorted(label for _, label in chosen.shots) == ["mixed", "neg", "pos"]
    assert chosen == prompt_for(data, shots=data, few_shot=3, seed=1)
    with pytest.raises(EdgeshrinkError, match="train split"):
        prompt_for(data, few_shot=2)


def test_unlabelled_data_and_bad_prompt_files_are_one_line_errors(tmp_path):
    with pytest.raises(EdgeshrinkError, match="no labels"):
        prompt_for(Examples("u", ["0"], ["a"], [""], ()))
    (tmp_path / "p.yaml").write_text("user: [unclosed\n")
    with pytest.raises(EdgeshrinkError, match="not valid YAML"):
        read_prompt(tmp_path / "p.yaml")
    (tmp_path / "q.yaml").write_text("user: 'Q: {text}'\ntypo: 1\n")
    with pytest.raises(EdgeshrinkError, match="typo: unknown key"):
        read_prompt(tmp_path / "q.yaml")
    with pytest.raises(EdgeshrinkError, match="does not exist"):
        read_prompt(tmp_path / "missing.yaml")
