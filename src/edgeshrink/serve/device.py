"""The device service (`edgeshrink serve`): the bundle's model through the torch-free runtime, escalating per
router.json to the cloud service and answering from the device (``device-fallback``) when the cloud cannot."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.serve.app import TextResult, build_app, check_text_model, predict_rows, probabilities_dict
from edgeshrink.serve.config import ServeConfig, no_router
from edgeshrink.serve.gate import protected
from edgeshrink.runtime.bundle import check_bundle_trust
from edgeshrink.runtime.trust import trusted_keys
from edgeshrink.serve.updates import Active, Updater
from edgeshrink.serve.watch import RouterWatch


def device_app(bundle: str | Path, config: ServeConfig, faults: Path | None = None):
    """The device bundle behind the API; with ``config.cloud`` it escalates per the bundle's router.json.
    ``faults``: a fault-drill file, as for the cloud service (serve/cloud.py)."""
    from edgeshrink.route.router import Router, has_router, read_router
    from edgeshrink.runtime import load
    from edgeshrink.runtime.predictor import Predictions
    from edgeshrink.serve.cloud_client import CLOUD_PROTOCOLS

    if config.cloud is not None and config.cloud.protocol == "v2" and not config.cloud.model:
        raise EdgeshrinkError("--cloud-protocol v2 needs --cloud-model: the model's name at /v2/models/NAME")
    if config.cloud is not None and config.cloud.model is not None and config.cloud.protocol != "v2":
        raise EdgeshrinkError("--cloud-model applies to language-model bundles and to --cloud-protocol v2")
    if config.update is not None and config.monitor.recalibrate:
        raise EdgeshrinkError("--recalibrate rewrites the served bundle's router, which an update channel's signed "
                              "bundles must not have: recalibrate where bundles are made, and publish the result")
    trust = config.trust or None  # None: $EDGESHRINK_TRUST
    if config.update is not None and not trusted_keys(trust):
        raise EdgeshrinkError("updates over the air need a trust list: pass --trust KEY.pub (the publisher's public "
                              "key) or set $EDGESHRINK_TRUST")
    store, name = None, Path(bundle).name  # the service's model name stays the shipped bundle's across versions
    if config.update is not None:  # serve the store's current version (the bundle given is installed into it)
        from edgeshrink.deploy.store import VersionStore

        store = VersionStore(config.update.store or f"{Path(bundle).absolute()}.versions", config.update.keep)
        bundle = store.open(Path(bundle), lambda path: _release_of(path, trust))
    signed_by = check_bundle_trust(bundle, trust)
    predictor = load(bundle, threads=config.threads, trust=[])  # checks every file's hash
    check_text_model(predictor)
    labels = list(predictor.labels)
    # With a cloud, router.json decides what goes there and is required (read_router refuses an edited one),
    # unless the cloud answers only the texts that ask for it (cloud-on-request); a router present still gives
    # calibrated confidences.
    on_request = config.cloud is not None and config.cloud.route == "cloud-on-request"
    if config.cloud is not None and not on_request and not has_router(bundle):
        raise no_router(bundle, f"edgeshrink route calibrate --device {bundle} --cloud CLOUD_BUNDLE --data DATA")

    def activate(path: Path, model, signed=None) -> Active:
        """A complete version: model, router (and, once serving, the router's watch), all from ``path``."""
        release = (model.manifest.get("release") or {}).get("version")
        return Active(release, Path(path), model, Router(model, None, read_router(path)) if has_router(path) else None,
                      signed)

    current = activate(bundle, predictor, signed_by)  # the version answering until an update (or rollback) replaces it
    if (config.monitor.audit_fraction > 0 or config.monitor.recalibrate) and config.cloud is None:
        raise EdgeshrinkError("the audit and recalibration need the cloud's answers: give --cloud URL")
    if (config.monitor.audit_fraction > 0 or config.monitor.recalibrate) and on_request:
        raise EdgeshrinkError("the audit and recalibration watch the router's decisions: they go with --route router")
    holder: dict = {}

    def watched(active: Active, metrics) -> Active:
        if active.router is not None and not on_request:
            active.watch = RouterWatch(active.path, active.router, config.monitor, metrics)
        return active

    async def startup(app):
        metrics = app.state.metrics
        if config.cloud is not None:
            holder["cloud"] = CLOUD_PROTOCOLS[config.cloud.protocol](config.cloud, metrics, labels)
        watched(current, metrics)
        metrics.model_version.set(current.version or 0)
        if store is not None:
            updater = Updater(config.update, store, trusted_keys(trust), config.threads,
                              lambda path, model, signed: watched(activate(path, model, signed), metrics), metrics,
                              needs_router=config.cloud is not None and not on_request)
            updater.active = current
            holder["updater"] = updater
            updater.start()

    async def shutdown(app):
        if "updater" in holder:
            await holder["updater"].stop()
        for active in {id(a): a for a in (current, *_versions(holder))}.values():
            for task in list(getattr(active.watch, "pending", ())):
                task.cancel()
        if "cloud" in holder:
            await holder["cloud"].close()

    def running() -> Active:
        updater = holder.get("updater")
        return updater.active if updater is not None else current

    def infer(texts: list[str]) -> list:
        """In the model thread: every row of a batch from the one version active when the batch started."""
        active = running()
        active.calls += 1
        try:
            rows = predict_rows(active.predictor)(texts)
        except Exception:
            active.errors += 1
            raise
        return [(active, row) for row in rows]

    async def answer(request, body, texts, rows, cut, started):
        metrics = request.app.state.metrics
        active = rows[0][0]  # a request is never split across batches: one version answers all of it
        rows = [row for _, row in rows]
        pred = Predictions([r.label for r in rows], np.stack([r.probabilities for r in rows]),
                           [bool(r.truncated) for r in rows],
                           unknown=None if any(r.unknown is None for r in rows) else [r.unknown for r in rows])
        watch = active.watch
        router = watch.router if watch else active.router  # the watch may have recalibrated it
        if router is not None and not on_request:
            scores, reasons, escalate = router.decide(pred, body.private, body.cloud_only)
        else:
            scores = router.decide(pred)[0] if router is not None else pred.probabilities.max(axis=1)
            reasons, escalate = ["no router"] * len(texts), [False] * len(texts)
            if on_request:  # only the texts that ask for the cloud go there
                escalate = list(body.cloud_only or escalate)
                reasons = ["cloud only" if up else "private" if private else "cloud on request"
                           for up, private in zip(escalate, body.private or [False] * len(texts))]
        up = [i for i, e in enumerate(escalate) if e]
        cloud = holder.get("cloud")
        answered, fallback_reason = {}, None  # the cloud's answers: text index -> (label, probabilities)
        if up:
            metrics.escalations.inc(len(up))
            got = await cloud.classify([texts[i] for i in up]) if cloud is not None else None
            fallback_reason = got.reason if got is not None else "no_cloud"
            if got is not None and got.labels is not None:
                answered = {i: (got.labels[j], got.probabilities[j] or {got.labels[j]: 1.0}) for j, i in enumerate(up)}
        latency = (time.perf_counter() - started) * 1e3
        results = []
        for i in range(len(texts)):
            fell_back = escalate[i] and i not in answered
            if fell_back:
                metrics.fallbacks.labels(reason=fallback_reason or "unknown").inc()
            label, probs = answered.get(i) or (pred.labels[i], probabilities_dict(labels, pred.probabilities[i]))
            source = "cloud" if i in answered else "device-fallback" if fell_back else "device"
            results.append(TextResult(label=label, probabilities=probs, source=source, confidence=float(scores[i]),
                                      latency_ms=latency, reason=reasons[i],
                                      fallback_reason=fallback_reason if fell_back else None,
                                      truncated_chars=cut[i], truncated_tokens=pred.truncated[i]))
        if watch is not None:  # after the answers are made; audits run in the background, after the response
            watch.after_answer(texts, pred, scores, reasons, escalate, results, cloud)
        active.answered += len(texts)
        request.state.version = active.version
        if "updater" in holder:
            holder["updater"].after_answer(active)
        return results

    def ready_info():
        cloud, watch = holder.get("cloud"), running().watch
        return {"router": running().router is not None, "version": running().version,
                "cloud": config.cloud.url if config.cloud else None,
                "route": config.cloud.route if config.cloud else None,
                "breaker": cloud.breaker.state if cloud else None, **({"drift": watch.status()} if watch else {})}

    app = build_app("device service", name, labels, infer, config, answer,
                    on_startup=startup, on_shutdown=shutdown, extra_ready=ready_info, faults=faults)
    shared = app.state.edgeshrink

    @protected(app, "/v1/monitor", "GET", response_model=dict, responses=shared.responses)
    async def monitor():
        """The router's watch: every drift signal, the audit estimate, recalibrations (`edgeshrink route monitor
        --url`)."""
        watch = running().watch
        if watch is None:
            return shared.error(404, "this service has no router to watch", "/v1/monitor")
        shared.metrics.requests.labels(path="/v1/monitor", status="200").inc()
        return watch.report()

    @protected(app, "/v1/version", "GET", response_model=dict, responses=shared.responses)
    async def version():
        """The version answering now: release number, bundle, signer; with --update-from, the channel's checks,
        the version store and its events (installed, refused, rolled back, accepted)."""
        shared.metrics.requests.labels(path="/v1/version", status="200").inc()
        if "updater" in holder:
            return holder["updater"].status()
        return {**current.describe(), "state": "fixed", "updates": None}

    return app


def _versions(holder: dict) -> list:
    updater = holder.get("updater")
    return [a for a in ((updater.active, updater.previous) if updater else ()) if a is not None]


def _release_of(path: Path, trust) -> int | None:
    """A version the store may serve: signed by a trusted key, every hash right; its release number."""
    from edgeshrink.runtime.bundle import read_manifest

    return (read_manifest(path, verify=True, trust=trust).get("release") or {}).get("version")
