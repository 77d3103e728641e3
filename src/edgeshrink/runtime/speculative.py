"""Speculative decoding: the device model drafts, the cloud model verifies k tokens in one pass (torch-free).

    from edgeshrink.runtime import load
    from edgeshrink.runtime.speculative import LocalTarget, speculate
    result = speculate(load("runs/smollm2-int4"), LocalTarget(load("runs/smollm2-fp32")), "Tell me about tea",
                       max_new_tokens=64)                         # greedy: token for token the cloud's output
    result.text, result.stats["acceptance_rate"], result.stats["target_passes_per_token"]

Each round the draft model proposes ``k`` tokens; the target (cloud) model scores all of them, and the
token after them, in one forward pass over its KV cache. Acceptance follows Leviathan et al. (2023),
Algorithm 1: draft token x is kept with probability min(1, p(x) / q(x)) (p: target, q: draft, both after
the same penalties and temperature / top-k / top-p); at the first rejection a token is drawn from norm(max(0, p − q)),
and when all k are kept one more is drawn from p. The output is then distributed exactly as the target
model's own sampling; at temperature 0 both distributions are one-hot and the rule reduces to "keep
while the target's argmax agrees, then take the target's argmax": greedy output is token-identical.

The target is anything with ``verify(tokens, draft, sampling, prompt_tokens) -> list[(ids, probs)]``: the
target's distribution at each of the k + 1 positions, as its support and probabilities, with the penalties of
runtime/sampling.py over the answer before each position (``tokens[prompt_tokens:]`` and the draft so far).
``LocalTarget`` runs a bundle in this process; ``serve.llm_client.HTTPTarget`` asks a cloud service in one
request per round. Both keep a KV cache of the accepted prefix, cut back to it after each round.

Draft length is adaptive (as in Hugging Face's assisted generation): +2 after a round where every
drafted token was kept, −1 otherwise, within [k_min, k_max].

Prompt lookup (``PromptLookup``, as Hugging Face's ``prompt_lookup_num_tokens`` and vLLM's ``[ngram]``
speculator) drafts with no model: the tokens that followed the latest earlier occurrence of the last n tokens
in the prompt and the answer so far, n from ``ngram_max`` down to ``ngram_min`` (by default 3 down to 2:
single-token matches drafted mostly tokens the target rejected, on SmolLM2). It pays where the answer copies
its input (rewriting, summarising, editing code). Its draft is deterministic, a one-hot q: a drafted token is
kept with probability p(x), and a rejection draws from p without x, so the output is still the target's.
A round with no match verifies an empty draft: one ordinary target step. In this process the simpler path is
``Generator.stream(..., prompt_lookup=3)`` (what ``generate --draft prompt-lookup`` and ``serve
--prompt-lookup`` run): each token is drawn from its own row as without lookup, so the output is the same seed
for seed. ``speculate(PromptLookup(llm), HTTPTarget(url))`` has a remote cloud verify the drafts.

    from edgeshrink.runtime.speculative import PromptLookup
    llm = load("runs/smollm2-fp32")
    result = speculate(PromptLookup(llm), LocalTarget(llm), "Rewrite this: ...", max_new_tokens=128)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.sampling import Sampling, distribution, penalized


class CachedModel:
    """A bundle's generator with a KV cache of a token prefix, fed only what it has not seen."""

    def __init__(self, generator):
        if not generator.past_names:  # every pass would see only the tokens it is fed, not the prefix
            raise EdgeshrinkError(f"{generator.path}: model.onnx has no KV cache (no past_key_values inputs): "
                                  f"speculative decoding and prompt lookup need one")
        self.g = generator
        self.tokens: list[int] = []  # the prefix the cache holds
        self.past = generator._empty_past()

    def logits(self, tokens: list[int], rows: int = 1) -> np.ndarray:
        """Logits at the positions of ``tokens`` after the longest prefix the cache holds (at least the last
        ``rows`` positions are computed)."""
        common = 0
        limit = min(len(self.tokens), len(tokens) - rows)
        while common < limit and self.tokens[common] == tokens[common]:
            common += 1
        if common < len(self.tokens):  # cut the cache back to the common prefix
            self.past = self.g._cut(self.past, common)
            self.tokens = self.tokens[:common]
        if len(tokens) > self.g.context_length:
            raise EdgeshrinkError(f"{len(tokens)} tokens exceed the context length {self.g.context_length}")
        out, self.past = self.g._step(tokens[common:], self.past, len(tokens))
        self.tokens = list(tokens)
        return out


