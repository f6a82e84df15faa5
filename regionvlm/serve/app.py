"""The HTTP server: OpenAI-compatible routes, the web page, JSON errors.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models`` (both behind the API key when one is set),
``GET /health`` (status and batching counters), ``GET /`` (the page), ``GET /ui/config`` (what the page needs:
model name, task-shortcut questions, whether a key is required).

Built on the standard library's ``ThreadingHTTPServer``: one thread per connection parses and checks its
request, then hands it to the serving engine (`regionvlm.serve.engines`: the built-in one, whose single worker
thread owns the model, or the region front end for vLLM). ``"stream": true`` answers with server-sent events,
as OpenAI's API does (``chat.completion.chunk`` objects, then ``data: [DONE]``). Every refusal is a 4xx with an
OpenAI-shaped JSON error; an unexpected failure is a 500 with the same shape, never a dropped connection; a
failure after a stream has begun is an ``{"error": ...}`` event.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from regionvlm.io import dumps_json
from regionvlm.serve.engines import Answer, serving_for
from regionvlm.serve.validation import APIError, Limits, Question, parse_chat_request, parse_json

log = logging.getLogger("regionvlm.serve")
PAGE = Path(__file__).parent / "page.html"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# the page: its own inline script and style, calls to this origin only, never framed (clickjacking)
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src "
                                           "'unsafe-inline'; img-src data: blob:; connect-src 'self'; "
                                           "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
# page shortcut → registered prompt type (the evaluation phrasing, as RegionChat.classify / caption ask)
TASKS = {"classify": "region_classification", "brief caption": "brief_caption", "detailed caption": "detailed_caption"}


class RegionChatServer(ThreadingHTTPServer):
    """Serves one `RegionChat` on ``address`` through its engine (built-in, or vLLM after `RegionChat.use_vllm`);
    `close` stops the server and its worker (a vLLM child is the chat's: `RegionChat.close`)."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog (socketserver's 5 resets connections at 32 clients at once)

    def __init__(self, address: tuple[str, int], chat: Any, model_id: str, api_key: str | None = None,
                 limits: Limits | None = None, max_batch_size: int = 16, batch_wait_ms: float = 10.0,
                 max_in_flight: int = 64, request_timeout_s: float = 300.0, max_body_bytes: int = 32 << 20,
                 allowed_hosts: tuple[str, ...] = (), max_parsing: int = 4):
        """``allowed_hosts``: ``Host`` header names accepted besides the loopback ones (and the bound address);
        bound to every interface (``0.0.0.0``, ``::``) with none given, any ``Host`` is accepted.
        ``max_parsing``: requests decoding their images and masks at once (the rest wait their turn), which
        bounds the memory that request parsing takes."""
        super().__init__(address, Handler)  # binds first: a busy port fails before the worker starts
        self.chat, self.model_id, self.api_key = chat, model_id, api_key or None
        self.allowed_hosts = allowed_host_names(address[0], allowed_hosts)
        self.parsing = threading.BoundedSemaphore(max_parsing)
        self.limits = limits or Limits()
        self.request_timeout_s, self.max_body_bytes = request_timeout_s, max_body_bytes
        self.created = int(time.time())
        self.default_max_new_tokens = int(chat.generation.get("max_new_tokens") or 64)
        self.page = PAGE.read_bytes()
        self.tasks = task_questions(chat)
        self.serving = serving_for(chat, max_batch_size=max_batch_size, batch_wait_s=batch_wait_ms / 1000.0,
                                   max_in_flight=max_in_flight)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        """Stop serving (``serve_forever`` running in another thread), free the port, stop the worker."""
        self.shutdown()
        self.server_close()
        self.serving.close()

    # -- route bodies ------------------------------------------------------------------------------------
    def complete(self, data: dict) -> dict | Iterator[dict]:
        """A chat request's response: the completion, or (``stream: true``) an iterator of its chunks whose
        first item comes once the answer's first piece is there (a failure before it is still an HTTP error)."""
        if not self.parsing.acquire(timeout=self.request_timeout_s):
            raise APIError(503, "the server is busy decoding other requests; retry shortly", "server_error")
        try:
            question = parse_chat_request(data, self.model_id, self.limits, self.default_max_new_tokens)
        finally:
            self.parsing.release()
        if question.stream:
            chunks = self.chunks(question)
            return _prefetched(chunks, next(chunks))
        with self.serving.admit():
            self.serving.check(question)
            return completion_body(self.model_id, self.serving.answer(question, self.request_timeout_s))

    def chunks(self, question: Question) -> Iterator[dict]:
        with self.serving.admit():
            self.serving.check(question)
            head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": self.model_id}
            if question.include_usage:
                head["usage"] = None
            delta: dict = {"role": "assistant"}
            for piece in self.serving.stream(question, self.request_timeout_s):
                if piece.finish_reason is None:
                    yield {**head, "choices": [{"index": 0, "delta": {**delta, "content": piece.text},
                                                "finish_reason": None}]}
                    delta = {}
                    continue
                yield {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": piece.finish_reason}]}
            if question.include_usage:
                done = Answer("", question.prompt_tokens, question.completion_tokens, "")
                yield {**head, "choices": [], "usage": done.usage()}

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": self.created,
                                            "owned_by": "regionvlm"}]}

    def host_allowed(self, host: str | None) -> bool:
        """DNS rebinding: a page of another site that resolves its own name to 127.0.0.1 sends that name."""
        return self.allowed_hosts is None or host_name(host) in self.allowed_hosts

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a request's own handling (a client gone): one line, no traceback."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.info("%s: connection ended: %s", client_address[0], type(exc).__name__)
        else:
            super().handle_error(request, client_address)

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_id, **self.serving.snapshot()}

    def ui_config(self) -> dict:
        return {"model": self.model_id, "tasks": self.tasks, "auth_required": self.api_key is not None,
                "max_image_pixels": self.limits.max_image_pixels}


