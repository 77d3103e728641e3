"""The 4-candidate search the Ray executor tests run (2 pruned students x 2 distillation seeds), and readers of
what the executions journal says about it."""

from __future__ import annotations

from pathlib import Path

from edgeshrink.recipes.executors import executions
from tests.conftest import make_texts, write_csv

SEARCH = """\
version: 1
name: search
model: {model}
data: {data}
steps:
  - prune: {{layers: 1, ffn_keep: 0.5, vocab: true, search: {{ffn_keep: {ffn_keep}}}}}
  - distill: {{epochs: {epochs}, patience: {epochs}, learning_rate: 2.0e-3, max_length: 32, search: {{seed: [0, 1]}}}}
  - export: {{}}
  - quantize: {{method: dynamic-int8}}
  - bench: {{threads: [1], seq_lengths: [16], throughput_batch_sizes: [4], latency_runs: 5, rounds: 1, warmup_runs: 1}}
targets:
  max_accuracy_drop: 50
"""


def write_search(root: Path, model: Path, epochs: int = 10, ffn_keep: tuple[float, ...] = (0.25, 0.5)) -> Path:
    data = write_csv(root / "d.csv", make_texts(300))
    path = root / f"search-{epochs}.yaml"
    path.write_text(SEARCH.format(model=model, data=data, epochs=epochs, ffn_keep=list(ffn_keep)))
    return path


def journals(out: Path) -> dict[str, list[dict]]:
    """Step directory -> its executions (start/finish events), for every step of the run."""
    cache = out / "cache"
    return {d.name: executions(d) for d in sorted(cache.iterdir()) if d.is_dir()} if cache.is_dir() else {}


def intervals(out: Path) -> list[tuple[str, float, float, str]]:
    """(node, start, finish, step) of every finished execution."""
    spans = []
    for step, events in journals(out).items():
        starts = [e for e in events if e["event"] == "start"]
        for finish in (e for e in events if e["event"] == "finish"):
            start = max((e for e in starts if e.get("node") == finish.get("node") and e["time"] <= finish["time"]),
                        key=lambda e: e["time"])
            spans.append((finish.get("node"), start["time"], finish["time"], step))
    return spans
