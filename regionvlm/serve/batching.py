"""Dynamic batching: concurrent questions share `RegionChat.generate` calls.

Request threads `submit` checked questions to a queue; one worker thread owns the model. It takes the first
waiting question, then gathers more until the batch holds ``max_batch_size`` or ``batch_wait_s`` has passed,
and answers them with one ``generate`` call per distinct set of generation settings. Greedy decoding makes a
batched answer equal the same question answered alone (left padding is masked). Beyond ``max_in_flight``
questions (queued + being answered) `submit` refuses at once (HTTP 429) instead of letting the queue grow.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from regionvlm.errors import DataError
from regionvlm.serve.validation import APIError, Question

log = logging.getLogger("regionvlm.serve")


class Batcher:
    def __init__(self, chat: Any, max_batch_size: int = 16, batch_wait_s: float = 0.01, max_in_flight: int = 64,
                 finish: Callable[[Question, str], Any] | None = None):
        """``finish(question, answer)``, run on the worker thread, makes each future's result (default: the answer)."""
        if max_batch_size < 1 or max_in_flight < 1 or batch_wait_s < 0:
            raise ValueError("max_batch_size and max_in_flight must be ≥ 1, batch_wait_s ≥ 0")
        self.chat, self.max_batch_size, self.batch_wait_s = chat, max_batch_size, batch_wait_s
        self.max_in_flight, self.finish = max_in_flight, finish or (lambda question, answer: answer)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight = 0
        self.stats = {"requests": 0, "batches": 0, "generate_calls": 0, "largest_batch": 0, "rejected": 0}
        self._worker = threading.Thread(target=self._run, name="regionvlm-serve-model", daemon=True)
        self._stopping = False
        self._worker.start()

    # -- request side ------------------------------------------------------------------------------------
    def submit(self, question: Question) -> Future:
        """A future of the result (see ``finish``); `APIError` 429 when ``max_in_flight`` questions wait already."""
        with self._lock:
            if self._stopping:
                raise APIError(503, "server is shutting down", "server_error")
            if self._in_flight >= self.max_in_flight:
                self.stats["rejected"] += 1
                raise APIError(429, f"too many requests in flight (limit {self.max_in_flight}); retry shortly",
                               "rate_limit_error")
            self._in_flight += 1
            self.stats["requests"] += 1
        future: Future = Future()
        self._queue.put((question, future))
        return future

    def snapshot(self) -> dict:
        with self._lock:
            return {**self.stats, "in_flight": self._in_flight, "queued": self._queue.qsize()}

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stopping = True
        self._queue.put(None)
        self._worker.join(timeout)

    # -- worker side -------------------------------------------------------------------------------------
    def _gather(self, first: tuple) -> list[tuple]:
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:  # stop: answer what we hold, then leave
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._gather(first)
            groups: dict[tuple, list[tuple]] = {}
            for item in batch:
                groups.setdefault(tuple(sorted(item[0].generation.items())), []).append(item)
            with self._lock:
                self.stats["batches"] += 1
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            for group in groups.values():
                self._answer(group)

    def _answer(self, group: list[tuple]) -> None:
        try:
            answers = [self.finish(q, a) for (q, _), a in zip(group, self._generate([q for q, _ in group]))]
        except Exception as exc:
            if len(group) > 1:  # one question too long for the context, or a batch too big for the GPU's
                for item in group:  # memory: answer each alone, so only a question that fails alone fails
                    self._answer([item])
                return
            if isinstance(exc, DataError):  # e.g. the prompt does not fit the model's context length
                answers = [APIError(400, str(exc), "invalid_request_error", "messages[0].content")]
            else:  # a bug: fail this request with 500, keep the worker alive
                log.exception("generate failed")
                answers = [APIError(500, f"internal error while generating: {type(exc).__name__}: {exc}",
                                    "server_error")]
        for (_, future), answer in zip(group, answers):
            with self._lock:
                self._in_flight -= 1
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    def _generate(self, questions: list[Question]) -> list[str]:
        samples = [self.chat.sample(q.image, q.regions, q.prompt, str(i)) for i, q in enumerate(questions)]
        with self._lock:
            self.stats["generate_calls"] += 1
        return self.chat.generate(samples, **questions[0].generation)
