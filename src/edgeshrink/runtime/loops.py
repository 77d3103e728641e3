"""Loops in generated text (torch-free): a block of tokens repeated back to back.

    from edgeshrink.runtime.loops import find_loop
    loop = find_loop(result.token_ids)          # None, or Loop(start, period, repeats)
    if loop: print(f"loops from token {loop.start}: {loop.period} tokens x {loop.repeats}")

A *loop* is a block of ``period`` tokens (1 <= period <= ``max_period``) that appears at least ``min_repeats``
times in a row, covering at least ``min_span`` tokens in all (so "!!!" or "000" in an answer is no loop, while
"la France, la France, la France, la France" is). The first such block, by start position, is reported.
Greedy decoding that reaches this state rarely leaves it: ``ends_in_loop`` gives the loop the sequence's last
tokens are still in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAX_PERIOD = 32  # tokens in the repeated block: a sentence or two
MIN_REPEATS = 3
MIN_SPAN = 12  # tokens covered by the repeats together


@dataclass(frozen=True)
class Loop:
    start: int  # index of the loop's first token
    period: int  # tokens in the repeated block
    repeats: int  # whole blocks in a row (the last may be followed by part of one more)

    @property
    def end(self) -> int:
        """One past the last token of the whole repeats."""
        return self.start + self.period * self.repeats


def _runs(ids: np.ndarray, period: int):
    """(start, length) of each maximal run of positions i with ids[i] == ids[i + period]."""
    same = np.concatenate([[False], ids[period:] == ids[:-period], [False]])
    edges = np.flatnonzero(np.diff(same.astype(np.int8)))
    return zip(edges[::2], edges[1::2] - edges[::2])


def find_loop(ids: Sequence[int], max_period: int = MAX_PERIOD, min_repeats: int = MIN_REPEATS,
              min_span: int = MIN_SPAN) -> Loop | None:
    """The first loop in ``ids`` (see the module doc), or None."""
    if max_period < 1 or min_repeats < 2 or min_span < 1:
        raise ValueError("need max_period >= 1, min_repeats >= 2, min_span >= 1")
    ids = np.asarray(ids, dtype=np.int64)
    best: Loop | None = None
    for period in range(1, min(max_period, len(ids) // min_repeats) + 1):
        for start, length in _runs(ids, period):
            # a run of `length` matches at distance `period` = the block repeated (length + period) / period times
            repeats = (int(length) + period) // period
            if repeats >= min_repeats and repeats * period >= min_span and (best is None or start < best.start):
                best = Loop(int(start), period, repeats)
                break  # later runs of this period start later
    return best


def ends_in_loop(ids: Sequence[int], max_period: int = MAX_PERIOD, min_repeats: int = MIN_REPEATS,
                 min_span: int = MIN_SPAN) -> Loop | None:
    """The loop the last tokens of ``ids`` are in (it runs to the end, the last block perhaps cut short), or
    None: what a generation stopped by its token limit in the middle of a loop looks like."""
    ids = np.asarray(ids, dtype=np.int64)
    for period in range(1, min(max_period, len(ids) // min_repeats) + 1):
        differs = np.flatnonzero(ids[period:][::-1] != ids[:-period][::-1])
        matches = int(differs[0]) if differs.size else len(ids) - period  # matches back from the end
        repeats = (matches + period) // period
        if repeats >= min_repeats and repeats * period >= min_span:
            return Loop(len(ids) - matches - period, period, repeats)
    return None
