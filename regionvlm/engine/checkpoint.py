"""Training checkpoints → models. A checkpoint holds the architecture config and the tokenizer files (see
`RegionVLMModule.on_save_checkpoint`), so it rebuilds its model with no other file."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from regionvlm.errors import UserError

TOKENIZER_FILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def atomic_checkpoint_io():
    """A Lightning `TorchCheckpointIO` that writes each checkpoint to a temporary file beside its target, fsyncs
    it and renames it (`regionvlm.io.atomic_write`), so a job killed while saving leaves the previous complete
    ``last.ckpt``. Lightning's own local save goes through a temporary file in the system temp folder and
    ``shutil.move``, which is a plain, interruptible copy when that folder is on another file system (usual on
    clusters), and gives the file no fsync."""
    import torch
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from regionvlm.io import atomic_write

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
            if storage_options is not None:
                raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
            atomic_write(path, lambda f: torch.save(checkpoint, f))

    return AtomicCheckpointIO()


def find_checkpoint(source: str | os.PathLike) -> Path:
    source = Path(source)
    path = source / "checkpoints" / "last.ckpt" if source.is_dir() else source
    if not path.is_file():
        raise UserError(f"{source}: no checkpoint found "
                        f"(expected a .ckpt file or a run dir with checkpoints/last.ckpt)")
    return path


def read_checkpoint(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so a checkpoint from
    elsewhere cannot run code. A refused or unreadable file is the user's: one line naming it."""
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is many lines; its last names the object that would have been loaded
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln.strip() for ln in lines if "GLOBAL" in ln), lines[-1] if lines else "")
        raise UserError(f"{path}: refused to load: the checkpoint holds Python objects that could run code, "
                        f"only tensors are loaded (weights_only=True): {detail}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: truncated or not a PyTorch checkpoint "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a regionvlm training checkpoint (holds a {type(ckpt).__name__})")
    return ckpt


def _tokenizer_file_name(name: Any, path: Path) -> str:
    """A tokenizer file's name from a checkpoint: a plain file name (``tokenizer.json``), never a path — a
    checkpoint from elsewhere must not write outside the temporary folder it is unpacked into."""
    if not isinstance(name, str) or not TOKENIZER_FILE_NAME.fullmatch(name) or name.startswith("."):
        raise UserError(f"{path}: tokenizer_files: refused file name {name!r} (a plain file name such as "
                        f"'tokenizer.json' is expected; a checkpoint may not name paths)")
    return name


def load_checkpoint(source: str | os.PathLike) -> tuple[Any, Any, dict]:
    """``(model, tokenizer, config)`` from a Lightning checkpoint written by ``regionvlm train``. The checkpoint is
    data, not code: it is read with ``weights_only=True``, its tokenizer files may only be plain file names, and a
    config that would run code (``trust_remote_code``) is refused."""
    from transformers import AutoTokenizer

    from regionvlm.card import TRAINED_PROMPTS, load_weights, refuse_code
    from regionvlm.model import build_model

    path = find_checkpoint(source)
    ckpt = read_checkpoint(path)
    try:
        config = ckpt["hyper_parameters"]["config"]
        tokenizer_files = ckpt["tokenizer_files"]
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: not a regionvlm training checkpoint (no {exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) \
            or not isinstance(tokenizer_files, dict):
        raise UserError(f"{path}: not a regionvlm training checkpoint (no model config or tokenizer files)")
    refuse_code(config["model"], str(path))
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in tokenizer_files.items():
            if not isinstance(data, bytes):
                raise UserError(f"{path}: tokenizer_files[{name!r}]: expected bytes")
            with open(Path(tmp) / _tokenizer_file_name(name, path), "xb") as f:
                f.write(data)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    model = build_model(config["model"], tokenizer)
    load_weights(model, state, str(path))
    prompts = ckpt.get(TRAINED_PROMPTS)
    if isinstance(prompts, dict) and prompts:  # the datasets' prompts as built: the card of an export records them
        config = {**config, TRAINED_PROMPTS: prompts}
    return model.eval(), tokenizer, config


def export_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | None = None,
                      overwrite: bool = False) -> Path:
    from regionvlm.card import save_export
    from regionvlm.io import refuse_filled_dir

    out_dir = Path(out_dir)
    refuse_filled_dir(out_dir, overwrite, "export folder")  # fail before the slow load
    model, tokenizer, config = load_checkpoint(source)
    return save_export(out_dir, model, tokenizer, config, dtype=dtype, overwrite=overwrite)
