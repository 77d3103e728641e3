"""The LLM routing engine without HTTP: a fake device generator and a fake cloud decide, relay and fall back."""

import asyncio
import threading
from types import SimpleNamespace

from edgeshrink.serve.cloud_client import CloudFailed
from edgeshrink.serve.llm.request import ChatRequest, Prepared
from edgeshrink.serve.llm.routing import Engine, Routing
from edgeshrink.serve.metrics import LLMMetrics, parse
from prometheus_client import generate_latest


class FakeGenerator:
    """Says ``words``, each token with log-probability ``logprob``; one token id per character."""
    context_length = 64

    def __init__(self, words, logprob=-0.05):
        self.words, self.logprob = words, logprob
        self.tokenizer = SimpleNamespace(encode=lambda text, add_special_tokens=False: SimpleNamespace(
            ids=list(range(len(text)))))
        self.calls = []

    def stream(self, ids, max_tokens, info, **options):
        self.calls.append((list(ids), max_tokens))
        words = self.words[:max_tokens]
        for i, word in enumerate(words):
            yield SimpleNamespace(id=i, text=word, logprob=self.logprob, entropy=0.1)
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
    assert [m for t, m in confident[:-1]] == ["smol"] * 3 and confident[-1][1]["model"] == "smol"
    relayed = pieces_of(Routing(Engine(device), "device", router(0.999999), LLMMetrics(), FakeCloud(["He", "llo"]),
                                name="smol"), request())
    assert relayed[:-1] == [("He", "cloud-model"), ("llo", "cloud-model")] and relayed[-1][1]["model"] == "cloud-model"
    broken = pieces_of(Routing(Engine(device), "device", router(None), LLMMetrics(),
                               FakeCloud(["ab"], fail="stream_broken"), name="smol"), request(route="cloud"))
    assert broken[:-1] == [("ab", "cloud-model"), ("x", "smol"), ("y", "smol"), ("z", "smol")]
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