def allowed_host_names(bound: str, extra: tuple[str, ...] = ()) -> set[str] | None:
    """The ``Host`` names a server bound to ``bound`` answers: the loopback ones, the bound address and
    ``extra``; None (any) for a server bound to every interface with no ``extra`` named."""
    if bound in ("", "0.0.0.0", "::") and not extra:
        return None
    return {host_name(h) for h in (*LOOPBACK_NAMES, bound, *extra) if h}


def host_name(host: str | None) -> str:
    """A ``Host`` header's name: lower case, without its port or IPv6 brackets."""
    name = (host or "").strip().lower()
    if name.startswith("["):  # [::1]:8000
        return name[1:].split("]", 1)[0]
    return name.rsplit(":", 1)[0] if name.count(":") == 1 else name


def task_questions(chat: Any) -> dict[str, str]:
    """The page's shortcut questions in the export's own phrasing (``<image>`` is sent as an image part)."""
    out = {}
    for label, prompt_type in TASKS.items():
        try:
            out[label] = chat.task_question(prompt_type).replace("<image>", "").strip()
        except Exception as exc:  # an export without that prompt: the page just lacks the shortcut
            log.warning("no '%s' shortcut: %s", label, exc)
    return out


def completion_body(model_id: str, answer: Answer) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": answer.finish_reason}],
            "usage": answer.usage()}


def _prefetched(rest: Iterator[dict], first: dict) -> Iterator[dict]:
    yield first
    yield from rest


