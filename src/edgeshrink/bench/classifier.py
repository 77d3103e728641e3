"""The classifier bench (text and tensor classifiers): size, memory, accuracy, latency and throughput of
several candidates, side by side, in one run (``edgeshrink.bench.bench`` on classifiers).

Candidates are device bundles or PyTorch model directories (classifier_worker.py), each in its own process
(harness.py). Every timing cell (threads × sequence length × batch; a model that takes tensors has one
shape) is measured in round-robin passes over the candidates. Each latency is set against the physical
limit: FLOPs per request ÷ the measured peak GEMM rate at the same thread count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeshrink import tasks
from edgeshrink.bench.config import BenchConfig
from edgeshrink.bench.flops import flops_at
from edgeshrink.bench.harness import machine_info, measure_peaks, round_robin, spawned
from edgeshrink.bench.report import CLASSIFIER_SCHEMA
from edgeshrink.data import DataConfig, load_data, split_examples
from edgeshrink.data.images import model_inputs
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.sources import check_labels
from edgeshrink.runtime.tasks import runtime_task
from edgeshrink.stats import accuracy_interval

OPENER = "edgeshrink.bench.classifier_worker:open_candidate"


def bench_classifiers(candidates: list[str | Path], config: BenchConfig, *, data: DataConfig | str | None = None,
                      progress) -> dict:
    """Benchmark classifier ``candidates`` of one task (see ``edgeshrink.bench.bench``); return the report dict."""
    paths = [Path(c) for c in candidates]
    for path in paths:
        if not path.is_dir() or not ((path / "manifest.json").exists() or (path / "config.json").exists()):
            raise EdgeshrinkError(f"candidate {path} is neither a device bundle nor a PyTorch model directory")
    task = tasks.of_model(paths[0])
    tokenized = runtime_task(task.name).tokenized  # text in tokens: timed per sequence length
    test = split_info = None
    if data is not None and config.accuracy:
        split = split_examples(load_data(data), config.split)
        test = split.test if config.max_accuracy_examples is None else split.test.head(config.max_accuracy_examples)
        split_info = split.info()
        text_data = isinstance(model_inputs(test), list)
        if text_data != tokenized:
            raise EdgeshrinkError(f"candidate {paths[0]} is a {task.name} model; data {test.name!r} is "
                                  f"{'text' if text_data else 'images'}")

    peaks = measure_peaks(config.threads)
    progress("peak GEMM measured")
    with spawned([(path, OPENER, {"path": str(path)}) for path in paths], progress) as workers:
        results = [{"name": path.name, "path": str(path), **{k: w.info[k] for k in
                    ("kind", "precision", "size_bytes", "parameters", "max_length")}, "task": task.name,
                    "flops_per_example": w.info["flops_per_example"]} for path, w in zip(paths, workers)]
        if test is not None:
            for worker in workers:
                check_labels(test.label_names, worker.info["labels"], f"candidate {worker.label}")
        cells = _cells(config, tokenized)
        progress("timing", total=len(cells) + (len(workers) if test is not None else 0))
        timings: dict[tuple, list[list[float]]] = {}
        for threads, batch, seq_len, runs in cells:
            passes = min(config.rounds, runs)
            active = [i for i, w in enumerate(workers) if _fits(seq_len, w.info, tokenized)]
            warmup = [(threads, batch, seq_len, config.warmup_runs)] if config.warmup_runs else []
            replies = round_robin(workers, "time", (threads, batch, seq_len, max(1, runs // passes)), passes=passes,
                                  warmup=warmup, active=active)
            timings[(threads, batch, seq_len)] = [sum(r, []) for r in replies]
            progress("timing", advance=1)
        if test is not None:
            predictions = []
            for worker in workers:
                predictions.append(worker.call("predict", config.accuracy_threads, model_inputs(test)))
                progress("timing", advance=1)
            _add_accuracy(results, workers, predictions, test)
        for worker, result in zip(workers, results):
            result["torch_imported"] = worker.close().get("torch_imported")
    for path, result in zip(paths, results):
        result["peak_rss_bytes"] = _peak_rss(path, config, tokenized)
    progress("memory measured")

    _add_timings(results, timings, peaks, tokenized)
    return {"notes": slower_notes(results), "schema": CLASSIFIER_SCHEMA, "machine": machine_info(), **peaks,
            "config": config.to_dict(), "data": split_info, "candidates": results}


def _fits(seq_len: int, info: dict, tokenized: bool) -> bool:
    """A sequence length above a text model's max_length is skipped, not silently truncated."""
    return not tokenized or info["max_length"] is None or seq_len <= info["max_length"]


