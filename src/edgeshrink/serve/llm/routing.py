"""The routing engine: who answers a prepared request, device or cloud, and how the device finishes an answer
the cloud could not give. No HTTP here: it takes an ``Engine`` (the device's generator in a thread) and any
cloud with ``stream(path, payload)`` (serve/llm_client.py's ``OpenAICloud``), and tests drive it with fakes.

    routing = Routing(Engine(generator), "device", router=read_router(bundle), metrics=LLMMetrics(), name="smollm2")
    routing.cloud = OpenAICloud(config.cloud, metrics)
    async for piece, end in routing.answer(prepared, threading.Event()):
        ...  # text pieces as (text, model); last (None, {"finish", "source", "model", "confidence", "reason", ...})

Every piece names the model that wrote it, and the end the model that finished the answer: nothing is passed on
before it is known who writes it (a routed device answer is held until the router has scored it), so a
stream's chunks can name their model as they go.

The policy: the device answers alone on the cloud service, without a cloud, when the client asks for it
(``route: device``), when there is no router to ask, or when the service sends the cloud only the requests
that ask for it (``--route cloud-on-request``). Otherwise the device answers first (unless the request
is sent to the cloud, ``route: cloud``), the router scores its answer on the calibrated answer signal, and a
confident answer stands. Below the threshold the request escalates and the cloud's stream is relayed. When
the cloud fails — refused, slow past the deadline, 5xx, breaker open, over budget, or broken mid-stream — the
device answers: its own answer if the cloud sent nothing, else it continues from the text the cloud sent, so
the client always gets one whole answer, flagged ``device-fallback`` with the reason.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from edgeshrink.route.confidence import confidence_scores
from edgeshrink.route.router import threshold_of
from edgeshrink.runtime.prompted import answer_signals
from edgeshrink.serve.cloud_client import CloudFailed


class Engine:
    """One generator, one generation at a time (requests queue), run in a thread and streamed to asyncio.
    ``on_model_cpu(seconds)``: the generating thread's CPU time per generation (the service's model CPU)."""

    def __init__(self, generator, on_model_cpu=None, prompt_lookup: int = 0, on_drafts=None):
        self.g = generator
        self.lock = threading.Lock()
        self.on_model_cpu = on_model_cpu or (lambda seconds: None)
        self.on_drafts = on_drafts or (lambda drafted, accepted: None)  # prompt lookup's counts per generation
        # n-gram drafts checked in each pass (Generator.stream, the same output); a model without a KV cache is
        # refused before the service starts
        self.lookup = {"prompt_lookup": generator._prompt_lookup(prompt_lookup) and prompt_lookup} if prompt_lookup \
            else {}

    async def stream(self, ids: list[int], max_tokens: int, options: dict, cancel: threading.Event):
        """Yield Tokens, then a dict (the generator's info). Setting ``cancel`` stops after the next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def work():
            info: dict = {}
            try:
                with self.lock:
                    started = time.thread_time()
                    try:
                        for token in self.g.stream(ids, max_tokens, info=info, **self.lookup, **options):
                            loop.call_soon_threadsafe(queue.put_nowait, token)
                            if cancel.is_set():
                                info["stop_reason"] = "cancelled"
                                break
                    finally:
                        self.on_model_cpu(time.thread_time() - started)
                        if "drafted" in info:
                            self.on_drafts(info["drafted"], info["accepted"])
                loop.call_soon_threadsafe(queue.put_nowait, info)
            except Exception as exc:  # noqa: BLE001 - handed to the request, which answers in one line
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        threading.Thread(target=work, daemon=True).start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, dict):
                    return
        finally:
            cancel.set()


def finish_reason(stop_reason: str) -> str:
    return "length" if stop_reason == "length" else "stop"


