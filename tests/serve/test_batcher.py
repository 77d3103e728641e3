import asyncio

import pytest

from edgeshrink.serve.batcher import MicroBatcher


def test_concurrent_requests_share_model_calls_and_get_their_own_rows():
    calls = []

    def fn(texts):
        calls.append(list(texts))
        return [t.upper() for t in texts]

    async def main():
        batcher = MicroBatcher(fn, max_batch_size=4, max_wait_ms=20)
        batcher.start()
        requests = [["a"], ["b", "c"], ["d"], ["e", "f", "g"], ["h"]]
        answers = await asyncio.gather(*(batcher.run(r) for r in requests))
        await batcher.stop()
        return requests, answers

    requests, answers = asyncio.run(main())
    assert answers == [[t.upper() for t in r] for r in requests]
    assert all(len(c) <= 4 for c in calls) and len(calls) < len(requests)
    assert sorted(t for c in calls for t in c) == list("abcdefgh")  # no text lost or run twice


def test_a_request_larger_than_the_batch_runs_alone_and_errors_reach_the_caller():
    def fn(texts):
        if "boom" in texts:
            raise ValueError("model failed")
        return list(texts)

    async def main():
        batcher = MicroBatcher(fn, max_batch_size=2, max_wait_ms=0)
        batcher.start()
        big = await batcher.run(["x", "y", "z"])
        with pytest.raises(ValueError, match="model failed"):
            await batcher.run(["boom"])
        after = await batcher.run(["ok"])
        await batcher.stop()
        return big, after

    assert asyncio.run(main()) == (["x", "y", "z"], ["ok"])


def test_a_failing_request_does_not_fail_the_others_in_its_batch():
    def fn(texts):
        if "boom" in texts:
            raise ValueError("model failed")
        return list(texts)

    async def main():
        batcher = MicroBatcher(fn, max_batch_size=8, max_wait_ms=30)
        batcher.start()
        results = await asyncio.gather(batcher.run(["a"]), batcher.run(["boom"]), batcher.run(["b"]),
                                       return_exceptions=True)
        await batcher.stop()
        return results

    a, boom, b = asyncio.run(main())
    assert a == ["a"] and b == ["b"] and isinstance(boom, ValueError)
