"""The device/cloud router at run time: numpy + the device runtime only (no torch).

    from edgeshrink.route.router import Router
    router = Router.from_bundle("runs/device", cloud=load("runs/cloud-bundle"))
    for answer in router.predict(["a gorgeous, witty film", "meh"]):
        answer.label, answer.source, answer.confidence, answer.cost

The device model always runs first (a cascade). Its probabilities are temperature-scaled, turned into
the confidence signal, and compared with the calibrated threshold from ``router.json``; the rest go to
the cloud, which is anything with ``predict(texts) -> Predictions``. Per-request rules: ``private``
requests never leave the device; ``cloud_only`` ones always go; truncated inputs go to the cloud when
the router says so. A cloud that raises is never fatal: the device answer is returned, flagged
``fallback``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.confidence import confidence_scores
from edgeshrink.route.router_schema import MAX_ROUTER_BYTES, validate_router

ROUTER_NAME = "router.json"
ESCALATE_REASONS = ("cloud only", "truncated", "not confident")

DEFAULT_COST = {"device_latency_ms": None, "cloud_latency_ms": 60.0, "network_rtt_ms": 80.0,
                "cloud_cost_per_1000": 1.0, "device_energy_mj": None}


@dataclass
class Answer:
    label: str
    source: str  # "device" or "cloud"
    confidence: float  # the device model's calibrated signal
    reason: str  # "confident", "not confident", "private", "cloud only", "truncated", "cloud failed"
    fallback: bool  # the cloud was asked but failed: this is the device's answer
    cost: dict  # modelled latency_ms, money and energy for this request


def request_cost(cost: dict, escalated: bool) -> dict:
    """Modelled cost of one request: the device always runs; an escalation adds the cloud and the network."""
    latency = cost.get("device_latency_ms") or 0.0
    if escalated:
        latency += cost["cloud_latency_ms"] + cost["network_rtt_ms"]
    return {"latency_ms": latency, "money": cost["cloud_cost_per_1000"] / 1000 if escalated else 0.0,
            "energy_mj": cost.get("device_energy_mj")}


def threshold_of(settings: dict) -> float:
    """The stored threshold: +inf escalates everything, -inf (stored as null) escalates nothing."""
    if settings.get("escalate_everything"):
        return math.inf
    return -math.inf if settings["threshold"] is None else float(settings["threshold"])


def generates(model) -> bool:
    """Whether a loaded model generates text (a language-model bundle: the runtime table says so)."""
    from edgeshrink.runtime.tasks import runtime_task

    manifest = getattr(model, "manifest", None)
    return bool(manifest) and runtime_task(manifest.get("task")).generates


def check_same_labels(device, cloud) -> None:
    if list(device.labels) != list(cloud.labels):
        raise EdgeshrinkError(f"the device and cloud models have different label sets: {list(device.labels)} vs "
                              f"{list(cloud.labels)}")


def as_prompted(model, prompt: dict | None):
    """A language-model bundle answers the router's prompted task (runtime/prompted.py); others as they are."""
    if not generates(model):
        return model
    if not prompt:
        raise EdgeshrinkError(f"{model.path} is a language model: its router needs a prompt (calibrate it on "
                              f"labelled data)")
    from edgeshrink.runtime.prompted import PromptedLLM

    return PromptedLLM(model, prompt)


def has_router(bundle: str | Path) -> bool:
    """Whether the bundle's manifest names a calibrated router (read_router then checks it)."""
    from edgeshrink.runtime.bundle import read_manifest

    return read_manifest(bundle, verify=False).get("router") is not None


def read_router(bundle: str | Path) -> dict:
    """The bundle's router file, through the bundle gate (listed, inside, no links) and checked against the hash
    the manifest records for it."""
    from edgeshrink.runtime.bundle import read_bundle_text, read_manifest

    bundle = Path(bundle)
    manifest = read_manifest(bundle, verify=False)
    entry = manifest.get("router")
    if entry is None:
        raise EdgeshrinkError(f"{bundle} has no calibrated router; run `edgeshrink route calibrate` first")
    text = read_bundle_text(bundle, manifest, entry["file"], max_bytes=MAX_ROUTER_BYTES)
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != entry["sha256"]:
        raise EdgeshrinkError(f"{bundle / entry['file']} does not match the hash in the bundle's manifest (edited or "
                              f"corrupt); calibrate again")
    return validate_router(text, bundle / entry["file"])


class Router:
    def __init__(self, device, cloud, settings: dict):
        self.device, self.cloud, self.settings = device, cloud, settings
        self.threshold = threshold_of(settings)
        self.fitted = {"temperature": float(settings.get("temperature", 1.0)), "bias": settings.get("bias")}
        self.signal = settings["signal"]
        self.cost = {**DEFAULT_COST, **settings.get("cost", {})}
        self.escalate_truncated = settings.get("rules", {}).get("escalate_truncated", True)
        if getattr(cloud, "labels", None) is not None and list(cloud.labels) != list(device.labels):
            raise EdgeshrinkError(f"the device and cloud models have different labels: {list(device.labels)} vs "
                                  f"{list(cloud.labels)}")

    @classmethod
    def from_bundle(cls, bundle: str | Path, cloud, threads: int | None = None) -> "Router":
        from edgeshrink.runtime import load

        settings = read_router(bundle)
        return cls(as_prompted(load(bundle, threads=threads), settings.get("prompt")), cloud, settings)

    def decide(self, device, private: list[bool] | None = None,
               cloud_only: list[bool] | None = None) -> tuple[np.ndarray, list[str], list[bool]]:
        """For the device's predictions: the calibrated confidence, the reason and whether to escalate, per text."""
        n = len(device.labels)
        private = private or [False] * n
        cloud_only = cloud_only or [False] * n
        if len(private) != n or len(cloud_only) != n:
            raise EdgeshrinkError("private and cloud_only need one flag per text")
        if any(p and c for p, c in zip(private, cloud_only)):
            raise EdgeshrinkError("a request cannot be both private and cloud-only")
        scores = confidence_scores(self.signal, device.probabilities, getattr(device, "signals", None), self.fitted)
        reasons = []
        for i in range(n):
            if private[i]:
                reasons.append("private")
            elif cloud_only[i]:
                reasons.append("cloud only")
            elif device.truncated[i] and self.escalate_truncated:
                reasons.append("truncated")
            else:
                reasons.append("confident" if scores[i] >= self.threshold else "not confident")
        return scores, reasons, [r in ESCALATE_REASONS for r in reasons]

    def predict(self, texts: list[str], private: list[bool] | None = None,
                cloud_only: list[bool] | None = None) -> list[Answer]:
        texts = list(texts)
        device = self.device.predict(texts)
        scores, reasons, escalate = self.decide(device, private, cloud_only)
        cloud_labels: dict[int, str] = {}
        failed = False
        rows = [i for i, e in enumerate(escalate) if e]
        if rows and self.cloud is not None:
            try:
                cloud_labels = dict(zip(rows, self.cloud.predict([texts[i] for i in rows]).labels))
            except Exception:  # noqa: BLE001 - a failing cloud must never lose a request
                failed = True
        elif rows:
            failed = True
        answers = []
        for i in range(len(texts)):
            on_cloud = i in cloud_labels
            answers.append(Answer(
                label=cloud_labels[i] if on_cloud else device.labels[i],
                source="cloud" if on_cloud else "device", confidence=float(scores[i]),
                reason="cloud failed" if escalate[i] and not on_cloud else reasons[i],
                fallback=escalate[i] and not on_cloud and failed,
                cost=request_cost(self.cost, escalate[i])))
        return answers