def escaped(text: str) -> str:
    """A client's text for the log: control characters (terminal escapes, fake newlines) escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class Handler(BaseHTTPRequestHandler):
    server: RegionChatServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may take to send its request (a stalled upload does not hold a thread)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), escaped(format % args))

    def handle_expect_100(self) -> bool:
        return True  # "100 Continue" is sent by read_body once the key and headers passed: a refusal comes first

    # -- plumbing ----------------------------------------------------------------------------------------
    def send_bytes(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, obj: dict) -> None:
        # backslashreplace: a lone surrogate echoed from the request (a model name) stays a JSON \ud800 escape
        self.send_bytes(status, dumps_json(obj).encode("utf-8", "backslashreplace"), "application/json")

    def send_events(self, events: Iterator[dict]) -> None:
        """Server-sent events in a chunked body: one ``data: JSON`` event per item, then ``data: [DONE]``; a
        failure midway is an ``{"error": ...}`` event (the status line is long sent). A client that leaves stops
        the answer (``events`` is closed)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write(data: str) -> None:
            raw = f"data: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
            self.wfile.flush()

        try:
            try:
                for event in events:
                    write(dumps_json(event))
            except APIError as exc:
                write(dumps_json(exc.body()))
            except Exception as exc:  # a bug midway: said as an error event, logged, the server goes on
                log.exception("internal error while streaming")
                write(dumps_json(APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").body()))
            write("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.info("%s left during a streamed answer", self.address_string())
            self.close_connection = True
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    def check_framing(self) -> None:
        """Refuse, on every route, what two HTTP parsers could frame differently (request smuggling): a
        Transfer-Encoding (RFC 9112 §6.1: with a Content-Length too, the framing is ambiguous), Content-Length
        twice. A GET's body is never read, so its connection is closed after the answer."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            raise APIError(400 if length is not None else 411,
                           "Transfer-Encoding is not accepted: send the body with a Content-Length",
                           "invalid_request_error")
        if len(self.headers.get_all("Content-Length") or ()) > 1:
            self.close_connection = True
            raise APIError(400, "Content-Length given more than once", "invalid_request_error")
        if self.command != "POST" and (length or "0").strip() != "0":
            self.close_connection = True  # the unread body must not be parsed as the next request

    def read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":  # a cross-origin page may POST text/plain without asking
            self.close_connection = True
            raise APIError(415, f"Content-Type must be application/json, got '{content_type or 'none'}'",
                           "invalid_request_error")
        if length is None or not (length.isascii() and length.isdigit()):
            self.close_connection = True
            raise APIError(411, "a Content-Length header is required", "invalid_request_error")
        if len(length) > 15 or int(length) > self.server.max_body_bytes:  # 15: int() refuses 4300 digits
            self.close_connection = True  # the unread body must not be parsed as the next request
            size = f"{length} bytes" if len(length) <= 15 else f"a {len(length)}-digit number of bytes"
            raise APIError(413, f"request body is {size}; the limit is {self.server.max_body_bytes} (--max-body-mb)",
                           "invalid_request_error")
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        try:
            body = self.rfile.read(int(length))
        except OSError:  # includes the socket timeout of a stalled upload
            body = b""
        if len(body) != int(length):
            self.close_connection = True
            raise APIError(408, f"request body ended after {len(body)} of {length} bytes", "invalid_request_error")
        return body

    def check_key(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        token = given[7:] if given.startswith("Bearer ") else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           "authentication_error")

    def dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            self.check_framing()
            if not self.server.host_allowed(self.headers.get("Host")):
                raise APIError(403, f"Host '{self.headers.get('Host')}' is not served here (serve --allowed-hosts)",
                               "invalid_request_error")
            if method == "POST" and path == "/v1/chat/completions":
                self.check_key()  # before the body is read: an unauthenticated client spends nothing here
                body = self.read_body()
                response = self.server.complete(parse_json(body))
                if isinstance(response, dict):
                    self.send_json(200, response)
                else:
                    self.send_events(response)
            elif method == "GET" and path == "/v1/models":
                self.check_key()
                self.send_json(200, self.server.models())
            elif method == "GET" and path == "/health":
                self.send_json(200, self.server.health())
            elif method == "GET" and path == "/ui/config":
                self.send_json(200, self.server.ui_config())
            elif method == "GET" and path in ("/", "/index.html"):
                self.send_bytes(200, self.server.page, "text/html; charset=utf-8", PAGE_HEADERS)
            elif path in ("/v1/chat/completions", "/v1/models", "/health", "/ui/config", "/"):
                raise APIError(405, f"{method} is not allowed on {path}", "invalid_request_error")
            else:
                raise APIError(404, f"no route {method} {path}", "invalid_request_error")
        except APIError as exc:
            self.close_connection = True  # a refused request's body may be unread: never parse it as the next one
            try:
                self.send_json(exc.status, exc.body())
            except (ConnectionError, TimeoutError):
                log.info("%s left before its %d", self.address_string(), exc.status)
        except (ConnectionError, TimeoutError) as exc:  # the client left (or stalled) while we answered
            self.close_connection = True
            log.info("%s left: %s", self.address_string(), type(exc).__name__)
        except Exception as exc:  # a bug: answer 500 in the API's shape and keep serving
            log.exception("internal error on %s %s", method, escaped(path))
            self.close_connection = True
            self.send_json(500, APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").body())

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.dispatch("POST")

    def do_OPTIONS(self) -> None:  # noqa: N802 (a CORS preflight: refused in JSON, no cross-origin use is granted)
        self.dispatch("OPTIONS")
