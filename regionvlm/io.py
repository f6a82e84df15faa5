"""Atomic file writes: every output goes to a temporary file (or folder) beside its target, is fsynced, then
renamed into place, so readers never see half a file and a killed job leaves the previous version intact.

Temporary names come from `tempfile`, which creates them readable by their owner only (0600/0700); the final
file or folder gets the mode the user's umask gives anything else they create (0644/0755 with umask 022), so a
team on a shared cluster can read what regionvlm writes."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def refuse_filled_dir(target: str | os.PathLike, overwrite: bool, what: str = "folder") -> None:
    """A `UserError` when ``target`` holds files and ``overwrite`` is off: checked before any slow work."""
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not overwrite:
        from regionvlm.errors import UserError

        raise UserError(f"{target}: {what} exists and is not empty (pass --overwrite to replace it)")


def make_temp_dir(target: str | os.PathLike) -> Path:
    """An empty folder beside ``target`` to fill and then `publish_dir`, with an ordinary folder's mode."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def publish_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the filled folder ``tmp`` to ``target``; an existing ``target`` is moved aside first and removed
    after, so at every moment either the old or the new complete folder is in place. Whatever libraries wrote
    into ``tmp`` (safetensors writes 0600 files) gets the modes of ordinary files and folders first."""
    target = Path(target)
    umask = current_umask()
    for root, dirs, files in os.walk(tmp):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±Infinity, numpy's too) replaced by None, inside dicts, lists
    and tuples; numpy scalars become Python numbers. A metric that could not be computed is ``null`` in the JSON
    we write, never a ``NaN``/``Infinity`` token that strict parsers (JavaScript's, jq, Go's) reject."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:  # a numpy scalar (numpy not imported)
        return finite_or_none(obj.item())
    return obj


def dumps_json(obj: Any, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON text (non-finite numbers → null, then ``allow_nan=False``; UTF-8 kept): the one way regionvlm
    writes JSON, so ``--json`` output, ``results.json``, predictions, judge caches and HTTP answers parse
    anywhere."""
    return json.dumps(finite_or_none(obj), ensure_ascii=False, indent=indent, allow_nan=False, default=default)
