"""The skeleton every bench shares: a process per candidate, warm-up, round-robin passes (so slow drift of a
shared machine hits all candidates alike), the machine's peaks, and closing each process with its own peak
memory and whether it imported torch. What a task measures and scores lives in bench/<task>.py.

A process per candidate keeps the device path honest (a bundle's process never imports torch, and the
result records that) and keeps memory figures per candidate. Both ends of its pipe live here: ``Worker``
in the bench, ``serve`` (one request loop for every task) in the candidate's process. What a candidate
answers is its own: each candidate class (classifier_worker.py, llm_worker.py) names its ``commands``,
methods that take a message's arguments and return the reply.

    peaks = measure_peaks([1, 2])           # {"peak_gemm_gflops": {"1": ..., "2": ...}, "peak_gemm_detail": ...}
    with spawned([(path, "edgeshrink.bench.classifier_worker:open_candidate", {"path": str(path)})]) as workers:
        replies = round_robin(workers, "time", (1, 1, 64, 8), passes=5, warmup=[(1, 1, 64, 3)])
        finals = [w.close() for w in workers]
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import platform
import resource
import sys
import traceback
from contextlib import contextmanager

from edgeshrink import __version__
from edgeshrink.bench.peak import memory_bandwidth, peak_gemm
from edgeshrink.errors import EdgeshrinkError


class Worker:
    def __init__(self, label, opener: str, kwargs: dict):
        """A process running the candidate ``opener(**kwargs)`` (see ``serve``); ``label`` names it in errors."""
        self.label = label
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, opener, kwargs), daemon=True)
        with _main_is_this_module():
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
def _main_is_this_module():
    """Spawn prepares a child by re-running the parent's ``__main__``: a caller's script without an
    ``if __name__ == "__main__":`` guard would run again in every worker (and stop on the outputs its first run
    made). A worker needs nothing from that script, so while it starts, ``__main__`` names this module, which
    the child imports instead (definitions only)."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = sys.modules[__name__]
    try:
        yield
    finally:
        sys.modules["__main__"] = main


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


def measure_peaks(threads: list[int], bandwidth: bool = False) -> dict:
    """The machine's limits per thread count, as the report gives them: fp32 GEMM GFLOP/s (and memory read
    GB/s), the best method's figure and every method's (peak.py)."""
    fields = {}
    for name, measure in (("peak_gemm_gflops", peak_gemm),) + ((("memory_bandwidth_gbps", memory_bandwidth),)
                                                               if bandwidth else ()):
        detail = {t: measure(t) for t in threads}
        fields[name] = {str(t): max(rates.values()) for t, rates in detail.items()}
        fields[name.rpartition("_")[0] + "_detail"] = {str(t): rates for t, rates in detail.items()}
    return fields


def machine_info() -> dict:
    from edgeshrink.doctor import cpu_info

    cpu = cpu_info()
    return {"cpu": cpu["model"], "logical_cores": os.cpu_count(), "isa": cpu["isa"],
            "python": platform.python_version(), "edgeshrink": __version__}


# -- the candidate's process ---------------------------------------------------------------------------------
def peak_rss_bytes() -> int:
    """This process's peak resident memory. On Linux /proc's VmHWM: ru_maxrss would also count the parent's
    memory at the fork that started this worker (spawn forks, then execs, and maxrss survives the exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB (macOS: bytes)


def _error(exc: Exception) -> tuple:
    return ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())


def serve(conn, opener: str, kwargs: dict) -> None:
    """Process entry point: open the candidate (``opener``, "module:callable", called with ``kwargs``), send
    its ``info()``, then answer (command, args) messages with ``candidate.<command>(*args)`` until "stop"."""
    try:
        module, _, name = opener.partition(":")
        candidate = getattr(importlib.import_module(module), name)(**kwargs)
        conn.send(("ok", candidate.info()))
    except Exception as exc:  # reported to the parent, which turns it into one line
        conn.send(_error(exc))
        return
    while True:
        command, args = conn.recv()
        try:
            if command == "stop":
                conn.send(("ok", {"torch_imported": "torch" in sys.modules, "peak_rss_bytes": peak_rss_bytes()}))
                return
            if command not in candidate.commands:
                raise ValueError(f"unknown command {command}")
            conn.send(("ok", getattr(candidate, command)(*args)))
        except Exception as exc:
            conn.send(_error(exc))
