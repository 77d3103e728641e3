"""Run a recipe: its steps in order, each cached, then the targets checked and a report written.

    from edgeshrink.recipes.runner import run
    report = run("recipes/quick.yaml", "runs/quick")

Each step's output lives in ``OUT/cache/NN-step-KEY/``, where KEY hashes the previous step's key, the
step's config, the data and the seed: a rerun skips finished steps, an edited step reruns it and
everything after it, and an interrupted run resumes at the step it was in (each verb writes its own
output atomically; a step is finished when its ``step.json`` exists; paths in it are stored relative to
the cache, so a run directory can be moved or copied and still reruns from its cache). The runner tracks the working
model (a Hugging Face directory), the teacher (the fine-tuned model), the device bundle and the cloud
bundle (the teacher exported with the same export config) that `bench` and `route` compare against.
A step may list alternatives (``search: {layers: [2, 3]}``): every combination is a candidate path
(shared prefixes are computed once, through the cache); a path stops early once a step's test accuracy
or the final bundle's size already rules out a target; the candidate that meets every target with the
best calibration-split accuracy, then latency, is chosen — or, if none does, the nearest miss, with
every target's miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.report import html_page, latency_cell, markdown, models_table, write_plots
from edgeshrink.recipes.schema import Recipe, load_recipe

LOCK_FILE = ".edgeshrink-run.lock"
STEPS: dict[str, Callable] = {}
# A step whose output changes meaning gets a new version; it then enters the step's cache key (version 1
# is left out so that caches made before versions existed stay valid). export 2: also builds the peer, and
# the cloud bundle keeps the teacher's own max_length.
STEP_VERSIONS = {"export": 2}


def step(name: str):
    def register(fn):
        STEPS[name] = fn
        return fn
    return register


@step("finetune")
def _finetune(state, config, out: Path, data) -> dict:
    from edgeshrink.models.finetune import finetune

    record = finetune(state["model"], data, out / "model", config, force=True)
    path = str(out / "model")
    return {"state": {"model": path, "teacher": path}, "result": {"test_accuracy": record["test"]["accuracy"]}}


@step("prune")
def _prune(state, config, out: Path, data) -> dict:
    from edgeshrink.compress.prune import prune

    teacher = state.get("teacher") or state["model"]
    record = prune(teacher, data, out / "model", config, force=True)
    return {"state": {"model": str(out / "model"), "teacher": teacher},
            "result": {"parameters": record["prune"]["parameters"]}}


@step("prune-channels")
def _prune_channels(state, config, out: Path, data) -> dict:
    from edgeshrink.compress.channels import prune_channels

    teacher = state.get("teacher") or state["model"]
    record = prune_channels(teacher, data, out / "model", config, force=True)
    return {"state": {"model": str(out / "model"), "teacher": teacher},
            "result": {"parameters": record["prune_channels"]["parameters"], "test_accuracy": record["test"]["accuracy"]}}


@step("distill")
def _distill(state, config, out: Path, data) -> dict:
    from edgeshrink.compress.distill import distill

    record = distill(state["teacher"], state["model"], data, out / "model", config, force=True)
    return {"state": {"model": str(out / "model")},
            "result": {"test_accuracy": record["test"]["accuracy"], "train_seconds": record["train_seconds"]}}


@step("sparsify")
def _sparsify(state, config, out: Path, data) -> dict:
    from edgeshrink.compress.sparsify import sparsify

    record = sparsify(state["model"], data, out / "model", config, force=True)
    return {"state": {"model": str(out / "model")}, "result": {"test_accuracy": record["test"]["accuracy"]}}


@step("export")
def _export(state, config, out: Path, data) -> dict:
    from edgeshrink.export import export
    from edgeshrink.models.cnn import is_cnn

    manifest = export(state["model"], out / "bundle", config, force=True)
    teacher = state.get("teacher") or state["model"]
    cloud, peer = str(out / "bundle"), None
    # The cloud model keeps its own input length when the device's is cut (config.max_length).
    if Path(teacher).resolve() != Path(state["model"]).resolve() or config.max_length is not None:
        from edgeshrink.export.peer import peer_bundle

        export(teacher, out / "cloud-bundle", config.model_copy(update={"max_length": None}), force=True)
        cloud = str(out / "cloud-bundle")
        if not is_cnn(teacher):  # the peer pipeline (optimum-onnx) exists for Hugging Face models only
            peer_bundle(teacher, out / "peer-bundle", force=True)  # what a user would build instead
            peer = str(out / "peer-bundle")
    return {"state": {"bundle": str(out / "bundle"), "cloud_bundle": cloud, "peer_bundle": peer},
            "result": {"size_bytes": manifest["size_bytes"], "max_abs_diff": manifest["validation"]["max_abs_diff"]}}


@step("quantize")
def _quantize(state, config, out: Path, data) -> dict:
    from edgeshrink.compress.quantize import quantize

    manifest = quantize(state["bundle"], out / "bundle", config, data=data, force=True)
    return {"state": {"bundle": str(out / "bundle")}, "result": {"size_bytes": manifest["size_bytes"]}}


@step("bench")
def _bench(state, config, out: Path, data) -> dict:
    from edgeshrink.bench import bench

    out.mkdir(parents=True, exist_ok=True)
    roles = [("cloud", state["cloud_bundle"])] + ([("peer", state["peer_bundle"])] if state.get("peer_bundle") else [])
    roles.append(("device", state["bundle"]))
    report = bench([path for _, path in roles], config, data=data)
    report["roles"] = [role for role, _ in roles]
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    return {"state": {}, "result": {"bench": str(out / "bench.json")}}


@step("route")
def _route(state, config, out: Path, data) -> dict:
    from edgeshrink.route.calibrate import calibrate
    from edgeshrink.route.evaluate import EvalConfig, evaluate

    device = out / "device"
    shutil.rmtree(device, ignore_errors=True)
    shutil.copytree(state["bundle"], device)
    calibrate(device, state["cloud_bundle"], data, config)
    report = evaluate(device, state["cloud_bundle"], data, EvalConfig(resplits=0), plots=out / "plots")
    report.pop("curves", None)
    (out / "route.json").write_text(json.dumps(report, indent=2))
    return {"state": {"router_bundle": str(device)}, "result": {"route": str(out / "route.json")}}


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_targets(recipe: Recipe, bench_report: dict | None, route_report: dict | None) -> list[dict]:
    """Each stated target: the measured value, the bound, met or not (and by how much it missed)."""
    t = recipe.targets
    rows = []

    def add(name, value, bound, ok, unit=""):
        rows.append({"target": name, "value": value, "bound": bound, "met": ok, "unit": unit,
                     "miss": None if ok or value is None else abs(value - bound)})

    cloud = device = peer = None
    if bench_report:
        cloud, device = bench_report["candidates"][0], bench_report["candidates"][-1]
        roles = bench_report.get("roles") or []
        peer = bench_report["candidates"][roles.index("peer")] if "peer" in roles else None
    needs_bench = any(v is not None for v in (t.max_size_mb, t.max_latency_ms, t.min_accuracy, t.max_accuracy_drop,
                                              t.min_size_reduction, t.min_speedup, t.min_accuracy_fraction, t.peer))
    if needs_bench and device is None:
        raise EdgeshrinkError("the recipe states size/latency/accuracy targets but has no `bench` step to measure them")

    def at(seq) -> str:  # tensor models (CNNs) have no sequence length: a cell is one batch-1 request
        return "batch 1" if device and device.get("task") == "tensor-classification" else f"{seq} tokens"

    if t.max_size_mb is not None:
        size = device["size_bytes"] / 1e6
        add("max_size_mb", size, t.max_size_mb, size <= t.max_size_mb, "MB")
    if t.max_latency_ms is not None:
        lt = t.max_latency_ms
        cell = latency_cell(device, lt.threads, lt.seq_length)
        if cell is None:
            raise EdgeshrinkError(f"the bench step did not measure {lt.threads} thread(s) at {lt.seq_length} tokens, "
                                  f"which the latency target needs")
        value = cell[f"p{lt.percentile}_ms"]
        add(f"max_latency_ms (p{lt.percentile}, {lt.threads} thread, {at(lt.seq_length)})", value, lt.value,
            value <= lt.value, "ms")
    if t.min_accuracy is not None:
        acc = device["accuracy"]["value"]
        add("min_accuracy", acc, t.min_accuracy, acc >= t.min_accuracy)
    if t.max_accuracy_drop is not None:
        drop = 100 * (cloud["accuracy"]["value"] - device["accuracy"]["value"])
        add("max_accuracy_drop (points below the cloud model)", drop, t.max_accuracy_drop, drop <= t.max_accuracy_drop,
            "points")
    if t.min_size_reduction is not None:
        ratio = cloud["size_bytes"] / device["size_bytes"]
        add("min_size_reduction (x smaller than the cloud bundle)", ratio, t.min_size_reduction,
            ratio >= t.min_size_reduction, "x")
    threads, seq = (t.max_latency_ms.threads, t.max_latency_ms.seq_length) if t.max_latency_ms else (1, 64)
    pct = t.max_latency_ms.percentile if t.max_latency_ms else 50

    def speedup(reference, what: str) -> float:
        cells = [latency_cell(cand, threads, seq) for cand in (reference, device)]
        if None in cells:
            raise EdgeshrinkError(f"the bench step did not measure {threads} thread(s) at {seq} tokens, which "
                                  f"{what} needs")
        return cells[0][f"p{pct}_ms"] / cells[1][f"p{pct}_ms"]

    if t.min_speedup is not None:
        ratio = speedup(cloud, "min_speedup")
        add(f"min_speedup (p{pct}, {threads} thread, {at(seq)}, vs the cloud bundle)", ratio, t.min_speedup,
            ratio >= t.min_speedup, "x")
    if t.min_accuracy_fraction is not None:
        fraction = device["accuracy"]["value"] / cloud["accuracy"]["value"]
        add("min_accuracy_fraction (of the cloud model)", fraction, t.min_accuracy_fraction,
            fraction >= t.min_accuracy_fraction)
    if t.peer is not None:
        if peer is None:
            raise EdgeshrinkError("the recipe states peer targets, but no peer pipeline was built: it is built by "
                                  "the `export` step when the device model differs from the cloud model")
        if t.peer.min_speedup is not None:
            ratio = speedup(peer, "peer.min_speedup")
            add(f"peer.min_speedup (p{pct}, {threads} thread, {seq} tokens)", ratio, t.peer.min_speedup,
                ratio >= t.peer.min_speedup, "x")
        if t.peer.min_size_reduction is not None:
            ratio = peer["size_bytes"] / device["size_bytes"]
            add("peer.min_size_reduction (x smaller)", ratio, t.peer.min_size_reduction,
                ratio >= t.peer.min_size_reduction, "x")
        if t.peer.max_accuracy_drop is not None:
            drop = 100 * (peer["accuracy"]["value"] - device["accuracy"]["value"])
            add("peer.max_accuracy_drop (points below the peer)", drop, t.peer.max_accuracy_drop,
                drop <= t.peer.max_accuracy_drop, "points")
    if t.router is not None:
        if route_report is None:
            raise EdgeshrinkError("the recipe states router targets but has no `route` step")
        if t.router.max_cloud_fraction is not None:
            value = route_report["escalated_fraction"]
            add("router.max_cloud_fraction", value, t.router.max_cloud_fraction, value <= t.router.max_cloud_fraction)
        if t.router.max_accuracy_drop is not None:
            drop = 100 * (route_report["cloud_only"]["accuracy"] - route_report["hybrid"]["accuracy"])
            add("router.max_accuracy_drop (points)", drop, t.router.max_accuracy_drop, drop <= t.router.max_accuracy_drop,
                "points")
        router = route_report["router"]
        guaranteed = router.get("policy") in ("risk", "risk+budget")
        for key in ("alpha", "delta"):
            bound = getattr(t.router, key)
            if bound is None:
                continue
            value = router.get(key) if guaranteed else None
            add(f"router.{key} (the calibrated guarantee's {'risk' if key == 'alpha' else 'failure probability'})",
                value, bound, value is not None and value <= bound)
            rows[-1]["note"] = (f"realised on the test split: {route_report['realised_risk']}" if guaranteed else
                                f"policy {router.get('policy')!r} carries no guarantee; use risk or risk+budget")
    return rows


def _cloud_accuracy(state: dict) -> float | None:
    from edgeshrink.models.sources import read_record

    teacher = state.get("teacher") or state.get("model")
    try:
        return (read_record(Path(teacher)).get("test") or {}).get("accuracy")
    except Exception:  # noqa: BLE001 - no record: the early check is skipped
        return None


def _miss(target: str, value: float, bound: float, unit: str, after: str) -> dict:
    return {"target": target, "value": value, "bound": bound, "met": False, "unit": unit,
            "miss": abs(value - bound), "found_after": after}


def early_stop(recipe: Recipe, name: str, record: dict, state: dict, later: list[str]) -> dict | None:
    """The target this path can no longer meet (checked after each step, as a missed-target row), or None."""
    t = recipe.targets
    accuracy = record["result"].get("test_accuracy")
    if accuracy is not None and name != "finetune":
        cloud = _cloud_accuracy(state)
        slack = 0.005  # later steps (quantization) move accuracy by tenths of a point, either way
        bounds = [("min_accuracy", t.min_accuracy)] if t.min_accuracy is not None else []
        if cloud is not None and t.max_accuracy_drop is not None:
            bounds.append(("max_accuracy_drop", cloud - t.max_accuracy_drop / 100))
        if cloud is not None and t.min_accuracy_fraction is not None:
            bounds.append(("min_accuracy_fraction", cloud * t.min_accuracy_fraction))
        if bounds:
            which, bound = max(bounds, key=lambda b: b[1])
            if accuracy < bound - slack:
                return _miss(f"{which} (test accuracy after {name})", accuracy, bound, "", name)
    size = record["result"].get("size_bytes")
    if size is not None and not {"export", "quantize"} & set(later):
        if t.max_size_mb is not None and size / 1e6 > t.max_size_mb:
            return _miss("max_size_mb", size / 1e6, t.max_size_mb, "MB", name)
        cloud_bundle = state.get("cloud_bundle")
        if t.min_size_reduction is not None and cloud_bundle:
            from edgeshrink.runtime import read_manifest

            ratio = read_manifest(cloud_bundle, verify=False)["size_bytes"] / size
            if ratio < t.min_size_reduction:
                return _miss("min_size_reduction (x smaller than the cloud bundle)", ratio, t.min_size_reduction,
                             "x", name)
    return None


def plan_paths(recipe: Recipe, paths: list, data, resources: dict) -> list:
    """Every candidate path as a chain of StepTasks: the cache directory of each step (its key chains the
    previous step's key, the step's config and version, the data and the seed), its config and resources."""
    from edgeshrink.recipes.executors import PathPlan, StepTask, resources_for

    plans = []
    for index, (choices, steps) in enumerate(paths):
        label = f"[{index + 1}/{len(paths)}] " if len(paths) > 1 else ""
        key = _key(recipe.model, data.to_dict(), recipe.seed)
        tasks = []
        for i, (name, config) in enumerate(steps):
            version = STEP_VERSIONS.get(name, 1)
            key = _key(key, name, config.to_dict(), *([version] if version != 1 else []))
            tasks.append(StepTask("classifier", name, config.to_dict(), f"{i:02d}-{name}-{key}", key,
                                  f"{label}step {i + 1}/{len(steps)} {name}", data.to_dict(),
                                  resources_for(name, resources)))
        announce = f"{label}candidate " + ", ".join(f"{k}={v}" for k, v in choices.items()) if choices else None
        plans.append(PathPlan(tasks, announce))
    return plans


def step_log(tasks: list, records: list[dict], cache: Path) -> list[dict]:
    """The report's view of a path's steps: key, cached, seconds, config, result, and where each ran."""
    from edgeshrink.recipes.executors import executions

    log = []
    for task, record in zip(tasks, records):
        journal = executions(cache / task.dir)
        finished = [e for e in journal if e["event"] == "finish"]
        ran = {k: v for k, v in (finished[-1] if finished else {}).items() if k in ("executor", "host", "node")}
        log.append({"step": task.name, "key": task.key, **record["log"], "config": task.config,
                    "result": record["result"], "ran_on": ran or None,
                    "executions": {"started": sum(e["event"] == "start" for e in journal), "finished": len(finished)}})
    return log


def _latency(report: dict) -> float:
    models = report.get("models") or []
    return models[-1]["p50_ms"] if models else float("inf")


def choose(candidates: list[dict]) -> int:
    """The candidate meeting every target with the best accuracy, then latency; else the nearest miss.

    Accuracy here is the device bundle's on the *calibration* split where it was measured (a search
    compares several candidates: choosing on the test split would make the reported test accuracy
    optimistic); the test split is only reported."""
    def accuracy(c):
        if c.get("calibration_accuracy") is not None:
            return c["calibration_accuracy"]
        models = c.get("models") or []
        return models[-1]["accuracy"] if models and models[-1]["accuracy"] is not None else -1.0

    met = [i for i, c in enumerate(candidates) if c["all_targets_met"]]
    if met:
        return max(met, key=lambda i: (accuracy(candidates[i]), -_latency(candidates[i])))
    measured = [i for i, c in enumerate(candidates) if not c["pruned"]] or list(range(len(candidates)))
    return min(measured, key=lambda i: (sum(not t["met"] for t in candidates[i]["targets"]), -accuracy(candidates[i])))


def calibration_accuracy(bundle: str, data, split, bench_dir: Path, splits: dict) -> float:
    """The device bundle's accuracy on the calibration split (kept beside the bench step's output).

    ``splits`` keeps each split made during one run, so candidates do not load and split the data again."""
    from edgeshrink._files import atomic_write_text
    from edgeshrink.compress.evaluate import accuracy_of
    from edgeshrink.data import load_data, split_examples
    from edgeshrink.runtime import load

    kept = bench_dir / "calibration.json"
    if kept.exists():
        return json.loads(kept.read_text())["accuracy"]["value"]
    key = json.dumps(split.to_dict(), sort_keys=True)
    if key not in splits:
        splits[key] = split_examples(load_data(data), split)
    examples = splits[key]
    _, accuracy = accuracy_of(load(bundle, verify=False), examples.calibration)
    atomic_write_text(kept, json.dumps({"split": "calibration", "sha256": examples.sha256, "accuracy": accuracy}))
    return accuracy["value"]


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
    from edgeshrink.recipes.executors import LocalExecutor

    recipe, recipe_hash = load_recipe(recipe_path)
    out = Path(out or Path("runs") / recipe.name)
    progress = progress or (lambda message: None)
    # The executor first: a cluster that cannot be reached leaves no run directory behind.
    with (executor or LocalExecutor()) as running, run_dir_lock(out):
        from edgeshrink.recipes.llm import LLMRecipe, run_llm

        if isinstance(recipe, LLMRecipe):
            return run_llm(recipe_path, recipe, recipe_hash, out, progress, running)
        return _run_locked(recipe_path, recipe, recipe_hash, out, progress, running)


def _run_locked(recipe_path, recipe: Recipe, recipe_hash: str, out: Path, progress: Callable[[str], None],
                executor) -> dict:
    from edgeshrink import __version__
    from edgeshrink._files import atomic_write_text
    from edgeshrink.data import DataConfig, load_data
    from edgeshrink.doctor import report as machine_report

    data = recipe.data if isinstance(recipe.data, DataConfig) else DataConfig(source=recipe.data)
    load_data(data)  # a missing data set fails now, before any step runs
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = recipe.candidates()
    plans = plan_paths(recipe, paths, data, recipe.resources)

    def stop(p: int, s: int, record: dict, state: dict) -> dict | None:
        names = [t.name for t in plans[p].tasks]
        pruned = early_stop(recipe, names[s], record, state, names[s + 1:])
        if pruned:
            label = f"[{p + 1}/{len(paths)}] " if len(paths) > 1 else ""
            progress(f"{label}stopped after {names[s]}: {pruned['target']} is {pruned['value']:.4g} "
                     f"{pruned['unit']}, bound {pruned['bound']:g}".rstrip())
        return pruned

    outcomes = executor.run_paths(plans, {"model": recipe.model}, cache, stop, progress)
    candidates, splits = [], {}
    for index, ((choices, steps), plan, outcome) in enumerate(zip(paths, plans, outcomes)):
        state: dict = {"model": recipe.model}
        for record in outcome["records"]:
            state.update(record["state"])
        done = {"state": state, "pruned": outcome["pruned"],
                "results": {t.name: r["result"] for t, r in zip(plan.tasks, outcome["records"])},
                "steps": step_log(plan.tasks, outcome["records"], cache)}
        results = done["results"]
        bench_report = json.loads(Path(results["bench"]["bench"]).read_text()) if "bench" in results else None
        route_report = json.loads(Path(results["route"]["route"]).read_text()) if "route" in results else None
        candidate = {"index": index, "choices": choices, "pruned": done["pruned"], "steps": done["steps"],
                     "device_bundle": done["state"].get("bundle"), "cloud_bundle": done["state"].get("cloud_bundle"),
                     "peer_bundle": done["state"].get("peer_bundle"),
                     "router_bundle": done["state"].get("router_bundle"),
                     "split": (bench_report or {}).get("data")}
        if done["pruned"]:
            candidate.update(targets=[done["pruned"]], all_targets_met=False)
        else:
            candidate["targets"] = check_targets(recipe, bench_report, route_report)
            candidate["all_targets_met"] = all(t["met"] for t in candidate["targets"])
            if bench_report:
                lt = recipe.targets.max_latency_ms
                candidate["models"] = models_table(bench_report, *((lt.threads, lt.seq_length) if lt else (1, 64)))
                if len(paths) > 1:  # what the choice is made on
                    bench_split = dict(steps)["bench"].split
                    candidate["calibration_accuracy"] = calibration_accuracy(
                        candidate["device_bundle"], data, bench_split, Path(results["bench"]["bench"]).parent, splits)
            if route_report:
                candidate["router"] = {"on_device_fraction": route_report["on_device_fraction"],
                                       "hybrid_accuracy": route_report["hybrid"]["accuracy"],
                                       "cloud_accuracy": route_report["cloud_only"]["accuracy"],
                                       "device_accuracy": route_report["device_only"]["accuracy"],
                                       "guarantee": route_report["router"]["guarantee"],
                                       "plots": str(Path(results["route"]["route"]).parent / "plots")}
        candidates.append(candidate)
    chosen = candidates[choose(candidates)]
    machine = machine_report()
    report = {
        "schema": "edgeshrink-recipe-report/1", "recipe": str(recipe_path), "recipe_sha256": recipe_hash,
        "name": recipe.name, "out": str(out), "edgeshrink_version": __version__, "seed": recipe.seed,
        "machine": {"cpu": machine["cpu"], "logical_cores": machine["logical_cores"], "versions": machine["versions"],
                    "python": platform.python_version()},
        "wall_seconds_this_run": round(time.perf_counter() - started, 1), "executor": executor.describe(),
        "chosen": chosen["index"], "choices": chosen["choices"],
        **{k: chosen.get(k) for k in ("steps", "device_bundle", "cloud_bundle", "peer_bundle", "router_bundle", "split", "targets",
                                      "all_targets_met", "models", "router", "pruned")},
        "candidates": candidates if len(candidates) > 1 else [],
    }
    route_plots = Path(chosen["router"]["plots"]) if chosen.get("router") else None
    report["plots"] = write_plots(report, out / "plots", route_plots)
    text = markdown(report)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", html_page(report, text, out / "plots"))
    return report
