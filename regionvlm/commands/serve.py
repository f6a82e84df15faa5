"""``regionvlm serve``: an OpenAI-compatible region chat API and a web page for one export.

    regionvlm serve --model runs/rgpt-tiny-stage2/export [--host 127.0.0.1 --port 8000] [--api-key KEY]
        [--max-batch-size 16 --batch-wait-ms 10 --max-in-flight 64 --max-image-pixels 16777216]
        [--engine vllm [--vllm-url URL | --vllm-python PY]]

Open http://127.0.0.1:8000/ for the page; the API is at /v1/chat/completions (docs/serving.md). The key may
also come from the REGIONVLM_API_KEY environment variable (keeps it out of the process list).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
from pathlib import Path

from regionvlm.commands.engine_options import add_engine_arguments, open_engine
from regionvlm.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="export folder (from train or export)")
    parser.add_argument("--model-name", default=None, help="the model id clients send and see (default: folder name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on /v1/* (default: env REGIONVLM_API_KEY, else none)")
    parser.add_argument("--allow-open", action="store_true",
                        help="serve a non-loopback --host without an API key (anyone who reaches it may use it)")
    parser.add_argument("--allowed-hosts", default="",
                        help="comma-separated Host header names accepted besides localhost/127.0.0.1/[::1] and the "
                             "bound address (DNS-rebinding guard); bound to 0.0.0.0 without it, any Host is accepted")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--max-batch-size", type=int, default=16,
                        help="questions answered by one generate call (with --engine vllm: embedded by one pass of "
                             "the region front end)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="how long a batch waits for more questions after its first")
    parser.add_argument("--max-in-flight", type=int, default=64,
                        help="requests queued or being answered; beyond it requests get 429")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="larger images get 413")
    parser.add_argument("--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask")
    parser.add_argument("--max-regions", type=int, default=64, help="regions a request may carry (each mask decodes "
                                                                   "to an image-sized array); beyond it 413")
    parser.add_argument("--max-mask-pixels", type=int, default=4096 * 4096,
                        help="pixels of all of a request's masks together (each is the image's size); beyond it 413")
    parser.add_argument("--max-body-mb", type=int, default=32, help="largest request body in MiB; beyond it 413")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds before a request gets 504")
    parser.add_argument("--imports", action="store_true",
                        help="import the modules that registered the export's own components (its card's imports:); "
                             "importing runs their code: only for exports you trust")
    add_engine_arguments(parser)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def api_key_of(args: argparse.Namespace) -> str | None:
    """The key, from --api-key or REGIONVLM_API_KEY; an empty one (``$(cat missing-file)``) is an error, not
    "no key", and a server reachable from other machines needs one unless --allow-open says otherwise."""
    if args.api_key is not None:
        key, where = args.api_key, "--api-key"
    else:
        key, where = os.environ.get("REGIONVLM_API_KEY"), "REGIONVLM_API_KEY"
    if key is not None and not key.strip():
        raise UserError(f"{where}: is empty; give a key, or leave it unset to serve without one")
    if key is None and not is_loopback(args.host) and not args.allow_open:
        raise UserError(f"--host {args.host}: reachable from other machines without an API key; set --api-key "
                        f"(or REGIONVLM_API_KEY), or --allow-open to serve it open")
    if key is None and not is_loopback(args.host):
        logging.getLogger("regionvlm.serve").warning("serving %s without an API key (--allow-open)", args.host)
    return key


def run(args: argparse.Namespace) -> int:
    for flag in ("max_batch_size", "max_in_flight", "max_image_pixels", "max_tokens_limit", "max_regions",
                 "max_mask_pixels", "max_body_mb"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1")
    if args.batch_wait_ms < 0 or args.request_timeout <= 0:
        raise UserError("--batch-wait-ms must be ≥ 0 and --request-timeout > 0")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port: {args.port} is not a port number")
    if not Path(args.model).is_dir():
        raise UserError(f"--model: no export folder at '{args.model}'")
    api_key = api_key_of(args)
    from regionvlm.inference import RegionChat
    from regionvlm.serve.app import RegionChatServer
    from regionvlm.serve.validation import Limits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    chat = RegionChat.from_pretrained(args.model, device=args.device, imports=args.imports)
    model_id = args.model_name or Path(args.model).resolve().name
    with open_engine(chat, args, args.model):  # a vLLM child started here is stopped on the way out
        try:
            server = RegionChatServer(
                (args.host, args.port), chat, model_id,
                api_key=api_key, limits=Limits(args.max_image_pixels, args.max_tokens_limit, args.max_regions,
                                                     args.max_mask_pixels),
                max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                max_in_flight=args.max_in_flight, request_timeout_s=args.request_timeout,
                max_body_bytes=args.max_body_mb << 20,
                allowed_hosts=tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip()))
        except OSError as exc:
            raise UserError(f"--host/--port: cannot listen on {args.host}:{args.port}: "
                            f"{exc.strerror or exc}") from None
        engine = f"vLLM at {chat.engine.client.url}" if chat.engine is not None else "the built-in engine"
        print(f"serving '{model_id}' at {server.url}/ (API: {server.url}/v1/chat/completions) with {engine}; "
              f"Ctrl-C stops", flush=True)

        def stop(signum, frame):  # SIGTERM (docker stop, systemd): leave serve_forever, clean up, exit 0
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        try:
            server.serve_forever()
        finally:
            server.server_close()
            server.serving.close()
    return 0
