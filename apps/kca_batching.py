"""Batching across requests for the KCA model servers: the bound on requests, and the model's own loop.

Deployed beside bge_embedding_server.py and reranker_server.py and imported as `import kca_batching`.
Standard library only, so the batching is tested without a model.

A server is two processes joined by a socket (kca_service_common.py). The HTTP process admits each
request against `max_queued_requests` (`RequestBound`), reads and tokenizes it, and sends it to the
model's process as one message. The model's process runs `Batcher.serve()`: it gathers the requests
that have arrived into forward passes, runs them, and sends each request's results back
as soon as they are done. Batching lives beside the model so that the device never waits for the
HTTP process: the moment a pass ends, the next one is cut from whatever the socket holds. (When the
HTTP process did the batching, each pass began only once the event loop had got round to it, behind
the answers and requests it was busy with; on a GPU, where a pass of short texts takes 15 ms, that
was a third of a pass.)

How the model's process gathers (`Batcher.serve`):

1. It waits for a request, then takes whole requests in arrival order until they hold `batch_tokens`
   tokens (at least one request).
2. When that falls short, it waits, at most `wait_ms` from when it began gathering, for as many
   requests as were in the server at once in the last second or two (`expected()`; each request
   says how many the HTTP process held as it was sent). A lone client never waits. Clients that
   each wait for their answer come back in step: without the wait, 16 of them split into two groups
   whose passes alternate (each group sends while the other's pass runs), and on a GPU, where a
   pass of 8 short texts costs what a pass of 16 does, each client then waits two passes a turn.
   A few milliseconds for the group whose answers just went out makes one pass.
3. The gathered texts are sorted by length, longest first, and cut into forward passes of at most
   `batch_tokens` padded tokens (a single longer text runs alone). Sorting keeps padding small.
4. With one lane (a GPU), the passes run one after another. With several (a CPU: one per thread of
   the forward pass), the texts are cut into whole rounds of passes, as small as the rounds allow,
   and a round's passes run side by side, each on one thread; a single text runs alone on all of
   them. The next gathering begins when the round has ended.
5. Each request's results go back in its own order as soon as its last text is done.

The messages (one pickle each, behind an 8-byte length):
    HTTP -> model   ("run", request id, items, token counts, requests in the server)
    model -> HTTP   ("ready", what the model's load returned) or ("failed", why), once, first;
                    then ("done", request id, results, passes so far) or ("error", request id, why)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import pickle
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kca_batching")

# How far back the model's process looks for the most requests in the server at once (step 2).
PEAK_WINDOW_S = 1.0

MESSAGE_HEADER = struct.Struct("!Q")


# --- messages --------------------------------------------------------------------------------------


def send_message(sock: socket.socket, value: Any) -> None:
    """Blocking: the model's process side."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    header = MESSAGE_HEADER.pack(len(data))
    if len(data) < 65536:
        sock.sendall(header + data)  # one system call
    else:
        sock.sendall(header)  # large: not copied into one buffer with its header
        sock.sendall(data)


def receive_message(sock: socket.socket) -> Any:
    """Blocking: the model's process side. EOFError when the other end closed the socket."""

    def exactly(size: int) -> bytearray:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            count = sock.recv_into(view[got:])
            if count == 0:
                raise EOFError
            got += count
        return buffer

    (size,) = MESSAGE_HEADER.unpack(exactly(MESSAGE_HEADER.size))
    return pickle.loads(exactly(size))


