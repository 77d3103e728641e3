"""Token-level handoff over HTTP (issue 31): the device service streams its own tokens at once and hands the rest of
the answer to a real `serve-cloud` at the first unsure token; the official ``openai`` client reads one stream.
Tiny random models: the threshold is set from the device's own greedy answer so that it hands off mid-answer."""

import json
import shutil
import time

import httpx
import pytest

from edgeshrink.runtime.generate import Generator
from tests.serve.test_llm import CHAT, _client, _message, _metrics

openai = pytest.importorskip("openai")

GREEDY = {"temperature": 0, "extra_body": {"repetition_penalty": 1.0}}


def handoff_point(bundle, tokens: int = 12) -> tuple[int, float, list[int]]:
    """(k, threshold, the device's greedy token ids): a threshold at which the device keeps exactly its first k ≥ 1
    tokens (the first token whose log-probability is a new running minimum)."""
    generator = Generator(bundle)
    answer = list(generator.stream(generator.encode(CHAT), tokens))
    logprobs = [t.logprob for t in answer]
    k = next(i for i in range(1, len(logprobs)) if logprobs[i] < min(logprobs[:i]))
    return k, (min(logprobs[:k]) + logprobs[k]) / 2, [t.id for t in answer]


def with_handoff(bundle, out, threshold: float | None):
    """A copy of the device bundle with a router whose handoff section has ``threshold`` (logprob)."""
    from edgeshrink.route.calibrate import write_router

    out = shutil.copytree(bundle, out)
    write_router(out, {"kind": "edgeshrink-router", "schema_version": 1, "policy": {"policy": "budget"},
                       "signal": "mean-logprob", "temperature": 1.0, "bias": 0.0, "threshold": None,
                       "escalate_everything": False, "prompt": None, "cost": {}, "rules": {},
                       "handoff": {"signal": "logprob", "threshold": threshold, "alpha": 0.05, "delta": 0.1}})
    return out


def read_stream(stream) -> tuple[list, dict]:
    """[(text, model, span)] of a chat stream's text chunks, and the last chunk's edgeshrink facts."""
    chunks, end = [], None
    for chunk in stream:
        extra = (chunk.model_extra or {}).get("edgeshrink") or {}
        if chunk.choices[0].delta.content:
            chunks.append((chunk.choices[0].delta.content, chunk.model, extra.get("span")))
        if chunk.choices[0].finish_reason:
            end = extra
    return chunks, end


@pytest.fixture(scope="module")
def handoff(llm_bundles, tmp_path_factory):
    k, threshold, ids = handoff_point(llm_bundles / "device")
    device = with_handoff(llm_bundles / "device", tmp_path_factory.mktemp("handoff") / "device", threshold)
    return {"k": k, "threshold": threshold, "ids": ids, "device": device}


def test_one_stream_across_the_handoff_device_span_then_the_clouds_greedy_continuation(start, llm_bundles, handoff):
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0)
    device = start("serve", handoff["device"], "--cloud", cloud.url, "--cloud-model", "cloud", "--port", 0,
                   "--rate", 0)
    assert httpx.get(f"{device.url}/readyz").json()["policy"] == "handoff"
    client = _client(device)
    chunks, end = read_stream(client.chat.completions.create(model="device", messages=CHAT, max_tokens=12,
                                                             stream=True, **GREEDY))
    k = handoff["k"]
    assert end["source"] == "handoff" and end["reason"] == "unsure" and end["handoff"]["at_token"] == k
    assert end["handoff"]["value"] < handoff["threshold"] == end["handoff"]["threshold"]
    # device chunks first (each names the device), then the cloud's (each names the cloud); the spans agree
    spans = [span for _, _, span in chunks]
    assert spans == ["device"] * spans.count("device") + ["cloud"] * spans.count("cloud") and "cloud" in spans
    assert {(model, span) for _, model, span in chunks} == {("device", "device"), ("cloud", "cloud")}
    device_text = "".join(text for text, _, span in chunks if span == "device")
    cloud_text = "".join(text for text, _, span in chunks if span == "cloud")
    assert [(s["source"], s["chars"]) for s in end["spans"]] == [("device", len(device_text)),
                                                                   ("cloud", len(cloud_text))]
    # the device's span is its own greedy answer up to the handoff; the cloud's is the cloud's greedy continuation
    # of the prompt and exactly those tokens (one request on token ids)
    device_gen, cloud_gen = Generator(handoff["device"]), Generator(llm_bundles / "cloud")
    prompt = device_gen.encode(CHAT)
    assert device_text == device_gen.tokenizer.decode(handoff["ids"][:k], skip_special_tokens=True)
    continued = cloud_gen.generate(prompt + handoff["ids"][:k], 12 - k).text
    assert cloud_text == continued
    # the same answer without streaming, its usage counting both spans
    whole = client.chat.completions.create(model="device", messages=CHAT, max_tokens=12, **GREEDY)
    assert whole.choices[0].message.content == device_text + cloud_text and whole.model == "cloud"
    assert whole.model_extra["edgeshrink"]["spans"] == end["spans"]
    m = _metrics(device)
    assert m["edgeshrink_handoffs_total"] == 2 and m['edgeshrink_handoff_tokens_total{source="device"}'] == 2 * k
    assert m['edgeshrink_texts_total{source="handoff"}'] == 2
    # the watch saw both answers (this router has no drift reference, so no test runs; /v1/monitor says so)
    report = httpx.get(f"{device.url}/v1/monitor").json()
    assert report["policy"] == "handoff" and report["requests"] == 2 and report["firing"] == []
    assert httpx.get(f"{device.url}/readyz").json()["drift"]["policy"] == "handoff"
    # answer-level routing on request: this router's answer threshold is null, so the device answers whole
    answered = client.chat.completions.create(model="device", messages=CHAT, max_tokens=12,
                                              temperature=0, extra_body={"repetition_penalty": 1.0,
                                                                         "edgeshrink": {"route": "answer"}})
    assert answered.model_extra["edgeshrink"]["source"] == "device"
    assert answered.model_extra["edgeshrink"]["reason"] == "confident"


