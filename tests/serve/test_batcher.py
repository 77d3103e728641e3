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


def test_the_model_threads_cpu_time_is_booked_per_call_and_idle_waits_are_not():
    import time

    booked = []

    def fn(texts):
        if texts == ["sleep"]:
            time.sleep(0.2)  # waiting costs no CPU
        else:
            end = time.thread_time() + 0.05
            while time.thread_time() < end:  # 50 ms of CPU
                pass
        return list(texts)

    async def main():
        batcher = MicroBatcher(fn, max_batch_size=1, max_wait_ms=0, on_model_cpu=booked.append)
        batcher.start()
        await batcher.run(["sleep"])
        await batcher.run(["spin"])
        await batcher.stop()

    asyncio.run(main())
    assert len(booked) == 2
    assert booked[0] < 0.02  # the sleeping call: CPU, not wall time
    assert 0.05 <= booked[1] < 0.5
