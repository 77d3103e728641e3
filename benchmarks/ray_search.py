"""A recipe search on the local executor vs a two-node local Ray cluster (BENCHMARKS.md, "Beyond one machine").

    .venv/bin/python benchmarks/ray_search.py [--recipe recipes/search4.yaml] [--repeats 2] [--out benchmarks/results]

Each repeat runs the whole search from scratch three times, interleaved (the order rotates each repeat), into
fresh run directories: the local executor in this process with torch and ONNX Runtime at their default
threads (what a user gets: 2 on this machine), the local executor with both at one thread (each step as a
Ray task runs it), and the Ray executor on a cluster started on this machine the way the tests start it
(an empty head node and two 1-CPU worker nodes, so two steps run at once, each on one thread). Ray's start-up (the cluster up and
connected) is timed apart from the search; the search's wall time includes Ray's own costs (worker
processes starting and importing torch, task scheduling). Both runs must choose the same candidate with
the same cache keys, or the script says where they differ. Writes ray-search.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.ray_cluster: the cluster the tests use


def _summary(report: dict) -> dict:
    candidates = report["candidates"] or [report]
    return {"chosen": report["chosen"],
            "keys": [[s["key"] for s in c["steps"]] for c in candidates],
            "calibration_accuracy": [c.get("calibration_accuracy") for c in candidates],
            "p50_ms": [(c.get("models") or [{}])[-1].get("p50_ms") for c in candidates],
            "step_seconds": sum(s["seconds"] for c in candidates for s in c["steps"] if not s["cached"]),
            "executed_steps": len({s["key"] for c in candidates for s in c["steps"] if not s["cached"]})}


def run_local(recipe: Path, out: Path, threads: int | None = None) -> dict:
    import torch

    from edgeshrink.recipes.runner import run
    from edgeshrink.runtime.bundle import THREADS_ENV

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
        os.environ[THREADS_ENV] = str(threads)
    try:
        t0 = time.perf_counter()
        report = run(recipe, out)
        return {"wall_s": time.perf_counter() - t0, **_summary(report)}
    finally:
        torch.set_num_threads(saved)
        os.environ.pop(THREADS_ENV, None)


def run_ray(recipe: Path, out: Path) -> dict:
    from edgeshrink.recipes.executors import RayExecutor
    from edgeshrink.recipes.runner import run
    from tests.ray_cluster import local_cluster

    t0 = time.perf_counter()
    with local_cluster(nodes=2) as (cluster, _):
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        report = run(recipe, out, executor=RayExecutor(cluster.address))
        wall = time.perf_counter() - t1
    overlap = _overlap_s(out)
    return {"wall_s": wall, "startup_s": startup, "both_nodes_busy_s": overlap, **_summary(report)}


def _overlap_s(out: Path) -> float:
    """Seconds during which steps ran on both nodes at once (from the executions journal)."""
    from edgeshrink.recipes.executors import executions

    spans: dict[str, list] = {}
    for step in (out / "cache").iterdir():
        events = executions(step) if step.is_dir() else []
        starts = {e["node"]: e["time"] for e in events if e["event"] == "start"}
        for e in events:
            if e["event"] == "finish":
                spans.setdefault(e["node"], []).append((starts[e["node"]], e["time"]))
    nodes = list(spans.values())
    if len(nodes) < 2:
        return 0.0
    return sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in nodes[0] for b0, b1 in nodes[1])


def main(recipe: Path, repeats: int, out: Path) -> dict:
    from edgeshrink.doctor import cpu_info

    arms = {"local": lambda r, o: run_local(r, o), "local-1-thread": lambda r, o: run_local(r, o, threads=1),
            "ray": run_ray}
    runs = {name: [] for name in arms}
    scratch = Path(tempfile.mkdtemp(prefix="edgeshrink-ray-search-"))
    try:
        for i in range(repeats):
            names = list(arms)
            order = names[i % 3:] + names[:i % 3]
            for name in order:
                where = scratch / f"{name}-{i}"
                result = arms[name](recipe, where)
                runs[name].append(result)
                print(f"repeat {i + 1}/{repeats} {name}: {result['wall_s']:.1f} s"
                      + (f" (+ {result['startup_s']:.1f} s cluster start-up; both nodes busy "
                         f"{result['both_nodes_busy_s']:.0f} s)" if name == "ray" else ""), flush=True)
                shutil.rmtree(where, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    median = {name: statistics.median(r["wall_s"] for r in rows) for name, rows in runs.items()}
    local, ray = median["local"], median["ray"]
    startup = statistics.median(r["startup_s"] for r in runs["ray"])
    same = [(a["keys"] == b["keys"], a["chosen"] == b["chosen"]) for a, b in zip(runs["local"], runs["ray"])]
    shown = recipe.resolve().relative_to(ROOT) if recipe.resolve().is_relative_to(ROOT) else recipe
    result = {"schema": "edgeshrink-ray-search/1", "recipe": str(shown), "cpu": cpu_info(), "repeats": repeats,
              "runs": runs, "median_wall_s": median, "ray_startup_median_s": startup,
              "ratio_ray_over_local": ray / local, "ratio_with_startup": (ray + startup) / local,
              "ratio_ray_over_local_1_thread": ray / median["local-1-thread"],
              "same_keys": all(k for k, _ in same), "same_choice": [c for _, c in same]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray-search.json").write_text(json.dumps(result, indent=2))
    (out / "ray-search.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    cpu = result["cpu"]
    lines = [f"Machine: {cpu['model']}, {os.cpu_count()} logical cores, ISA {' '.join(cpu['isa'])}; "
             f"recipe `{result['recipe']}`; {result['repeats']} repeat(s) of each, interleaved, from scratch.", "",
             "| executor | wall s (median) | runs | cluster start-up s | steps run | step-seconds | ratio to local |",
             "|---|---|---|---|---|---|---|"]
    for name in result["runs"]:
        rows = result["runs"][name]
        wall = result["median_wall_s"][name]
        startup = f"{result['ray_startup_median_s']:.1f}" if name == "ray" else "—"
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in rows)
        lines.append(f"| {name} | {wall:.1f} | {walls} | {startup} | "
                     f"{rows[0]['executed_steps']} | {statistics.median(r['step_seconds'] for r in rows):.0f} | "
                     f"{wall / result['median_wall_s']['local']:.2f}x |")
    lines += ["", f"Ray / local: **{result['ratio_ray_over_local']:.2f}x** (search only), "
                  f"{result['ratio_with_startup']:.2f}x with the cluster's start-up; Ray / local at one thread: "
                  f"{result['ratio_ray_over_local_1_thread']:.2f}x. Same cache keys: "
                  f"{'yes' if result['same_keys'] else 'NO'}; same candidate chosen per repeat: "
                  f"{', '.join('yes' if s else 'no' for s in result['same_choice'])}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "search4.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    main(args.recipe, args.repeats, args.out)