class Routing:
    """See the module doc. ``role``: "device" (routes) or "cloud" (the cloud model answers everything itself);
    ``router``: the bundle's router.json settings (None: none); ``cloud``: set when the service starts;
    ``on_request``: the cloud answers only requests that ask for it (``route: cloud``), the router aside;
    ``name``: the served model's name, which the pieces it writes carry."""

    def __init__(self, engine: Engine, role: str, router: dict | None = None, metrics=None, cloud=None,
                 on_request: bool = False, name: str = "device"):
        self.engine, self.role, self.router, self.metrics, self.cloud = engine, role, router, metrics, cloud
        self.on_request, self.name = on_request, name

    def refusal(self, route: str) -> str | None:
        """Why a request asking for ``route`` cannot be answered here (None: it can)."""
        if self.role == "device" and route == "cloud" and self.cloud is None:
            return "edgeshrink.route is 'cloud' but this service has no cloud (--cloud URL)"
        return None

    def device_only(self, route: str) -> str | None:
        """The reason the device answers without the router or the cloud; None when they decide."""
        if self.role == "cloud":
            return "cloud model"
        if route == "device":
            return "requested"  # the client asked for the device (edgeshrink.route: device)
        if self.cloud is None:
            return "no cloud"
        if route == "auto" and self.on_request:
            return "cloud on request"  # the service sends the cloud only the requests that ask for it
        return "no router" if route == "auto" and self.router is None else None

    def confidence(self, tokens) -> float:
        """The router's calibrated confidence in the device's answer (its tokens' log-probabilities, entropies)."""
        signals = answer_signals([(t.logprob, t.entropy) for t in tokens])
        fitted = {"temperature": float(self.router["temperature"]), "bias": self.router.get("bias")}
        return float(confidence_scores(self.router["signal"], np.zeros((1, 2)),
                                       {k: np.array([v]) for k, v in signals.items()}, fitted)[0])

    async def device_pieces(self, prefix_ids, budget, options, cancel, end: dict, pace: "Pace", before: int = 0):
        """Stream the device's tokens as text, then ``end`` with the finish reason, the token count and the pace."""
        count = 0
        async for item in self.engine.stream(prefix_ids, budget, options, cancel):
            if isinstance(item, dict):
                yield None, end | {"finish": finish_reason(item["stop_reason"]), "completion_tokens": before + count,
                                   "model": self.name, "decode_s": pace.decode_s()}
            else:
                count += 1
                pace.tick()
                yield item.text, self.name

    async def answer(self, request, cancel: threading.Event):
        """The answer to ``request`` (a ``Prepared``): text pieces as (text, the model that wrote it), last
        (None, the end's facts: ``model`` names the model that finished the answer, ``decode_s`` the time from
        its first piece to its last as they were written, held or not)."""
        ids, max_tokens, options, route = request.ids, request.max_tokens, request.options, request.route
        alone = self.device_only(route)
        if alone is not None:
            source = "cloud" if self.role == "cloud" else "device"
            async for piece in self.device_pieces(ids, max_tokens, options, cancel,
                                                  {"source": source, "reason": alone}, Pace()):
                yield piece
            return
        # The device answers first (unless sent to the cloud), then the router decides: nothing is sent before.
        device_tokens, device_info, confidence, held = [], {}, None, Pace()
        if route == "auto":
            async for item in self.engine.stream(ids, max_tokens, options, cancel):
                if isinstance(item, dict):
                    device_info = item
                else:
                    held.tick()
                    device_tokens.append(item)
            confidence = self.confidence(device_tokens)
            if confidence >= threshold_of(self.router):
                for token in device_tokens:
                    yield token.text, self.name
                yield None, {"finish": finish_reason(device_info["stop_reason"]), "source": "device",
                             "confidence": confidence, "reason": "confident", "model": self.name,
                             "completion_tokens": len(device_tokens), "decode_s": held.decode_s()}
                return
        self.metrics.escalations.inc()
        why = "cloud only" if route == "cloud" else "not confident"
        sent, finish, cloud_model, pace = [], "stop", None, Pace()
        try:
            async for piece, reason, model in self.cloud.stream(request.path, request.cloud_payload()):
                cloud_model = model
                if piece:
                    pace.tick()
                    sent.append(piece)
                    yield piece, model
                if reason:
                    finish = reason
            yield None, {"finish": finish, "source": "cloud", "confidence": confidence, "reason": why,
                         "model": cloud_model or getattr(self.cloud, "name", "cloud"), "completion_tokens": None,
                         "decode_s": pace.decode_s()}
            return
        except CloudFailed as failed:
            fallback_reason = failed.reason
        self.metrics.fallbacks.labels(reason=fallback_reason).inc()
        extra = {"source": "device-fallback", "confidence": confidence, "fallback_reason": fallback_reason,
                 "cloud_chars": len("".join(sent)), "reason": why}
        if not sent and device_info:  # the device's own answer is ready
            for token in device_tokens:
                yield token.text, self.name
            yield None, extra | {"finish": finish_reason(device_info["stop_reason"]), "model": self.name,
                                 "completion_tokens": len(device_tokens), "decode_s": held.decode_s()}
            return
        # Continue from what the cloud sent (or from nothing): the answer stays whole.
        generator = self.engine.g
        so_far = "".join(sent)
        cont = ids + (generator.tokenizer.encode(so_far, add_special_tokens=False).ids if so_far else [])
        budget = max_tokens - (len(cont) - len(ids))
        if budget <= 0 or len(cont) + budget > generator.context_length:
            yield None, extra | {"finish": "length", "completion_tokens": len(cont) - len(ids), "model": self.name,
                                 "decode_s": pace.decode_s()}
            return
        async for piece in self.device_pieces(cont, budget, options, cancel, extra, pace, before=len(cont) - len(ids)):
            yield piece


class Pace:
    """When an answer's first and last pieces were written (a held answer is passed on later, all at once)."""

    def __init__(self):
        self.first: float | None = None
        self.last: float | None = None

    def tick(self) -> None:
        self.last = time.perf_counter()
        self.first = self.first or self.last

    def decode_s(self) -> float | None:
        return None if self.first is None else self.last - self.first
