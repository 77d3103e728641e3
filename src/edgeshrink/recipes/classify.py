"""Classifier recipes (text-classification encoders, tensor-classification CNNs): finetune → prune → distill →
export → quantize → bench → route, with ``search`` alternatives, early stops, and the cloud model, the peer
pipeline and the router as references.

The runner tracks the working model (a model directory), the teacher (the fine-tuned model), the device
bundle and the cloud bundle (the teacher exported with the same export config) that ``bench`` and ``route``
compare against. A path stops early once a step's test accuracy or the final bundle's size already rules
out a target; the candidate that meets every target with the best calibration-split accuracy, then
latency, is chosen — or, if none does, the nearest miss, with every target's miss.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from edgeshrink.config import Config
from edgeshrink.data import DataConfig
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.report import latency_cell, markdown, models_table, target_row, write_plots
from edgeshrink.recipes.schema import Recipe, RecipeKind, where
from edgeshrink.runtime.tasks import runtime_task


class LatencyTarget(Config):
    value: float = Field(gt=0)  # milliseconds
    percentile: Literal[50, 90, 99] = 50
    threads: int = Field(1, ge=1)
    seq_length: int | Literal["max"] = 64  # tokens; "max": each model at its own max_length (long inputs)

    @field_validator("seq_length")
    @classmethod
    def _positive(cls, value):
        if value != "max" and value < 1:
            raise ValueError("must be a positive number of tokens or 'max'")
        return value


class RouterTargets(Config):
    max_cloud_fraction: float | None = Field(None, gt=0, le=1)
    max_accuracy_drop: float | None = Field(None, ge=0)  # points of hybrid accuracy below the cloud model
    alpha: float | None = Field(None, gt=0, lt=1)  # the router must guarantee risk <= alpha ...
    delta: float | None = Field(None, gt=0, lt=1)  # ... with probability >= 1 - delta (policy risk or risk+budget)


class PeerTargets(Config):
    """Against the peer pipeline (optimum-onnx export + ORT dynamic INT8 of the cloud model), same bench run."""

    min_speedup: float | None = Field(None, gt=0)  # peer / device latency at max_latency_ms's cell
    min_size_reduction: float | None = Field(None, gt=0)  # peer size / device size
    max_accuracy_drop: float | None = None  # points below the peer (0: equal or better)


class TensorTargets(Config):
    max_size_mb: float | None = Field(None, gt=0)
    max_latency_ms: LatencyTarget | None = None
    min_accuracy: float | None = Field(None, gt=0, le=1)
    max_accuracy_drop: float | None = Field(None, ge=0)  # points below the cloud model's test accuracy
    # relative to the cloud model's fp32 bundle, measured in the same bench run
    min_size_reduction: float | None = Field(None, gt=0)  # cloud size / device size
    min_speedup: float | None = Field(None, gt=0)  # cloud / device latency at max_latency_ms's cell (or 1 thread, 64)
    min_accuracy_fraction: float | None = Field(None, gt=0, le=1)  # device accuracy / cloud accuracy
    router: RouterTargets | None = None


class Targets(TensorTargets):
    """A text model's targets: a CNN has no peer pipeline (optimum-onnx exports Hugging Face models)."""

    peer: PeerTargets | None = None


class TensorRecipe(Recipe):
    data: DataConfig | str
    targets: TensorTargets = TensorTargets()

    def step_data(self) -> DataConfig:
        return self.data if isinstance(self.data, DataConfig) else DataConfig(source=self.data)

    def check_data(self) -> None:
        from edgeshrink.data import load_data

        load_data(self.step_data())  # a missing data set fails now, before any step runs


class TextRecipe(TensorRecipe):
    targets: Targets = Targets()


