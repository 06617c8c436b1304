"""Dynamic batching that forms a batch only when it can run.

Ray Serve's ``@serve.batch`` closes a batch ``batch_wait_timeout_s`` after its first request and
only then waits for one of its ``max_concurrent_batches`` slots. In a replica whose event loop is
free while a batch runs (the ingress awaits its members), that closes a batch every few
milliseconds with whatever has arrived, and the batches then queue one behind another: under 16
clients the members saw batches of 1.6 requests on average. Here a batch starts to form once a
slot is free, so every request that arrived while the slots were busy goes into the next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class MicroBatcher:
    """``await batcher.submit(*args)`` runs ``fn(*lists)`` over batches of submitted calls.

    ``fn`` takes one list per argument (the i-th argument of every call in the batch) and returns
    one result per call, in order. At most ``concurrency`` batches run at once; a batch closes when
    it holds ``max_batch_size`` calls or ``wait_s`` after its first call, whichever comes first.
    An exception raised by ``fn`` is raised to every call of that batch and to no other. A caller
    that stops waiting (cancelled: a client that hung up) is left out of the batch if it has not
    started yet."""

    def __init__(
        self,
        fn: Callable[..., Awaitable[list[Any]]],
        max_batch_size: int,
        wait_s: float,
        concurrency: int = 1,
    ):
        if max_batch_size < 1 or concurrency < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size {max_batch_size}, concurrency {concurrency}, wait_s {wait_s}")
        self.fn, self.max_batch_size, self.wait_s, self.concurrency = fn, max_batch_size, wait_s, concurrency
        self._queue: asyncio.Queue | None = None  # made in the loop that runs it (the replica's)
        self._slots: asyncio.Semaphore | None = None
        self._former: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    async def submit(self, *args: Any) -> Any:
        if self._former is None or self._former.done():
            self._queue, self._slots = asyncio.Queue(), asyncio.Semaphore(self.concurrency)
            self._former = asyncio.get_running_loop().create_task(self._form_batches())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((args, future))
        return await future

    async def _form_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # a slot first: the batch then takes in all that waited
            batch = [await self._next_waiting()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch_size:
                if self._queue.empty():
                    try:
                        batch.append(await asyncio.wait_for(self._next_waiting(), deadline - loop.time()))
                    except TimeoutError:
                        break
                else:
                    item = self._queue.get_nowait()
                    if not item[1].done():
                        batch.append(item)
            task = loop.create_task(self._run(batch))
            self._running.add(task)  # a reference, so the task is not collected while it runs
            task.add_done_callback(self._running.discard)

    async def _next_waiting(self) -> tuple:
        while True:
            item = await self._queue.get()
            if not item[1].done():  # its caller has not given up
                return item

    async def _run(self, batch: list[tuple]) -> None:
        try:
            columns = [list(column) for column in zip(*(args for args, _ in batch), strict=True)]
            results = await self.fn(*columns)
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} calls got {len(results)} results")
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it, none else
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._slots.release()
