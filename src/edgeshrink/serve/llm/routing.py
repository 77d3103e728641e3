"""The routing engine: who answers a prepared request, device or cloud, and how the device finishes an answer
the cloud could not give. No HTTP here: it takes an ``Engine`` (the device's generator in a thread) and any
cloud with ``stream(path, payload)`` (serve/llm_client.py's ``OpenAICloud``), and tests drive it with fakes.

    routing = Routing(Engine(generator), "device", router=read_router(bundle), metrics=LLMMetrics(), name="smollm2")
    routing.cloud = OpenAICloud(config.cloud, metrics)
    async for piece, about in routing.answer(prepared, threading.Event()):
        ...  # text pieces as (text, Author(model, source)); last (None, {"finish", "source", "model", "reason", ...})

Every piece names the model that wrote it and whether it came from the device or the cloud, and the end the
model that finished the answer: nothing is passed on before it is known who writes it, so a stream's chunks can
name their author as they go.

Who answers: the device alone on the cloud service, without a cloud, when the client asks for it
(``route: device``), when there is no router to ask, or when the service sends the cloud only the requests
that ask for it (``--route cloud-on-request``). Otherwise (``route: cloud`` goes straight to the cloud) one of
two policies (``llm.policy``, or the request's ``route: handoff | answer``):

- **handoff** (the router has a ``handoff`` threshold from ``route calibrate --handoff`` and the cloud can
  continue a prefix, ``cloud.handoff``): the device's tokens are passed on as they are generated. At the first
  token whose signal (its log-probability, or the negative entropy of its step) is below the threshold, that token
  is dropped, the device stops, and the cloud continues the answer from the prompt and the device's tokens (one
  /v1/completions request, the prompt as token ids or as the rendered text): one stream, device span then cloud
  span, each chunk marked. What the cloud would have written otherwise is bounded as the calibration states
  (route/handoff.py: per kept token or per answer; for greedy requests at the calibration's settings).
- **answer**: the device's whole answer is generated and held, the router scores it on the calibrated answer
  signal, and a confident answer stands; below the threshold the request escalates and the cloud's stream is
  relayed.

When the cloud fails — refused, slow past the deadline, 5xx, breaker open, over budget, or broken mid-stream — the
device answers: its own answer if it has one and the cloud sent nothing, else it continues from what was sent (the
device's tokens and the cloud's text), so the client always gets one whole answer, flagged ``device-fallback``
with the reason.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

from edgeshrink.route.confidence import confidence_scores
from edgeshrink.route.router import threshold_of
from edgeshrink.runtime.prompted import answer_signals
from edgeshrink.serve.cloud_client import CloudFailed
from edgeshrink.serve.llm.watch import token_value


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

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed (the service is stopping): nobody reads on
                cancel.set()

        def work():
            info: dict = {}
            try:
                with self.lock:
                    started = time.thread_time()
                    try:
                        for token in self.g.stream(ids, max_tokens, info=info, **self.lookup, **options):
                            put(token)
                            if cancel.is_set():
                                info["stop_reason"] = "cancelled"
                                break
                    finally:
                        self.on_model_cpu(time.thread_time() - started)
                        if "drafted" in info:
                            self.on_drafts(info["drafted"], info["accepted"])
                put(info)
            except Exception as exc:  # noqa: BLE001 - handed to the request, which answers in one line
                put(exc)

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


@dataclass(frozen=True)
class Author:
    """Who wrote a piece of an answer: the model's name, and ``source`` "device" or "cloud"."""
    model: str
    source: str


class Linked:
    """A stop flag for one generation: set by its own ``set()`` or by the request's ``cancel``."""

    def __init__(self, parent: threading.Event):
        self.parent, self.own = parent, threading.Event()

    def is_set(self) -> bool:
        return self.own.is_set() or self.parent.is_set()

    def set(self) -> None:
        self.own.set()


def finish_reason(stop_reason: str) -> str:
    return "length" if stop_reason == "length" else "stop"


