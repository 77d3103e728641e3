"""The LLM routing engine without HTTP: a fake device generator and a fake cloud decide, relay and fall back."""

import asyncio
import threading
from types import SimpleNamespace

from edgeshrink.serve.cloud_client import CloudFailed
from edgeshrink.serve.llm.request import ChatRequest, Prepared
from edgeshrink.serve.llm.routing import Author, Engine, Routing
from edgeshrink.serve.metrics import LLMMetrics, parse
from prometheus_client import generate_latest


class FakeGenerator:
    """Says ``words``, each token with log-probability ``logprob``; one token id per character."""
    context_length = 64

    def __init__(self, words, logprob=-0.05):
        self.words, self.logprob = words, logprob  # logprob: one for every token, or one per word
        self.tokenizer = SimpleNamespace(encode=lambda text, add_special_tokens=False: SimpleNamespace(
            ids=([1] if add_special_tokens else []) + list(range(len(text)))),  # 1: a BOS
            decode=lambda ids, skip_special_tokens=True: "|".join(map(str, ids)))
        self.calls = []

    def stream(self, ids, max_tokens, info, **options):
        self.calls.append((list(ids), max_tokens))
        words = self.words[:max_tokens]
        for i, word in enumerate(words):
            logprob = self.logprob[i] if isinstance(self.logprob, list) else self.logprob
            yield SimpleNamespace(id=i, text=word, logprob=logprob, entropy=0.1)
        info["stop_reason"] = "length" if len(words) == max_tokens else "eos"


class FakeCloud:
    """Streams ``pieces``, then finishes, or raises CloudFailed(``fail``) after them."""

    def __init__(self, pieces, fail=None):
        self.pieces, self.fail, self.calls = pieces, fail, []

    async def _stream(self, path, payload):
        self.calls.append((path, payload))
        for piece in self.pieces:
            yield piece, None, "cloud-model"
        if self.fail:
            raise CloudFailed(self.fail)
        yield "", "stop", "cloud-model"

    def stream(self, path, payload):
        return self._stream(path, payload)


def router(threshold):
    return {"signal": "mean-logprob", "temperature": 1.0, "bias": 0.0, "threshold": threshold,
            "escalate_everything": False}


def request(route="auto", max_tokens=8):
    body = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens, temperature=0,
                       edgeshrink={"route": route})
    return Prepared("/v1/chat/completions", [1, 2, 3], max_tokens, {"temperature": 0.0}, route, body)


def answer(routing, prepared):
    async def run():
        pieces = [p async for p in routing.answer(prepared, threading.Event())]
        return "".join(text for text, _ in pieces[:-1]), pieces[-1][1]
    return asyncio.run(run())


def counter(metrics, name):
    return parse(generate_latest(metrics.registry).decode()).get(name, 0)


def test_a_confident_device_answer_stands():
    device, cloud = FakeGenerator(["a", "b", "c"]), FakeCloud(["cloud"])
    routing = Routing(Engine(device), "device", router(None), LLMMetrics(), cloud)
    text, end = answer(routing, request())
    assert text == "abc" and end["source"] == "device" and end["reason"] == "confident"
    assert end["finish"] == "stop" and end["completion_tokens"] == 3 and 0 < end["confidence"] < 1
    assert cloud.calls == []


def test_an_unconfident_answer_relays_the_cloud():
    metrics, cloud = LLMMetrics(), FakeCloud(["Hello", " there"])
    routing = Routing(Engine(FakeGenerator(["a", "b"])), "device", router(0.999999), metrics, cloud)
    text, end = answer(routing, request())
    assert text == "Hello there" and end["source"] == "cloud" and end["reason"] == "not confident"
    assert end["completion_tokens"] is None and end["finish"] == "stop"
    path, payload = cloud.calls[0]
    assert path == "/v1/chat/completions" and payload == {"messages": [{"role": "user", "content": "hi"}],
                                                          "max_tokens": 8, "temperature": 0.0, "top_p": 1.0}
    assert counter(metrics, "edgeshrink_escalations_total") == 1


