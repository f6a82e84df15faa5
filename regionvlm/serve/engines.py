"""How `serve` answers a checked question: the built-in engine, or the region front end for vLLM.

- `BuiltinServing`: the worker thread (`Batcher`) owns the model and answers batches of questions with one
  ``generate`` call each; a streamed answer runs alone on the worker, in turn.
- `VLLMServing`: the worker only runs the region front end (vision encoder → … → fusion: each question's
  prompt embeddings, batched, milliseconds); each request's own thread then sends its embeddings to vLLM and
  waits for (or streams) the answer, so any number of answers are generated at once, batched continuously by
  vLLM. Nothing here serialises generation.

Both check a question before it is queued, in the request's thread (`check`: its prompt is counted with a
tokenizer of that thread's own, so a huge prompt costs only its own request), and decode the generated ids
there too. Answers are `Answer`s; a stream yields `Piece`s whose texts add up to the answer.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from regionvlm.errors import DataError
from regionvlm.serve.batching import Batcher
from regionvlm.serve.validation import APIError, Question

log = logging.getLogger("regionvlm.serve")


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (the end token) or "length" (max_tokens reached)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class Piece:
    text: str
    finish_reason: str | None = None  # set on the last piece


class Processors:
    """Copies of the chat's processor, each with its own tokenizer, lent to request threads (the chat's own
    belongs to the worker thread). At most ``size`` copies are made, as threads need them."""

    def __init__(self, processor: Any, size: int = 4):
        self.processor, self.size, self.made = processor, size, 0
        self.free: queue.Queue = queue.Queue()
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        try:
            twin = self.free.get_nowait()
        except queue.Empty:
            with self.lock:
                make = self.made < self.size
                self.made += make
            twin = self.processor.copy() if make else self.free.get()
        try:
            yield twin
        finally:
            self.free.put(twin)


class Serving:
    """What both engines share: the pre-queue check, decoding, the in-flight limit and the worker."""

    name = "builtin"

    def __init__(self, chat: Any, max_batch_size: int = 16, batch_wait_s: float = 0.01, max_in_flight: int = 64):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be ≥ 1")
        self.chat, self.max_in_flight = chat, max_in_flight
        self.processors = Processors(chat.processor)
        self.in_flight, self.rejected = 0, 0
        self.lock = threading.Lock()
        self.batcher = Batcher(self.work, max_batch_size, batch_wait_s, group_key=self.group_key)

    # -- every request
    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of ``max_in_flight`` places for a request's whole life (queued, embedded, generated);
        beyond them a request gets 429 at once instead of a growing queue."""
        with self.lock:
            if self.in_flight >= self.max_in_flight:
                self.rejected += 1
                raise APIError(429, f"too many requests in flight (limit {self.max_in_flight}); retry shortly",
                               "rate_limit_error")
            self.in_flight += 1
        try:
            yield
        finally:
            with self.lock:
                self.in_flight -= 1

    def check(self, question: Question) -> dict:
        """The question as a raw sample, its prompt counted (too long for the context: 400, before queuing)."""
        sample = self.chat.sample(question.image, question.regions, question.prompt)
        with self.processors.borrow() as processor:
            try:
                question.prompt_tokens = processor.prompt_length(sample["conversations"], len(question.regions))
            except DataError as exc:
                raise APIError(400, str(exc), "invalid_request_error", "messages[0].content") from None
        question.sample = sample
        return sample

    def decode(self, ids: Any) -> list[str]:
        """`RegionProcessor.decode` with a tokenizer lent for the call (a stream holds none between tokens)."""
        with self.processors.borrow() as processor:
            return processor.decode(ids)

    def answer_from(self, question: Question, ids: list[int], finish_reason: str | None = None) -> Answer:
        text = self.decode([ids])[0]
        return Answer(text, question.prompt_tokens, len(ids), finish_reason or self.finish_reason(ids))

    def finish_reason(self, ids: list[int]) -> str:
        return "stop" if self.chat.is_end(ids) else "length"

    def pieces(self, question: Question, id_chunks: Iterator[list[int]],
               finish_reason: Any = lambda: None) -> Iterator[Piece]:
        """Text pieces of a streamed answer; the last carries ``finish_reason()`` (default: from the ids)."""
        seen: list[int] = []

        def counted():
            for chunk in id_chunks:
                seen.extend(chunk)
                yield chunk

        for text in self.chat.processor.stream_decode(counted(), decode=self.decode):
            yield Piece(text)
        question.completion_tokens = len(seen)
        yield Piece("", finish_reason() or self.finish_reason(seen))

    def snapshot(self) -> dict:
        with self.lock:
            limits = {"in_flight": self.in_flight, "rejected": self.rejected}
        return {"engine": self.name, **self.batcher.snapshot(), **limits}

    def close(self) -> None:
        self.batcher.stop()

    # -- the engine's own
    def group_key(self, question: Question) -> Any:
        return tuple(sorted(question.generation.items()))

    def work(self, questions: list[Question]) -> list:
        raise NotImplementedError

    def answer(self, question: Question, timeout: float) -> Answer:
        raise NotImplementedError

    def stream(self, question: Question, timeout: float) -> Iterator[Piece]:
        raise NotImplementedError