class Routing:
    """See the module doc. ``role``: "device" (routes) or "cloud" (the cloud model answers everything itself);
    ``router``: the bundle's router.json settings (None: none); ``cloud``: set when the service starts;
    ``on_request``: the cloud answers only requests that ask for it (``route: cloud``), the router aside;
    ``name``: the served model's name, which the pieces it writes carry; ``handoff_via``: how the cloud continues
    a prefix ("tokens", "text", "none": it cannot); ``policy``: "auto", "handoff" or "answer" (config.LLMConfig)."""

    def __init__(self, engine: Engine, role: str, router: dict | None = None, metrics=None, cloud=None,
                 on_request: bool = False, name: str = "device", handoff_via: str = "tokens", policy: str = "auto"):
        self.engine, self.role, self._router, self.metrics, self.cloud = engine, role, router, metrics, cloud
        self.on_request, self.name, self.handoff_via, self.policy = on_request, name, handoff_via, policy
        self.watch = None  # serve/llm/watch.py's LLMWatch, set by the service: drift, audit, recalibration

    @property
    def router(self) -> dict | None:
        """The router in use: the watch's once it has recalibrated."""
        return self.watch.router if self.watch is not None else self._router

    def watched(self, policy: str, ids: list[int], tokens: list, kept: int, escalated: bool) -> None:
        if self.watch is not None:
            self.watch.after_answer(policy, ids, tokens, kept, escalated, self.cloud)

    @property
    def handoff(self) -> dict | None:
        """The router's handoff section (its threshold and signal), or None when it has none."""
        return (self.router or {}).get("handoff")

    def handoff_unavailable(self) -> str | None:
        """Why this service cannot hand an answer off mid-way (None: it can)."""
        if self.handoff is None:
            return ("the bundle's router.json has no handoff threshold (calibrate one: edgeshrink route calibrate "
                    "--task open --handoff)")
        if self.handoff_via == "none":
            return "the cloud cannot continue a prefix (--handoff-via none)"
        return None

    def policy_of(self, route: str) -> str:
        """"handoff" or "answer": how a request the router decides is routed."""
        if route in ("handoff", "answer"):
            return route
        if self.policy != "auto":
            return self.policy
        return "answer" if self.handoff_unavailable() else "handoff"

    def refusal(self, route: str) -> str | None:
        """Why a request asking for ``route`` cannot be answered here (None: it can)."""
        if self.role == "device" and route in ("cloud", "handoff", "answer") and self.cloud is None:
            return f"edgeshrink.route is {route!r} but this service has no cloud (--cloud URL)"
        if self.role == "device" and route == "answer" and self.router is None:
            return "edgeshrink.route is 'answer' but the bundle has no router.json to score the answer"
        if self.role == "device" and (route == "handoff" or (route == "auto" and self.policy == "handoff"
                                                             and not self.on_request)):
            why = self.handoff_unavailable()
            if why is not None:
                return f"handoff asked, but {why}"
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
                yield item.text, Author(self.name, "device")

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
        if route != "cloud" and self.policy_of(route) == "handoff":
            async for piece in self.handed_off(request, cancel):
                yield piece
            return
        # The device answers first (unless sent to the cloud), then the router decides: nothing is sent before.
        device_tokens, device_info, confidence, held = [], {}, None, Pace()
        if route in ("auto", "answer"):
            async for item in self.engine.stream(ids, max_tokens, options, cancel):
                if isinstance(item, dict):
                    device_info = item
                else:
                    held.tick()
                    device_tokens.append(item)
            confidence = self.confidence(device_tokens)
            sure = confidence >= threshold_of(self.router)
            self.watched("answer", ids, device_tokens, len(device_tokens) if sure else 0, not sure)
            if sure:
                for token in device_tokens:
                    yield token.text, Author(self.name, "device")
                yield None, {"finish": finish_reason(device_info["stop_reason"]), "source": "device",
                             "confidence": confidence, "reason": "confident", "model": self.name,
                             "completion_tokens": len(device_tokens), "decode_s": held.decode_s()}
                return
        self.metrics.escalations.inc()
        why = "cloud only" if route == "cloud" else "not confident"
        sent, relayed, pace = [], {}, Pace()
        try:
            async for piece in self.relay(request.path, request.cloud_payload(), pace, sent, relayed):
                yield piece
            yield None, {"finish": relayed["finish"], "source": "cloud", "confidence": confidence, "reason": why,
                         "model": relayed["model"], "completion_tokens": None, "decode_s": pace.decode_s()}
            return
        except CloudFailed as failed:
            fallback_reason = failed.reason
        self.metrics.fallbacks.labels(reason=fallback_reason).inc()
        extra = {"source": "device-fallback", "confidence": confidence, "fallback_reason": fallback_reason,
                 "cloud_chars": len("".join(sent)), "reason": why}
        if not sent and device_info:  # the device's own answer is ready
            for token in device_tokens:
                yield token.text, Author(self.name, "device")
            yield None, extra | {"finish": finish_reason(device_info["stop_reason"]), "model": self.name,
                                 "completion_tokens": len(device_tokens), "decode_s": held.decode_s()}
            return
        # Continue from what the cloud sent (or from nothing): the answer stays whole.
        async for piece in self.finish_on_device(ids, ids, "".join(sent), max_tokens, options, cancel, extra, pace):
            yield piece

    async def relay(self, path: str, payload: dict, pace: "Pace", sent: list, relayed: dict):
        """The cloud's stream as pieces (each kept in ``sent``); ``relayed`` gets its finish reason and model.
        Raises CloudFailed as the cloud connection does."""
        relayed.update(finish="stop", model=getattr(self.cloud, "name", "cloud"))
        async with aclosing(self.cloud.stream(path, payload)) as cloud_pieces:
            async for piece, reason, model in cloud_pieces:
                relayed["model"] = model or relayed["model"]
                if piece:
                    pace.tick()
                    sent.append(piece)
                    yield piece, Author(model, "cloud")
                if reason:
                    relayed["finish"] = reason

    async def finish_on_device(self, ids, prefix, so_far: str, max_tokens: int, options, cancel, extra: dict,
                               pace: "Pace"):
        """The device continues the answer from ``prefix`` (the prompt ``ids`` and the device's tokens) and the
        text ``so_far`` the cloud sent, within the token budget; the end carries ``extra``."""
        tokenizer = self.engine.g.tokenizer
        cont = prefix + (tokenizer.encode(so_far, add_special_tokens=False).ids if so_far else [])
        budget = max_tokens - (len(cont) - len(ids))
        if budget <= 0 or len(cont) + budget > self.engine.g.context_length:
            yield None, extra | {"finish": "length", "completion_tokens": len(cont) - len(ids), "model": self.name,
                                 "decode_s": pace.decode_s()}
            return
        async for piece in self.device_pieces(cont, budget, options, cancel, extra, pace, before=len(cont) - len(ids)):
            yield piece

    def as_text(self, ids: list[int]) -> str:
        """``ids`` as the text a completions endpoint re-tokenizes to them: special tokens written out, less the
        leading ones its tokenizer adds itself (a BOS), so they are not doubled."""
        tokenizer = self.engine.g.tokenizer
        lead = tokenizer.encode("", add_special_tokens=True).ids
        if lead and ids[:len(lead)] == lead:
            ids = ids[len(lead):]
        return tokenizer.decode(ids, skip_special_tokens=False)

    async def handed_off(self, request, cancel: threading.Event):
        """The handoff policy (see the module doc): the device's tokens as they come; at the first unsure one, the
        cloud's continuation from the prompt and the device's tokens; the device again if the cloud fails."""
        ids, max_tokens, options = request.ids, request.max_tokens, request.options
        threshold = self.handoff.get("threshold")
        threshold = math.inf if threshold is None else float(threshold)  # None: no safe threshold, the cloud writes
        kept, info, unsure, pace = [], {}, None, Pace()
        async with aclosing(self.engine.stream(ids, max_tokens, options, Linked(cancel))) as tokens:
            async for item in tokens:
                if isinstance(item, dict):
                    info = item
                    break
                value = token_value(item, self.handoff["signal"])
                if value < threshold:  # this token is dropped: the cloud writes from here (the device stops)
                    unsure, last = value, item
                    break
                kept.append(item)
                pace.tick()
                yield item.text, Author(self.name, "device")
        self.watched("handoff", ids, kept + ([last] if unsure is not None else []), len(kept), unsure is not None)
        if unsure is None:  # sure throughout: the device wrote the whole answer
            self.metrics.handoff_tokens.labels(source="device").inc(len(kept))
            yield None, {"finish": finish_reason(info.get("stop_reason", "length")), "source": "device",
                         "reason": "sure throughout", "model": self.name, "completion_tokens": len(kept),
                         "decode_s": pace.decode_s(), "handoff": None}
            return
        # tokens whose text was held back (the first bytes of a character split over tokens) were never shown: the
        # cloud writes from the last token shown, so the character is not cut at the seam
        while kept and kept[-1].text == "":
            kept.pop()
        self.metrics.escalations.inc()
        self.metrics.handoffs.inc()
        self.metrics.handoff_tokens.labels(source="device").inc(len(kept))
        tokenizer = self.engine.g.tokenizer
        prefix = ids + [t.id for t in kept]
        at = {"reason": "unsure", "handoff": {"at_token": len(kept), "signal": self.handoff["signal"],
                                              "value": unsure, "threshold": threshold}}
        prompt = prefix if self.handoff_via == "tokens" else self.as_text(prefix)
        sent, relayed = [], {}
        try:
            async for piece in self.relay("/v1/completions", request.continuation_payload(prompt, max_tokens - len(kept)),
                                          pace, sent, relayed):
                yield piece
            written = "".join(sent)
            cloud_tokens = len(tokenizer.encode(written, add_special_tokens=False).ids) if written else 0
            self.metrics.handoff_tokens.labels(source="cloud").inc(cloud_tokens)
            yield None, at | {"finish": relayed["finish"], "source": "handoff" if kept else "cloud",
                              "model": relayed["model"], "completion_tokens": len(kept) + cloud_tokens,
                              "decode_s": pace.decode_s()}
            return
        except CloudFailed as failed:
            fallback_reason = failed.reason
        # The cloud failed: the device continues from everything written so far (its tokens, the cloud's text).
        self.metrics.fallbacks.labels(reason=fallback_reason).inc()
        so_far = "".join(sent)
        extra = at | {"source": "device-fallback", "fallback_reason": fallback_reason, "cloud_chars": len(so_far)}
        async for piece in self.finish_on_device(ids, prefix, so_far, max_tokens, options, cancel, extra, pace):
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
