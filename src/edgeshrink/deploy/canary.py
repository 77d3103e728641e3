"""The canary: a held-out labelled sample a bundle carries, scored again wherever the bundle is to run.

``edgeshrink release --canary-data`` draws it from the test part of the bundle's recorded split (never the
data the model or its router were fitted on), scores the bundle on it here and records the accuracy and the
host in the manifest (``canary``: file, sha256, examples, accuracy, measured_on). Then:

- ``edgeshrink verify --accuracy`` scores it on the target host and compares with the recorded figure:
  INT8 kernels differ by ISA, so a bundle can lose accuracy on a device it was not measured on;
- an update is installed only if the new version, on this host, meets its recorded accuracy within a
  tolerance and agrees with the version running now on the same texts (``canary_check``).

Only the torch-free runtime runs here: a device scores its own canary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError

CANARY_NAME = "canary-{}.json"  # the sample's sha256[:12]
MAX_CANARY_BYTES = 32 << 20


class CanaryConfig(Config):
    """What an update's canary demands (``serve --update-from``; ``verify --accuracy`` uses the tolerance)."""

    version: int = 1
    # the new version's accuracy on its canary, on this host, may fall at most this far below the recorded one
    accuracy_tolerance: float = Field(0.01, ge=0, le=1)
    # the share of canary texts on which the new version must give the running version's label
    min_agreement: float = Field(0.9, ge=0, le=1)
    require: bool = True  # an update without a canary sample is refused


@dataclass(frozen=True)
class Canary:
    texts: list[str]
    labels: list[str]
    recorded_accuracy: float
    measured_on: dict


def host() -> dict:
    """Where a figure was measured: the CPU's ISA (as `edgeshrink doctor`) and the onnxruntime version."""
    import onnxruntime

    from edgeshrink.doctor import cpu_info

    cpu = cpu_info()
    return {"isa": cpu["isa"], "arch": cpu["arch"], "onnxruntime": onnxruntime.__version__}


def read_canary(bundle: str | Path, manifest: dict) -> Canary | None:
    """The bundle's canary (its hash checked in the read), or None when it carries none."""
    from edgeshrink.runtime.bundle import read_bundle_text

    entry = manifest.get("canary")
    if not entry:
        return None
    text = read_bundle_text(bundle, manifest, entry["file"], max_bytes=MAX_CANARY_BYTES)
    try:
        data = json.loads(text)
        texts, labels = data["texts"], data["labels"]
        ok = (isinstance(texts, list) and isinstance(labels, list) and len(texts) == len(labels) == entry["examples"]
              and all(isinstance(t, str) and t for t in texts) and all(isinstance(x, str) for x in labels))
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise EdgeshrinkError(f"bundle file {entry['file']} is not a canary sample ({entry['examples']} texts with "
                              f"their labels)")
    unknown = sorted(set(labels) - set(manifest.get("labels") or []))
    if unknown:
        raise EdgeshrinkError(f"bundle file {entry['file']}: label {unknown[0]!r} is not one of the bundle's labels")
    return Canary(texts, labels, float(entry["accuracy"]), dict(entry.get("measured_on") or {}))


def predict_labels(predictor, texts: list[str]) -> list[str]:
    return list(predictor.predict(texts, batch_size=32).labels)


def score(predictor, canary: Canary) -> float:
    predicted = predict_labels(predictor, canary.texts)
    return sum(p == y for p, y in zip(predicted, canary.labels)) / len(canary.labels)


def accuracy_here(bundle: str | Path, tolerance: float = 0.01, threads: int | None = None, trust=None,
                  verify: bool = True) -> dict:
    """``verify --accuracy``: the bundle's canary scored on this host against the recorded figure (``verify``: check
    the bundle's hashes first; False only where the caller has just checked them)."""
    from edgeshrink.runtime import load

    predictor = load(bundle, threads=threads, verify=verify, trust=trust)
    canary = read_canary(bundle, predictor.manifest)
    if canary is None:
        raise EdgeshrinkError(f"{bundle} carries no canary sample: add one with `edgeshrink release {bundle} "
                              f"--version N --canary-data DATA`")
    accuracy = score(predictor, canary)
    return {"bundle": str(bundle), "examples": len(canary.labels), "recorded_accuracy": canary.recorded_accuracy,
            "recorded_on": canary.measured_on, "accuracy": accuracy, "host": host(), "tolerance": tolerance,
            "difference": accuracy - canary.recorded_accuracy,
            "ok": accuracy >= canary.recorded_accuracy - tolerance - 1e-12}


def canary_check(new, current, config: CanaryConfig) -> dict:
    """Gate an update: ``new`` (the candidate predictor) on its own canary, against its recorded accuracy and
    against ``current``'s labels on the same texts. {"ok", "reason", "accuracy", "recorded_accuracy",
    "agreement", "examples"}."""
    canary = read_canary(new.path, new.manifest)
    if canary is None:
        ok = not config.require
        return {"ok": ok, "examples": 0, "reason": None if ok else "the new version carries no canary sample "
                "(release it with --canary-data), and this service requires one"}
    new_labels = predict_labels(new, canary.texts)
    accuracy = sum(p == y for p, y in zip(new_labels, canary.labels)) / len(canary.labels)
    agreement = None
    if current is not None:
        old_labels = predict_labels(current, canary.texts)
        agreement = sum(a == b for a, b in zip(new_labels, old_labels)) / len(canary.labels)
    result = {"examples": len(canary.labels), "accuracy": accuracy, "recorded_accuracy": canary.recorded_accuracy,
              "agreement": agreement, "reason": None}
    if accuracy < canary.recorded_accuracy - config.accuracy_tolerance - 1e-12:
        result["reason"] = (f"canary accuracy {100 * accuracy:.1f}% on this host is below the recorded "
                            f"{100 * canary.recorded_accuracy:.1f}% by more than {100 * config.accuracy_tolerance:.1f} "
                            f"points")
    elif agreement is not None and agreement < config.min_agreement - 1e-12:
        result["reason"] = (f"the new version agrees with the running one on {100 * agreement:.1f}% of the canary "
                            f"({len(canary.labels)} texts); at least {100 * config.min_agreement:.0f}% is required")
    result["ok"] = result["reason"] is None
    return result