# -- steps ---------------------------------------------------------------------------------------------------
def _finetune(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.models.finetune import finetune

    record = finetune(state["model"], out / "model", config, data=data, force=True, progress=progress)
    path = str(out / "model")
    return {"state": {"model": path, "teacher": path}, "result": {"test_accuracy": record["test"]["accuracy"]}}


def _prune(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.compress.prune import prune

    teacher = state.get("teacher") or state["model"]
    record = prune(teacher, out / "model", config, data=data, force=True, progress=progress)
    return {"state": {"model": str(out / "model"), "teacher": teacher},
            "result": {"parameters": record["prune"]["parameters"]}}


def _prune_channels(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.compress.channels import prune_channels

    teacher = state.get("teacher") or state["model"]
    record = prune_channels(teacher, data, out / "model", config, force=True)
    return {"state": {"model": str(out / "model"), "teacher": teacher},
            "result": {"parameters": record["prune_channels"]["parameters"], "test_accuracy": record["test"]["accuracy"]}}


def _distill(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.compress.distill import distill

    record = distill(state["teacher"], state["model"], out / "model", config, data=data, force=True,
                     progress=progress)
    return {"state": {"model": str(out / "model")},
            "result": {"test_accuracy": record["test"]["accuracy"], "train_seconds": record["train_seconds"]}}


def _sparsify(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.compress.sparsify import sparsify

    record = sparsify(state["model"], data, out / "model", config, force=True, progress=progress)
    return {"state": {"model": str(out / "model")}, "result": {"test_accuracy": record["test"]["accuracy"]}}


def _export(state, config, out: Path, data, progress, peer_pipeline: bool) -> dict:
    from edgeshrink.export import export

    manifest = export(state["model"], out / "bundle", config, force=True, progress=progress)
    teacher = state.get("teacher") or state["model"]
    cloud, peer = str(out / "bundle"), None
    # The cloud model keeps its own input length when the device's is cut (config.max_length).
    if Path(teacher).resolve() != Path(state["model"]).resolve() or config.max_length is not None:
        from edgeshrink.export.peer import peer_bundle

        progress("exporting the cloud model")
        export(teacher, out / "cloud-bundle", config.model_copy(update={"max_length": None}), force=True,
               progress=progress)
        cloud = str(out / "cloud-bundle")
        if peer_pipeline:
            progress("building the peer pipeline (optimum + ORT dynamic INT8)")
            peer_bundle(teacher, out / "peer-bundle", force=True)  # what a user would build instead
            peer = str(out / "peer-bundle")
    return {"state": {"bundle": str(out / "bundle"), "cloud_bundle": cloud, "peer_bundle": peer},
            "result": {"size_bytes": manifest["size_bytes"], "max_abs_diff": manifest["validation"]["max_abs_diff"]}}


def _quantize(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.compress.quantize import quantize

    manifest = quantize(state["bundle"], out / "bundle", config, data=data, force=True, progress=progress)
    return {"state": {"bundle": str(out / "bundle")}, "result": {"size_bytes": manifest["size_bytes"]}}


def _bench(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.bench import bench

    out.mkdir(parents=True, exist_ok=True)
    roles = [("cloud", state["cloud_bundle"])] + ([("peer", state["peer_bundle"])] if state.get("peer_bundle") else [])
    roles.append(("device", state["bundle"]))
    report = bench([path for _, path in roles], config, data=data, progress=progress)
    report["roles"] = [role for role, _ in roles]
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    return {"state": {}, "result": {"bench": str(out / "bench.json")}}


def _route(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.route.calibrate import calibrate
    from edgeshrink.route.evaluate import EvalConfig, evaluate

    device = out / "device"
    shutil.rmtree(device, ignore_errors=True)
    shutil.copytree(state["bundle"], device)
    calibrate(device, state["cloud_bundle"], data, config, progress=progress)
    report = evaluate(device, state["cloud_bundle"], data, EvalConfig(resplits=0), plots=out / "plots",
                      progress=progress)
    report.pop("curves", None)
    (out / "route.json").write_text(json.dumps(report, indent=2))
    return {"state": {"router_bundle": str(device)}, "result": {"route": str(out / "route.json")}}



# -- targets -------------------------------------------------------------------------------------------------
def check_targets(recipe: TensorRecipe, bench_report: dict | None, route_report: dict | None) -> list[dict]:
    """Each stated target: the measured value, the bound, met or not (and by how much it missed)."""
    t = recipe.targets
    rows = []

    def add(*row, **note):
        rows.append(target_row(*row, **note))

    cloud = device = peer = None
    if bench_report:
        cloud, device = bench_report["candidates"][0], bench_report["candidates"][-1]
        roles = bench_report.get("roles") or []
        peer = bench_report["candidates"][roles.index("peer")] if "peer" in roles else None
    peer_targets = getattr(t, "peer", None)
    needs_bench = any(v is not None for v in (t.max_size_mb, t.max_latency_ms, t.min_accuracy, t.max_accuracy_drop,
                                              t.min_size_reduction, t.min_speedup, t.min_accuracy_fraction, peer_targets))
    if needs_bench and device is None:
        raise EdgeshrinkError("the recipe states size/latency/accuracy targets but has no `bench` step to measure them")
    lt = t.max_latency_ms
    threads, seq, pct = (lt.threads, lt.seq_length, lt.percentile) if lt else (1, 64, 50)
    # tensor models (CNNs) have no sequence length: a cell is one batch-1 request
    tokenized = not device or not device.get("task") or runtime_task(device["task"]).tokenized
    at = f"{seq} tokens" if tokenized else "batch 1"

    def p_ms(candidate: dict, what: str) -> float:
        cell = latency_cell(candidate, threads, seq)
        if cell is None:
            raise EdgeshrinkError(f"the bench step did not measure {threads} thread(s) at {seq} tokens, which "
                                  f"{what} needs")
        return cell[f"p{pct}_ms"]

    if t.max_size_mb is not None:
        size = device["size_bytes"] / 1e6
        add("max_size_mb", size, t.max_size_mb, size <= t.max_size_mb, "MB")
    if lt is not None:
        value = p_ms(device, "the latency target")
        add(f"max_latency_ms (p{pct}, {threads} thread, {at})", value, lt.value, value <= lt.value, "ms")
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
    if t.min_speedup is not None:
        ratio = p_ms(cloud, "min_speedup") / p_ms(device, "min_speedup")
        add(f"min_speedup (p{pct}, {threads} thread, {at}, vs the cloud bundle)", ratio, t.min_speedup,
            ratio >= t.min_speedup, "x")
    if t.min_accuracy_fraction is not None:
        fraction = device["accuracy"]["value"] / cloud["accuracy"]["value"]
        add("min_accuracy_fraction (of the cloud model)", fraction, t.min_accuracy_fraction,
            fraction >= t.min_accuracy_fraction)
    if peer_targets is not None:
        if peer is None:
            raise EdgeshrinkError("the recipe states peer targets, but no peer pipeline was built: it is built by "
                                  "the `export` step when the device model differs from the cloud model")
        if peer_targets.min_speedup is not None:
            ratio = p_ms(peer, "peer.min_speedup") / p_ms(device, "peer.min_speedup")
            add(f"peer.min_speedup (p{pct}, {threads} thread, {seq} tokens)", ratio, peer_targets.min_speedup,
                ratio >= peer_targets.min_speedup, "x")
        if peer_targets.min_size_reduction is not None:
            ratio = peer["size_bytes"] / device["size_bytes"]
            add("peer.min_size_reduction (x smaller)", ratio, peer_targets.min_size_reduction,
                ratio >= peer_targets.min_size_reduction, "x")
        if peer_targets.max_accuracy_drop is not None:
            drop = 100 * (peer["accuracy"]["value"] - device["accuracy"]["value"])
            add("peer.max_accuracy_drop (points below the peer)", drop, peer_targets.max_accuracy_drop,
                drop <= peer_targets.max_accuracy_drop, "points")
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
                value, bound, value is not None and value <= bound,
                note=f"realised on the test split: {route_report['realised_risk']}" if guaranteed else
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
    return {**target_row(target, value, bound, False, unit), "found_after": after}


def early_stop(recipe: TensorRecipe, name: str, record: dict, state: dict, later: list[str]) -> dict | None:
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




# -- the report's sections -----------------------------------------------------------------------------------
def _sections(recipe: TensorRecipe, paths: list, done: list[dict], data) -> dict:
    """Each candidate's targets, models and router, and the chosen candidate's fields at the report's top."""
    candidates, splits = [], {}
    for index, ((choices, steps), path) in enumerate(zip(paths, done)):
        results, state = path["results"], path["state"]
        bench_report = json.loads(Path(results["bench"]["bench"]).read_text()) if "bench" in results else None
        route_report = json.loads(Path(results["route"]["route"]).read_text()) if "route" in results else None
        candidate = {"index": index, "choices": choices, "pruned": path["pruned"], "steps": path["steps"],
                     "device_bundle": state.get("bundle"), "cloud_bundle": state.get("cloud_bundle"),
                     "peer_bundle": state.get("peer_bundle"), "router_bundle": state.get("router_bundle"),
                     "split": (bench_report or {}).get("data")}
        if path["pruned"]:
            candidate.update(targets=[path["pruned"]], all_targets_met=False)
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
    return {"chosen": chosen["index"], "choices": chosen["choices"],
            **{k: chosen.get(k) for k in ("steps", "device_bundle", "cloud_bundle", "peer_bundle", "router_bundle",
                                          "split", "targets", "all_targets_met", "models", "router", "pruned")},
            "candidates": candidates if len(candidates) > 1 else []}


# -- checks the schema cannot make ---------------------------------------------------------------------------
def _takes_text(recipe: TextRecipe, path: Path, lines: dict) -> None:
    from edgeshrink.data.images import is_image_data
    from edgeshrink.models.cnn import ARCHITECTURES

    if is_image_data(recipe.data):
        data = getattr(recipe.data, "source", recipe.data)
        raise EdgeshrinkError(f"{path}: {where(lines, ('data',))}: data: {data!r} is images; model {recipe.model!r} "
                              f"is a text model (for images use a CNN: {', '.join(ARCHITECTURES)})")


def _takes_images(recipe: TensorRecipe, path: Path, lines: dict) -> None:
    from edgeshrink.data.images import IMAGE_DATASETS, is_image_data

    if not is_image_data(recipe.data):
        data = getattr(recipe.data, "source", recipe.data)
        raise EdgeshrinkError(f"{path}: {where(lines, ('data',))}: data: model {recipe.model!r} is a CNN and takes "
                              f"images; {data!r} is not a built-in image data set ({', '.join(IMAGE_DATASETS)})")


# -- the kinds -----------------------------------------------------------------------------------------------
_NEEDS = (("distill", "prune"), ("quantize", "export"), ("bench", "export"), ("route", "export"))
# A step whose output changes meaning gets a new version; it then enters the step's cache key (version 1
# is left out so that caches made before versions existed stay valid). export 2: also builds the peer, and
# the cloud bundle keeps the teacher's own max_length.
_VERSIONS = {"export": 2}
_SHARED = {"sections": _sections, "markdown": markdown, "plots": write_plots, "needs": _NEEDS, "versions": _VERSIONS,
           "early_stop": early_stop}

TEXT = RecipeKind("text-classification", {
    "finetune": _finetune, "prune": _prune, "distill": _distill, "sparsify": _sparsify,
    "export": partial(_export, peer_pipeline=True), "quantize": _quantize, "bench": _bench, "route": _route},
    configs={"route": "edgeshrink.route.calibrate:RouteConfig"}, check=_takes_text, **_SHARED)
TENSOR = RecipeKind("tensor-classification", {
    "finetune": _finetune, "prune-channels": _prune_channels, "export": partial(_export, peer_pipeline=False),
    "quantize": _quantize, "bench": _bench}, check=_takes_images, **_SHARED)
