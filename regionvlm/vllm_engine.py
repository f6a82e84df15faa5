"""vLLM as regionvlm's generation engine at scale: a client for a vLLM OpenAI server that takes prompt embeddings,
and a manager that runs ``vllm serve`` as a child process.

The region front end (vision encoder → refiner → region extractor → projector → fusion) computes each request's
input embeddings (L×D: the LLM's token embeddings with the image and region features spliced in); vLLM runs only
the LLM, from the export's plain transformers folder (`regionvlm.llm_folder`), and batches the requests it gets
concurrently (continuous batching). Nothing here imports vLLM: it lives in its own Python environment (``make
vllm`` creates ``.venv-vllm``: it pins its own torch and transformers), reached over HTTP.

The wire format, from vLLM 0.32's source (``vllm/entrypoints/openai/completion/protocol.py``:
``CompletionRequest.prompt_embeds: bytes | list[bytes]``; decoded by ``vllm/renderers/embed_utils.py``:
``safe_load_prompt_embeds``): ``POST /v1/completions`` with ``prompt_embeds`` = standard base64 (checked with
``validate=True``) of the bytes of ``torch.save(tensor)``, loaded with ``torch.load(weights_only=True,
map_location="cpu")``; a 2-D ``num_tokens × hidden_size`` tensor (3-D with a leading 1 is squeezed), of any
floating dtype (cast to the served dtype); the hidden size must be the model's. The server must run with
``--enable-prompt-embeds``. ``return_token_ids: true`` adds the generated ids to each choice.

Errors are `VLLMError` (a `UserError`: one line, CLI exit 2), with ``status``, the HTTP status a front end
answers its own client with: `VLLMUnavailable` (not installed, not reachable, died or timed out, connection lost
mid-answer: 503) and `VLLMRequestError` (vLLM refused the request: 400 when vLLM said 400, e.g. a prompt longer
than the context; 503 otherwise, e.g. a wrong API key, which is the operator's problem, not the client's).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from regionvlm.errors import UserError

#: environment variable naming the Python of the vLLM environment
PYTHON_ENV = "REGIONVLM_VLLM_PYTHON"
VENV_NAME = ".venv-vllm"
DEFAULT_MODEL_NAME = "regionvlm"


class VLLMError(UserError):
    """vLLM could not answer. ``status``: the HTTP status for a front end's own client (400 or 503)."""

    status = 503


class VLLMUnavailable(VLLMError):
    """vLLM is not installed, not reachable, died, or lost the connection mid-answer."""


class VLLMRequestError(VLLMError):
    """vLLM answered with an HTTP error. ``http_status`` is vLLM's status, ``param`` the field it named."""

    def __init__(self, message: str, http_status: int, param: str | None = None):
        super().__init__(message)
        self.http_status, self.param = int(http_status), param
        self.status = 400 if self.http_status == 400 else 503


