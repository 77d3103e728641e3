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
    predictor = load(bundle, threads=config.threads)  # checks every file's hash
    check_text_model(predictor)
    labels = list(predictor.labels)
    # With a cloud, router.json decides what goes there and is required (read_router refuses an edited one),
    # unless the cloud answers only the texts that ask for it (cloud-on-request); a router present still gives
    # calibrated confidences.
    on_request = config.cloud is not None and config.cloud.route == "cloud-on-request"
    if config.cloud is not None and not on_request and not has_router(bundle):
        raise no_router(bundle, f"edgeshrink route calibrate --device {bundle} --cloud CLOUD_BUNDLE --data DATA")
    router = Router(predictor, None, read_router(bundle)) if has_router(bundle) else None
    if (config.monitor.audit_fraction > 0 or config.monitor.recalibrate) and config.cloud is None:
        raise EdgeshrinkError("the audit and recalibration need the cloud's answers: give --cloud URL")
    if (config.monitor.audit_fraction > 0 or config.monitor.recalibrate) and on_request:
        raise EdgeshrinkError("the audit and recalibration watch the router's decisions: they go with --route router")
    holder: dict = {}

    async def startup(app):
        if config.cloud is not None:
            holder["cloud"] = CLOUD_PROTOCOLS[config.cloud.protocol](config.cloud, app.state.metrics, labels)
        if router is not None and not on_request:
            holder["watch"] = RouterWatch(bundle, router, config.monitor, app.state.metrics)

    async def shutdown(app):
        if "watch" in holder:
            for task in list(holder["watch"].pending):
                task.cancel()
        if "cloud" in holder:
            await holder["cloud"].close()

    async def answer(request, body, texts, rows, cut, started):
        metrics = request.app.state.metrics
        pred = Predictions([r.label for r in rows], np.stack([r.probabilities for r in rows]),
                           [bool(r.truncated) for r in rows],
                           unknown=None if any(r.unknown is None for r in rows) else [r.unknown for r in rows])
        watch = holder.get("watch")
        router = watch.router if watch else None  # the watch may have recalibrated it
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
        return results

    def ready_info():
        cloud, watch = holder.get("cloud"), holder.get("watch")
        return {"router": router is not None, "cloud": config.cloud.url if config.cloud else None,
                "route": config.cloud.route if config.cloud else None,
                "breaker": cloud.breaker.state if cloud else None, **({"drift": watch.status()} if watch else {})}

    app = build_app("device service", Path(bundle).name, labels, predict_rows(predictor), config, answer,
                    on_startup=startup, on_shutdown=shutdown, extra_ready=ready_info, faults=faults)
    shared = app.state.edgeshrink

    @protected(app, "/v1/monitor", "GET", response_model=dict, responses=shared.responses)
    async def monitor():
        """The router's watch: every drift signal, the audit estimate, recalibrations (`edgeshrink route monitor
        --url`)."""
        watch = holder.get("watch")
        if watch is None:
            return shared.error(404, "this service has no router to watch", "/v1/monitor")
        shared.metrics.requests.labels(path="/v1/monitor", status="200").inc()
        return watch.report()

    return app
