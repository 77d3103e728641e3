"""Calibrate a device/cloud router on the calibration split and store it in the device bundle.

    from edgeshrink.route.calibrate import calibrate, RouteConfig
    router = calibrate("runs/device", "runs/cloud-bundle", "sentiment-movies",
                       RouteConfig(policy="risk", alpha=0.02, delta=0.1))

Steps: run both models on the calibration split; fit the temperature of the *device* model there (on
the labels, or on the cloud's predictions in label-free mode); compute the confidence signal; choose
the threshold with the policy; write ``router.json`` into the bundle and its sha256 into the manifest
(the runtime refuses a router.json that does not match). Inputs the device truncates are escalated by
rule at run time, so they are left out of the risk computation (the guarantee is about the requests
the device answers).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

from pydantic import Field, model_validator

from edgeshrink import tasks
from edgeshrink.config import Config
from edgeshrink.data import DataConfig, SplitConfig, load_data, split_examples
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.confidence import confidence_report, confidence_scores, fit_confidence
from edgeshrink.route.policies import CalibrationData, PolicyConfig, choose_threshold
from edgeshrink.route.prompts import PromptConfig, prompt_for
from edgeshrink.route.router import DEFAULT_COST, ROUTER_NAME, as_prompted, check_same_labels
from edgeshrink.route.router_schema import router_record


class CostConfig(Config):
    version: int = 1
    device_latency_ms: float | None = Field(DEFAULT_COST["device_latency_ms"], ge=0)  # None: measured by `route eval`
    cloud_latency_ms: float = Field(DEFAULT_COST["cloud_latency_ms"], ge=0)  # model time in the cloud
    network_rtt_ms: float = Field(DEFAULT_COST["network_rtt_ms"], ge=0)
    cloud_cost_per_1000: float = Field(DEFAULT_COST["cloud_cost_per_1000"], ge=0)  # money per 1,000 cloud calls
    device_energy_mj: float | None = Field(DEFAULT_COST["device_energy_mj"], ge=0)  # per device inference


class RouteConfig(PolicyConfig):
    """A threshold policy plus the cost model and the per-request rules stored with it."""
    cost: CostConfig = CostConfig()
    escalate_truncated: bool = True  # inputs the device cuts at max_length go to the cloud
    split: SplitConfig = SplitConfig()
    prompt: PromptConfig | None = None  # language models: the task's prompt (None: the data's built-in one)
    # language models: classify (a labelled task, answered by label log-likelihood) or open (free answers,
    # label-free: does the cloud agree with the device's greedy answer of at most answer_tokens tokens)
    task: Literal["classify", "open"] = "classify"
    answer_tokens: int = Field(32, ge=1, le=512)
    # open prompts: also calibrate the token-level handoff (route/handoff.py): where the device stops writing and
    # the cloud continues, bounded at the same alpha and delta, on this per-token signal
    handoff: bool = False
    handoff_signal: Literal["logprob", "neg-entropy", "margin"] = "logprob"
    # what the handoff's alpha bounds: "token", disagreement among the tokens the device keeps (mean over answers);
    # "answer", the share of answers that are not the cloud's own greedy answer (route/handoff.py)
    handoff_loss: Literal["token", "answer"] = "token"

    @model_validator(mode="before")
    @classmethod
    def _open_defaults(cls, values):
        """Open prompts have no right answer and no label distribution: unless told otherwise they are routed
        label-free (agreement with the cloud) on the mean log-probability of the answer's tokens."""
        if isinstance(values, dict) and values.get("task") == "open":
            values = {"label_free": True, "signal": "mean-logprob", **values}
        return values

    def key_form(self) -> dict:
        """A recipe step's cache key: without the handoff fields while they are off (a route step cached before
        they existed made the same router)."""
        given = self.to_dict()
        if not self.handoff:
            given.pop("handoff")
            given.pop("handoff_signal")
            given.pop("handoff_loss")
        return given

    @model_validator(mode="after")
    def _handoff_needs_open(self):
        if not self.handoff and (self.handoff_signal != "logprob" or self.handoff_loss != "token"):
            raise ValueError("handoff_signal and handoff_loss go with handoff (--handoff)")
        if self.handoff and self.task != "open":
            raise ValueError("handoff: the token-level handoff is calibrated on open prompts (task open)")
        if self.handoff and self.alpha is None:
            raise ValueError("handoff needs alpha: the bound on the cloud's disagreement among the tokens the device "
                             "keeps")
        return self