def check_same_vocabulary(draft, target) -> None:
    """Speculation compares token ids: the draft and the target must share the tokenizer's vocabulary."""
    if draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        raise EdgeshrinkError(f"the draft {draft.path} and the target {target.path} have different vocabularies: "
                              f"speculative decoding needs the same tokenizer")


class LocalTarget:
    """The target (cloud) model in this process."""

    def __init__(self, generator):
        self.generator = generator
        self.model = CachedModel(generator)
        self.passes = 0

    def verify(self, tokens: list[int], draft: list[int], sampling: Sampling,
               prompt_tokens: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """The target's distribution after ``tokens`` and after each drafted token: k + 1 of them (the first
        ``prompt_tokens`` of ``tokens`` are the prompt, which the penalties do not count)."""
        rows = self.model.logits(tokens + draft, rows=len(draft) + 1)
        self.passes += 1
        return verified(rows[-(len(draft) + 1):], tokens + draft, prompt_tokens, len(tokens), sampling)


def verified(rows: np.ndarray, sequence: list[int], prompt_tokens: int, first: int, sampling: Sampling) -> list:
    """The distributions of a target's logit ``rows`` at positions ``first``, ``first + 1``, ... of ``sequence``,
    each penalized for the answer before it (``sequence[prompt_tokens:position]``)."""
    return [distribution(penalized(row, sampling, sequence[prompt_tokens:first + i]), sampling)
            for i, row in enumerate(rows)]


class ModelDraft:
    """A draft model (a bundle with the target's tokenizer) in this process: samples k tokens, one step each."""

    def __init__(self, generator):
        self.generator = generator
        self.model = CachedModel(generator)

    def propose(self, tokens: list[int], answer: list[int], length: int, sampling: Sampling, rng) -> tuple[list, list]:
        """Up to ``length`` tokens after ``tokens`` (``answer``: its answer part, for the penalties) and the
        draft's distribution of each (a vector over the vocabulary)."""
        proposal, q_dists = [], []
        for _ in range(length):
            row = self.model.logits(tokens + proposal)[-1]
            ids, probs = distribution(penalized(row, sampling, answer + proposal), sampling)
            token = int(rng.choice(ids, p=probs))
            q_full = np.zeros(row.shape[-1])
            q_full[ids] = probs
            proposal.append(token)
            q_dists.append(q_full)
            if token in self.generator.eos_ids:
                break
        return proposal, q_dists


class PromptLookup:
    """Drafts by n-gram lookup in the prompt and the answer so far (see the module doc): no draft model.
    ``generator`` (the target's bundle, or one with its tokenizer) only encodes the prompt and names the end
    tokens; it never runs."""

    def __init__(self, generator, ngram_max: int = 3, ngram_min: int | None = None):
        ngram_min = min(2, ngram_max) if ngram_min is None else ngram_min
        if not 1 <= ngram_min <= ngram_max:
            raise EdgeshrinkError(f"prompt lookup needs 1 <= ngram_min <= ngram_max, got {ngram_min}, {ngram_max}")
        self.generator = generator
        self.ngram_max, self.ngram_min = ngram_max, ngram_min

    def propose(self, tokens: list[int], answer: list[int], length: int, sampling: Sampling, rng) -> tuple[list, list]:
        """Up to ``length`` tokens that followed the latest earlier occurrence of the longest suffix n-gram of
        ``tokens`` that occurs earlier; q is one-hot (None). No match: an empty draft."""
        return self.lookup(tokens, length), None

    def lookup(self, tokens: list[int], length: int) -> list[int]:
        sequence = np.asarray(tokens)
        for n in range(min(self.ngram_max, len(sequence) - 1), self.ngram_min - 1, -1):
            # windows that end before the last token, so each has a continuation
            windows = np.lib.stride_tricks.sliding_window_view(sequence[:-1], n)
            starts = np.flatnonzero((windows == sequence[-n:]).all(axis=1))
            if len(starts):
                follow = int(starts[-1]) + n
                proposal = [int(t) for t in sequence[follow:follow + length]]
                ends = [i for i, t in enumerate(proposal) if t in self.generator.eos_ids]
                return proposal[:ends[0] + 1] if ends else proposal
        return []


def drafter(draft):
    """A drafter from a generator (a draft model) or a drafter itself (``PromptLookup``)."""
    return draft if isinstance(draft, (ModelDraft, PromptLookup)) else ModelDraft(draft)


@dataclass
class SpeculativeResult:
    text: str
    token_ids: list[int]
    stop_reason: str
    stats: dict = field(default_factory=dict)


def speculate(draft, target, prompt, max_new_tokens: int = 64, sampling: Sampling | None = None,
              k: int = 4, k_min: int = 1, k_max: int = 8, adaptive: bool = True, seed: int | None = None,
              stream=None) -> SpeculativeResult:
    """Generate with ``draft`` drafting and ``target`` verifying (see the module doc).

    ``draft``: a draft model's generator, or ``PromptLookup(generator)``. ``prompt``: text, chat messages or
    token ids (encoded by the draft's tokenizer, which must be the target's). ``stream(token_ids, text)`` is
    called with the tokens each round adds."""
    sampling = sampling or Sampling()
    sampling.check()
    if not 1 <= k_min <= k <= k_max:
        raise EdgeshrinkError(f"need 1 <= k_min <= k <= k_max, got {k_min}, {k}, {k_max}")
    draft = drafter(draft)
    g = draft.generator
    prompt_ids = g.prompt_ids(prompt, max_new_tokens)
    rng = np.random.default_rng(seed)
    tokens, generated = list(prompt_ids), []
    stats = {"rounds": 0, "drafted": 0, "accepted": 0, "draft_lengths": [], "rounds_without_draft": 0}
    stop_reason, started = "length", time.perf_counter()
    while len(generated) < max_new_tokens:
        room = max_new_tokens - len(generated)
        length = min(k, room)  # the target adds one token of its own each round
        proposal, q_dists = draft.propose(tokens, generated, length, sampling, rng)
        p_dists = target.verify(tokens, proposal, sampling, len(prompt_ids))
        if len(p_dists) != len(proposal) + 1:
            raise EdgeshrinkError(f"the target answered {len(p_dists)} distributions for {len(proposal)} drafted tokens")
        accepted = 0
        new: list[int] = []
        for i, token in enumerate(proposal):
            ids, probs = p_dists[i]
            p_token = float(probs[ids == token].sum())
            q_token = 1.0 if q_dists is None else q_dists[i][token]  # None: a deterministic draft, one-hot q
            if sampling.temperature == 0:
                keep = p_token > 0
            else:
                keep = rng.random() < min(1.0, p_token / q_token)
            if not keep:
                q_on_ids = (ids == token).astype(float) if q_dists is None else q_dists[i][ids]
                residual = np.maximum(probs - q_on_ids, 0.0)
                if residual.sum() <= 0:  # p == q on p's support (only by rounding): draw from p
                    residual = probs
                new.append(int(rng.choice(ids, p=residual / residual.sum())))
                break
            new.append(token)
            accepted += 1
            if token in g.eos_ids:
                break
        else:  # every drafted token kept: one more from the target's last distribution
            ids, probs = p_dists[-1]
            new.append(int(rng.choice(ids, p=probs)))
        stats["rounds"] += 1
        stats["drafted"] += len(proposal)
        stats["accepted"] += accepted
        stats["draft_lengths"].append(len(proposal))
        stats["rounds_without_draft"] += not proposal
        if adaptive and proposal:  # an empty draft (no lookup match) says nothing about the draft length
            k = min(k_max, k + 2) if accepted == len(proposal) else max(k_min, k - 1)
        new = new[:room]
        if any(t in g.eos_ids for t in new):
            new = new[:next(i for i, t in enumerate(new) if t in g.eos_ids)]
            stop_reason = "eos"
        tokens += new
        generated += new
        if stream is not None and new:
            stream(new, g.tokenizer.decode(generated, skip_special_tokens=True))
        if stop_reason == "eos":
            break
    seconds = time.perf_counter() - started
    text = g.tokenizer.decode(generated, skip_special_tokens=True)
    rounds = stats["rounds"]
    stats.update(generated=len(generated), seconds=seconds,
                 acceptance_rate=stats["accepted"] / stats["drafted"] if stats["drafted"] else None,
                 target_passes=rounds, target_passes_per_token=rounds / len(generated) if generated else None,
                 tokens_per_target_pass=len(generated) / rounds if rounds else None,
                 target_passes_saved=len(generated) - rounds)
    stats["mean_draft_length"] = float(np.mean(stats.pop("draft_lengths"))) if rounds else None
    return SpeculativeResult(text, generated, stop_reason, stats)