def test_a_cloud_that_sends_nothing_leaves_the_devices_own_answer():
    metrics = LLMMetrics()
    routing = Routing(Engine(FakeGenerator(["a", "b"])), "device", router(0.999999), metrics,
                      FakeCloud([], fail="http_5xx"))
    text, end = answer(routing, request())
    assert text == "ab" and end["source"] == "device-fallback" and end["fallback_reason"] == "http_5xx"
    assert end["cloud_chars"] == 0 and end["completion_tokens"] == 2
    assert counter(metrics, 'edgeshrink_fallbacks_total{reason="http_5xx"}') == 1


def test_a_stream_broken_mid_answer_is_finished_by_the_device():
    device = FakeGenerator(["x", "y", "z", "w"])
    routing = Routing(Engine(device), "device", router(None), LLMMetrics(), FakeCloud(["abc"], fail="stream_broken"))
    text, end = answer(routing, request(route="cloud", max_tokens=8))
    # the cloud's 3 tokens stand; the device continues from them with the 5 tokens left
    assert text == "abcxyzw" and end["source"] == "device-fallback" and end["reason"] == "cloud only"
    assert device.calls == [([1, 2, 3, 0, 1, 2], 5)] and end["completion_tokens"] == 3 + 4
    assert end["confidence"] is None and end["cloud_chars"] == 3


def test_who_answers_alone():
    engine = Engine(FakeGenerator(["a"]))
    assert Routing(engine, "device", router(None), LLMMetrics(), FakeCloud([])).device_only("device") == "requested"
    assert Routing(engine, "device", None, LLMMetrics(), FakeCloud([])).device_only("device") == "requested"
    assert Routing(engine, "device", None, LLMMetrics(), FakeCloud([])).device_only("auto") == "no router"
    assert Routing(engine, "device", router(None), LLMMetrics()).device_only("auto") == "no cloud"
    assert Routing(engine, "cloud", None, LLMMetrics()).device_only("auto") == "cloud model"
    assert Routing(engine, "device", router(None), LLMMetrics(), FakeCloud([])).device_only("auto") is None
    assert "no cloud" in Routing(engine, "device", router(None), LLMMetrics()).refusal("cloud")
    assert Routing(engine, "cloud", None, LLMMetrics()).refusal("cloud") is None
    text, end = answer(Routing(engine, "cloud", None, LLMMetrics()), request(route="cloud"))
    assert text == "a" and end["source"] == "cloud" and end["reason"] == "cloud model"


def pieces_of(routing, prepared):
    async def run():
        return [p async for p in routing.answer(prepared, threading.Event())]
    return asyncio.run(run())


def test_every_piece_names_the_model_that_wrote_it():
    """A routed device answer is held until the router decides, so each piece (a stream chunk) can name its
    model; the end names the model that finished the answer."""
    device = FakeGenerator(["x", "y", "z"])
    confident = pieces_of(Routing(Engine(device), "device", router(None), LLMMetrics(), FakeCloud(["c"]),
                                  name="smol"), request())
    device_author, cloud_author = Author("smol", "device"), Author("cloud-model", "cloud")
    assert [m for t, m in confident[:-1]] == [device_author] * 3 and confident[-1][1]["model"] == "smol"
    relayed = pieces_of(Routing(Engine(device), "device", router(0.999999), LLMMetrics(), FakeCloud(["He", "llo"]),
                                name="smol"), request())
    assert relayed[:-1] == [("He", cloud_author), ("llo", cloud_author)] and relayed[-1][1]["model"] == "cloud-model"
    broken = pieces_of(Routing(Engine(device), "device", router(None), LLMMetrics(),
                               FakeCloud(["ab"], fail="stream_broken"), name="smol"), request(route="cloud"))
    assert broken[:-1] == [("ab", cloud_author), ("x", device_author), ("y", device_author), ("z", device_author)]
    assert broken[-1][1]["model"] == "smol" and broken[-1][1]["source"] == "device-fallback"
    # decode_s: from the answer's first piece to its last as written (a held answer is not passed on at its pace)
    assert all(end["decode_s"] >= 0 for _, end in (confident[-1], relayed[-1], broken[-1]))


