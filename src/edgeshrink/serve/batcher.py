"""Micro-batching: texts from concurrent requests share one model call.

The first waiting text opens a batch; the batch closes when it holds ``max_batch_size`` texts or when
``max_wait_ms`` has passed since it opened, and runs in one worker thread (ONNX Runtime releases the GIL,
so the event loop keeps accepting requests meanwhile). Each request gets back exactly its own rows.
The worker thread's CPU time per call goes to ``on_model_cpu`` (what the model costs, apart from HTTP).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future


class MicroBatcher:
    """``await batcher.run(texts)`` → whatever ``fn(texts)`` returns for those rows (a list, one per text)."""

    def __init__(self, fn: Callable[[list[str]], list], max_batch_size: int, max_wait_ms: float,
                 on_batch: Callable[[int], None] | None = None,
                 on_model_cpu: Callable[[float], None] | None = None):
        self.fn, self.max_batch_size, self.max_wait_s = fn, max_batch_size, max_wait_ms / 1000
        self.on_batch = on_batch or (lambda size: None)
        self.on_model_cpu = on_model_cpu or (lambda seconds: None)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeshrink-model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _call(self, texts: list[str]) -> list:
        """``fn(texts)`` in the model thread, its CPU time booked (ORT at one thread runs in this thread too)."""
        start = time.thread_time()
        try:
            return self.fn(texts)
        finally:
            self.on_model_cpu(time.thread_time() - start)

    async def run(self, texts: list[str]) -> list:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Item(list(texts), future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Item | None = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            items, size = [first], len(first.texts)
            deadline = time.perf_counter() + self.max_wait_s
            while size < self.max_batch_size:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if size + len(item.texts) > self.max_batch_size and size > 0:
                    carry = item  # opens the next batch; a request is never split
                    break
                items.append(item)
                size += len(item.texts)
            texts = [t for item in items for t in item.texts]
            self.on_batch(len(texts))
            try:
                rows = await loop.run_in_executor(self.executor, self._call, texts)
            except Exception:  # noqa: BLE001 - one bad request must not fail the others: run each alone
                for item in items:
                    await self._run_alone(loop, item)
                continue
            start = 0
            for item in items:
                if not item.future.done():
                    item.future.set_result(rows[start:start + len(item.texts)])
                start += len(item.texts)

    async def _run_alone(self, loop, item: _Item) -> None:
        try:
            rows = await loop.run_in_executor(self.executor, self._call, item.texts)
        except Exception as exc:  # noqa: BLE001 - handed to the request that caused it
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(rows)
