"""The batching of the support services (apps/kca_batching.py) as the model's process runs it, with a
plain function in place of the model: which requests share a forward pass, how passes are cut, whose
result goes where. This test plays the HTTP process: it sends requests over a real socket pair in the
real message format, and Batcher.serve() runs in a thread as it runs in the model's process. The real
apps with the real model: test_support_apps.py.

Runs in the control machine's venv, which has no torch, NumPy or FastAPI: importing kca_batching here
is what keeps it standard-library only."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "apps"))

import kca_batching  # noqa: E402
from kca_batching import Batcher, QueueFull, RequestBound, plan_passes, receive_message, send_message  # noqa: E402

# No test here waits this long unless the code under test is wrong: a bound, not a timing.
GIVE_UP_S = 20


class RecordingModel:
    """Stands in for a forward pass: an item is a text; the result names it. Records every pass, and
    can hold the model inside a pass until the test lets it go."""

    def __init__(self):
        self.passes: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.inside = threading.Event()
        self.fail_on: str | None = None

    def run_pass(self, items):
        self.passes.append(list(items))
        self.inside.set()
        assert self.hold.wait(GIVE_UP_S)
        if self.fail_on in items:
            raise RuntimeError("the model failed")
        return [f"result of {text}" for text in items]


class ModelProcess:
    """Batcher.serve() in a thread on one end of a socket pair; the test speaks on the other."""

    def __init__(self, model: RecordingModel, **overrides):
        settings = {"batch_tokens": 64, "wait_ms": 0, "name": "test"} | overrides
        self.batcher = Batcher(model.run_pass, **settings)
        self.http, model_end = socket.socketpair()
        self.http.settimeout(GIVE_UP_S)
        self.thread = threading.Thread(target=self.batcher.serve, args=(model_end,), daemon=True)
        self.thread.start()
        self.next_id = 0

    def send(self, texts: list[tuple[str, int]], in_server: int = 1) -> int:
        """One request of (text, tokens); returns its id."""
        return self.send_together([texts], in_server)[0]

    def send_together(self, requests: list[list[tuple[str, int]]], in_server: int) -> list[int]:
        """Requests that arrive at once: written with one system call, so the socket holds them all
        before the model's process reads any of them."""
        ids = list(range(self.next_id, self.next_id + len(requests)))
        self.next_id += len(requests)
        sender, receiver = socket.socketpair()  # framing through the real send_message, then one write
        with sender, receiver:
            for request_id, texts in zip(ids, requests, strict=True):
                message = ("run", request_id, [t for t, _ in texts], [n for _, n in texts], in_server)
                send_message(sender, message)
            sender.shutdown(socket.SHUT_WR)
            data = b"".join(iter(lambda: receiver.recv(1 << 16), b""))
        self.http.sendall(data)
        return ids

    def answers(self, count: int) -> dict[int, tuple]:
        """The next `count` answers, by request id."""
        found = {}
        for _ in range(count):
            kind, request_id, value, *rest = receive_message(self.http)
            found[request_id] = (kind, value, *rest)
        return found

    def close(self) -> None:
        self.http.close()
        self.thread.join(GIVE_UP_S)
        assert not self.thread.is_alive(), "serve() did not return when the HTTP process closed the socket"


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