def _cells(config: BenchConfig, tokenized: bool) -> list[tuple[int, int, int, int]]:
    """(threads, batch, seq_len, runs), ordered by threads so each worker switches thread count once."""
    cells = []
    for threads in config.threads:
        for seq_len in config.seq_lengths if tokenized else [0]:
            cells.append((threads, 1, seq_len, config.latency_runs))
            for batch in config.throughput_batch_sizes:
                cells.append((threads, batch, seq_len, config.throughput_runs))
    return cells


def _peak_rss(path: Path, config: BenchConfig, tokenized: bool) -> int:
    """Peak resident memory of a fresh process that loads the candidate and runs its largest batch."""
    with spawned([(path, OPENER, {"path": str(path)})]) as (worker,):
        seq = max(s for s in config.seq_lengths if _fits(s, worker.info, tokenized)) if tokenized else 0
        worker.call("time", min(config.threads), max(config.throughput_batch_sizes + [1]), seq, 1)
        return int(worker.close()["peak_rss_bytes"])


def _add_accuracy(results, workers, predictions, test) -> None:
    first = None
    for worker, result, probs in zip(workers, results, predictions):
        labels = worker.info["labels"]
        predicted = [labels[i] for i in probs.argmax(axis=1)]
        correct = sum(p == y for p, y in zip(predicted, test.labels))
        low, high = accuracy_interval(correct, len(test))
        result["accuracy"] = {"value": correct / len(test), "correct": correct, "n": len(test), "ci95": [low, high]}
        if first is None:
            first = predicted
        result["agreement_with_first"] = float(np.mean([a == b for a, b in zip(predicted, first)]))


def _add_timings(results, timings, peaks, tokenized: bool) -> None:
    baseline: dict[tuple, float] = {}
    for i, result in enumerate(results):
        latency, throughput = [], []
        for (threads, batch, seq_len), samples in timings.items():
            times = samples[i]
            if not times:
                continue
            row = {"threads": threads, "batch": batch, "seq_len": seq_len if tokenized else None}
            if batch == 1:
                ms = np.array(times) * 1e3
                row.update({f"p{p}_ms": float(np.percentile(ms, p)) for p in (50, 90, 99)})
                row.update(mean_ms=float(ms.mean()), n=int(ms.size))
                key = ("lat", threads, seq_len)
                baseline.setdefault(key, row["p50_ms"])
                row["speedup_vs_first"] = baseline[key] / row["p50_ms"]
                flops = flops_at(result["flops_per_example"], seq_len if row["seq_len"] else None)
                if flops:
                    row["flops"] = flops
                    row["limit_ms"] = flops / (peaks["peak_gemm_gflops"][str(threads)] * 1e9) * 1e3
                    row["times_limit"] = row["p50_ms"] / row["limit_ms"]
                latency.append(row)
            else:
                rate = batch / float(np.median(times))
                key = ("thr", threads, batch, seq_len)
                baseline.setdefault(key, rate)
                row.update({"examples_per_s": rate, "n": len(times), "speedup_vs_first": rate / baseline[key]})
                throughput.append(row)
        result["latency"] = latency
        result["throughput"] = throughput


def slower_notes(results: list[dict]) -> list[str]:
    """Plain-words flags: a quantized candidate slower than the first candidate (the fp32 reference)."""
    notes = []
    first = {(r["threads"], r["seq_len"]): r["p50_ms"] for r in results[0]["latency"]} if results else {}
    for result in results[1:]:
        if result.get("precision", "fp32") == "fp32":
            continue
        for row in result["latency"]:
            ref = first.get((row["threads"], row["seq_len"]))
            if ref and row["p50_ms"] > ref * 1.03:  # 3%: below that it is within run-to-run noise here
                where = f"{row['threads']} thread{'s' if row['threads'] > 1 else ''}" + (
                    f", {row['seq_len']} tokens" if row["seq_len"] else "")
                notes.append(f"{result['name']} is quantized ({result['precision']}) but slower than "
                             f"{results[0]['name']}: p50 {row['p50_ms']:.1f} ms vs {ref:.1f} ms "
                             f"({row['p50_ms'] / ref:.2f}x) at {where}, batch 1.")
    return notes
