"""The breaker, the budget and the rate limiter on a fake clock; the cloud budget over real HTTP."""

from edgeshrink.client import Client
from edgeshrink.serve.gate import RateLimiter
from edgeshrink.serve.cloud_client import Budget, CircuitBreaker
from tests.conftest import make_texts


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_breaker_opens_after_failures_probes_once_and_closes():
    clock, changes = Clock(), []
    breaker = CircuitBreaker(failures=3, reset_s=5, on_change=changes.append, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record(False)
    assert breaker.state == "closed"
    breaker.record(False)
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.allow() and breaker.state == "half-open"
    assert not breaker.allow()  # one probe at a time
    breaker.record(False)  # the probe failed: open for another period
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 10.0
    assert breaker.allow()
    breaker.record(True)
    assert breaker.state == "closed" and breaker.allow()
    assert changes == ["open", "half-open", "open", "half-open", "closed"]


def test_a_success_resets_the_failure_count():
    breaker = CircuitBreaker(failures=2, reset_s=1, clock=Clock())
    breaker.record(False)
    breaker.record(True)
    breaker.record(False)
    assert breaker.state == "closed"


def test_budget_is_a_sliding_minute():
    clock = Clock()
    budget = Budget(10, clock=clock)
    assert budget.take(6) and budget.take(4) and not budget.take(1)
    clock.now = 59.9
    assert not budget.take(1)
    clock.now = 60.0
    assert budget.take(10)
    assert Budget(None).take(10 ** 9)


def test_rate_limiter_refills_per_client():
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # buckets are per client
    clock.now = 0.5
    assert limiter.allow("a") and not limiter.allow("a")
    assert RateLimiter(rate=0, burst=1).allow("x")


def test_spent_cloud_budget_falls_back(start, serve_models):
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0)
    device = start("serve", serve_models["device"], "--cloud", cloud.url, "--port", 0, "--cloud-budget", 3)
    texts = [t for t, _ in make_texts(40, seed=5)]
    with Client(device.url) as client:
        # one text per request: the first three escalations fit the budget, the rest do not
        results = [client.classify([t])[0] for t in texts]
        m = client.metrics()
    escalated = [r for r in results if r["reason"] == "not confident"]
    assert len(escalated) > 3
    assert [r["source"] for r in escalated[:3]] == ["cloud"] * 3
    assert {r["fallback_reason"] for r in escalated[3:]} == {"budget"}
    assert m['edgeshrink_fallbacks_total{reason="budget"}'] == len(escalated) - 3


def test_the_classifier_and_the_llm_clients_share_one_retry_loop():
    import asyncio

    import httpx

    from edgeshrink.serve.cloud_client import CloudClient, CloudFailed
    from edgeshrink.serve.config import CloudConfig
    from edgeshrink.serve.llm_client import OpenAICloud

    replies, models = [], set()

    def handler(request):
        return replies.pop(0)

    def client(cls):
        made = cls(CloudConfig(url="http://cloud", retries=1, deadline_ms=2000, backoff_ms=1, breaker_failures=9))
        made.http = httpx.AsyncClient(base_url="http://cloud", transport=httpx.MockTransport(handler))
        return made

    async def stream(cloud):
        got = []
        try:
            async for piece, _, model in cloud.stream("/v1/completions", {"prompt": "p"}):
                got.append(piece)
                models.add(model)
        except CloudFailed as failed:
            return got, failed.reason, failed.attempts
        return got, None, None

    chunk = 'data: {"choices": [{"text": "hi", "finish_reason": null}]}\n\n'
    # a 5xx is retried, a 4xx is not; the same reasons and attempts for both clients
    replies[:] = [httpx.Response(500), httpx.Response(503)]
    assert asyncio.run(stream(client(OpenAICloud))) == ([], "http_5xx", 2)
    replies[:] = [httpx.Response(500), httpx.Response(503)]
    assert asyncio.run(client(CloudClient).classify(["t"])).reason == "http_5xx"
    replies[:] = [httpx.Response(400)]
    assert asyncio.run(stream(client(OpenAICloud))) == ([], "http_4xx", 1)
    # cut short before the first piece: retried; after it: stream_broken, not retried
    replies[:] = [httpx.Response(200, text=""), httpx.Response(200, text=chunk + "data: [DONE]\n\n")]
    assert asyncio.run(stream(client(OpenAICloud))) == (["hi"], None, None)
    assert models == {"cloud"}  # a chunk without a model: the one asked for (none given: "cloud")
    named = 'data: {"model": "gpt-4o-2024-08-06", "choices": [{"text": "hi", "finish_reason": null}]}\n\n'
    replies[:] = [httpx.Response(200, text=named + "data: [DONE]\n\n")]
    models.clear()
    assert asyncio.run(stream(client(OpenAICloud))) == (["hi"], None, None) and models == {"gpt-4o-2024-08-06"}
    replies[:] = [httpx.Response(200, text=chunk), httpx.Response(200, text=chunk)]
    assert asyncio.run(stream(client(OpenAICloud))) == (["hi"], "stream_broken", 1)
    replies[:] = [httpx.Response(200, text="data: {\"nonsense\": 1}\n\n")]
    assert asyncio.run(stream(client(OpenAICloud))) == ([], "bad_response", 1)