def _result(future: Any, timeout: float) -> Any:
    from concurrent.futures import TimeoutError as FutureTimeout

    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        raise APIError(504, f"no answer within {timeout:g} s (server overloaded?)", "server_error") from None


class BuiltinServing(Serving):
    """transformers' ``generate`` on the worker thread: concurrent questions share ``generate`` calls, streamed
    ones too (a streamer hands each step's ids of the whole batch over; each request thread takes its own)."""

    def group_key(self, question: Question) -> Any:
        return question.stream, tuple(sorted(question.generation.items()))

    def work(self, questions: list[Question]) -> list:
        samples = [q.sample for q in questions]
        if not questions[0].stream:
            return self.chat.generate_ids(samples, **questions[0].generation)
        # a failure midway is handed to each stream (their first pieces may be sent): never retried here
        try:
            for step in self.chat.stream_batch(samples, **questions[0].generation):
                for question, ids in zip(questions, step):
                    if ids:
                        question.sink.put(ids)
        except Exception as exc:
            if not isinstance(exc, DataError):
                log.error("streamed generation failed", exc_info=exc)
            for question in questions:
                question.sink.put(exc)
        for question in questions:
            question.sink.put(None)
        return [None] * len(questions)

    def answer(self, question: Question, timeout: float) -> Answer:
        return self.answer_from(question, _result(self.batcher.submit(question), timeout))

    def stream(self, question: Question, timeout: float) -> Iterator[Piece]:
        """The answer's ids as the worker hands them over. A client that leaves mid-answer does not stop its
        batch's generation (which ends at max_tokens at the latest)."""
        question.sink = queue.Queue()
        self.batcher.submit(question)

        def ids() -> Iterator[list[int]]:
            while True:
                try:
                    chunk = question.sink.get(timeout=timeout)
                except queue.Empty:
                    raise APIError(504, f"no next token within {timeout:g} s (server overloaded?)",
                                   "server_error") from None
                if chunk is None:
                    return
                if isinstance(chunk, DataError):
                    raise APIError(400, str(chunk), "invalid_request_error", "messages[0].content")
                if isinstance(chunk, Exception):
                    raise APIError(500, f"internal error: {type(chunk).__name__}: {chunk}", "server_error")
                yield chunk

        yield from self.pieces(question, ids())


class VLLMServing(Serving):
    """The region front end here (batched on the worker), the LLM in vLLM (each request its own connection)."""

    name = "vllm"

    def __init__(self, chat: Any, max_batch_size: int = 16, batch_wait_s: float = 0.01, max_in_flight: int = 64):
        super().__init__(chat, max_batch_size, batch_wait_s, max_in_flight)
        self.engine = chat.engine

    def group_key(self, question: Question) -> Any:
        return ()  # the front end does not depend on the decoding settings

    def work(self, questions: list[Question]) -> list:
        return self.chat.prompt_embeddings([q.sample for q in questions])

    def body(self, question: Question) -> dict:
        from regionvlm.vllm_engine import vllm_settings

        return vllm_settings(self.chat.settings(**question.generation))

    def answer(self, question: Question, timeout: float) -> Answer:
        embeds = _result(self.batcher.submit(question), timeout)
        with vllm_errors():
            done = self.engine.client.complete(embeds, **self.body(question))
        return self.answer_from(question, list(done.token_ids), done.finish_reason)

    def stream(self, question: Question, timeout: float) -> Iterator[Piece]:
        embeds = _result(self.batcher.submit(question), timeout)
        finish: list[str | None] = [None]

        def ids() -> Iterator[list[int]]:
            with vllm_errors():
                for delta in self.engine.client.stream(embeds, **self.body(question)):
                    finish[0] = delta.finish_reason or finish[0]
                    yield delta.token_ids

        yield from self.pieces(question, ids(), lambda: finish[0])

    def snapshot(self) -> dict:
        return {**super().snapshot(), "vllm": self.engine.client.url, "vllm_ready": self.engine.client.health(1.0)}


@contextlib.contextmanager
def vllm_errors() -> Iterator[None]:
    """vLLM's failures as the API's errors: 400 for a request vLLM refused, 503 when it is gone or broken."""
    from regionvlm.vllm_engine import VLLMError

    try:
        yield
    except VLLMError as exc:
        raise APIError(exc.status, str(exc), "invalid_request_error" if exc.status == 400 else "server_error",
                       getattr(exc, "param", None)) from None


def serving_for(chat: Any, **options: Any) -> Serving:
    """The serving engine of ``chat``'s generation engine (`RegionChat.use_vllm` switched it to vLLM)."""
    return (VLLMServing if chat.engine is not None else BuiltinServing)(chat, **options)
