"""`bench`: size, memory, accuracy, latency and throughput of several candidates, side by side, in one run.

    from edgeshrink.bench import bench, BenchConfig
    report = bench(["runs/demo/cloud", "runs/demo/bundle"], "sentiment-movies", BenchConfig())

Each candidate runs in its own process (see worker.py). Every timing cell (threads × sequence length ×
batch) is measured in round-robin passes over the candidates, so slow drift of a shared machine hits
all of them alike. Each latency is set against the physical limit: FLOPs per request ÷ the measured
peak GEMM rate at the same thread count.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
from pathlib import Path

import numpy as np

from edgeshrink import __version__
from edgeshrink.bench.config import BenchConfig
from edgeshrink.bench.flops import flops_at
from edgeshrink.bench.peak import peak_gemm
from edgeshrink.data import DataConfig, load_data, split_examples
from edgeshrink.data.images import model_inputs
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.sources import check_labels
from edgeshrink.stats import accuracy_interval

SCHEMA = "edgeshrink-bench/1"


class _Worker:
    def __init__(self, ctx, path: Path, target=None, spec=None):
        """A process running ``target(conn, spec)`` (default: the classifier worker on ``path``)."""
        from edgeshrink.bench.worker import serve

        self.path = path
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target or serve, args=(child, str(path) if spec is None else spec), daemon=True)
        self.process.start()
        child.close()  # so that a worker that dies is seen as EOF, not waited on forever
        self.info = self._reply()

    def _reply(self):
        try:
            message = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            code = self.process.exitcode
            why = "killed: out of memory?" if code == -9 else "crashed: segmentation fault" if code == -11 else \
                f"exit code {code}"
            raise EdgeshrinkError(f"benchmark worker for {self.path} died ({why})") from None
        if message[0] == "error":
            raise EdgeshrinkError(f"candidate {self.path}: {message[1].splitlines()[0]}")
        return message[1]

    def call(self, command: str, *args):
        self.conn.send((command, args))
        return self._reply()

    def close(self) -> dict:
        result = self.call("stop") if self.process.is_alive() else {}
        self.process.join(timeout=10)
        return result


def _check_candidate(path: Path) -> None:
    if not path.exists():
        raise EdgeshrinkError(f"candidate {path} does not exist")
    if not path.is_dir() or not ((path / "manifest.json").exists() or (path / "config.json").exists()):
        raise EdgeshrinkError(f"candidate {path} is neither a device bundle nor a PyTorch model directory")


def _percentiles(times_s: list[float]) -> dict:
    ms = np.array(times_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "n": int(ms.size)}


def machine_info() -> dict:
    from edgeshrink.doctor import cpu_info

    cpu = cpu_info()
    return {"cpu": cpu["model"], "logical_cores": os.cpu_count(), "isa": cpu["isa"],
            "python": platform.python_version(), "edgeshrink": __version__}


def bench(candidates: list[str | Path], data: DataConfig | str | None = None, config: BenchConfig | None = None,
          progress=None) -> dict:
    """Benchmark ``candidates`` (device bundles or PyTorch model directories); return the report dict."""
    config = config or BenchConfig()
    paths = [Path(c) for c in candidates]
    if not paths:
        raise EdgeshrinkError("give at least one candidate")
    for path in paths:
        _check_candidate(path)
    test = None
    split_info = None
    if data is not None and config.accuracy:
        split = split_examples(load_data(data), config.split)
        test = split.test if config.max_accuracy_examples is None else split.test.head(config.max_accuracy_examples)
        split_info = split.info()

    ctx = multiprocessing.get_context("spawn")
    step = progress or (lambda description, advance=0, total=None: None)
    peak_detail = {t: peak_gemm(t) for t in config.threads}
    peak = {t: max(rates.values()) for t, rates in peak_detail.items()}
    step("peak GEMM measured")

    workers: list[_Worker] = []
    try:
        for path in paths:
            workers.append(_Worker(ctx, path))
            step(f"loaded {path}")
        results = [{"name": path.name, "path": str(path), **{k: w.info[k] for k in
                    ("kind", "precision", "size_bytes", "parameters", "max_length", "task", "flops_per_example")}} for path, w in zip(paths, workers)]
        if test is not None:
            text_data = isinstance(model_inputs(test), list)
            for worker, result in zip(workers, results):
                if (worker.info["task"] == "text-classification") != text_data:
                    raise EdgeshrinkError(f"candidate {worker.path} is a {worker.info['task']} model; data "
                                          f"{test.name!r} is {'text' if text_data else 'images'}")
                check_labels(test.label_names, worker.info["labels"], f"candidate {worker.path}")
        cells = _cells(config, workers)
        step("timing", total=len(cells) + (len(workers) if test is not None else 0))
        timings: dict[tuple, list[list[float]]] = {}
        for cell in cells:
            threads, batch, seq_len, runs = cell
            rounds = min(config.rounds, runs)
            per_round = max(1, runs // rounds)
            active = [i for i, w in enumerate(workers) if _capped(seq_len, w) is not None]
            for i in active:  # warm-up at this shape
                if config.warmup_runs:
                    workers[i].call("time", threads, batch, seq_len, config.warmup_runs)
            samples = [[] for _ in workers]
            for _ in range(rounds):
                for i in active:
                    samples[i] += workers[i].call("time", threads, batch, seq_len, per_round)
            timings[(threads, batch, seq_len)] = samples
            step("timing", advance=1)
        if test is not None:
            predictions = []
            for worker in workers:
                predictions.append(worker.call("predict", config.accuracy_threads, model_inputs(test)))
                step("timing", advance=1)
            _add_accuracy(results, workers, predictions, test)
        for worker, result in zip(workers, results):
            final = worker.close()
            result["torch_imported"] = final.get("torch_imported")
        workers = []
        for path, result in zip(paths, results):
            result["peak_rss_bytes"] = _peak_rss(ctx, path, config)
        step("memory measured")
    finally:
        for worker in workers:
            worker.process.kill()

    _add_timings(results, timings, peak)
    return {"notes": slower_notes(results),"schema": SCHEMA, "machine": machine_info(), "peak_gemm_gflops": {str(k): v for k, v in peak.items()},
            "peak_gemm_detail": {str(k): v for k, v in peak_detail.items()},
            "config": config.to_dict(), "data": split_info, "candidates": results}


def _capped(seq_len: int, worker: _Worker) -> int | None:
    max_length = worker.info.get("max_length")
    if worker.info["task"] != "text-classification":
        return seq_len
    return seq_len if max_length is None or seq_len <= max_length else None


def _cells(config: BenchConfig, workers: list[_Worker]) -> list[tuple[int, int, int, int]]:
    """(threads, batch, seq_len, runs), ordered by threads so each worker switches thread count once."""
    text = any(w.info["task"] == "text-classification" for w in workers)
    seq_lengths = config.seq_lengths if text else [0]
    cells = []
    for threads in config.threads:
        for seq_len in seq_lengths:
            cells.append((threads, 1, seq_len, config.latency_runs))
            for batch in config.throughput_batch_sizes:
                cells.append((threads, batch, seq_len, config.throughput_runs))
    return cells


def _peak_rss(ctx, path: Path, config: BenchConfig) -> int:
    """Peak resident memory of a fresh process that loads the candidate and runs its largest batch."""
    worker = _Worker(ctx, path)
    try:
        seq = max(s for s in config.seq_lengths if _capped(s, worker) is not None) if worker.info["task"] == \
            "text-classification" else 0
        worker.call("time", min(config.threads), max(config.throughput_batch_sizes + [1]), seq, 1)
        return int(worker.close()["peak_rss_bytes"])
    finally:
        if worker.process.is_alive():
            worker.process.kill()


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


def _add_timings(results, timings, peak) -> None:
    baseline: dict[tuple, float] = {}
    for i, result in enumerate(results):
        latency, throughput = [], []
        for (threads, batch, seq_len), samples in timings.items():
            times = samples[i]
            if not times:
                continue
            row = {"threads": threads, "batch": batch, "seq_len": seq_len if result["task"] == "text-classification" else None}
            if batch == 1:
                row.update(_percentiles(times))
                key = ("lat", threads, seq_len)
                baseline.setdefault(key, row["p50_ms"])
                row["speedup_vs_first"] = baseline[key] / row["p50_ms"]
                flops = flops_at(result["flops_per_example"], seq_len if row["seq_len"] else None)
                if flops:
                    row["flops"] = flops
                    row["limit_ms"] = flops / (peak[threads] * 1e9) * 1e3
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