def test_the_rendered_text_continues_as_the_token_ids_do(start, llm_bundles, handoff):
    """--handoff-via text (a completions endpoint that takes no token ids): the same answer as by ids."""
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0)
    answers = {}
    for via in ("tokens", "text"):
        device = start("serve", handoff["device"], "--cloud", cloud.url, "--cloud-model", "cloud", "--port", 0,
                       "--rate", 0, "--handoff-via", via)
        reply = _client(device).chat.completions.create(model="device", messages=CHAT, max_tokens=12, **GREEDY)
        assert reply.model_extra["edgeshrink"]["source"] == "handoff"
        answers[via] = reply.choices[0].message.content
    assert answers["text"] == answers["tokens"]


def test_when_the_cloud_fails_mid_handoff_the_device_finishes_the_answer_flagged(start, llm_bundles, handoff,
                                                                                 tmp_path):
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"status": 500}))
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0, "--faults", faults)
    device = start("serve", handoff["device"], "--cloud", cloud.url, "--cloud-model", "cloud", "--port", 0,
                   "--rate", 0, "--retries", 0, "--breaker-failures", 100)
    chunks, end = read_stream(_client(device).chat.completions.create(model="device", messages=CHAT, max_tokens=12,
                                                                      stream=True, **GREEDY))
    assert end["source"] == "device-fallback" and end["fallback_reason"] == "http_5xx"
    assert end["handoff"]["at_token"] == handoff["k"] and {span for _, _, span in chunks} == {"device"}
    # the device went on from its own kept tokens: its whole greedy answer
    device_gen = Generator(handoff["device"])
    assert "".join(t for t, _, _ in chunks) == device_gen.tokenizer.decode(handoff["ids"], skip_special_tokens=True)
    # cut mid-stream: the cloud's first chunks, then the device from everything written so far
    faults.write_text(json.dumps({"break_after_chunks": 3}))
    chunks, end = read_stream(_client(device).chat.completions.create(model="device", messages=CHAT, max_tokens=40,
                                                                      stream=True, **GREEDY))
    assert end["fallback_reason"] == "stream_broken" and end["cloud_chars"] > 0
    spans = [span for _, _, span in chunks]
    assert spans[0] == "device" and "cloud" in spans and spans[-1] == "device"
    assert [s["source"] for s in end["spans"]] == ["device", "cloud", "device"]


def test_bad_input_handoff_refusals_and_a_stream_cancelled_mid_handoff(start, llm_bundles, handoff, tmp_path):
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0)
    # a cloud that cannot continue a prefix: handoff is refused in one line (422), answer-level routing remains
    chat_only = start("serve", handoff["device"], "--cloud", cloud.url, "--cloud-model", "cloud", "--port", 0,
                      "--rate", 0, "--handoff-via", "none")
    refused = httpx.post(f"{chat_only.url}/v1/chat/completions", json={
        "model": "device", "messages": CHAT, "max_tokens": 4, "edgeshrink": {"route": "handoff"}})
    assert refused.status_code == 422
    assert _message(refused) == ("handoff asked, but the cloud cannot continue a prefix (--handoff-via none)")
    assert httpx.get(f"{chat_only.url}/readyz").json()["policy"] == "answer"
    # --llm-policy handoff on a bundle without a handoff threshold does not start
    from typer.testing import CliRunner

    from edgeshrink.cli import app
    from tests.serve.test_llm import _router

    plain = _router(llm_bundles / "device", tmp_path, 0.5)
    result = CliRunner().invoke(app, ["serve", str(plain), "--cloud", cloud.url, "--llm-policy", "handoff",
                                      "--port", "0"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--llm-policy handoff: the bundle's router.json has no handoff threshold" in result.output
    # a stream the client drops while the cloud is writing: the device closes the cloud stream, nothing is left
    # running, and the next request is answered at once
    faults = tmp_path / "faults.json"
    slow_cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0, "--faults", faults)
    device = start("serve", handoff["device"], "--cloud", slow_cloud.url, "--cloud-model", "cloud", "--port", 0,
                   "--rate", 0)
    faults.write_text(json.dumps({"chunk_delay_ms": 200}))
    with httpx.stream("POST", f"{device.url}/v1/chat/completions", timeout=30, json={
            "model": "device", "messages": CHAT, "max_tokens": 60, "temperature": 0, "repetition_penalty": 1.0,
            "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and (json.loads(line[6:]).get("edgeshrink") or {}).get("span") == "cloud":
                break  # dropped during the cloud's span
    faults.unlink()
    started = time.monotonic()
    reply = _client(device).chat.completions.create(model="device", messages=CHAT, max_tokens=12, **GREEDY)
    assert reply.model_extra["edgeshrink"]["source"] == "handoff" and time.monotonic() - started < 10
    # both services saw their client go: the device its client, the cloud the device (its stream was closed)
    for server in (device, slow_cloud):
        assert _metrics(server).get('edgeshrink_rejected_requests_total{reason="client_disconnected"}') == 1
