"""Executors: who runs a recipe's cached steps — this process (``local``) or a Ray cluster (``ray``).

    from edgeshrink.recipes.runner import run
    from edgeshrink.recipes.executors import RayExecutor
    run("recipes/search.yaml", "runs/search", executor=RayExecutor(address="auto"))

An executor runs the runner's plan, a chain of ``StepTask`` s per candidate path (paths and keys, never
models), and returns each path's step records, stopping a path where ``stop`` says it can no longer meet a
target. ``LocalExecutor`` (the default) runs the paths one after another in this process. ``RayExecutor``
runs every *unique* step as one Ray task as soon as the step before it is done, so candidates that share a
prefix share its tasks. Each task asks for its step's ``resources:`` (``bench`` takes a whole node and sets
its own thread counts); Ray retries a task whose worker or node died, and a retry of a finished step (its
``step.json`` exists) returns the stored record. The run directory must be on a filesystem every node
mounts at the same path: steps commit their directories by rename, which an object store (S3, GCS) lacks.

Every execution of a step appends to ``executions.jsonl`` in its directory (start and finish, host, pid,
Ray node): the record of where each step ran and of any retry.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, field_validator

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError

STEP_FILE = "step.json"
JOURNAL_FILE = "executions.jsonl"
CACHE_PREFIX = "cache:"  # a path inside the run's cache, stored relative to it: run directories can move
RAY_MISSING = "the ray executor needs Ray: pip install 'edgeshrink[ray]'"


class StepResources(Config):
    """What one step's task asks of the cluster (the ray executor; the local one runs steps in this process)."""

    cpus: float | Literal["node"] = 1  # "node": every CPU of the largest live node (the step has it alone)
    gpus: float = Field(0, ge=0)
    memory_gb: float | None = Field(None, gt=0)  # Ray's memory resource, for scheduling
    max_retries: int = Field(3, ge=0)  # re-runs after the task's worker or node died

    @field_validator("cpus")
    @classmethod
    def _positive(cls, value):
        if value != "node" and value <= 0:
            raise ValueError("must be a positive number of CPUs or 'node'")
        return value


# Bench steps time models: they take a whole node so nothing else runs beside them, and set their own threads.
DEFAULT_RESOURCES = {"bench": StepResources(cpus="node")}


def resources_for(name: str, resources: dict[str, StepResources]) -> StepResources:
    return resources.get(name) or DEFAULT_RESOURCES.get(name) or StepResources()


@dataclass(frozen=True)
class StepTask:
    """One cached step, as an executor sees it: what to run and where its output goes."""

    task: str  # the model's task: its recipe kind (the task registry's ``recipe`` entry) holds the step
    name: str
    config: dict  # the step config's JSON form
    dir: str  # the step's directory in the cache, NN-step-KEY: the same step of every candidate sharing it
    key: str
    title: str  # for progress messages
    data: Any  # the data config's JSON form (a mapping) or the data set's name
    resources: StepResources = field(default_factory=StepResources)


@dataclass
class PathPlan:
    tasks: list[StepTask]
    announce: str | None = None  # printed when the path starts


StopCheck = Callable[[int, int, dict, dict], "dict | None"]  # (path, step, record, state) -> the missed target


# -- one step, in whichever process runs it ------------------------------------------------------------------
def _portable(record: dict, cache: Path) -> dict:
    """A step record as stored: its state/result paths inside ``cache`` become ``cache:<relative path>``."""
    root = cache.resolve()

    def convert(value):
        if isinstance(value, str) and value:
            try:
                return CACHE_PREFIX + Path(value).resolve().relative_to(root).as_posix()
            except (ValueError, OSError):
                return value
        return value

    return _map_values(record, convert)


def _local(record: dict, cache: Path) -> dict:
    """A stored step record with its ``cache:`` paths resolved against this run's cache directory."""
    def convert(value):
        if isinstance(value, str) and value.startswith(CACHE_PREFIX):
            return str(cache / value[len(CACHE_PREFIX):])
        return value

    return _map_values(record, convert)


def _map_values(record: dict, convert) -> dict:
    return {**record, **{part: {k: convert(v) for k, v in record[part].items()} for part in ("state", "result")}}


def _journal(where: Path, event: str, ran_on: dict) -> None:
    line = json.dumps({"event": event, "time": round(time.time(), 3), "host": socket.gethostname(),
                       "pid": os.getpid(), **ran_on})
    with open(where / JOURNAL_FILE, "a", encoding="utf-8") as fh:  # one short append per event
        fh.write(line + "\n")


def executions(where: Path) -> list[dict]:
    """Every recorded start and finish of the step in ``where`` (oldest first)."""
    path = Path(where) / JOURNAL_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def step_progress(title: str, progress: Callable[[str], None]):
    """The progress callback a step passes to its verbs: ``progress(message)`` (export, finetune, ...) and
    ``progress(description, advance=, total=)`` (bench, quantize) both become messages to ``progress``,
    prefixed with the step's ``title``; a counted description as ``description N/M``, so the caller's
    CountedLines can thin them and tell the time left."""
    counts: dict[str, list] = {}

    def report(description: str, advance: float = 0, total: float | None = None) -> None:
        if total is not None:
            counts[description] = [0, total]
        elif description in counts:
            counts[description][0] += advance
            done, of = counts[description]
            progress(f"{title}: {description} {done:.0f}/{of:.0f}")
        else:
            progress(f"{title}: {description}")

    return report