# -- prompt embeddings on the wire -------------------------------------------------------------------------------
def encode_prompt_embeds(embeds: Any) -> str:
    """An L×D float tensor as vLLM's ``prompt_embeds`` value: base64 of its ``torch.save`` bytes. The tensor is
    copied first, so a view into a larger batch tensor sends its own L×D elements, not the whole storage."""
    import torch

    if not isinstance(embeds, torch.Tensor):
        raise TypeError(f"prompt embeddings: expected a torch.Tensor, got {type(embeds).__name__}")
    if embeds.dim() != 2 or not embeds.is_floating_point() or embeds.shape[0] == 0:
        raise ValueError(f"prompt embeddings: expected a non-empty L×D float tensor, got shape "
                         f"{tuple(embeds.shape)} of {embeds.dtype}")
    buf = io.BytesIO()
    torch.save(embeds.detach().to("cpu", copy=True).contiguous(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# -- results -----------------------------------------------------------------------------------------------------
@dataclass
class Completion:
    """One answer: ``text`` as vLLM detokenised it, the generated ``token_ids`` (decode them with the export's
    tokenizer for text exactly like the built-in engine's), ``finish_reason`` ("stop" | "length")."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Delta:
    """A piece of a streamed answer; the last one has ``finish_reason`` set (and may have no text)."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


def sampling_body(max_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                  ignore_eos: bool = False, stop_token_ids: Sequence[int] | None = None,
                  extra: dict | None = None) -> dict:
    """The completion request's decoding fields. ``temperature: 0`` is greedy (top_p then has no effect);
    ``ignore_eos`` makes every answer run to ``max_tokens`` (benchmarks); ``extra`` passes other vLLM fields."""
    if int(max_tokens) < 1:
        raise ValueError(f"max_tokens: expected a positive number, got {max_tokens!r}")
    body: dict[str, Any] = {"max_tokens": int(max_tokens), "temperature": float(temperature), "top_p": float(top_p)}
    if seed is not None:
        body["seed"] = int(seed)
    if ignore_eos:
        body["ignore_eos"] = True
    if stop_token_ids:
        body["stop_token_ids"] = [int(t) for t in stop_token_ids]
    body.update(extra or {})
    return body


# -- the client --------------------------------------------------------------------------------------------------
class VLLMClient:
    """A vLLM OpenAI server's completions with prompt embeddings, over the standard library's ``http.client``.

    ``base_url``: ``http://host:port`` (a trailing ``/v1`` is accepted); ``api_key``: sent as ``Authorization:
    Bearer KEY`` (vLLM's ``--api-key``); ``model``: the served model's id (default: the first of
    ``/v1/models``, asked once); ``timeout``: seconds without a byte from the server before a request fails
    (a non-streamed answer sends nothing until it is complete, so this bounds the whole answer);
    ``max_concurrency``: requests `complete_many` keeps in flight (vLLM batches them continuously).
    Thread-safe: each request opens its own connection.
    """

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0, max_concurrency: int = 64):
        parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise VLLMUnavailable(f"--vllm-url: expected http://HOST:PORT, got '{base_url}'")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/").removesuffix("/v1")
        self.url = f"{self.scheme}://{parts.netloc}{self.prefix}"
        self.api_key, self.timeout, self.max_concurrency = api_key, float(timeout), int(max_concurrency)
        self._model = model
        self._lock = threading.Lock()

    # -- plumbing
    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)

    def _request(self, method: str, path: str, body: dict | None = None,
                 timeout: float | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; an HTTP error status raises `VLLMRequestError`; the caller reads and closes."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        conn = self._connection(self.timeout if timeout is None else timeout)
        try:
            conn.request(method, self.prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
        except BaseException as exc:
            conn.close()
            raise self._unavailable(exc) from None
        if resp.status >= 400:
            try:
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                raw = b""
            finally:
                conn.close()
            raise self._http_error(resp.status, raw)
        return conn, resp

    def _unavailable(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, (OSError, http.client.HTTPException)):
            return exc  # KeyboardInterrupt and bugs pass through unchanged
        if isinstance(exc, ConnectionRefusedError):
            why = "connection refused (is it running? check --vllm-url)"
        elif isinstance(exc, (TimeoutError, socket.timeout)):
            why = f"no answer within {self.timeout:g} s"
        elif isinstance(exc, socket.gaierror):
            why = f"unknown host '{self.host}'"
        elif isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionResetError,
                              BrokenPipeError)):
            why = "the connection was closed mid-answer (did vLLM crash? see its log)"
        else:
            why = str(exc).strip() or type(exc).__name__
        return VLLMUnavailable(f"vLLM at {self.url}: {why}")

    def _http_error(self, status: int, raw: bytes) -> VLLMRequestError:
        message, param = raw.decode("utf-8", "replace").strip(), None
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            err = json.loads(message)
            err = err.get("error", err)
            message = str(err.get("message") or err.get("detail") or message)
            param = err.get("param")
        if status == 401:
            message = "unauthorized: wrong or missing API key (--vllm-api-key)"
        message = " ".join(message.split())[:500] or http.client.responses.get(status, "error")
        return VLLMRequestError(f"vLLM at {self.url}: HTTP {status}: {message}", status, param)

    def _json(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> Any:
        conn, resp = self._request(method, path, body, timeout)
        try:
            raw = resp.read()
        except BaseException as exc:
            raise self._unavailable(exc) from None
        finally:
            conn.close()
        try:
            return json.loads(raw)
        except ValueError:
            raise VLLMUnavailable(f"vLLM at {self.url}{path}: the answer is not JSON "
                                  f"({raw[:80].decode('utf-8', 'replace')!r}); is this a vLLM server?") from None

    # -- server state
    def health(self, timeout: float = 5.0) -> bool:
        """Whether ``GET /health`` answers 200 (vLLM answers it once the engine is ready)."""
        try:
            conn, resp = self._request("GET", "/health", timeout=timeout)
        except VLLMError:
            return False
        with contextlib.closing(conn):
            resp.read()
        return True

    def models(self) -> list[str]:
        """The ids ``/v1/models`` lists (raises `VLLMError` when vLLM is not there)."""
        data = self._json("GET", "/v1/models", timeout=min(self.timeout, 30.0))
        try:
            return [str(m["id"]) for m in data["data"]]
        except (KeyError, TypeError):
            raise VLLMUnavailable(f"vLLM at {self.url}/v1/models: unexpected answer; is this a vLLM server?") \
                from None

    @property
    def model(self) -> str:
        """The model id requests name: the one given, else the server's first."""
        with self._lock:
            if self._model is None:
                names = self.models()
                if not names:
                    raise VLLMUnavailable(f"vLLM at {self.url}: serves no model")
                self._model = names[0]
            return self._model

    def check(self) -> list[str]:
        """Fail now, with a one-line `VLLMError`, unless the server answers and serves ``model``."""
        names = self.models()
        if self._model is not None and self._model not in names:
            raise VLLMUnavailable(f"vLLM at {self.url}: serves {', '.join(names) or 'no model'}, not "
                                  f"'{self._model}'")
        return names

    # -- generation
    def _body(self, embeds: Any, settings: dict, stream: bool) -> dict:
        body = {"model": self.model, "prompt_embeds": encode_prompt_embeds(embeds), "return_token_ids": True,
                **sampling_body(**settings)}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    def complete(self, embeds: Any, **settings: Any) -> Completion:
        """The answer to one L×D prompt embedding. ``settings``: `sampling_body`'s (``max_tokens``,
        ``temperature``, ``top_p``, ``seed``, ``ignore_eos``, ``stop_token_ids``, ``extra``)."""
        data = self._json("POST", "/v1/completions", self._body(embeds, settings, stream=False))
        try:
            choice, usage = data["choices"][0], data.get("usage") or {}
            return Completion(text=choice["text"], token_ids=list(choice.get("token_ids") or []),
                              finish_reason=choice.get("finish_reason"),
                              prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0))
        except (KeyError, IndexError, TypeError):
            raise VLLMUnavailable(f"vLLM at {self.url}/v1/completions: unexpected answer "
                                  f"{json.dumps(data)[:200]}") from None

    def chat(self, messages: list, **settings: Any) -> Completion:
        """One answer of ``/v1/chat/completions`` (a vision-language model vLLM serves: images travel as data
        URLs in the messages' ``image_url`` parts; the server applies the model's chat template)."""
        body = {"model": self.model, "messages": messages, **sampling_body(**settings)}
        data = self._json("POST", "/v1/chat/completions", body)
        try:
            choice, usage = data["choices"][0], data.get("usage") or {}
            return Completion(text=choice["message"]["content"] or "", token_ids=[],
                              finish_reason=choice.get("finish_reason"),
                              prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0))
        except (KeyError, IndexError, TypeError):
            raise VLLMUnavailable(f"vLLM at {self.url}/v1/chat/completions: unexpected answer "
                                  f"{json.dumps(data)[:200]}") from None

    def complete_many(self, prompts: Sequence[Any], return_exceptions: bool = False,
                      **settings: Any) -> list[Completion | VLLMError]:
        """Answers to many prompt embeddings, in order, sent concurrently (at most ``max_concurrency`` at once)
        so that vLLM batches them. The first failure raises (the requests already sent still run), unless
        ``return_exceptions``: then a failed request's place holds its `VLLMError`."""
        if not prompts:
            return []

        def one(embeds):
            try:
                return self.complete(embeds, **settings)
            except VLLMError as exc:
                if return_exceptions:
                    return exc
                raise

        self.model  # noqa: B018 -- ask /v1/models once, not from every thread
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(prompts))),
                                thread_name_prefix="vllm-client") as pool:
            return list(pool.map(one, prompts))

    def stream(self, embeds: Any, **settings: Any) -> Iterator[Delta]:
        """The answer to one prompt embedding as it is generated: `Delta` pieces from vLLM's server-sent events
        (``data: {...}`` lines, ending with ``data: [DONE]``); the last piece carries ``finish_reason``. A stream
        that ends before ``[DONE]`` raises `VLLMUnavailable`; an error event raises `VLLMRequestError`."""
        conn, resp = self._request("POST", "/v1/completions", self._body(embeds, settings, stream=True))
        try:
            while True:
                try:
                    line = resp.readline()
                except BaseException as exc:
                    raise self._unavailable(exc) from None
                if not line:
                    raise VLLMUnavailable(f"vLLM at {self.url}: the stream ended before [DONE] (did vLLM crash? "
                                          f"see its log)")
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return
                try:
                    event = json.loads(payload)
                except ValueError:
                    raise VLLMUnavailable(f"vLLM at {self.url}: unreadable stream event {payload[:80]!r}") from None
                if "error" in event:
                    err = event["error"] if isinstance(event["error"], dict) else {"message": event["error"]}
                    raise VLLMRequestError(f"vLLM at {self.url}: {err.get('message')}",
                                           int(err.get("code") or 500), err.get("param"))
                for choice in event.get("choices") or []:
                    yield Delta(text=choice.get("text") or "", token_ids=list(choice.get("token_ids") or []),
                                finish_reason=choice.get("finish_reason"))
        finally:
            conn.close()

    def stream_text(self, embeds: Any, **settings: Any) -> Completion:
        """`stream` gathered into one `Completion` (what a streamed answer adds up to)."""
        text, ids, reason = [], [], None
        for delta in self.stream(embeds, **settings):
            text.append(delta.text)
            ids += delta.token_ids
            reason = delta.finish_reason or reason
        return Completion("".join(text), ids, reason, completion_tokens=len(ids))