# The built-in data each task calibrates on when none is given (classify: none, the user's task decides).
DEFAULT_DATA = {"open": "open-prompts"}


def label_ids(labels: list[str], names: list[str], where: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise EdgeshrinkError(f"labels in {where} that the models do not have: {unknown} (the models': "
                              f"{', '.join(names)}; map yours with --label-map DATA=MODEL,...)")
    return np.array([index[y] for y in labels])


def calibration_data(device_probs, cloud_probs, labels, fitted: dict, config: PolicyConfig,
                     answer_signals: dict | None = None) -> CalibrationData:
    scores = confidence_scores(config.signal, device_probs, answer_signals, fitted)
    device_pred, cloud_pred = device_probs.argmax(1), cloud_probs.argmax(1)
    return CalibrationData(scores, None if labels is None else device_pred == labels,
                           None if labels is None else cloud_pred == labels, device_pred == cloud_pred)


def fit(device_probs, cloud_probs, labels, config: PolicyConfig, answer_signals: dict | None = None) -> dict:
    """The device model's scaling (``fit_confidence``): on the labels, or on the cloud's answers without them."""
    reference = cloud_probs.argmax(1) if config.label_free else labels
    return fit_confidence(config.signal, device_probs, answer_signals, reference, config.temperature_scaling)


def subset(answer_signals: dict | None, rows) -> dict | None:
    return None if answer_signals is None else {k: v[rows] for k, v in answer_signals.items()}


def load_models(device, cloud, prompt: dict | None):
    """The device bundle and the cloud model as predictors; language-model bundles answer ``prompt``."""
    from edgeshrink.models.torch_text import load_predictor
    from edgeshrink.runtime import load

    device_model = as_prompted(load(device), prompt)
    if isinstance(cloud, (str, Path)):
        if not tasks.is_bundle(cloud) and tasks.of_model(cloud).runtime.generates:
            raise EdgeshrinkError(f"cloud {cloud} is a language model directory: export it to a bundle first "
                                  f"(edgeshrink export {cloud} --out BUNDLE)")
        cloud = as_prompted(load_predictor(cloud), prompt)
    check_same_labels(device_model, cloud)
    return device_model, cloud


def show_progress(models: dict, progress) -> None:
    """Language models answer one text at a time: report ``name: done/total`` through ``progress``."""
    for name, model in models.items():
        if progress is not None and hasattr(model, "progress"):
            model.progress = lambda done, total, name=name: progress(f"{name}: {done}/{total}")


def calibrate(device: str | Path, cloud, data: DataConfig | str, config: RouteConfig | None = None,
              cloud_name: str | None = None, progress=None) -> dict:
    """Fit the router on the calibration split; write router.json into the ``device`` bundle; return it."""
    from edgeshrink.data.images import model_inputs

    config = config or RouteConfig()
    device_path = Path(device)
    examples = load_data(data)
    split = split_examples(examples, config.split) if examples.label_names else None
    prompt = prompt_for(examples, shots=split.train if split else None, base=config.prompt).to_dict() \
        if config.task == "classify" and tasks.of_bundle(device_path).runtime.generates else None
    if split is not None:
        part, data_info = split.calibration, split.data_record()
    elif config.label_free or config.task == "open":  # unlabelled traffic: every row calibrates
        part, data_info = examples, {"source": examples.source.source, "name": examples.name, "unlabelled": True,
                                     "rows": len(examples)}
    else:
        raise EdgeshrinkError(f"data {examples.name!r} has no labels: calibrate with label_free (--label-free)")
    if config.task == "open":
        from edgeshrink.route.open_prompts import calibrate_open

        router = calibrate_open(device_path, cloud, part, config, progress) | {"data": data_info,
                                                                              "cloud": cloud_name or str(cloud)}
        write_router(device_path, router)
        return router
    device_model, cloud_model = load_models(device_path, cloud, prompt)
    show_progress({"device": device_model, "cloud": cloud_model}, progress)
    labels = None if config.label_free else label_ids(part.labels, list(device_model.labels), "the calibration split")
    inputs = model_inputs(part)  # texts, or the image array for tensor bundles (a CNN's router)
    device_out, cloud_out = device_model.predict(inputs), cloud_model.predict(inputs)
    router = build_router(device_out.probabilities, cloud_out.probabilities, labels, config, list(device_model.labels),
                          truncated=np.array(device_out.truncated), unknown=getattr(device_out, "unknown", None),
                          answer_signals=getattr(device_out, "signals", None), prompt=prompt, data_info=data_info,
                          cloud_name=cloud_name or str(cloud))
    write_router(device_path, router)
    return router


def build_router(device_probs: np.ndarray, cloud_probs: np.ndarray, labels: np.ndarray | None, config: RouteConfig,
                 label_names: list[str], truncated: np.ndarray, unknown=None, answer_signals: dict | None = None,
                 prompt: dict | None = None, data_info: dict | None = None, cloud_name: str = "") -> dict:
    """The router.json of a calibration sample: both models' probabilities per example (labels as indices, or None
    when ``config.label_free``), which inputs the device truncated and which held unknown tokens. Also what the
    drift monitor compares live traffic with (``reference``, route/monitor.py)."""
    from edgeshrink.route.monitor import reference_from

    keep = ~np.asarray(truncated, bool) if config.escalate_truncated else np.ones(len(device_probs), bool)
    d, c = device_probs[keep], cloud_probs[keep]
    answer = subset(answer_signals, keep)
    y = None if labels is None else labels[keep]
    fitted = fit(d, c, y, config, answer)
    threshold = choose_threshold(calibration_data(d, c, y, fitted, config, answer), config, len(label_names))
    reference = c.argmax(1) if config.label_free else y
    scores = confidence_scores(config.signal, d, answer, fitted)
    answered = scores >= threshold.value
    disagreement = float(np.mean(d.argmax(1)[answered] != c.argmax(1)[answered])) if answered.any() else None
    return router_record(
        config, fitted, threshold, keep,
        {"temperature_fit": confidence_report(config.signal, d, answer, reference, fitted)},
        prompting={"prompt": prompt}, labels=list(label_names), data=data_info, cloud=cloud_name,
        reference=reference_from(scores, keep, ~answered, np.asarray(truncated, bool),
                                 None if unknown is None else np.asarray(unknown, bool), list(label_names),
                                 device_probs.argmax(1), disagreement))


def write_router(bundle: Path, router: dict, replace_reason: str | None = None) -> str:
    """Store ``router`` in the bundle; return its file name.

    A calibration writes ``router.json`` and then the manifest with its hash. A recalibration of a deployed
    bundle (``replace_reason`` given: the drift monitor's) writes the new router to a file of its own,
    ``router-<sha256[:12]>.json``, then commits it by replacing the manifest in one rename: a reader sees the old
    router or the new one, never a mix. The previous router file stays, listed in ``router_history`` with when
    and why it was replaced."""
    import time

    from edgeshrink._files import atomic_write_text, sha256_file
    from edgeshrink.runtime.bundle import MANIFEST_NAME
    from edgeshrink.runtime.trust import SIGNATURE_NAME

    manifest_path = bundle / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    fd, tmp = tempfile.mkstemp(prefix=f".{ROUTER_NAME}.tmp-", dir=bundle)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(router, indent=2))
    digest, size = sha256_file(tmp), os.path.getsize(tmp)
    name = ROUTER_NAME if replace_reason is None else f"router-{digest[:12]}.json"
    previous = manifest.get("router")
    if replace_reason is not None and previous:
        manifest.setdefault("router_history", []).append(
            {**previous, "replaced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": replace_reason})
    manifest["files"][name] = {"size_bytes": size, "sha256": digest}
    manifest["router"] = {"file": name, "sha256": digest, "policy": router["policy"]["policy"]}
    manifest["size_bytes"] = sum(f["size_bytes"] for f in manifest["files"].values())
    os.replace(tmp, bundle / name)
    # the bundle changes: a signature over the old files would no longer hold (sign again; under a trust list an
    # unsigned bundle is refused, which is what a changed bundle must be until its signer signs it)
    (bundle / SIGNATURE_NAME).unlink(missing_ok=True)
    try:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2))  # the commit point of a recalibration
    except BaseException:
        if name != ROUTER_NAME:  # not committed: the new file goes, the bundle stays as it was
            (bundle / name).unlink(missing_ok=True)
        raise
    return name
