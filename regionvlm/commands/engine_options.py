"""The generation engine of ``predict``, ``serve`` and ``eval``: the built-in one (transformers' ``generate`` in
this process, the default: needs nothing) or vLLM (``--engine vllm``: this process computes each question's
input embeddings, vLLM runs the LLM from the export's ``llm/`` folder; docs/serving.md, "vLLM")."""

from __future__ import annotations

import argparse
import os
from typing import Any

from regionvlm.errors import UserError

API_KEY_ENV = "REGIONVLM_VLLM_API_KEY"
CPU_KV_CACHE_GIB = 4  # vLLM's CPU KV cache when started here without CUDA (its default claims 92 % of memory)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation engine")
    group.add_argument("--engine", choices=("builtin", "vllm"), default="builtin",
                       help="builtin: transformers' generate here (default); vllm: the LLM runs in vLLM (continuous "
                            "batching), this process computes the image and region embeddings")
    group.add_argument("--vllm-url", default=None,
                       help="with --engine vllm: a running server (vllm serve EXPORT/llm --enable-prompt-embeds); "
                            "default: start one as a child process, stopped on exit")
    group.add_argument("--vllm-api-key", default=None,
                       help=f"with --engine vllm: the server's API key (default: env {API_KEY_ENV})")
    group.add_argument("--vllm-kv-cache-gib", type=int, default=None,
                       help="with --engine vllm and no --vllm-url, on a machine without CUDA: vLLM's CPU KV cache in "
                            "GiB (default 4; without it vLLM reserves 92%% of the machine's memory and refuses to "
                            "start beside anything else)")
    group.add_argument("--vllm-python", default=None,
                       help="with --engine vllm and no --vllm-url: the Python of the vLLM environment (default: "
                            "env REGIONVLM_VLLM_PYTHON, else .venv-vllm made by 'make vllm')")


def open_engine(chat: Any, args: argparse.Namespace, export_dir: Any) -> Any:
    """Switch ``chat`` to the engine the flags name (vLLM: connect, or start it on ``export_dir``); returns
    ``chat``. Flags of vLLM without ``--engine vllm`` are an error, not ignored."""
    if args.engine != "vllm":
        given = [f for f in ("vllm_url", "vllm_api_key", "vllm_python", "vllm_kv_cache_gib") if getattr(args, f)]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')}: only with --engine vllm")
        return chat
    if export_dir is None:
        raise UserError("--engine vllm: needs an export (--model DIR), whose llm/ folder vLLM serves")
    api_key = args.vllm_api_key or os.environ.get(API_KEY_ENV) or None
    options = {}
    if not args.vllm_url:
        import torch

        kv = args.vllm_kv_cache_gib
        if kv is None and not torch.cuda.is_available():
            kv = CPU_KV_CACHE_GIB
        if kv is not None:
            if kv < 1:
                raise UserError(f"--vllm-kv-cache-gib: expected at least 1, got {kv}")
            options["kv_cache_gib"] = kv
    return chat.use_vllm(export_dir=export_dir, url=args.vllm_url, api_key=api_key, python=args.vllm_python,
                         **options)