def test_cloud_on_request_sends_only_what_asks_for_it():
    cloud = FakeCloud(["cloud answer"])
    routing = Routing(Engine(FakeGenerator(["a", "b"])), "device", None, LLMMetrics(), cloud, on_request=True)
    text, end = answer(routing, request())
    assert text == "ab" and end["source"] == "device" and end["reason"] == "cloud on request" and cloud.calls == []
    text, end = answer(routing, request(route="cloud"))
    assert text == "cloud answer" and end["source"] == "cloud" and end["reason"] == "cloud only"
    assert answer(routing, request(route="device"))[1]["reason"] == "requested"
    # with a router too, the service still sends only what asks: the flag says so
    routed = Routing(Engine(FakeGenerator(["a"])), "device", router(0.999999), LLMMetrics(), cloud, on_request=True)
    assert routed.device_only("auto") == "cloud on request"


def handoff_router(threshold, signal="logprob"):
    return router(0.5) | {"handoff": {"signal": signal, "threshold": threshold, "alpha": 0.05, "delta": 0.1}}


def test_handoff_streams_the_devices_tokens_then_the_cloud_continues_from_them():
    """Token-level handoff: device pieces as they come; at the first token below the threshold the device stops
    (that token is dropped) and the cloud continues from the prompt ids + the kept tokens' ids, for the rest of
    the token budget, on /v1/completions."""
    device = FakeGenerator(["a", "b", "c", "d"], logprob=[-0.1, -0.2, -5.0, -0.1])
    cloud = FakeCloud(["C", "D"])
    metrics = LLMMetrics()
    routing = Routing(Engine(device), "device", handoff_router(-1.0), metrics, cloud, name="smol")
    pieces = pieces_of(routing, request())
    assert pieces[:-1] == [("a", Author("smol", "device")), ("b", Author("smol", "device")),
                           ("C", Author("cloud-model", "cloud")), ("D", Author("cloud-model", "cloud"))]
    end = pieces[-1][1]
    assert end["source"] == "handoff" and end["reason"] == "unsure" and end["model"] == "cloud-model"
    assert end["handoff"] == {"at_token": 2, "signal": "logprob", "value": -5.0, "threshold": -1.0}
    (path, payload), = cloud.calls
    assert path == "/v1/completions" and payload["prompt"] == [1, 2, 3, 0, 1] and payload["max_tokens"] == 6
    assert counter(metrics, "edgeshrink_handoffs_total") == 1
    assert counter(metrics, 'edgeshrink_handoff_tokens_total{source="device"}') == 2
    # the rendered text instead of ids, for a cloud that only takes text
    text_cloud = FakeCloud(["C"])
    pieces_of(Routing(Engine(device), "device", handoff_router(-1.0), LLMMetrics(), text_cloud,
                      handoff_via="text"), request())
    assert text_cloud.calls[0][1]["prompt"] == "2|3|0|1"  # the BOS left to the cloud's tokenizer


def test_a_sure_answer_stays_on_the_device_and_no_threshold_means_the_cloud_writes_it():
    device = FakeGenerator(["a", "b"], logprob=-0.1)
    cloud = FakeCloud(["C"])
    text, end = answer(Routing(Engine(device), "device", handoff_router(-1.0), LLMMetrics(), cloud), request())
    assert text == "ab" and end["source"] == "device" and end["reason"] == "sure throughout" and cloud.calls == []
    # calibration found no safe threshold (null): the first token already goes to the cloud
    text, end = answer(Routing(Engine(device), "device", handoff_router(None), LLMMetrics(), cloud), request())
    assert text == "C" and end["source"] == "cloud" and end["handoff"]["at_token"] == 0
    assert cloud.calls[0][1]["prompt"] == [1, 2, 3]
    # neg-entropy: the step's entropy (0.1 here) against the threshold
    text, end = answer(Routing(Engine(device), "device", handoff_router(-0.05, "neg-entropy"), LLMMetrics(),
                               FakeCloud(["Z"])), request())
    assert text == "Z" and end["handoff"]["value"] == -0.1


