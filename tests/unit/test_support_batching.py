"""The request queue and batching worker of the support services (apps/kca_batching.py), with a plain
function in place of the model: which requests share a forward pass, how passes are cut, whose result
goes where, and when the queue refuses. The real apps with the real model: test_support_apps.py.

Runs in the control machine's venv, which has no torch, NumPy or FastAPI: importing kca_batching here
is what keeps it standard-library only."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "apps"))

from kca_batching import Batcher, QueueFull, plan_passes  # noqa: E402

# No test here waits this long unless the code under test is wrong: a bound, not a timing.
GIVE_UP_S = 20


class RecordingModel:
    """Stands in for a forward pass: an item is (text, length); the result names the text. Records
    every pass, and can hold the worker inside a pass until the test lets it go."""

    def __init__(self):
        self.passes: list[list[tuple[str, int]]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.inside = threading.Event()
        self.fail_on: str | None = None

    def run_pass(self, items):
        self.passes.append(list(items))
        self.inside.set()
        self.hold.wait(GIVE_UP_S)
        if self.fail_on is not None and any(text == self.fail_on for text, _ in items):
            raise RuntimeError("the model failed")
        return [f"result of {text}" for text, _ in items]


def make_batcher(model: RecordingModel, **overrides) -> Batcher:
    settings = {"batch_tokens": 64, "wait_ms": 0, "max_queued_requests": 8, "name": "test"} | overrides
    batcher = Batcher(model.run_pass, **settings)
    batcher.start()
    return batcher


async def request(batcher: Batcher, texts: list[tuple[str, int]]) -> list[str]:
    with batcher.admit() as admission:
        return await asyncio.wait_for(admission.run(texts, [n for _, n in texts]), GIVE_UP_S)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GIVE_UP_S))


# --- plan_passes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lengths", "budget"),
    [
        ([5, 50, 12, 12, 3, 40, 7], 64),
        ([10] * 100, 64),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9], 10),
        ([200, 3, 3], 64),  # one text longer than a pass
    ],
)
def test_passes_are_longest_first_and_bounded_in_padded_tokens(lengths, budget):
    passes = plan_passes(lengths, budget)
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
    order = [lengths[i] for p in passes for i in p]
    assert order == sorted(lengths, reverse=True)
    for p in passes:
        padded = len(p) * max(lengths[i] for i in p)
        assert padded <= budget or len(p) == 1, (p, padded)


def test_a_text_longer_than_the_budget_runs_alone():
    assert plan_passes([200, 3, 3], 64) == [[0], [1, 2]]


# --- the worker ------------------------------------------------------------------------------------


def test_each_caller_gets_its_own_results_in_its_own_order():
    model = RecordingModel()
    batcher = make_batcher(model, batch_tokens=1000)

    async def main():
        callers = [[(f"c{c}-t{t}", 1 + (c * 7 + t * 3) % 11) for t in range(1 + c % 4)] for c in range(8)]
        answers = await asyncio.gather(*(request(batcher, texts) for texts in callers))
        for texts, answer in zip(callers, answers, strict=True):
            assert answer == [f"result of {text}" for text, _ in texts]

    run(main())
    # The counts /health reports.
    assert batcher.answered == 8
    assert batcher.texts == sum(1 + c % 4 for c in range(8))
    assert batcher.passes == len(model.passes)


def test_requests_that_queue_during_a_pass_share_the_next_one():
    model = RecordingModel()
    batcher = make_batcher(model, batch_tokens=1000)

    async def main():
        model.hold.clear()
        first = asyncio.ensure_future(request(batcher, [("first", 4)]))
        while not model.inside.is_set():
            await asyncio.sleep(0.01)
        # The worker is inside the first pass: these six queue up behind it.
        rest = [asyncio.ensure_future(request(batcher, [(f"r{i}", 4)])) for i in range(6)]
        while batcher._queued_tokens < 6 * 4:
            await asyncio.sleep(0.01)
        model.hold.set()
        await asyncio.gather(first, *rest)

    run(main())
    assert [len(p) for p in model.passes] == [1, 6]
    assert sorted(text for text, _ in model.passes[1]) == [f"r{i}" for i in range(6)]


def test_a_pass_never_exceeds_the_token_budget():
    model = RecordingModel()
    batcher = make_batcher(model, batch_tokens=64)

    async def main():
        model.hold.clear()
        first = asyncio.ensure_future(request(batcher, [("first", 1)]))
        while not model.inside.is_set():
            await asyncio.sleep(0.01)
        callers = [[(f"c{c}-t{t}", 3 + (c * 5 + t) % 17) for t in range(5)] for c in range(6)]
        futures = [asyncio.ensure_future(request(batcher, texts)) for texts in callers]
        while batcher._queued_tokens < sum(n for texts in callers for _, n in texts):
            await asyncio.sleep(0.01)
        model.hold.set()
        await asyncio.gather(first, *futures)

    run(main())
    for items in model.passes[1:]:
        lengths = [n for _, n in items]
        assert len(lengths) * max(lengths) <= 64, lengths
        assert lengths == sorted(lengths, reverse=True)


def test_a_lone_request_does_not_wait_for_company():
    # A wait of a minute: a lone request that waited for it would run into GIVE_UP_S.
    model = RecordingModel()
    batcher = make_batcher(model, wait_ms=60_000)
    assert run(request(batcher, [("alone", 5)])) == ["result of alone"]


def test_the_worker_waits_for_a_request_still_being_read():
    model = RecordingModel()
    batcher = make_batcher(model, batch_tokens=1000, wait_ms=60_000)

    async def main():
        slow = batcher.admit()  # admitted, still reading its body
        fast = asyncio.ensure_future(request(batcher, [("fast", 5)]))
        await asyncio.sleep(0.2)
        assert not model.passes, "the worker ran before the request it was told about arrived"
        with slow:
            late = await slow.run([("late", 5)], [5])
        assert await fast == ["result of fast"]
        assert late == ["result of late"]

    run(main())
    assert [sorted(t for t, _ in p) for p in model.passes] == [["fast", "late"]]


def test_a_request_refused_after_admission_stops_the_wait():
    model = RecordingModel()
    batcher = make_batcher(model, wait_ms=60_000)

    async def main():
        refused = batcher.admit()
        waiting = asyncio.ensure_future(request(batcher, [("kept", 5)]))
        await asyncio.sleep(0.2)
        refused.release()  # e.g. its body was not valid JSON
        assert await waiting == ["result of kept"]

    run(main())


def test_a_full_queue_refuses_at_once_and_frees_places_when_answered():
    model = RecordingModel()
    batcher = make_batcher(model, max_queued_requests=2)

    async def main():
        model.hold.clear()
        held = [asyncio.ensure_future(request(batcher, [(f"h{i}", 5)])) for i in range(2)]
        while batcher.admitted < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="at most 2"):
            batcher.admit()
        model.hold.set()
        await asyncio.gather(*held)
        assert batcher.admitted == 0
        assert await request(batcher, [("after", 5)]) == ["result of after"]

    run(main())


def test_a_failed_pass_fails_its_callers_and_the_worker_goes_on():
    model = RecordingModel()
    model.fail_on = "poison"
    batcher = make_batcher(model)

    async def main():
        with pytest.raises(RuntimeError, match="the model failed"):
            await request(batcher, [("poison", 5), ("fine", 5)])
        assert await request(batcher, [("next", 5)]) == ["result of next"]

    run(main())
    assert batcher.answered == 1, "a failed request is not counted as answered"


def test_an_admission_runs_once_and_needs_one_length_per_item():
    model = RecordingModel()
    batcher = make_batcher(model)

    async def main():
        with batcher.admit() as admission:
            with pytest.raises(ValueError, match="one length per item"):
                await admission.run([("a", 1)], [1, 2])
            await admission.run([("a", 1)], [1])
            with pytest.raises(RuntimeError, match="runs once"):
                await admission.run([("a", 1)], [1])
        assert batcher.admitted == 0

    run(main())
