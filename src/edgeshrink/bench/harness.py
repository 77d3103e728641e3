"""The skeleton every bench shares: a process per candidate, warm-up, round-robin passes, the machine's peaks,
and closing each process with its own peak memory and whether it imported torch.

    peaks = measure_peaks([1, 2])
    with spawned([(path, "edgeshrink.bench.classifier_worker:open_candidate", {"path": str(path)})]) as workers:
        replies = round_robin(workers, "time", (1, 1, 64, 8), passes=5, warmup=[(1, 1, 64, 3)])
        finals = [w.close() for w in workers]

What a task measures and how it scores lives in bench/<task>.py; what a candidate answers, in its worker
module (classifier_worker.py, llm_worker.py). Every cell is measured in round-robin passes over the
candidates, so slow drift of a shared machine hits all of them alike.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
from contextlib import contextmanager
from dataclasses import dataclass

from edgeshrink import __version__
from edgeshrink.bench.peak import memory_bandwidth, peak_gemm
from edgeshrink.errors import EdgeshrinkError


class Worker:
    def __init__(self, label, opener: str, kwargs: dict):
        """A process running the candidate ``opener(**kwargs)`` (see worker.py); ``label`` names it in errors."""
        from edgeshrink.bench.worker import serve

        self.label = label
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, opener, kwargs), daemon=True)
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
            raise EdgeshrinkError(f"benchmark worker for {self.label} died ({why})") from None
        if message[0] == "error":
            raise EdgeshrinkError(f"candidate {self.label}: {message[1].splitlines()[0]}")
        return message[1]

    def call(self, command: str, *args):
        self.conn.send((command, args))
        return self._reply()

    def close(self) -> dict:
        """{"peak_rss_bytes", "torch_imported"} of the process, which then ends."""
        result = self.call("stop") if self.process.is_alive() else {}
        self.process.join(timeout=10)
        return result


@contextmanager
def spawned(specs, step=None):
    """A started worker per (label, opener, kwargs), in order; any still running on the way out is killed."""
    workers: list[Worker] = []
    try:
        for label, opener, kwargs in specs:
            workers.append(Worker(label, opener, kwargs))
            if step:
                step(f"loaded {label}")
        yield workers
    finally:
        for worker in workers:
            if worker.process.is_alive():
                worker.process.kill()


def round_robin(workers: list[Worker], command: str, args: tuple, *, passes: int, warmup=(), active=None) -> list[list]:
    """Each active worker runs ``command`` once per argument tuple in ``warmup``, then ``passes`` passes over
    them all; returns each worker's replies in order ([] for the inactive)."""
    active = range(len(workers)) if active is None else active
    for i in active:
        for warm in warmup:
            workers[i].call(command, *warm)
    replies = [[] for _ in workers]
    for _ in range(passes):
        for i in active:
            replies[i].append(workers[i].call(command, *args))
    return replies


@dataclass
class Peaks:
    """The machine's measured limits per thread count: fp32 GEMM GFLOP/s and (when measured) memory read GB/s,
    each the best of several methods (peak.py)."""

    gemm_detail: dict[int, dict[str, float]]
    bandwidth_detail: dict[int, dict[str, float]] | None = None

    def gemm(self, threads: int) -> float:
        return max(self.gemm_detail[threads].values())

    def bandwidth(self, threads: int) -> float:
        return max(self.bandwidth_detail[threads].values())

    def report(self) -> dict:
        out = {"peak_gemm_gflops": {str(t): self.gemm(t) for t in self.gemm_detail},
               "peak_gemm_detail": {str(t): v for t, v in self.gemm_detail.items()}}
        if self.bandwidth_detail is not None:
            out["memory_bandwidth_gbps"] = {str(t): self.bandwidth(t) for t in self.bandwidth_detail}
            out["memory_bandwidth_detail"] = {str(t): v for t, v in self.bandwidth_detail.items()}
        return out


def measure_peaks(threads: list[int], bandwidth: bool = False) -> Peaks:
    gemm = {t: peak_gemm(t) for t in threads}
    return Peaks(gemm, {t: memory_bandwidth(t) for t in threads} if bandwidth else None)


def machine_info() -> dict:
    from edgeshrink.doctor import cpu_info

    cpu = cpu_info()
    return {"cpu": cpu["model"], "logical_cores": os.cpu_count(), "isa": cpu["isa"],
            "python": platform.python_version(), "edgeshrink": __version__}


def no_progress(description: str, advance: int = 0, total: int | None = None) -> None:
    """The progress callback when none is given."""
