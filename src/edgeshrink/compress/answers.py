"""Do a compressed language model's chat answers stay the reference's? Greedy answers, compared token for token.

    from edgeshrink.compress.answers import answer_prompts, compare_answers
    prompts = answer_prompts("open-prompts", "test", count=64)
    report = compare_answers({"fp32": fp32, "int4": int4}, "fp32", prompts, answer_tokens=48)
    report["int4"]["greedy"]["identical"], report["int4"]["greedy"]["looping"]

Every model answers every prompt (a chat message, through its chat template) greedily, ``answer_tokens`` tokens
at most, once per sampling setting: plain greedy, and greedy with the runtime's default penalties (the answers
`edgeshrink generate` and the services give). For each candidate and setting:
- ``identical``: the share of prompts whose answer is the reference's own answer under the same setting, token for
  token over the first ``answer_tokens`` tokens (both stopped at the same token, or both ran to the limit with the
  same tokens). Strict on purpose: the first different token is where the answers part.
- ``agreed_tokens``: the mean count of leading tokens the two answers share (where they part, on average).
- ``looping``: the share of answers with a loop (runtime/loops.py: a block of tokens repeated back to back).
- ``facts``: of the factual questions in front of the prompt set (FACTS), the share answered with the right word.
Shares come with a 95% Wilson interval.
"""

from __future__ import annotations

from dataclasses import asdict

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.loops import find_loop
from edgeshrink.runtime.sampling import DEFAULT_REPETITION_PENALTY, Sampling
from edgeshrink.stats import accuracy_interval

# Questions with one right answer a small instruct model knows, and a word a right answer contains.
FACTS = (("What is the capital of France?", "Paris"), ("What is the capital of Italy?", "Rome"),
         ("Who wrote Romeo and Juliet?", "Shakespeare"), ("What is 12 times 12?", "144"),
         ("How many legs does a spider have?", ("eight", "8")),
         ("What is the boiling point of water in degrees Celsius?", "100"),
         ("What is the largest planet in the solar system?", "Jupiter"),
         ("What is the chemical symbol for gold?", "Au"))


def settings(penalties: Sampling | None = None) -> dict[str, Sampling]:
    """The sampling settings answers are compared under: plain greedy, and greedy with ``penalties`` (default: the
    runtime's defaults) when that differs."""
    penalties = penalties or Sampling(repetition_penalty=DEFAULT_REPETITION_PENALTY)
    out = {"greedy": Sampling()}
    if penalties.penalizes:
        out["penalized"] = Sampling(repetition_penalty=penalties.repetition_penalty,
                                    frequency_penalty=penalties.frequency_penalty,
                                    presence_penalty=penalties.presence_penalty)
    return out


def answer_prompts(data: str = "open-prompts", part: str = "test", count: int = 64) -> list[str]:
    """The FACTS' questions, then prompts of ``part`` of ``data`` (a labelled text data set: its split keeps the
    parts apart; the ``text`` column), ``count`` in all."""
    from edgeshrink.data import load_data, split_examples

    if count < 1:
        raise EdgeshrinkError(f"need at least one answer prompt, got {count}")
    rows = split_examples(load_data(data)).part(part)
    texts = [question for question, _ in FACTS] + list(rows.texts)
    if len(texts) < count:
        raise EdgeshrinkError(f"data {data!r} ({part}) has {len(rows.texts)} prompts; {count - len(FACTS)} are needed")
    return texts[:count]


def _share(hits: int, n: int) -> dict:
    low, high = accuracy_interval(hits, n)
    return {"share": hits / n, "count": hits, "n": n, "interval": [low, high]}


def _right(answer: str, expected) -> bool:
    words = (expected,) if isinstance(expected, str) else expected
    return any(w.lower() in answer.lower() for w in words)


def compare_answers(models: dict, reference: str, prompts: list[str], answer_tokens: int = 48,
                    sampling: dict[str, Sampling] | None = None, progress=None) -> dict:
    """``{model: {setting: {"identical", "looping", "facts"}}}`` plus ``"settings"`` and ``"answers"`` (a few
    answers of each model, for reading). ``models`` maps names to Generators (``reference`` among them)."""
    if reference not in models:
        raise EdgeshrinkError(f"the answer reference {reference!r} is not among the models ({', '.join(models)})")
    if answer_tokens < 1:
        raise EdgeshrinkError(f"answer_tokens must be positive, got {answer_tokens}")
    sampling = sampling or settings()
    facts = dict(FACTS)
    answers: dict = {name: {label: [] for label in sampling} for name in models}
    for number, prompt in enumerate(prompts):
        if progress:
            progress(f"answering prompt {number + 1}/{len(prompts)}")
        for name, g in models.items():
            for label, s in sampling.items():
                result = g.generate([{"role": "user", "content": prompt}], answer_tokens, **_options(s))
                answers[name][label].append((result.token_ids, result.text))
    report: dict = {"settings": {label: asdict(s) for label, s in sampling.items()}, "prompts": len(prompts),
                    "answer_tokens": answer_tokens, "reference": reference, "models": {}}
    for name in models:
        report["models"][name] = {}
        for label in sampling:
            mine, theirs = answers[name][label], answers[reference][label]
            fact_rows = [(text, facts[p]) for p, (_, text) in zip(prompts, mine) if p in facts]
            agreed = [_common_prefix(a[0], b[0]) for a, b in zip(mine, theirs)]
            report["models"][name][label] = {
                "identical": _share(sum(a[0] == b[0] for a, b in zip(mine, theirs)), len(prompts)),
                "agreed_tokens": sum(agreed) / len(agreed),
                "looping": _share(sum(find_loop(ids) is not None for ids, _ in mine), len(prompts)),
                "facts": _share(sum(_right(t, e) for t, e in fact_rows), len(fact_rows)) if fact_rows else None,
                "examples": [{"prompt": p, "answer": text} for p, (_, text) in list(zip(prompts, mine))[:3]]}
    return report


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _options(s: Sampling) -> dict:
    return {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
            "repetition_penalty": s.repetition_penalty, "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty}


def summary(report: dict, name: str) -> tuple[str, list[str]]:
    """(a line on ``name``'s answers, warnings): identical answers and loops per setting."""
    parts, warnings = [], []
    ref = report["models"][report["reference"]]
    for label, row in report["models"][name].items():
        identical, looping = row["identical"], row["looping"]
        parts.append(f"{label}: {100 * identical['share']:.0f}% identical, {100 * looping['share']:.0f}% loop")
        if identical["share"] < LOW_AGREEMENT:
            warnings.append(f"only {100 * identical['share']:.0f}% of {identical['n']} {label} answers are the "
                            f"reference's")
        if looping["count"] > ref[label]["looping"]["count"]:
            warnings.append(f"{looping['count']}/{looping['n']} {label} answers loop (the reference's: "
                            f"{ref[label]['looping']['count']})")
    return "; ".join(parts), warnings


LOW_AGREEMENT = 0.5  # below this share of identical answers, quantize warns