def test_when_the_cloud_fails_mid_handoff_the_device_finishes_flagged():
    device = FakeGenerator(["a", "b", "c"], logprob=[-0.1, -5.0, -0.1])
    metrics = LLMMetrics()
    routing = Routing(Engine(device), "device", handoff_router(-1.0), metrics,
                      FakeCloud(["CC"], fail="stream_broken"), name="smol")
    pieces = pieces_of(routing, request(max_tokens=6))
    end = pieces[-1][1]
    assert end["source"] == "device-fallback" and end["fallback_reason"] == "stream_broken"
    assert end["handoff"]["at_token"] == 1 and end["cloud_chars"] == 2 and end["model"] == "smol"
    # the device continues from the prompt, its kept token and the cloud's text (2 tokens here): 3 written
    assert device.calls[-1] == ([1, 2, 3, 0, 0, 1], 3)
    sources = [about.source for _, about in pieces[:-1]]
    assert sources == ["device", "cloud", "device", "device", "device"]
    assert counter(metrics, 'edgeshrink_fallbacks_total{reason="stream_broken"}') == 1
    # nothing sent by a cloud that refuses at once: the device goes on from its own kept tokens
    refused = Routing(Engine(device), "device", handoff_router(-1.0), LLMMetrics(),
                      FakeCloud([], fail="http_404"), name="smol")
    text, end = answer(refused, request(max_tokens=6))
    assert end["source"] == "device-fallback" and end["fallback_reason"] == "http_404" and text.startswith("a")


def test_which_policy_routes_and_what_is_refused():
    cloud = FakeCloud(["C"])
    plain = Routing(Engine(FakeGenerator(["a"])), "device", router(0.5), LLMMetrics(), cloud)
    assert plain.policy_of("auto") == "answer" and "no handoff threshold" in plain.refusal("handoff")
    handing = Routing(Engine(FakeGenerator(["a"])), "device", handoff_router(-1.0), LLMMetrics(), cloud)
    assert handing.policy_of("auto") == "handoff" and handing.policy_of("answer") == "answer"
    assert handing.refusal("handoff") is None and handing.refusal("auto") is None
    chat_only = Routing(Engine(FakeGenerator(["a"])), "device", handoff_router(-1.0), LLMMetrics(), cloud,
                        handoff_via="none")
    assert chat_only.policy_of("auto") == "answer"
    assert chat_only.refusal("handoff") == "handoff asked, but the cloud cannot continue a prefix (--handoff-via none)"
    no_cloud = Routing(Engine(FakeGenerator(["a"])), "device", handoff_router(-1.0), LLMMetrics())
    assert "no cloud" in no_cloud.refusal("handoff") and "no cloud" in no_cloud.refusal("answer")


class GatedGenerator(FakeGenerator):
    """Says its first word, then waits until ``gate`` is set before the rest (the answer is not done yet)."""

    def __init__(self, words):
        super().__init__(words, logprob=-0.1)
        self.gate = threading.Event()

    def stream(self, ids, max_tokens, info, **options):
        for i, token in enumerate(super().stream(ids, max_tokens, info, **options)):
            if i == 1:
                self.gate.wait(10)
            yield token


def test_the_device_speaks_first_under_handoff_and_is_held_under_answer_routing():
    """Handoff passes the first token on while the device is still generating (the test opens the gate only
    once it has it); answer-level routing holds every token until the whole answer is scored."""
    async def first_piece(routing, route):
        pieces = routing.answer(request(route=route), threading.Event())
        try:
            return await asyncio.wait_for(anext(pieces), 2)
        except TimeoutError:
            return None
        finally:
            routing.engine.g.gate.set()
            await pieces.aclose()

    for route, expected in (("handoff", ("a", Author("smol", "device"))), ("answer", None)):
        routing = Routing(Engine(GatedGenerator(["a", "b", "c"])), "device", handoff_router(-1.0), LLMMetrics(),
                          FakeCloud(["C"]), name="smol")
        assert asyncio.run(first_piece(routing, route)) == expected


def test_a_character_split_over_tokens_is_not_cut_at_the_seam():
    """A kept token whose text is still held back (the first bytes of a character) was never shown: the cloud
    continues from the last token shown, so it writes the whole character."""
    device = FakeGenerator(["a", "", "c"], logprob=[-0.1, -0.1, -5.0])
    cloud = FakeCloud(["é"])
    text, end = answer(Routing(Engine(device), "device", handoff_router(-1.0), LLMMetrics(), cloud), request())
    assert text == "aé" and end["handoff"]["at_token"] == 1 and cloud.calls[0][1]["prompt"] == [1, 2, 3, 0]
