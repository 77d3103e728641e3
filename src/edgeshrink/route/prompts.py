"""Prompted classification: a language model answers a labelled task, scored by label log-likelihood.

    from edgeshrink.route.prompts import prompt_for
    prompt = prompt_for(examples, shots=split.train)     # the built-in prompt of this data, or a generic one
    llm = PromptedLLM(load("runs/smollm2-int4"), prompt.to_dict())   # runtime/prompted.py: predict(texts)

The model's answer is the label whose answer words it finds most likely after the prompt (the sum of
the answer tokens' log-probabilities, compared over the label set), not a free generation matched
against the label: it cannot fail to parse, and it gives a distribution over the labels that the
router's temperature scaling and confidence signals use unchanged. The answer tokens' own
log-probabilities and entropies (over the whole vocabulary) give the generation signals.

Built-in prompts are registered per built-in data set (PROMPTS); any other labelled data gets a
generic prompt that lists its labels. A user's own prompt is a YAML/JSON file of ``PromptConfig``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError

GENERIC_USER = "Classify the text as one of: {labels}. Answer with the label only.\n\nText: {text}"


class PromptConfig(Config):
    version: int = 1
    user: str = GENERIC_USER  # the user turn; {text} is the input, {labels} the comma list of answers
    system: str | None = None
    answers: dict[str, str] = {}  # label -> the word the model answers with (default: the label itself)
    few_shot: int = Field(0, ge=0, le=16)  # examples from the train split shown as earlier turns
    shots: list[tuple[str, str]] = []  # the (text, label) examples, filled in from the train split
    max_text_tokens: int = Field(256, ge=8)  # longer inputs are cut (and escalated by the router's rule)
    labels: list[str] = []  # the label set, in the data's order (filled in from the data)

    def model_post_init(self, _context) -> None:
        if "{text}" not in self.user:
            raise ValueError("the user template needs a {text} placeholder")
        unknown = sorted(set(self.answers) - set(self.labels)) if self.labels else []
        if unknown:
            raise ValueError(f"answers for labels the data does not have: {unknown}")
        words = [self.answers.get(label, label) for label in self.labels]
        if len(set(words)) != len(words):
            raise ValueError(f"two labels share an answer word: {words}")


PROMPTS: dict[str, PromptConfig] = {
    "sentiment-movies": PromptConfig(user="Is the sentiment of this movie review positive or negative? Answer with "
                                          "one word.\n\nReview: {text}"),
    "sentiment-tweets": PromptConfig(user="Is the sentiment of this tweet positive or negative? Answer with one "
                                          "word.\n\nTweet: {text}"),
    "bbc-news": PromptConfig(user="Which topic is this news article about: business, entertainment, politics, sport "
                                  "or tech? Answer with one word.\n\nArticle: {text}", max_text_tokens=256),
}


def read_prompt(path: str | Path) -> PromptConfig:
    import yaml

    from edgeshrink._yaml import safe_load

    path = Path(path)
    if not path.is_file():
        raise EdgeshrinkError(f"prompt file {path} does not exist")
    try:
        data = safe_load(path.read_text(encoding="utf-8"), path)
    except yaml.YAMLError as exc:
        raise EdgeshrinkError(f"prompt file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise EdgeshrinkError(f"prompt file {path} must hold a mapping of PromptConfig keys")
    return PromptConfig.from_dict(data)


def prompt_for(examples, shots=None, base: PromptConfig | None = None, few_shot: int | None = None,
               seed: int = 0) -> PromptConfig:
    """The prompt for labelled ``examples``: ``base``, else the data's built-in one, else the generic one;
    the label set filled in, and ``few_shot`` examples drawn (balanced over labels) from ``shots``."""
    import random

    if not examples.label_names:
        raise EdgeshrinkError(f"data {examples.name!r} has no labels: a prompted task needs labelled data")
    base = base or PROMPTS.get(examples.name) or PromptConfig()
    k = base.few_shot if few_shot is None else few_shot
    chosen: list[tuple[str, str]] = []
    if k:
        if shots is None or not len(shots):
            raise EdgeshrinkError("few-shot prompts need a train split to draw examples from")
        rng = random.Random(seed)
        by_label: dict[str, list[int]] = {}
        for i, y in enumerate(shots.labels):
            by_label.setdefault(y, []).append(i)
        order = [rng.sample(rows, len(rows)) for rows in by_label.values()]
        while len(chosen) < k and any(order):
            for rows in order:  # round robin over labels, so every label is shown
                if rows and len(chosen) < k:
                    i = rows.pop()
                    chosen.append((shots.texts[i], shots.labels[i]))
        rng.shuffle(chosen)
    return PromptConfig.from_dict({**base.to_dict(), "labels": list(examples.label_names), "few_shot": k,
                                   "shots": [list(s) for s in chosen]})
