"""Batching across requests for the KCA model servers: a bounded queue and one worker per model.

Deployed beside bge_embedding_server.py and reranker_server.py and imported as `import kca_batching`.
Standard library only, so the queue logic is tested without a model.

How a request travels:

1. `admit()` when its body has been checked. It counts against `max_queued_requests` from here until
   its answer is ready; a request over the bound gets `QueueFull` at once (the server answers 503
   with Retry-After) and costs nothing more.
2. The request tokenizes its own texts (in the server's thread pool, beside the forward passes) and
   `submit()`s them: one item and its token count per text.
3. The worker thread takes whole requests from the front of the queue until they hold `batch_tokens`
   tokens (at least one request). When that falls short and other admitted requests are still
   tokenizing, it waits for them, at most `wait_ms` after it began gathering: a lone request never
   waits, so a single client's latency stays what it was.
4. The gathered texts are sorted by length, longest first, and cut into forward passes of at most
   `batch_tokens` padded tokens (a single longer text runs alone). Sorting keeps padding small.
5. Each request's results go back to it in its own order as soon as its last text is done.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("kca_batching")

# run_pass(items) -> one result per item, in the same order. Called on the worker thread only.
RunPass = Callable[[list[Any]], Sequence[Any]]


class QueueFull(Exception):
    """More requests are admitted than max_queued_requests: answer 503 and let the client retry."""


@dataclass
class _Request:
    items: list[Any]
    lengths: list[int]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    failed: bool = False

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


def plan_passes(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indexes into `lengths`, longest first, cut so that each pass holds at most batch_tokens
    padded tokens (pass size x its longest text); a text longer than batch_tokens runs alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    passes: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first, so the pass's first text sets its padded length.
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1) * longest > batch_tokens:
            passes.append(current)
            current = []
        current.append(index)
    if current:
        passes.append(current)
    return passes


class Batcher:
    """One model's request queue and the worker thread that runs its forward passes."""

    def __init__(
        self,
        run_pass: RunPass,
        *,
        batch_tokens: int,
        wait_ms: float,
        max_queued_requests: int,
        name: str = "model",
    ):
        self._run_pass = run_pass
        self.batch_tokens = batch_tokens
        self._wait_s = wait_ms / 1000
        self.max_queued_requests = max_queued_requests
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._queued_tokens = 0
        self._admitted = 0  # admitted and not yet answered: the bound applies to this
        self._arriving = 0  # admitted and not yet submitted (reading, tokenizing)
        self._thread: threading.Thread | None = None
        # Figures for /health and the benchmark: forward passes run, texts embedded or scored, and
        # requests answered (each with all its texts; the counts only grow).
        self.passes = 0
        self.texts = 0
        self.answered = 0

    # --- the request side (event loop) ----------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"batcher-{self._name}", daemon=True)
            self._thread.start()

    def admit(self) -> Admission:
        """Count one request against the bound, or raise QueueFull without waiting."""
        with self._cond:
            if self._admitted >= self.max_queued_requests:
                raise QueueFull(f"{self._admitted} requests are queued; at most {self.max_queued_requests}")
            self._admitted += 1
            self._arriving += 1
        return Admission(self)

    @property
    def admitted(self) -> int:
        return self._admitted

    def _release(self, submitted: bool) -> None:
        with self._cond:
            self._admitted -= 1
            if not submitted:
                self._arriving -= 1
                self._cond.notify_all()  # the worker may be waiting for this one

    async def _submit(self, items: list[Any], lengths: list[int]) -> list[Any]:
        loop = asyncio.get_running_loop()
        request = _Request(items, list(lengths), loop, loop.create_future(), [None] * len(items), len(items))
        with self._cond:
            self._arriving -= 1
            self._queue.append(request)
            self._queued_tokens += request.tokens
            self._cond.notify_all()
        return await request.future

    # --- the worker -------------------------------------------------------------------------------

    def _gather(self) -> list[_Request]:
        """Block until a request is queued; take requests up to batch_tokens (see the module doc)."""
        with self._cond:
            while not self._queue:
                self._cond.wait()
            deadline = time.monotonic() + self._wait_s
            while self._queued_tokens < self.batch_tokens and self._arriving > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken = [self._queue.popleft()]
            tokens = taken[0].tokens
            while self._queue and tokens + self._queue[0].tokens <= self.batch_tokens:
                tokens += self._queue[0].tokens
                taken.append(self._queue.popleft())
            self._queued_tokens -= tokens
        # A client that went away (its future cancelled) costs no forward pass.
        return [r for r in taken if not r.future.done()]

    def _work(self) -> None:
        while True:
            requests = self._gather()
            if requests:
                self._run(requests)

    def _run(self, requests: list[_Request]) -> None:
        owners = [(r, i) for r in requests for i in range(len(r.items))]
        lengths = [r.lengths[i] for r, i in owners]
        for indexes in plan_passes(lengths, self.batch_tokens):
            members = [owners[k] for k in indexes]
            members = [(r, i) for r, i in members if not r.failed]
            if not members:
                continue
            try:
                outputs = self._run_pass([r.items[i] for r, i in members])
                if len(outputs) != len(members):
                    raise RuntimeError(f"run_pass returned {len(outputs)} results for {len(members)} items")
            except Exception as exc:  # noqa: BLE001 - the callers get the error; the worker lives on
                log.exception("%s: forward pass of %d texts failed", self._name, len(members))
                for r in {id(r): r for r, _ in members}.values():
                    r.failed = True
                    r.loop.call_soon_threadsafe(_settle, r.future, None, exc)
                continue
            self.passes += 1
            self.texts += len(members)
            for (r, i), output in zip(members, outputs, strict=True):
                r.results[i] = output
                r.remaining -= 1
                if r.remaining == 0:
                    self.answered += 1
                    r.loop.call_soon_threadsafe(_settle, r.future, r.results, None)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    """Runs on the request's event loop; a cancelled request (client gone) is left alone."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Admission:
    """One admitted request: `await run(items, lengths)` once, then its place in the bound is freed.

    Used as a context manager so that a request refused after admission (a 400 on its token count,
    a client gone) frees its place too.
    """

    def __init__(self, batcher: Batcher):
        self._batcher = batcher
        self._submitted = False
        self._released = False

    async def run(self, items: list[Any], lengths: list[int]) -> list[Any]:
        if self._submitted:
            raise RuntimeError("an admission runs once")
        if not items or len(items) != len(lengths):
            raise ValueError("at least one item, and one length per item")
        self._submitted = True
        return await self._batcher._submit(items, lengths)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._batcher._release(self._submitted)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