def cached_step(task: StepTask, state: dict, cache: Path, progress=None, ran_on: dict | None = None) -> dict:
    """Run one step into its directory unless its ``step.json`` says it is done (the same code under every
    executor); return its record with ``log`` (cached, seconds, seconds this run). Paths in the stored record
    are relative to ``cache``."""
    from edgeshrink import tasks
    from edgeshrink._files import atomic_write_text
    from edgeshrink.data import DataConfig

    kind = tasks.named(task.task).implementation("recipe").task_parts()
    config = kind.config_class(task.name).from_dict(task.config)
    data = DataConfig.from_dict(task.data) if isinstance(task.data, dict) else task.data
    progress = progress or (lambda message: None)
    where = cache / task.dir
    done = where / STEP_FILE
    t0 = time.perf_counter()
    cached = done.exists()
    if cached:
        record = _local(json.loads(done.read_text()), cache)
        progress(f"{task.title}: cached ({where.name})")
    else:
        progress(f"{task.title} ...")
        where.mkdir(parents=True, exist_ok=True)
        _journal(where, "start", ran_on or {"executor": "local"})
        record = kind.steps[task.name](state, config, where, data, step_progress(task.title, progress))
        record["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_text(done, json.dumps(_portable(record, cache), indent=2))
        _journal(where, "finish", ran_on or {"executor": "local"})
    record["log"] = {"cached": cached, "seconds": record["seconds"],
                     "seconds_this_run": round(time.perf_counter() - t0, 1)}
    return record


# -- executors -----------------------------------------------------------------------------------------------
class LocalExecutor:
    """Every path in this process, one step after another (steps use this machine's threads)."""

    name = "local"

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def describe(self) -> dict:
        return {"name": self.name}

    def run_paths(self, paths: list[PathPlan], start: dict, cache: Path, stop: StopCheck, progress) -> list[dict]:
        done = []
        for p, path in enumerate(paths):
            if path.announce:
                progress(path.announce)
            state, records, pruned = dict(start), [], None
            for s, task in enumerate(path.tasks):
                record = cached_step(task, state, cache, progress)
                state.update(record["state"])
                records.append(record)
                pruned = stop(p, s, record, state)
                if pruned:
                    break
            done.append({"records": records, "pruned": pruned})
        return done


def _ray():
    try:
        import ray
    except ImportError:
        raise EdgeshrinkError(RAY_MISSING) from None
    return ray


def connect_ray(ray, address: str | None) -> None:
    """``ray.init`` for edgeshrink's commands: quiet, no dashboard, and a one-line error (at once, not after
    Ray's minute of retries) when a ``host:port`` or ``ray://host:port`` address does not answer."""
    import re

    found = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address or "")
    if found:
        try:
            socket.create_connection((found.group(1), int(found.group(2))), timeout=5).close()
        except OSError as exc:
            raise EdgeshrinkError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}") from None
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EdgeshrinkError(f"cannot reach a Ray cluster at {address or 'a new local Ray'}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _remote_step(task: StepTask, state: dict, cache: str, cwd: str, env: dict, threads: int) -> dict:
    """A Ray task: one step on a worker, in the driver's working directory and data cache. Returns the record
    with its paths relative to the cache (the driver resolves them against its own view of it)."""
    import ray

    cache_path = Path(cache)
    if not cache_path.is_dir():
        raise EdgeshrinkError(f"the run's cache {cache} is not visible on node {ray.get_runtime_context().get_node_id()[:8]} "
                              f"({socket.gethostname()}): put the run directory on a filesystem every node mounts at "
                              f"the same path")
    from edgeshrink.runtime.bundle import THREADS_ENV

    env = {**env, THREADS_ENV: str(threads)}  # ONNX Runtime sessions in the step: the task's CPUs, not the node's
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import torch

        torch.set_num_threads(threads)
        with contextlib.chdir(cwd):
            ran_on = {"executor": "ray", "node": ray.get_runtime_context().get_node_id(), "threads": threads}
            record = cached_step(task, state, cache_path, None, ran_on)
        return _portable(record, cache_path)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# The driver's environment that steps read, passed to every task (workers start with the cluster's own).
PASSED_ENV = ("EDGESHRINK_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")


class RayExecutor:
    """Every unique step as a Ray task, as soon as the step before it is done.

    ``address``: a running cluster (``"auto"``, ``ray://host:10001``, ``host:6379``); None starts a local
    Ray for this run (or joins the one this process already has)."""

    name = "ray"

    def __init__(self, address: str | None = None):
        self.address, self.started_here, self.startup_seconds = address, False, 0.0
        self.ray = self.remote = None

    def __enter__(self) -> "RayExecutor":
        ray = _ray()
        t0 = time.perf_counter()
        if not ray.is_initialized():
            connect_ray(ray, self.address)
            self.started_here = True
        self.startup_seconds = round(time.perf_counter() - t0, 2)
        self.ray, self.remote = ray, ray.remote(_remote_step)
        return self

    def __exit__(self, *exc) -> None:
        if self.started_here and self.ray is not None:
            self.ray.shutdown()

    def describe(self) -> dict:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return {"name": self.name, "address": self.address, "startup_seconds": self.startup_seconds,
                "nodes": len(nodes), "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes)}

    def _submit(self, task: StepTask, state: dict, cache: Path):
        """The step's Ray task, asking for its resources (cpus "node": the largest live node's CPUs); a task no
        node can hold would wait forever, so it is refused in one line instead."""
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        largest = max((n.get("CPU", 0) for n in nodes), default=0)
        if largest <= 0:
            raise EdgeshrinkError("the Ray cluster has no node with CPUs")
        res = task.resources
        cpus = largest if res.cpus == "node" else float(res.cpus)
        if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= res.gpus for n in nodes):
            gpus = f" and {res.gpus:g} GPU" if res.gpus else ""
            most_gpus = f", {max(n.get('GPU', 0) for n in nodes):g} GPU" if res.gpus else ""
            raise EdgeshrinkError(f"{task.title}: asks for {cpus:g} CPU{gpus}, which no node of the Ray cluster has "
                                  f"(the largest has {largest:g} CPU{most_gpus}); lower resources.{task.name} in the "
                                  f"recipe")
        options = {"num_cpus": cpus, "num_gpus": res.gpus, "max_retries": res.max_retries, "retry_exceptions": False}
        if res.memory_gb:
            options["memory"] = int(res.memory_gb * 2**30)
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        remote = self.remote.options(name=f"edgeshrink:{task.dir}", **options)
        return remote.remote(task, state, str(cache.resolve()), os.getcwd(), env, max(1, int(cpus)))

    def _result(self, ref, task: StepTask, cache: Path) -> dict:
        ray = self.ray
        try:
            return _local(ray.get(ref), cache)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            if isinstance(cause, EdgeshrinkError):
                raise EdgeshrinkError(message) from None
            raise EdgeshrinkError(f"{task.title}: {type(cause).__name__}: {message}") from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
                ray.exceptions.OutOfMemoryError) as exc:
            raise EdgeshrinkError(f"{task.title}: its worker died {task.resources.max_retries + 1} time(s) "
                                  f"({type(exc).__name__})") from None

    def run_paths(self, paths: list[PathPlan], start: dict, cache: Path, stop: StopCheck, progress) -> list[dict]:
        ray = self.ray
        records: dict[str, dict] = {}  # step dir -> record
        states: dict[str, dict] = {}  # step dir -> the state after it (the same for every path through it)
        position = [0] * len(paths)  # each path: how many of its steps have a record
        pruned: list[dict | None] = [None] * len(paths)
        pending: dict = {}  # ObjectRef -> task
        submitted: set[str] = set()

        def advance():
            for p, path in enumerate(paths):
                while not pruned[p] and position[p] < len(path.tasks) and path.tasks[position[p]].dir in records:
                    s = position[p]
                    task = path.tasks[s]
                    position[p] += 1
                    pruned[p] = stop(p, s, records[task.dir], states[task.dir])
                if pruned[p] or position[p] >= len(path.tasks):
                    continue
                task = path.tasks[position[p]]
                if task.dir in submitted:
                    continue
                before = states[path.tasks[position[p] - 1].dir] if position[p] else dict(start)
                res = task.resources
                asks = "a whole node" if res.cpus == "node" else f"{res.cpus:g} CPU"
                progress(f"{task.title}: submitted to Ray ({asks}{f', {res.gpus:g} GPU' if res.gpus else ''})")
                pending[self._submit(task, before, cache)] = (task, before, time.perf_counter())
                submitted.add(task.dir)

        for path in paths:
            if path.announce:
                progress(path.announce)
        try:
            advance()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                task, before, submitted_at = pending.pop(ready[0])
                record = self._result(ready[0], task, cache)
                state = {**before, **record["state"]}
                records[task.dir], states[task.dir] = record, state
                where = "cached" if record["log"]["cached"] else f"{record['seconds']:.0f} s"
                progress(f"{task.title}: done ({where}, {time.perf_counter() - submitted_at:.0f} s since submitted)")
                advance()
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return [{"records": [records[t.dir] for t in path.tasks[:position[p]]], "pruned": pruned[p]}
                for p, path in enumerate(paths)]


def make_executor(name: str, address: str | None = None):
    """The executor called ``name`` (``local`` or ``ray``); ``address`` is the Ray cluster's."""
    if name not in ("local", "ray"):
        raise EdgeshrinkError(f"unknown executor {name!r}; expected one of local, ray")
    if name == "local":
        if address is not None:
            raise EdgeshrinkError("--address applies to --executor ray")
        return LocalExecutor()
    _ray()  # a missing extra fails here, in one line, before the recipe is read
    return RayExecutor(address)
