"""Dynamic batching: concurrent questions share one call of the model on its single worker thread.

Request threads `submit` checked questions; one worker thread owns the model. It takes the first waiting
question, then gathers more until the batch holds ``max_batch_size`` or ``batch_wait_s`` has passed, and runs
``work(questions)`` once per group of questions with the same ``group_key`` (the built-in engine: one
``generate`` call per set of generation settings; the vLLM engine: one pass of the region front end, whatever
the settings).
(The limit on requests in flight is the serving engine's, `regionvlm.serve.engines.Serving.admit`:
it covers a request's whole life.)

A group whose call fails is split in halves and each half retried, so one bad question costs about
2·log2(batch) extra calls, not one call per question of its batch, and only the question that fails alone fails.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Any

from regionvlm.errors import DataError
from regionvlm.serve.validation import APIError, Question

log = logging.getLogger("regionvlm.serve")


class Batcher:
    def __init__(self, work: Callable[[list[Question]], Sequence[Any]], max_batch_size: int = 16,
                 batch_wait_s: float = 0.01,
                 group_key: Callable[[Question], Hashable] = lambda question: ()):
        """``work(questions)``, run on the worker thread, gives one result per question, in order."""
        if max_batch_size < 1 or batch_wait_s < 0:
            raise ValueError("max_batch_size must be ≥ 1, batch_wait_s ≥ 0")
        self.work, self.group_key = work, group_key
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self._waiting: collections.deque = collections.deque()  # (question, future)
        self._ready = threading.Condition()
        self._stopping = False
        self.stats = {"requests": 0, "batches": 0, "model_calls": 0, "largest_batch": 0}
        self._worker = threading.Thread(target=self._run, name="regionvlm-serve-model", daemon=True)
        self._worker.start()

    # -- request side ------------------------------------------------------------------------------------
    def submit(self, question: Question) -> Future:
        """A future of ``work``'s result for ``question``."""
        future: Future = Future()
        with self._ready:
            if self._stopping:
                raise APIError(503, "server is shutting down", "server_error")
            self.stats["requests"] += 1
            self._waiting.append((question, future))
            self._ready.notify()
        return future

    def snapshot(self) -> dict:
        with self._ready:
            return {**self.stats, "queued": len(self._waiting)}

    def stop(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then end the worker."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self._worker.join(timeout)

    # -- worker side -------------------------------------------------------------------------------------
    def _next(self) -> list[tuple] | None:
        """The next batch: the first waiting question and those that arrive within ``batch_wait_s``."""
        with self._ready:
            while not self._waiting:
                if self._stopping:
                    return None
                self._ready.wait()
            batch = [self._waiting.popleft()]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                if self._waiting:
                    batch.append(self._waiting.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    break
                self._ready.wait(left)
            return batch

    def _run(self) -> None:
        while (batch := self._next()) is not None:
            groups: dict[Hashable, list[tuple]] = {}
            for item in batch:
                groups.setdefault(self.group_key(item[0]), []).append(item)
            with self._ready:
                self.stats["batches"] += 1
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            for group in groups.values():
                self._answer(group)

    def _answer(self, group: list[tuple]) -> None:
        with self._ready:
            self.stats["model_calls"] += 1
        try:
            results = list(self.work([q for q, _ in group]))
            if len(results) != len(group):
                raise RuntimeError(f"work gave {len(results)} results for {len(group)} questions")
            failure = None
        except Exception as exc:
            failure = exc
        if failure is not None and len(group) > 1:  # find the question that fails alone (or fit the memory)
            half = len(group) // 2
            self._answer(group[:half])
            self._answer(group[half:])
            return
        if isinstance(failure, DataError):  # a question the checks before queuing could not see
            results = [APIError(400, str(failure), "invalid_request_error", "messages[0].content")]
        elif failure is not None:  # a bug: fail this request with 500, keep the worker alive
            log.error("the model failed", exc_info=failure)
            results = [APIError(500, f"internal error: {type(failure).__name__}: {failure}", "server_error")]
        self._settle([f for _, f in group], results)

    def _settle(self, futures: list[Future], results: list[Any]) -> None:
        for future, result in zip(futures, results):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
