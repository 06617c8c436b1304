"""The ingress's dynamic batching (``serve.batcher.MicroBatcher``): a batch forms once it can run,
so requests that arrive while the members are busy travel together; limits, errors and callers
that hang up behave as a server's users need. Plain asyncio, no Ray: the served path is covered
by tests/test_serve.py (every member runs the same batches)."""

import asyncio

import pytest

from aigc_ray.serve.batcher import MicroBatcher


class Recorder:
    """A batch function that records each batch and can be held until released."""

    def __init__(self):
        self.batches: list[list] = []
        self.running = self.most_running = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, xs: list, ys: list) -> list:
        self.batches.append(list(xs))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
            await asyncio.sleep(0.005)  # a batch takes time, so batches can overlap
            if "poison" in xs:
                raise ValueError("a poisoned batch")
            return [f"{x}{y}" for x, y in zip(xs, ys, strict=True)]
        finally:
            self.running -= 1


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def first_batch_held() -> tuple[Recorder, MicroBatcher, asyncio.Future]:
    """A one-slot batcher whose first batch (one call, "a") is running and held until released."""
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=16, wait_s=0.0, concurrency=1)
    fn.release.clear()
    first = asyncio.ensure_future(batcher.submit("a", 0))
    while not fn.batches:
        await asyncio.sleep(0.001)
    return fn, batcher, first


def test_requests_that_arrive_while_the_batch_runs_go_together_into_the_next():
    async def scenario():
        fn, batcher, first = await first_batch_held()
        later = []
        for i, c in enumerate("bcdefghij"):  # one by one, as clients' requests come
            later.append(asyncio.ensure_future(batcher.submit(c, i)))
            await asyncio.sleep(0.003)
        fn.release.set()  # a batcher that closed batches before a slot was free has nine of one
        return await first, await asyncio.gather(*later), fn.batches

    first, later, batches = run(scenario())
    assert first == "a0" and later == [f"{c}{i}" for i, c in enumerate("bcdefghij")]
    assert batches == [["a"], list("bcdefghij")]


def test_batches_are_capped_and_no_more_run_at_once_than_the_concurrency():
    async def scenario():
        fn = Recorder()
        batcher = MicroBatcher(fn, max_batch_size=8, wait_s=0.01, concurrency=2)
        out = await asyncio.gather(*(batcher.submit(i, "") for i in range(20)))
        return out, fn

    out, fn = run(scenario())
    assert out == [f"{i}" for i in range(20)]  # each caller gets its own answer, in order
    assert [len(b) for b in fn.batches] == [8, 8, 4] and sum(fn.batches, []) == list(range(20))
    assert fn.most_running == 2


def test_a_batch_closes_when_full_without_waiting_out_its_window():
    async def scenario():
        batcher = MicroBatcher(Recorder(), max_batch_size=2, wait_s=3600, concurrency=1)
        first = asyncio.ensure_future(batcher.submit("a", 1))
        await asyncio.sleep(0.01)
        return await asyncio.gather(first, batcher.submit("b", 2))  # would hang for an hour otherwise

    assert run(scenario()) == ["a1", "b2"]


def test_an_error_reaches_every_call_of_its_batch_and_no_other():
    async def scenario():
        fn = Recorder()
        batcher = MicroBatcher(fn, max_batch_size=2, wait_s=0.01, concurrency=1)
        calls = [batcher.submit(x, 0) for x in ("ok", "poison", "fine", "also")]
        return await asyncio.gather(*calls, return_exceptions=True), fn.batches

    out, batches = run(scenario())
    assert batches == [["ok", "poison"], ["fine", "also"]]
    assert [type(o).__name__ for o in out[:2]] == ["ValueError", "ValueError"] and "poisoned" in str(out[0])
    assert out[2:] == ["fine0", "also0"]


def test_a_caller_that_hung_up_before_its_batch_formed_is_left_out():
    async def scenario():
        fn, batcher, first = await first_batch_held()
        gone = asyncio.ensure_future(batcher.submit("gone", 0))
        stays = asyncio.ensure_future(batcher.submit("stays", 0))
        await asyncio.sleep(0.01)
        gone.cancel()  # a client that hung up while its request waited
        fn.release.set()
        return await first, await stays, gone.cancelled(), fn.batches

    first, stays, cancelled, batches = run(scenario())
    assert (first, stays, cancelled) == ("a0", "stays0", True)
    assert batches == [["a"], ["stays"]]


def test_a_batch_function_that_answers_the_wrong_number_of_calls_is_an_error_that_says_so():
    async def short(xs):
        return xs[:-1]

    async def scenario():
        batcher = MicroBatcher(short, max_batch_size=4, wait_s=0.01)
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    out = run(scenario())
    assert all(isinstance(o, RuntimeError) for o in out) and "a batch of 3 calls got 2 results" in str(out[0])


def test_settings_that_cannot_batch_are_refused():
    with pytest.raises(ValueError, match="max_batch_size 0"):
        MicroBatcher(Recorder(), max_batch_size=0, wait_s=0.01)
