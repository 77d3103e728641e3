"""Honest benchmarks: latency, throughput, memory, size and quality of several candidates, side by side.

    from edgeshrink.bench import bench, BenchConfig
    report = bench(["runs/cloud", "runs/bundle"], BenchConfig(threads=[1]), data="sentiment-movies")

``bench`` runs the bench of the candidates' task (the task registry says which): harness.py is the skeleton
they share, classifier.py and llm.py what each task measures, *_worker.py what a candidate answers in its
process, report.py the tables.
"""

from __future__ import annotations

from pathlib import Path

from edgeshrink import tasks
from edgeshrink.bench.config import BenchConfig, LLMBenchConfig
from edgeshrink.errors import EdgeshrinkError

__all__ = ["BenchConfig", "LLMBenchConfig", "bench", "candidates_task"]


def candidates_task(candidates) -> tasks.Task:
    """The one task every candidate holds (a bundle's manifest; a PyTorch directory's kind); a mix is refused."""
    if not candidates:
        raise EdgeshrinkError("give at least one candidate")
    found: dict[tasks.Task, None] = {}
    for candidate in candidates:
        if not Path(candidate).exists():
            raise EdgeshrinkError(f"candidate {candidate} does not exist")
        found[tasks.of_model(candidate)] = None
    if len(found) > 1:
        raise EdgeshrinkError(f"candidates mix {' and '.join(t.name for t in found)} models: bench them in separate runs")
    return next(iter(found))


def bench(candidates: list[str | Path], config=None, *, data=None, progress=None) -> dict:
    """Benchmark ``candidates`` (device bundles, or PyTorch model directories of classifiers), all of one task,
    in one interleaved run; return the report dict (its schema: report.py). ``config`` is the task's
    (BenchConfig, LLMBenchConfig; None: its defaults); ``data`` gives a classifier bench its test split."""
    impl = candidates_task(candidates).implementation("bench")
    progress = progress or (lambda description, advance=0, total=None: None)
    return impl.function()(candidates, impl.check_config(config), data=data, progress=progress)
