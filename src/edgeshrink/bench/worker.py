"""The process each bench candidate runs in, driven by the harness (harness.py) over a pipe.

A process per candidate keeps the device path honest (a bundle's process never imports torch, and the
result records that), keeps memory figures per candidate, and lets the harness interleave candidates
round-robin so machine noise hits all alike. The request loop is the same for every task; what a
candidate answers is its own: each candidate class (classifier_worker.py, llm_worker.py) names its
``commands``, methods that take the message's arguments and return the reply.
"""

from __future__ import annotations

import importlib
import resource
import sys
import traceback


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
                conn.send(("error", f"unknown command {command}", ""))
            else:
                conn.send(("ok", getattr(candidate, command)(*args)))
        except Exception as exc:
            conn.send(_error(exc))
