"""OpenAI-compatible language-model services: `serve-cloud` and `serve` on an LLM bundle.

    POST /v1/chat/completions   {"model", "messages", "max_tokens"?, "temperature"?, "top_p"?, "stream"?, "stop"?,
                                 "seed"?, "frequency_penalty"?, "presence_penalty"?, "repetition_penalty"?,
                                 "edgeshrink"?: {"route": "auto" | "device" | "cloud" | "handoff" | "answer"}}
    POST /v1/completions        {"model", "prompt" (text or token ids), ...}             GET /v1/models
    GET  /v1/monitor            (device, with a router and a cloud) the drift watch's report
    POST /v1/speculate          (cloud) the target's distributions after a drafted continuation, one pass
    GET  /healthz, /readyz, /metrics, /docs                           as the classifier services

Responses and stream chunks (server-sent events, ``data: {...}`` then ``data: [DONE]``) follow OpenAI's
shapes, so the official ``openai`` client works; each also carries ``edgeshrink``: who answered
(``device``, ``cloud``, ``handoff``, ``device-fallback``), why, the device's calibrated confidence, and why it
fell back; a text chunk's ``edgeshrink.span`` says whether the device or the cloud wrote it, and the end lists the
answer's ``spans`` (routing.py's module doc has the policies: token-level handoff, answer-level routing).
``model`` names the model that wrote the text: the cloud's (as its answer names it) when the cloud answered,
the device's when it answered or finished an answer the cloud broke off; in a stream, each chunk its own.
With a cloud, the device service needs the bundle's router.json, or ``--route cloud-on-request`` (the cloud
answers only requests with ``edgeshrink.route: "cloud"``). ``/metrics`` adds tokens, time to first token
and time per output token by who answered (serve/metrics.py's ``LLMMetrics``).

A request passes three stages, one module each:
- ``request.py``: parse and check it, render the chat or prompt into token ids and a device request;
- ``routing.py``: who answers, device or cloud, and the fallback when the cloud fails (no HTTP there);
- ``render.py``: the answer as one JSON response or as a server-sent event stream;
beside them ``watch.py``, the router's drift watch, audit and recalibration. ``app.py`` wires them behind the endpoints: ``llm_device_app`` and ``llm_cloud_app``.
"""
