"""The training contract every distiller keeps, in one place.

    run = TrainRun(out, fingerprint)               # works in OUT.partial/
    cache = run.cached("teacher.pt", compute)      # computed once per fingerprint, reused on resume
    state = run.resume({"student": net, "optimizer": opt, "scheduler": sched})
    while run.go_on(state, epochs, patience):
        rng = run.seed_epoch(seed, state["epoch"])   # batch order (and dropout) seeded by the epoch
        running = run.step(loss, state, params, optimizer, scheduler, running)  # a NaN stops the run
        run.end_epoch(state, modules, net, score, higher_is_better=True, row={...})
    run.load_best(net); run.finish(out, write)      # the finished model replaces OUT in one rename

A checkpoint (model, optimizer, scheduler, state) is written after every epoch and carries the fingerprint
of everything that decides the result (config, inputs, split); a run resumed from it equals an
uninterrupted one. The best epoch on the calibration score is kept; ``patience`` epochs without a better
score stop the run.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError


class TrainRun:
    def __init__(self, out: Path, fingerprint: str):
        self.partial = out.with_name(out.name + ".partial")
        self.partial.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.checkpoint = self.partial / "checkpoint.pt"

    def cached(self, name: str, compute: Callable[[], dict]) -> dict:
        """``compute()``'s dict, saved in the partial directory and reused while the fingerprint holds."""
        import torch

        path = self.partial / name
        if path.exists():
            saved = torch.load(path, weights_only=False)
            if saved.get("fingerprint") == self.fingerprint:
                return saved
        value = {**compute(), "fingerprint": self.fingerprint}
        torch.save(value, self.partial / (name + ".tmp"))
        os.replace(self.partial / (name + ".tmp"), path)
        return value

    def resume(self, modules: dict) -> dict:
        """Load the last checkpoint into ``modules`` (anything with state_dict) if it is this run's; the state."""
        import torch

        state = {"epoch": 0, "step": 0, "history": [], "best": None, "stale": 0}
        if self.checkpoint.exists():
            saved = torch.load(self.checkpoint, weights_only=False)
            if saved["fingerprint"] == self.fingerprint:
                for name, module in modules.items():
                    if module is not None and saved["modules"].get(name) is not None:
                        module.load_state_dict(saved["modules"][name])
                state = saved["state"]
        return state

    @staticmethod
    def go_on(state: dict, epochs: int, patience: int) -> bool:
        return state["epoch"] < epochs and state["stale"] < patience

    @staticmethod
    def seed_epoch(seed: int, epoch: int) -> random.Random:
        import torch

        torch.manual_seed(seed * 1000 + epoch)
        return random.Random(seed * 1000 + epoch)

    def step(self, loss, state: dict, params, optimizer, scheduler, running: float | None) -> float:
        """NaN check, backward, gradients clipped at norm 1, optimizer and schedule step; the smoothed loss."""
        import torch

        if not torch.isfinite(loss):
            raise EdgeshrinkError(f"the loss became {loss.item()} at step {state['step'] + 1} (epoch "
                                  f"{state['epoch'] + 1}); the last good checkpoint is kept in {self.partial}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        return loss.item() if running is None else 0.95 * running + 0.05 * loss.item()

    def end_epoch(self, state: dict, modules: dict, model, score: float | None, higher_is_better: bool,
                  row: dict) -> bool:
        """Record the epoch, keep the model if ``score`` is the best so far, write the checkpoint. Improved?
        A ``score`` of None chooses no best epoch: the run keeps its last (do not call ``load_best``)."""
        import torch

        best = state["best"]
        improved = score is not None and (best is None or (score > best if higher_is_better else score < best))
        state["history"].append({"epoch": state["epoch"] + 1, **row})
        if improved:
            state["best"], state["stale"] = score, 0
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, self.partial / "best.pt")
        elif score is not None:
            state["stale"] += 1
        state["epoch"] += 1
        torch.save({"fingerprint": self.fingerprint, "state": state,
                    "modules": {k: m.state_dict() if m is not None else None for k, m in modules.items()}},
                   self.partial / "checkpoint.tmp")
        os.replace(self.partial / "checkpoint.tmp", self.checkpoint)
        return improved

    def load_best(self, model) -> None:
        import torch

        model.load_state_dict(torch.load(self.partial / "best.pt"))

    def finish(self, out: Path, write: Callable[[Path], None]) -> None:
        """``write(directory)`` the finished model, then move it to ``out`` in one rename; drop the partial."""
        final = self.partial / "final"
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir()
        write(final)
        if out.exists():
            shutil.rmtree(out)
        os.replace(final, out)
        shutil.rmtree(self.partial, ignore_errors=True)


def choose_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on a GPU, or on a CPU with bf16 instructions (AMX, AVX512-BF16); fp32 otherwise."""
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16"
    from edgeshrink.doctor import cpu_info

    return "bf16" if {"amx-bf16", "avx512-bf16"} & set(cpu_info()["isa"]) else "fp32"


def progress_columns(title: str) -> list:
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return [TextColumn(f"[bold]{title}[/] {{task.description}}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn()]


class LineBar:
    """The part of rich's Progress the training loops use (``add_task``, ``update``, ``console.print``), as
    messages to a ``progress(message)`` callback: ``"TITLE DESCRIPTION N/M"`` per update (the description the
    task was added with: a count keeps one name however its live description changes) and every printed
    line as it is. The caller's callback decides how they show (the CLI's: a live line on a terminal,
    throttled lines with the time left in a log)."""

    def __init__(self, title: str, progress: Callable[[str], None]):
        self.title, self.progress, self.tasks = title, progress, []
        self.console = self  # bar.console.print(...) prints through the callback too

    def __enter__(self) -> "LineBar":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        self.tasks.append({"name": " ".join(p for p in (self.title, description) if p), "total": total,
                           "completed": completed})
        return len(self.tasks) - 1

    def update(self, task: int, advance: float = 0, **fields) -> None:
        row = self.tasks[task]
        row["completed"] += advance
        if row["total"]:
            self.progress(f"{row['name']} {row['completed']:.0f}/{row['total']:.0f}")

    def print(self, text) -> None:
        self.progress(str(text))


def training_bar(title: str, progress: Callable[[str], None] | None = None, columns: list | None = None,
                 **options):
    """A loop's progress display: with a ``progress`` callback (the CLI's, a recipe step's), its messages
    (``LineBar``); without one, a rich bar with ``columns`` (default ``progress_columns(title)``)."""
    if progress is not None:
        return LineBar(title, progress)
    from rich.progress import Progress

    return Progress(*(columns or progress_columns(title)), **options)
