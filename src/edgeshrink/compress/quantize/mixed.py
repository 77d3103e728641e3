"""`auto`: accuracy-aware mixed precision over int4 / int8 / fp32, chosen per weight-bearing node.

1. Sensitivity: each node (MatMul or embedding Gather with a constant weight) alone in int4, the rest
   fp32; KL divergence of the output distribution from fp32 on a subset of the calibration split.
2. Search, least sensitive first: the k least sensitive nodes in int4 and the rest in int8, with the
   largest k whose accuracy drop on the calibration split is within the tolerance (binary search);
   if even all-int8 is outside it, the m most sensitive nodes go back to fp32 (smallest such m).
3. Always a model: if no candidate meets the tolerance, the one with the smallest drop is returned
   and the manifest says the tolerance was not met.
Only the calibration split is used; the test split is scored afterwards, by `quantize`, for the report.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from edgeshrink._files import copy_listed_files
from edgeshrink.compress.quantize.passes import QuantContext, dynamic_int8, int4_weight
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.bundle import MANIFEST_NAME

SENSITIVITY_EXAMPLES = 256


def weight_nodes(onnx_path: Path) -> list[dict]:
    """Nodes that carry a large constant weight: MatMul (weight as input B) and Gather (embedding tables)."""
    import onnx

    model = onnx.load(str(onnx_path))
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    units = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1 and sizes.get(node.input[1], 0) >= 1024:
            units.append({"node": node.name, "op": "MatMul", "weight": node.input[1], "elements": sizes[node.input[1]]})
        elif node.op_type == "Gather" and sizes.get(node.input[0], 0) >= 1024:
            units.append({"node": node.name, "op": "Gather", "weight": node.input[0], "elements": sizes[node.input[0]]})
    return units


class _Builder:
    """Builds and scores the model for a per-node precision assignment."""

    def __init__(self, ctx: QuantContext):
        self.ctx = ctx
        self.units = weight_nodes(ctx.source_onnx)
        if not self.units:
            raise EdgeshrinkError("auto found no weight-bearing MatMul or Gather nodes to quantize")
        self.bundle_dir = ctx.work_dir / "candidate"
        self.bundle_dir.mkdir()
        copy_listed_files(ctx.source_onnx.parent, [name for name in [*ctx.manifest["files"], MANIFEST_NAME]
                                                   if name != "model.onnx"], self.bundle_dir)
        self.builds = 0

    def build(self, levels: dict[str, str], dst: Path) -> Path:
        """levels: node name -> int4 | int8 | fp32."""
        ctx = self.ctx
        self.builds += 1
        names = [u["node"] for u in self.units]
        int4 = [n for n in names if levels[n] == "int4"]
        int8 = [n for n in names if levels[n] == "int8"]
        current = ctx.source_onnx
        if int4:
            step = ctx.work_dir / "step_int4.onnx"
            gather_int4 = any(u["op"] == "Gather" and levels[u["node"]] == "int4" for u in self.units)
            int4_weight(current, step, ctx.config, nodes_to_exclude=[n for n in names if n not in int4], embeddings=gather_int4)
            current = step
        if int8:
            step = ctx.work_dir / "step_int8.onnx"
            dynamic_int8(current, step, ctx, nodes_to_exclude=[n for n in names if levels[n] != "int8"])
            current = step
        shutil.copy2(current, dst)
        return dst

    def probabilities(self, levels: dict[str, str], texts: list[str]) -> tuple[np.ndarray, int]:
        from edgeshrink.runtime import load

        model_path = self.build(levels, self.bundle_dir / "model.onnx")
        predictor = load(self.bundle_dir, verify=False)
        return predictor.predict(texts).probabilities, model_path.stat().st_size


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.clip(p, 1e-7, 1), np.clip(q, 1e-7, 1)
    return float(np.mean(np.sum(p * np.log(p / q), axis=1)))


def search(ctx: QuantContext) -> dict:
    started = time.perf_counter()
    cfg = ctx.config
    texts = ctx.require_calibration("auto")
    labels = ctx.calibration_labels[: len(texts)]
    if cfg.max_eval_examples:
        texts, labels = texts[: cfg.max_eval_examples], labels[: cfg.max_eval_examples]
    builder = _Builder(ctx)
    names = [u["node"] for u in builder.units]
    all_at = lambda level: {n: level for n in names}  # noqa: E731
    label_names = ctx.manifest["labels"]

    def accuracy(probs: np.ndarray) -> float:
        return float(np.mean([label_names[i] == y for i, y in zip(probs.argmax(1), labels)]))

    reference, fp32_size = builder.probabilities(all_at("fp32"), texts)
    fp32_accuracy = accuracy(reference)
    subset = texts[:SENSITIVITY_EXAMPLES]
    ctx.progress("sensitivity", total=len(names))
    sensitivity = {}
    for name in names:
        probs, _ = builder.probabilities({**all_at("fp32"), name: "int4"}, subset)
        sensitivity[name] = _kl(reference[: len(subset)], probs)
        ctx.progress("sensitivity", advance=1)
    order = sorted(names, key=lambda n: sensitivity[n])  # least sensitive first
    sensitivity_seconds = time.perf_counter() - started

    tried: list[dict] = []

    def evaluate(levels: dict[str, str], label: str) -> dict:
        probs, size = builder.probabilities(levels, texts)
        acc = accuracy(probs)
        row = {"candidate": label, "levels": dict(levels), "size_bytes": size, "accuracy": acc,
               "drop_points": 100 * (fp32_accuracy - acc), "meets": 100 * (fp32_accuracy - acc) <= cfg.tolerance}
        tried.append(row)
        ctx.progress(f"auto: {label}: calibration accuracy {100 * acc:.2f}% "
                     f"(drop {row['drop_points']:.2f} pt), {size / 1e6:.1f} MB")
        return row

    def int4_prefix(k: int) -> dict[str, str]:
        return {n: ("int4" if i < k else "int8") for i, n in enumerate(order)}

    def fp32_suffix(m: int) -> dict[str, str]:
        return {n: ("fp32" if i >= len(order) - m else "int8") for i, n in enumerate(order)}

    def bisect(passing: int, failing: int, family, describe, best: dict) -> dict:
        """Given a count that meets the tolerance (``best``, already scored) and one that does not, find the
        boundary between them (accuracy is taken as monotone in the count)."""
        while abs(passing - failing) > 1:
            mid = (passing + failing) // 2
            row = evaluate(family(mid), describe(mid))
            if row["meets"]:
                best, passing = row, mid
            else:
                failing = mid
        return best

    # Largest k (least sensitive nodes in int4, rest int8) within tolerance; accuracy falls as k grows.
    best = None
    n = len(order)
    if evaluate(int4_prefix(n), f"all {n} nodes int4")["meets"]:
        best = tried[-1]
    elif evaluate(int4_prefix(0), "all int8")["meets"]:
        best = bisect(0, n, int4_prefix, lambda k: f"{k} least sensitive int4, rest int8", tried[-1])
    elif evaluate(fp32_suffix(n - 1), f"{n - 1} most sensitive fp32, rest int8")["meets"]:
        # even all-int8 is too lossy: return the fewest most-sensitive nodes to fp32
        best = bisect(n - 1, 0, fp32_suffix, lambda m: f"{m} most sensitive fp32, rest int8", tried[-1])
    met = best is not None
    if best is None:
        best = min(tried, key=lambda r: (r["drop_points"], r["size_bytes"]))
    builder.build(best["levels"], ctx.output_onnx)
    counts = {lvl: sum(v == lvl for v in best["levels"].values()) for lvl in ("int4", "int8", "fp32")}
    message = (f"met the tolerance of {cfg.tolerance} points on the calibration split" if met else
               f"no candidate met the tolerance of {cfg.tolerance} points; returned the smallest drop found "
               f"({best['drop_points']:.2f} points)")
    ctx.progress(f"auto: {message}; {counts}")
    return {"tolerance_met": met, "message": message, "tolerance_points": cfg.tolerance,
            "calibration_examples": len(texts), "fp32_calibration_accuracy": fp32_accuracy,
            "chosen": {"calibration_accuracy": best["accuracy"], "drop_points": best["drop_points"],
                       "size_bytes": best["size_bytes"], "counts": counts},
            "per_node": [{**u, "precision": best["levels"][u["node"]], "sensitivity_kl": sensitivity[u["node"]]}
                         for u in builder.units],
            "candidates": [{k: v for k, v in r.items() if k != "levels"} for r in tried],
            "search_seconds": round(time.perf_counter() - started, 1),
            "sensitivity_seconds": round(sensitivity_seconds, 1), "builds": builder.builds}