# -- the child process -------------------------------------------------------------------------------------------
def default_vllm_python() -> Path:
    """The Python of the vLLM environment: ``$REGIONVLM_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` in the
    current folder, else beside the environment regionvlm runs in (``make vllm`` puts it next to ``.venv``)."""
    if os.environ.get(PYTHON_ENV):
        return Path(os.environ[PYTHON_ENV])
    candidates = [Path.cwd() / VENV_NAME, Path(sys.prefix).parent / VENV_NAME]
    for venv in candidates:
        if (venv / "bin" / "python").exists():
            return venv / "bin" / "python"
    return candidates[0] / "bin" / "python"


def check_vllm_python(python: str | os.PathLike) -> Path:
    """``python`` if it exists and can import vllm, else a one-line `VLLMUnavailable` saying how to get it."""
    python = Path(python)
    hint = f"run 'make vllm' (creates {VENV_NAME}) or name the environment's Python with --vllm-python"
    if not python.exists():
        raise VLLMUnavailable(f"vLLM is not installed: no Python at {python}; {hint}")
    probe = subprocess.run([str(python), "-c", "import importlib.util, sys; "
                            "sys.exit(importlib.util.find_spec('vllm') is None)"],
                           capture_output=True, timeout=60, env=_child_env())
    if probe.returncode != 0:
        raise VLLMUnavailable(f"vLLM is not installed in {python}: {hint}")
    return python


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS's choice), for a child server to bind."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _child_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    # a local folder needs no hub; vLLM's usage statistics would try the network
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def _pdeathsig_setter() -> Any:
    """A function for ``preexec_fn`` that makes the child get SIGTERM when its parent dies, even by SIGKILL
    (Linux prctl PR_SET_PDEATHSIG), so vLLM shuts its engine processes down instead of running on as orphans.
    libc is loaded here, in the parent: between fork and exec the child must not load libraries (another
    thread of the parent may have held the loader's lock at the fork)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def die_with_parent() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return die_with_parent


def _tail(path: Path, lines: int = 15, width: int = 300) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    keep = [ln[:width] for ln in text if ln.strip() and "Route:" not in ln and "leaked" not in ln]
    return "\n".join(keep[-lines:])


class VLLMServer:
    """``vllm serve LLM_FOLDER --enable-prompt-embeds`` as a child process, on a free loopback port.

    ``python``: the vLLM environment's Python (`default_vllm_python`); ``dtype`` / ``max_model_len``: default to
    the folder's ``regionvlm_llm.json`` (the weights' dtype; the export's context length, else the model's);
    ``enforce_eager`` (default true: no torch.compile warm-up, measured ~25 s instead of ~70 s to start the tiny
    model on 2 CPU cores); ``kv_cache_gib``: vLLM's CPU KV cache in whole GiB (``VLLM_CPU_KVCACHE_SPACE``);
    ``extra_args``: more ``vllm serve`` arguments (``--tensor-parallel-size 2``, ``--gpu-memory-utilization 0.8``, ...);
    ``log_file``: where its output goes (default a temporary file, kept; `tail` shows the end).
    ``prompt_embeds=False`` serves any model folder or hub id as it is (no ``regionvlm_llm.json`` needed, no
    ``--enable-prompt-embeds``): the ``vllm`` captioner of datagen serves a vision-language model so.

    The child is `regionvlm.vllm_supervisor` (run with that Python), which runs vLLM's OpenAI server in
    the process group the supervisor leads, and stops the whole group (API server, engine core, workers)
    whenever the API server exits or the supervisor is told to stop: a crashed or killed API server would
    otherwise leave its engine processes running as orphans. The supervisor gets ``PR_SET_PDEATHSIG``
    (SIGTERM when this process dies, even by SIGKILL). Linux sends that signal when the *thread* that started
    the child ends, so start it from the main thread or one that lives as long.
    `start` waits for ``/health``; a child that dies first, or does not get healthy in ``start_timeout``
    seconds, is a `VLLMUnavailable` with the tail of its log. `stop` (also on leaving a ``with`` block).
    """

    def __init__(self, llm_dir: str | os.PathLike, python: str | os.PathLike | None = None, host: str = "127.0.0.1",
                 port: int = 0, api_key: str | None = None, served_model_name: str = DEFAULT_MODEL_NAME,
                 dtype: str | None = None, max_model_len: int | None = None, enforce_eager: bool = True,
                 kv_cache_gib: int | None = None, extra_args: Sequence[str] = (), env: dict | None = None,
                 log_file: str | os.PathLike | None = None, start_timeout: float = 600.0, stop_grace: float = 15.0,
                 prompt_embeds: bool = True):
        from regionvlm.llm_folder import read_llm_folder

        self.llm_dir, self.prompt_embeds = Path(llm_dir), bool(prompt_embeds)
        self.info = read_llm_folder(self.llm_dir) if prompt_embeds else {}
        self.python = Path(python) if python is not None else default_vllm_python()
        self.host, self.port, self.api_key = host, int(port), api_key
        self.served_model_name = served_model_name
        self.dtype = dtype or self.info.get("dtype") or "auto"
        self.max_model_len = max_model_len or self.info.get("max_length") or self.info.get("max_position_embeddings")
        self.enforce_eager, self.kv_cache_gib = bool(enforce_eager), kv_cache_gib
        self.extra_args, self.env = list(extra_args), dict(env or {})
        self.log_path = Path(log_file) if log_file is not None else None
        self.start_timeout, self.stop_grace = float(start_timeout), float(stop_grace)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def command(self) -> list[str]:
        # the OpenAI server's module, not `vllm serve`: the CLI of vllm-cpu 0.32 asks for the version of a
        # distribution named "vllm", which vllm-cpu is not (PackageNotFoundError)
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.llm_dir),
               "--host", self.host, "--port", str(self.port),
               "--served-model-name", self.served_model_name, "--dtype", str(self.dtype),
               "--generation-config", "auto"]
        if self.prompt_embeds:
            cmd.append("--enable-prompt-embeds")
        if self.max_model_len:
            cmd += ["--max-model-len", str(int(self.max_model_len))]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        lora = self.info.get("lora")
        if lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(lora["rank"]),
                    "--lora-modules", f"{self.served_model_name}-lora={self.llm_dir / lora['folder']}"]
        return cmd + self.extra_args

    def start(self) -> VLLMServer:
        """Start the child and wait until it is healthy (or raise `VLLMUnavailable` with its log's tail)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        check_vllm_python(self.python)
        if self.port == 0:
            self.port = free_port(self.host)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="regionvlm-vllm-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        env = {"VLLM_CPU_KVCACHE_SPACE": str(int(self.kv_cache_gib))} if self.kv_cache_gib is not None else {}
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key  # not on the command line, where `ps` would show it
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        supervisor = Path(__file__).with_name("vllm_supervisor.py")
        with open(self.log_path, "ab") as log:
            # -I: nothing of this environment (its sys.path, PYTHON* variables) leaks into vLLM's
            self.proc = subprocess.Popen([str(self.python), "-I", str(supervisor), str(self.stop_grace),
                                          *self.command()],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=_child_env({**env, **self.env}), start_new_session=True,
                                         preexec_fn=_pdeathsig_setter(), close_fds=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        client = VLLMClient(self.url, api_key=self.api_key)
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise VLLMUnavailable(f"vLLM exited with code {code} while starting on {self.llm_dir} (log: "
                                      f"{self.log_path}); its last lines:\n{_tail(self.log_path)}")
            if client.health(timeout=2.0):
                return
            if time.monotonic() > deadline:
                raise VLLMUnavailable(f"vLLM did not get healthy within {self.start_timeout:g} s on {self.llm_dir} "
                                      f"(log: {self.log_path}); its last lines:\n{_tail(self.log_path)}")
            time.sleep(0.5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The last lines of the child's log (for error messages)."""
        return _tail(self.log_path, lines) if self.log_path else ""

    def client(self, **kwargs: Any) -> VLLMClient:
        """A `VLLMClient` for this server (same API key, the served model's name)."""
        return VLLMClient(self.url, api_key=self.api_key, model=self.served_model_name, **kwargs)

    def stop(self) -> None:
        """Stop the child: SIGTERM to its supervisor (`regionvlm.vllm_supervisor`), which stops vLLM's
        whole process group (SIGKILL after ``stop_grace`` seconds); SIGKILL to the group if it is still there
        5 s after that. Returns once no process of the group runs. Safe to call twice."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # the supervisor leads its own session and group
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace + 5.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.2)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while _group_alive(pgid) and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (a zombie child not yet reaped counts as gone)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for zombies: look at the group's members' states
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# -- the region front end ---------------------------------------------------------------------------------------
def vllm_settings(settings: dict) -> dict:
    """regionvlm's decoding settings (`contracts.GENERATION_KEYS`) → the completion request's: greedy unless
    ``do_sample`` (then ``temperature``/``top_p``); vLLM's completions API has no beam search, so
    ``num_beams`` > 1 is refused (one line)."""
    if int(settings.get("num_beams", 1) or 1) > 1:
        raise VLLMRequestError("--engine vllm: num_beams > 1 (beam search) is not served by vLLM's completions API; "
                               "use the built-in engine for beam search", 400, "num_beams")
    sample = bool(settings.get("do_sample"))
    return {"max_tokens": int(settings.get("max_new_tokens", 64)),
            "temperature": float(settings.get("temperature", 1.0)) if sample else 0.0,
            "top_p": float(settings.get("top_p", 1.0)) if sample else 1.0}


class VLLMEngine:
    """`RegionChat`'s generation through vLLM: the chat's own model computes each question's input embeddings
    (vision encoder → refiner → region extractor → projector → fusion, exactly the built-in path), vLLM runs
    the LLM on them, and the generated token ids are decoded with the export's tokenizer — so greedy answers are
    the built-in engine's. ``client``: a `VLLMClient`; ``server``: the `VLLMServer` this engine started (stopped
    by `close`), or None when it connected to a running one."""

    def __init__(self, chat: Any, client: VLLMClient, server: VLLMServer | None = None):
        self.chat, self.client, self.server = chat, client, server
        self.served = client.check()  # reachable and serving a model, else one line (VLLMUnavailable)

    @classmethod
    def connect(cls, chat: Any, url: str, api_key: str | None = None, model: str | None = None,
                max_concurrency: int = 64) -> VLLMEngine:
        """Use a vLLM server that already runs (``vllm serve EXPORT/llm --enable-prompt-embeds``)."""
        return cls(chat, VLLMClient(url, api_key=api_key, model=model, max_concurrency=max_concurrency))

    @classmethod
    def launch(cls, chat: Any, export_dir: str | os.PathLike, python: str | os.PathLike | None = None,
               max_concurrency: int = 64, **server_options: Any) -> VLLMEngine:
        """Start vLLM as a child process on the export's LLM folder (``EXPORT/llm``) in the Python environment
        ``python`` (default: `default_vllm_python`), and use it; `close` stops it."""
        from regionvlm.llm_folder import find_llm_folder

        server = VLLMServer(find_llm_folder(export_dir), python=python, **server_options).start()
        try:
            return cls(chat, server.client(max_concurrency=max_concurrency), server)
        except BaseException:
            server.stop()
            raise

    def generate_ids(self, samples: Sequence[dict], **generation: Any) -> list[list[int]]:
        """Each answer's token ids: one embedding pass for the batch here, the requests sent to vLLM at once
        (it batches them continuously)."""
        body = vllm_settings(self.chat.settings(**generation))
        answers = self.client.complete_many(self.chat.prompt_embeddings(samples), **body)
        return [list(a.token_ids) for a in answers]

    def stream_ids(self, sample: dict, **generation: Any) -> Iterator[list[int]]:
        """One answer's token ids in chunks, as vLLM streams them."""
        body = vllm_settings(self.chat.settings(**generation))
        for delta in self.client.stream(self.chat.prompt_embeddings([sample])[0], **body):
            yield delta.token_ids

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
