"""How the next token is chosen (torch-free): penalties on the logits, then temperature, top-k, top-p.

    from edgeshrink.runtime.sampling import Sampling, distribution, penalized
    sampling = Sampling(temperature=0.7, top_p=0.9, repetition_penalty=1.1)
    ids, probs = distribution(penalized(logits, sampling, generated_ids), sampling)

Penalties, as the ecosystem defines them, over the tokens generated so far (the answer):
- ``repetition_penalty`` (Keskar et al. 2019, as Hugging Face, vLLM and llama.cpp apply it): the logit of every
  token already generated is divided by it when positive and multiplied by it when negative; 1 is off, above 1
  discourages repeats. The window is the answer only, where Hugging Face and vLLM also count the prompt (and
  llama.cpp / Ollama the last 64 tokens): a right chat answer restates the question's words ("The capital of
  France is ..."), and a penalty on them pushed a small model off its answer, while the loops it is for are
  repeats of the answer's own tokens (BENCHMARKS.md, "Answers").
- ``frequency_penalty`` / ``presence_penalty`` (OpenAI's): ``logit -= frequency * count + presence * [count > 0]``
  over the same tokens, each in [-2, 2]; 0 is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgeshrink.errors import EdgeshrinkError

# The repetition penalty of `edgeshrink generate` and the language-model services when none is given (measured:
# BENCHMARKS.md, "Chat answers"). The Python API (Generator.stream/generate) keeps 1, the model's own greedy
# answer, as Hugging Face and vLLM do.
DEFAULT_REPETITION_PENALTY = 1.1


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max()
    return z - np.log(np.exp(z).sum())


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # 1: off
    frequency_penalty: float = 0.0  # 0: off
    presence_penalty: float = 0.0  # 0: off

    def check(self) -> None:
        # written so that NaN fails too
        if not (self.temperature >= 0 and 0 < self.top_p <= 1 and self.top_k >= 0 and math.isfinite(self.temperature)):
            raise EdgeshrinkError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0 (finite numbers)")
        if not (0 < self.repetition_penalty < math.inf):
            raise EdgeshrinkError(f"repetition_penalty must be a positive number (1: off), got "
                                  f"{self.repetition_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise EdgeshrinkError(f"{name} must be in [-2, 2] (0: off), got {getattr(self, name)}")

    @property
    def penalizes(self) -> bool:
        return self.repetition_penalty != 1 or self.frequency_penalty != 0 or self.presence_penalty != 0


def penalized(logits: np.ndarray, sampling: Sampling, generated: Sequence[int]) -> np.ndarray:
    """``logits`` (one row) after ``sampling``'s penalties, given the tokens ``generated`` so far (the answer,
    not the prompt). Returns ``logits`` itself when no penalty is on or nothing is generated yet."""
    if not sampling.penalizes or not len(generated):
        return logits
    out = np.array(logits, dtype=np.float32)
    ids, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
    keep = (ids >= 0) & (ids < out.shape[-1])
    ids, counts = ids[keep], counts[keep]
    if sampling.repetition_penalty != 1:
        values = out[ids]
        out[ids] = np.where(values > 0, values / sampling.repetition_penalty, values * sampling.repetition_penalty)
    if sampling.frequency_penalty or sampling.presence_penalty:
        out[ids] -= sampling.frequency_penalty * counts + sampling.presence_penalty
    return out


def distribution(logits: np.ndarray, sampling: Sampling) -> tuple[np.ndarray, np.ndarray]:
    """The next-token distribution a sampler with ``sampling`` draws from, as (token ids, probabilities):
    temperature, then top-k, then top-p (nucleus), on logits already ``penalized``. At temperature 0 it is
    one-hot on the argmax, so a draw from it is greedy."""
    if sampling.temperature == 0:
        return np.array([int(np.argmax(logits))]), np.array([1.0])
    scaled = log_softmax(logits) / sampling.temperature
    order = np.argsort(-scaled, kind="stable")
    if sampling.top_k:
        order = order[:sampling.top_k]
    probs = np.exp(scaled[order] - scaled[order].max())
    probs /= probs.sum()
    if sampling.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(probs), sampling.top_p)) + 1
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return order, probs