def write_message(writer: asyncio.StreamWriter, value: Any) -> None:
    """The HTTP process side: queued on the event loop's transport, never blocking it."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(MESSAGE_HEADER.pack(len(data)))
    writer.write(data)


async def read_message(reader: asyncio.StreamReader) -> Any:
    """The HTTP process side; asyncio.IncompleteReadError when the model's process is gone."""
    (size,) = MESSAGE_HEADER.unpack(await reader.readexactly(MESSAGE_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


# --- the HTTP process: how many requests are in the server -------------------------------------------


class QueueFull(Exception):
    """More requests are admitted than max_queued_requests: answer 503 and let the client retry."""


class RequestBound:
    """Requests admitted and not yet answered, from the moment each arrives (so that the bodies in
    memory are bounded too); one over the bound is refused at once and costs nothing more."""

    def __init__(self, max_queued_requests: int):
        self.max_queued_requests = max_queued_requests
        self.admitted = 0

    def admit(self) -> Admission:
        if self.admitted >= self.max_queued_requests:
            raise QueueFull(f"{self.admitted} requests are queued; at most {self.max_queued_requests}")
        self.admitted += 1
        return Admission(self)


class Admission:
    """One admitted request's place, freed however the request ends (use it as a context manager)."""

    def __init__(self, bound: RequestBound):
        self._bound = bound
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._bound.admitted -= 1

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


# --- the model's process: gathering and passes -----------------------------------------------------


def plan_passes(lengths: Sequence[int], batch_tokens: int, lanes: int = 1) -> list[list[int]]:
    """Indexes into `lengths`, longest first, cut so that each pass holds at most batch_tokens
    padded tokens (pass size x its longest text); a text longer than batch_tokens runs alone.

    With lanes (passes run side by side), the same number of passes rounded up to whole rounds of
    lanes, each as small as that allows: the passes of a round end together, and no lane waits
    long for the others before the next gathering."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    passes = _pack(order, lengths, batch_tokens)
    if lanes <= 1:
        return passes
    rounds = -(-len(passes) // lanes) * lanes
    # The least padded tokens a pass needs for the texts to fit in `rounds` passes (fewer tokens a
    # pass never makes fewer passes): a binary search between one token and batch_tokens.
    low, high = 1, batch_tokens
    while low < high:
        middle = (low + high) // 2
        if len(_pack(order, lengths, middle)) <= rounds:
            high = middle
        else:
            low = middle + 1
    return _pack(order, lengths, low)


def _pack(order: list[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Texts in `order` (longest first) into passes of at most budget padded tokens, in turn."""
    passes: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first, so the pass's first text sets its padded length.
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1) * longest > budget:
            passes.append(current)
            current = []
        current.append(index)
    if current:
        passes.append(current)
    return passes


# run_pass(items) -> one result per item, in the same order.
RunPass = Callable[[list[Any]], Sequence[Any]]


@dataclass
class _Request:
    sock: socket.socket  # where its answer goes
    request_id: int
    items: list[Any]
    lengths: list[int]
    results: list[Any]
    remaining: int
    failed: bool = False

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


class Batcher:
    """The model's process: requests from the HTTP process gathered into passes (see the module doc)."""

    def __init__(
        self,
        run_pass: RunPass,
        *,
        batch_tokens: int,
        wait_ms: float,
        name: str = "model",
        lanes: int = 1,
        start_lane: Callable[[], None] | None = None,
    ):
        self._run_pass = run_pass
        self.batch_tokens = batch_tokens
        # Passes that run side by side (step 4), each in a thread that began with start_lane().
        self.lanes = lanes
        self._lane_pool = (
            concurrent.futures.ThreadPoolExecutor(lanes, thread_name_prefix=f"{name}-lane", initializer=start_lane)
            if lanes > 1
            else None
        )
        self._wait_s = wait_ms / 1000
        self._name = name
        self._queue: deque[_Request] = deque()
        self._queued_tokens = 0
        self._selector = selectors.DefaultSelector()
        self._open = 0
        # The most requests in the server at once, in this window and in the one before it (step 2).
        self._peak = 0
        self._peak_before = 0
        self._peak_since = 0.0
        self.passes = 0

    def serve(self, sock: socket.socket) -> None:
        """Gather and run passes for the requests arriving on sock until it closes."""
        sock.setblocking(True)
        self._selector.register(sock, selectors.EVENT_READ)
        self._open += 1
        while self._open:
            self._gather_and_run()

    # --- gathering ---

    def _note_peak(self, in_server: int) -> None:
        now = time.monotonic()
        if now - self._peak_since > PEAK_WINDOW_S:
            # A new window: the one that ended counts only if it was the one just before.
            self._peak_before = self._peak if now - self._peak_since <= 2 * PEAK_WINDOW_S else 0
            self._peak, self._peak_since = 0, now
        self._peak = max(self._peak, in_server)

    def expected(self) -> int:
        """Requests to wait for: the most in the server at once lately."""
        self._note_peak(0)
        return max(self._peak, self._peak_before)

    def _receive(self, timeout: float | None) -> None:
        """Take in every message that has arrived, waiting up to timeout (None: forever) for the first."""
        while self._open:
            ready = self._selector.select(timeout)
            if not ready:
                return
            for key, _ in ready:
                sock = key.fileobj
                try:
                    message = receive_message(sock)
                except (EOFError, OSError):
                    self._selector.unregister(sock)
                    self._open -= 1
                    continue
                self._take(sock, message)
            timeout = 0  # then only what is there already

    def _take(self, sock: socket.socket, message: tuple) -> None:
        kind, request_id, items, lengths, in_server = message
        if kind != "run" or not items or len(items) != len(lengths):
            raise ValueError(f"{self._name}: not a request: {kind!r} with {len(items)} items, {len(lengths)} lengths")
        self._queue.append(_Request(sock, request_id, items, list(lengths), [None] * len(items), len(items)))
        self._queued_tokens += sum(lengths)
        self._note_peak(in_server)

    def _gather_and_run(self) -> None:
        self._receive(None if not self._queue else 0)
        if not self._queue:
            return
        deadline = time.monotonic() + self._wait_s
        while self._queued_tokens < self.batch_tokens and len(self._queue) < self.expected():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._receive(left)
        taken = [self._queue.popleft()]
        tokens = taken[0].tokens
        while self._queue and tokens + self._queue[0].tokens <= self.batch_tokens:
            tokens += self._queue[0].tokens
            taken.append(self._queue.popleft())
        self._queued_tokens -= tokens
        self._run(taken)

    # --- passes ---

    def _run(self, requests: list[_Request]) -> None:
        owners = [(r, i) for r in requests for i in range(len(r.items))]
        lengths = [r.lengths[i] for r, i in owners]
        if self._lane_pool is None or len(owners) == 1:
            # One lane, or one text (which no lane would run faster): here, on all of the forward
            # pass's threads, one pass after another.
            for indexes in plan_passes(lengths, self.batch_tokens):
                members = [owners[k] for k in indexes if not owners[k][0].failed]
                if members:
                    self._finish(members, self._try_pass(members))
            return
        passes = [[owners[k] for k in indexes] for indexes in plan_passes(lengths, self.batch_tokens, self.lanes)]
        running = {self._lane_pool.submit(self._try_pass, members): members for members in passes}
        for done in concurrent.futures.as_completed(running):
            self._finish(running[done], done.result())

    def _try_pass(self, members: list[tuple[_Request, int]]) -> tuple[Sequence[Any], str | None]:
        """The pass's outputs, one per member; or none, and why the pass failed."""
        try:
            outputs = self._run_pass([r.items[i] for r, i in members])
            if len(outputs) != len(members):
                raise RuntimeError(f"run_pass returned {len(outputs)} results for {len(members)} items")
            return outputs, None
        except Exception as exc:  # noqa: BLE001 - the callers get the error; the process lives on
            log.exception("%s: forward pass of %d texts failed", self._name, len(members))
            return (), f"forward pass failed: {type(exc).__name__}: {exc}"

    def _finish(self, members: list[tuple[_Request, int]], tried: tuple[Sequence[Any], str | None]) -> None:
        """Hand a pass's outputs to their requests; answer each request whose last text this was."""
        outputs, failure = tried
        if failure is not None:
            for r in {id(r): r for r, _ in members}.values():
                if not r.failed:
                    r.failed = True
                    self._answer(r, ("error", r.request_id, failure))
            return
        self.passes += 1
        for (r, i), output in zip(members, outputs, strict=True):
            if r.failed:
                continue
            r.results[i] = output
            r.remaining -= 1
            if r.remaining == 0:
                self._answer(r, ("done", r.request_id, r.results, self.passes))

    def _answer(self, request: _Request, message: tuple) -> None:
        with contextlib.suppress(OSError):  # the HTTP process is gone; _receive sees the socket close
            send_message(request.sock, message)
