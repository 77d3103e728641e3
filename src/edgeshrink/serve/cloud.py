"""The cloud model service (`edgeshrink serve-cloud`): a bundle or a PyTorch model directory behind the API."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeshrink.serve.app import TextResult, build_app, check_text_model, predict_rows, probabilities_dict
from edgeshrink.serve.config import ServeConfig
from edgeshrink.serve.oip import install_v2


def cloud_app(model: str | Path, config: ServeConfig, faults: Path | None = None, batcher=None, extra_ready=None):
    """The cloud model (a bundle or a PyTorch model directory) behind the API; ``faults``: a fault-drill file
    (serve/app.py's ``install_faults``)."""
    from edgeshrink import tasks
    from edgeshrink.errors import EdgeshrinkError
    from edgeshrink.models.torch_text import load_predictor
    from edgeshrink.runtime.bundle import check_bundle_trust

    if config.trust and not tasks.is_bundle(model):
        raise EdgeshrinkError("--trust checks the signature of a bundle; a PyTorch model directory carries none")
    if tasks.is_bundle(model):
        check_bundle_trust(model, config.trust or None)
    predictor = load_predictor(str(model), threads=config.threads)
    check_text_model(predictor)
    labels = list(predictor.labels)

    async def answer(request, body, texts, rows, cut, started):
        latency = (time.perf_counter() - started) * 1e3
        return [TextResult(label=label, probabilities=probabilities_dict(labels, probs), source="cloud",
                           confidence=float(np.max(probs)), latency_ms=latency, reason="cloud model",
                           truncated_chars=c, truncated_tokens=bool(tr))
                for (label, probs, tr, *_), c in zip(rows, cut)]

    name = Path(model).name
    app = build_app("cloud model service", name, labels, predict_rows(predictor), config, answer,
                    extra_ready=extra_ready, faults=faults, **({"batcher": batcher} if batcher else {}))
    install_v2(app, name, labels)  # the Open Inference Protocol (KServe v2), beside /v1/classify
    return app
