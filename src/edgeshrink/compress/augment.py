"""Transfer-set augmentation for distillation: new texts made from the train texts, labelled by the teacher.

A small student learns more from the teacher on more inputs than from the train texts alone
(Tang et al. 2019, "Distilling task-specific knowledge from BERT into simple neural networks";
TinyBERT's augmentation). Each copy of a text is, with probability ``ngram_prob``, a random n-gram of
it (n from 1 to 5 words); otherwise every word is, independently, replaced by the mask token with
probability ``mask_prob`` or by a random word of the train texts with probability ``swap_prob``.
The gold label may no longer hold for such a text, so augmented texts are trained on the teacher's
soft targets only. Deterministic for a given seed; uses only the train split's words.
"""

from __future__ import annotations

import random

from pydantic import Field

from edgeshrink.config import Config


class AugmentConfig(Config):
    version: int = 1
    copies: int = Field(0, ge=0)  # augmented texts made from every train text
    mask_prob: float = Field(0.1, ge=0, le=1)
    swap_prob: float = Field(0.1, ge=0, le=1)
    ngram_prob: float = Field(0.25, ge=0, le=1)
    max_ngram: int = Field(5, ge=1)
    seed: int = 0


def augment_texts(texts: list[str], config: AugmentConfig, mask_token: str) -> list[str]:
    """``config.copies`` new texts per input text, in input order (copies of text 0 first)."""
    rng = random.Random(config.seed)
    words_of = [text.split() for text in texts]
    pool = [word for words in words_of for word in words]
    out = []
    for words in words_of:
        for _ in range(config.copies):
            if not words:
                out.append("")
                continue
            if rng.random() < config.ngram_prob and len(words) > 1:
                n = rng.randint(1, min(config.max_ngram, len(words) - 1))
                start = rng.randint(0, len(words) - n)
                out.append(" ".join(words[start:start + n]))
                continue
            for _attempt in range(10):  # a copy equal to its text teaches nothing new
                new = [_replace(word, rng, config, mask_token, pool) for word in words]
                if new != words:
                    break
            else:
                new[rng.randrange(len(new))] = mask_token
            out.append(" ".join(new))
    return out


def _replace(word: str, rng: random.Random, config: AugmentConfig, mask_token: str, pool: list[str]) -> str:
    u = rng.random()
    if u < config.mask_prob:
        return mask_token
    if u < config.mask_prob + config.swap_prob:
        return rng.choice(pool)
    return word
