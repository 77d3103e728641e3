"""Run a recipe: its steps in order, each cached, then the targets checked and a report written.

    from edgeshrink.recipes.runner import run
    report = run("recipes/quick.yaml", "runs/quick")

One loop for every kind of recipe (schema.py's ``RecipeKind`` supplies the steps and the report). Each
step's output lives in ``OUT/cache/NN-step-KEY/``, where KEY hashes the previous step's key, the step's
config, the data and the seed: a rerun skips finished steps, an edited step reruns it and everything after
it, and an interrupted run resumes at the step it was in (each verb writes its own output atomically; a step
is finished when its ``step.json`` exists; paths in it are stored relative to the cache, so a run directory
can be moved or copied and still reruns from its cache). A step may list alternatives (``search: {layers:
[2, 3]}``): every combination is a candidate path (shared prefixes are computed once, through the cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.executors import LocalExecutor, PathPlan, StepTask, executions, resources_for
from edgeshrink.recipes.report import html_page
from edgeshrink.recipes.schema import Recipe, RecipeKind, load_recipe, recipe_kind

LOCK_FILE = ".edgeshrink-run.lock"


def step_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_paths(recipe: Recipe, kind: RecipeKind, paths: list) -> list[PathPlan]:
    """Every candidate path as a chain of StepTasks: the cache directory of each step (its key chains the
    previous step's key, the step's config and version, the data and the seed), its config and resources."""
    data = recipe.step_data()
    data = data.to_dict() if hasattr(data, "to_dict") else data
    plans = []
    for index, (choices, steps) in enumerate(paths):
        label = f"[{index + 1}/{len(paths)}] " if len(paths) > 1 else ""
        key = step_key(recipe.model, data, recipe.seed, *kind.key_tag)
        tasks = []
        for i, (name, config) in enumerate(steps):
            key = step_key(key, name, config.key_form(), *kind.version_parts(name))
            tasks.append(StepTask(kind.task, name, config.to_dict(), f"{i:02d}-{name}-{key}", key,
                                  f"{label}step {i + 1}/{len(steps)} {name}", data,
                                  resources_for(name, recipe.resources)))
        announce = f"{label}candidate " + ", ".join(f"{k}={v}" for k, v in choices.items()) if choices else None
        plans.append(PathPlan(tasks, announce))
    return plans


def step_log(tasks: list, records: list[dict], cache: Path) -> list[dict]:
    """The report's view of a path's steps: key, cached, seconds, config, result, and where each ran."""
    log = []
    for task, record in zip(tasks, records):
        journal = executions(cache / task.dir)
        finished = [e for e in journal if e["event"] == "finish"]
        ran = {k: v for k, v in (finished[-1] if finished else {}).items() if k in ("executor", "host", "node")}
        log.append({"step": task.name, "key": task.key, **record["log"], "config": task.config,
                    "result": record["result"], "ran_on": ran or None,
                    "executions": {"started": sum(e["event"] == "start" for e in journal), "finished": len(finished)}})
    return log


@contextlib.contextmanager
def run_dir_lock(out: Path):
    """Hold ``out`` for one run: a second run on it refuses at once instead of running every step again
    beside the first. The kernel drops a flock when its process dies, so a lock file left behind by a
    crashed run never blocks; the file stays (removing it would let two runs lock two different files)."""
    try:
        import fcntl
    except ImportError:  # Windows has no flock: runs there are not guarded
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise EdgeshrinkError(f"run directory {out} is in use by another edgeshrink run (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def run(recipe_path: str | Path, out: str | Path | None = None, progress: Callable[[str], None] | None = None,
        executor=None) -> dict:
    """Execute the recipe (every search candidate); write the report into ``out``; return it. ``out`` is
    locked while the run uses it. ``executor`` runs the steps (executors.py; default: this process)."""
    recipe, recipe_hash = load_recipe(recipe_path)
    out = Path(out or Path("runs") / recipe.name)
    progress = progress or (lambda message: None)
    # The executor first: a cluster that cannot be reached leaves no run directory behind.
    with (executor or LocalExecutor()) as running, run_dir_lock(out):
        return _run_locked(recipe_path, recipe, recipe_hash, out, progress, running)


def _run_locked(recipe_path, recipe: Recipe, recipe_hash: str, out: Path, progress: Callable[[str], None],
                executor) -> dict:
    from edgeshrink import __version__
    from edgeshrink._files import atomic_write_text
    from edgeshrink.doctor import report as machine_report

    _, kind = recipe_kind(recipe.task())
    recipe.check_data()
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = recipe.candidates()
    plans = plan_paths(recipe, kind, paths)

    def stop(p: int, s: int, record: dict, state: dict) -> dict | None:
        names = [t.name for t in plans[p].tasks]
        pruned = kind.early_stop(recipe, names[s], record, state, names[s + 1:]) if kind.early_stop else None
        if pruned:
            label = f"[{p + 1}/{len(paths)}] " if len(paths) > 1 else ""
            progress(f"{label}stopped after {names[s]}: {pruned['target']} is {pruned['value']:.4g} "
                     f"{pruned['unit']}, bound {pruned['bound']:g}".rstrip())
        return pruned

    outcomes = executor.run_paths(plans, {"model": recipe.model}, cache, stop, progress)
    done = []
    for plan, outcome in zip(plans, outcomes):
        state: dict = {"model": recipe.model}
        for record in outcome["records"]:
            state.update(record["state"])
        done.append({"state": state, "pruned": outcome["pruned"],
                     "results": {t.name: r["result"] for t, r in zip(plan.tasks, outcome["records"])},
                     "steps": step_log(plan.tasks, outcome["records"], cache)})
    sections = kind.sections(recipe, paths, done, recipe.step_data())
    machine = machine_report()
    report = {
        "schema": "edgeshrink-recipe-report/1", **kind.report_tag, "recipe": str(recipe_path),
        "recipe_sha256": recipe_hash, "name": recipe.name, "out": str(out), "edgeshrink_version": __version__,
        "seed": recipe.seed,
        "machine": {"cpu": machine["cpu"], "logical_cores": machine["logical_cores"], "versions": machine["versions"],
                    "python": platform.python_version()},
        "wall_seconds_this_run": round(time.perf_counter() - started, 1), "executor": executor.describe(),
        **sections,
    }
    report["plots"] = kind.plots(report, out / "plots")
    text = kind.markdown(report)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", html_page(report, text, out / "plots"))
    return report