@pytest.mark.parametrize(
    ("lengths", "budget"),
    [
        ([52] * 78 + [40, 30], 4096),  # a full pass and a sliver: two equal halves instead
        ([10] * 100, 640),
        ([5, 50, 12, 12, 3, 40, 7], 64),
        ([200, 3, 3], 64),
        ([7, 7, 7], 64),
        ([30 + (i * 37) % 270 for i in range(200)], 4096),
    ],
)
@pytest.mark.parametrize("lanes", [2, 3])
def test_lanes_get_whole_rounds_of_passes_no_larger_than_one_lane_would(lengths, budget, lanes):
    alone = plan_passes(lengths, budget)
    passes = plan_passes(lengths, budget, lanes)
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
    assert [lengths[i] for p in passes for i in p] == sorted(lengths, reverse=True)

    def padded(p):
        return len(p) * max(lengths[i] for i in p)

    assert all(padded(p) <= budget or len(p) == 1 for p in passes)
    # At most as many rounds as one lane's passes need; where texts are enough, every lane has one.
    assert len(passes) <= -(-len(alone) // lanes) * lanes
    assert len(passes) >= min(lanes, len(lengths)) or max(map(padded, passes)) == max(lengths)
    # The round ends with its largest pass: never later than one lane's largest pass would end.
    assert max(map(padded, passes)) <= max(map(padded, alone))


def test_with_balanced_lanes_a_full_pass_and_a_sliver_become_halves():
    assert [len(p) for p in plan_passes([52] * 78 + [40, 30], 4096, lanes=2)] == [40, 40]


# --- the model's process ---------------------------------------------------------------------------


def test_each_caller_gets_its_own_results_in_its_own_order():
    model = RecordingModel()
    process = ModelProcess(model, batch_tokens=1000)
    callers = [[(f"c{c}-t{t}", 1 + (c * 7 + t * 3) % 11) for t in range(1 + c % 4)] for c in range(8)]
    ids = process.send_together(callers, in_server=8)
    answers = process.answers(len(callers))
    for request_id, texts in zip(ids, callers, strict=True):
        kind, results, passes = answers[request_id]
        assert kind == "done"
        assert results == [f"result of {text}" for text, _ in texts]
    # The count /health reports comes with each answer.
    assert max(passes for _, _, passes in answers.values()) == len(model.passes)
    process.close()


def test_requests_that_queue_during_a_pass_share_the_next_one():
    model = RecordingModel()
    process = ModelProcess(model, batch_tokens=1000)
    model.hold.clear()
    process.send([("first", 4)])
    assert model.inside.wait(GIVE_UP_S)
    # The model is inside the first pass: these six wait in the socket behind it.
    for i in range(6):
        process.send([(f"r{i}", 4)])
    model.hold.set()
    process.answers(7)
    assert [len(p) for p in model.passes] == [1, 6]
    assert sorted(model.passes[1]) == [f"r{i}" for i in range(6)]
    process.close()


def test_a_pass_never_exceeds_the_token_budget():
    model = RecordingModel()
    process = ModelProcess(model, batch_tokens=64)
    model.hold.clear()
    process.send([("first", 1)])
    assert model.inside.wait(GIVE_UP_S)
    callers = [[(f"c{c}-t{t}", 3 + (c * 5 + t) % 17) for t in range(5)] for c in range(6)]
    lengths = {text: n for texts in callers for text, n in texts}
    for texts in callers:
        process.send(texts)
    model.hold.set()
    process.answers(1 + len(callers))
    for items in model.passes[1:]:
        passed = [lengths[text] for text in items]
        assert len(passed) * max(passed) <= 64, passed
        assert passed == sorted(passed, reverse=True)
    process.close()


def test_a_lone_request_does_not_wait_for_company():
    # A wait of a minute: a lone request that waited for it would run into GIVE_UP_S.
    model = RecordingModel()
    process = ModelProcess(model, wait_ms=60_000)
    request_id = process.send([("alone", 5)], in_server=1)
    assert process.answers(1)[request_id][:2] == ("done", ["result of alone"])
    process.close()


def rounds(process: ModelProcess, clients: int, late: int) -> None:
    """`clients` requests at once, then again: all but `late` of them at once and the rest 0.2 s later,
    as clients that each wait for their answer come back (some sooner than others)."""
    process.send_together([[(f"first-{c}", 5)] for c in range(clients)], in_server=clients)
    process.answers(clients)
    process.send_together([[(f"again-{c}", 5)] for c in range(clients - late)], in_server=clients)
    time.sleep(0.2)
    process.send_together([[(f"again-{c}", 5)] for c in range(clients - late, clients)], in_server=clients)
    process.answers(clients)


def test_clients_that_come_back_in_step_share_one_pass():
    model = RecordingModel()
    process = ModelProcess(model, batch_tokens=1000, wait_ms=60_000)
    rounds(process, clients=4, late=2)
    assert [len(p) for p in model.passes] == [4, 4]
    process.close()


def test_without_the_wait_clients_that_come_back_apart_split_the_pass():
    # What the wait above prevents: the same load with wait_ms 0.
    model = RecordingModel()
    process = ModelProcess(model, batch_tokens=1000, wait_ms=0)
    rounds(process, clients=4, late=2)
    assert [len(p) for p in model.passes] == [4, 2, 2]
    process.close()


def test_the_wait_ends_when_a_pass_is_full():
    # Four clients expected, but two requests already fill a pass: no waiting for the other two.
    model = RecordingModel()
    process = ModelProcess(model, batch_tokens=20, wait_ms=60_000)
    process.send([("a", 10)], in_server=4)
    process.send([("b", 10)], in_server=4)
    process.answers(2)
    assert [sorted(p) for p in model.passes] == [["a", "b"]]
    process.close()


def test_once_the_crowd_has_gone_a_lone_request_waits_for_nobody(monkeypatch):
    monkeypatch.setattr(kca_batching, "PEAK_WINDOW_S", 0.05)
    model = RecordingModel()
    process = ModelProcess(model, batch_tokens=1000, wait_ms=60_000)
    process.send_together([[(f"crowd-{c}", 5)] for c in range(4)], in_server=4)
    process.answers(4)
    time.sleep(0.2)  # two windows: the four are forgotten
    # A wait of a minute: had the model's process waited for the four, this would run into GIVE_UP_S.
    request_id = process.send([("alone", 5)], in_server=1)
    assert process.answers(1)[request_id][:2] == ("done", ["result of alone"])
    process.close()


def test_a_failed_pass_fails_its_callers_and_the_model_goes_on():
    model = RecordingModel()
    model.fail_on = "poison"
    process = ModelProcess(model)
    failed = process.send([("poison", 5), ("fine", 5)])
    kind, why = process.answers(1)[failed]
    assert kind == "error"
    assert "the model failed" in why
    after = process.send([("next", 5)])
    assert process.answers(1)[after][:2] == ("done", ["result of next"])
    process.close()


# --- the HTTP process's bound ------------------------------------------------------------------------


class LaneModel(RecordingModel):
    """Records the thread each pass ran in; with a barrier, a pass waits inside for the others."""

    def __init__(self, side_by_side: int = 0):
        super().__init__()
        self.threads: list[str] = []
        self.started: list[str] = []
        self.barrier = threading.Barrier(side_by_side) if side_by_side else None

    def start_lane(self):
        self.started.append(threading.current_thread().name)

    def run_pass(self, items):
        self.threads.append(threading.current_thread().name)
        if self.barrier is not None:
            self.barrier.wait(GIVE_UP_S)  # broken (and the pass failed) unless the others are inside too
        return super().run_pass(items)


def test_lanes_run_passes_side_by_side_and_each_caller_still_gets_its_results_in_order():
    model = LaneModel(side_by_side=2)
    process = ModelProcess(model, batch_tokens=1000, lanes=2, start_lane=model.start_lane)
    callers = [[(f"c{c}-t{t}", 5) for t in range(3)] for c in range(4)]
    ids = process.send_together(callers, in_server=4)
    answers = process.answers(len(callers))
    for request_id, texts in zip(ids, callers, strict=True):
        assert answers[request_id][:2] == ("done", [f"result of {text}" for text, _ in texts])
    # One pass would have held all twelve texts; two lanes ran halves, at once (the barrier).
    assert sorted(len(p) for p in model.passes) == [6, 6]
    assert all(name.startswith("test-lane") for name in model.threads)
    assert sorted(model.started) == sorted(set(model.threads)) and len(model.started) == 2
    process.close()


def test_with_lanes_a_single_text_runs_on_every_thread_of_the_model_process():
    model = LaneModel()
    process = ModelProcess(model, lanes=2, start_lane=model.start_lane)
    process.send([("alone", 5)])
    assert process.answers(1)[0][:2] == ("done", ["result of alone"])
    assert model.threads == [process.thread.name]  # not a lane, whose torch has one thread
    process.close()


def test_a_failed_pass_in_one_lane_fails_only_its_callers():
    model = LaneModel()
    model.fail_on = "c1-t0"
    process = ModelProcess(model, batch_tokens=1000, lanes=2)
    # Two callers of equal texts: the lanes' halves are the two callers.
    ids = process.send_together([[(f"c{c}-t{t}", 5) for t in range(4)] for c in range(2)], in_server=2)
    answers = process.answers(2)
    assert answers[ids[0]][:2] == ("done", [f"result of c0-t{t}" for t in range(4)])
    assert answers[ids[1]][0] == "error" and "the model failed" in answers[ids[1]][1]
    process.send([("after", 5)])
    assert process.answers(1)[ids[1] + 1][0] == "done"
    process.close()


def test_a_full_bound_refuses_at_once_and_frees_places_however_requests_end():
    bound = RequestBound(2)
    first = bound.admit()
    with bound.admit(), pytest.raises(QueueFull, match="at most 2"):
        bound.admit()
    assert bound.admitted == 1, "the place of a request that ended (here: raised) is free"
    first.release()
    first.release()  # once only
    assert bound.admitted == 0
