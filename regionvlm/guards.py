"""Guards for files that others made and for outputs that must not destroy the user's files, checked before any
work (docs/errors.md, "Untrusted files"). Each failure is one `UserError`/`DataError` line naming the file.

- `load_plain_pickle`: a pickle that may hold only plain containers, strings and numbers (RefCOCO's
  ``refs(umd).p``); anything else (a class, a function such as ``os.system``) is refused, never called.
- `check_input_file`: a flag's input (``--input``, ``--image``) is a regular file, not a folder or a FIFO (whose
  read would block). Region files (``mask:``/``rle:``) are read by `regionvlm.data.region_input.read_region_file`,
  regular files of bounded size only.
- `check_output_file`: a file the command will write (``--out``, ``--viz``): not a folder, not a dangling link, its
  folder creatable, and not one of the command's inputs.
- `check_card_limits`: the numbers in a model card that size allocations (image side, context length, new
  tokens, beams) within limits, so a hostile ``config.yaml`` cannot make loading or answering exhaust memory.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import stat
from pathlib import Path
from typing import IO, Any

from regionvlm.errors import UserError


# -- pickles of plain data ----------------------------------------------------------------------------------------
def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """What Python 3 pickles ``bytes`` as at protocols 0-2 (``_codecs.encode(text, 'latin1')``), and nothing else:
    no other codec is looked up."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}, {errors!r})")
    return text.encode("latin-1")


#: the only globals a plain-data pickle may name; Python 2 spells ``builtins`` ``__builtin__``
PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, name): obj for module in ("builtins", "__builtin__")
       for name, obj in (("set", set), ("frozenset", frozenset), ("complex", complex), ("bytearray", bytearray))},
    ("_codecs", "encode"): _latin1_encode,
}


class PlainUnpickler(pickle.Unpickler):
    """An unpickler for data: lists, dicts, tuples, sets, strings, bytes, numbers, booleans and None. A pickle
    that names any other global (a class, ``os.system``, ``builtins.eval``) or a persistent id is refused with
    `pickle.UnpicklingError` before anything it names is called."""

    def find_class(self, module: str, name: str) -> Any:
        obj = PLAIN_GLOBALS.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refused: it names {module}.{name}, and a data file holds only lists, "
                                         f"dicts, strings and numbers (a pickle naming code can run it)")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused: it holds a persistent id, which a data file never does")


def load_plain_pickle(source: IO[bytes] | bytes, encoding: str = "latin1") -> Any:
    """Unpickle plain data from a binary file or bytes (``encoding``: how Python 2 ``str`` reads, as
    `pickle.load`'s). Raises `pickle.UnpicklingError` for a pickle that would construct anything else."""
    f = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    return PlainUnpickler(f, encoding=encoding).load()


# -- files named on the command line -------------------------------------------------------------------------------
def check_input_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as the regular file a flag names (``--input``): a folder, a FIFO or a device is one line."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(f"{flag}: no such file '{path}'") from None
    except OSError as exc:
        raise UserError(f"{flag} '{path}': {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{flag} '{path}': {'is a folder' if p.is_dir() else 'not a regular file'}; give a file")
    return p


# -- files the command will write ----------------------------------------------------------------------------------
def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file: the same inode (hard links, links, ``./x`` and ``x``) or, when one
    does not exist yet, the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_output_file(path: str | os.PathLike, flag: str, inputs: dict[str, str | os.PathLike] | None = None) -> Path:
    """Check, before any work, that ``path`` can be written as a file: it is not a folder or another non-regular
    file, not a link to nothing (writing through it would create its target wherever it points), not any of
    ``inputs`` (``{"--input": path}``: a command must not overwrite what it reads), and the nearest existing
    folder above it is a writable folder (missing folders below it are created when the file is written)."""
    p = Path(path)
    for name, other in (inputs or {}).items():
        if other and same_file(p, other):
            raise UserError(f"{flag} '{path}': is the same file as {name}; write the output to another file")
    if p.is_symlink() and not p.exists():
        raise UserError(f"{flag} '{path}': is a link to '{os.readlink(p)}', which does not exist; give a file path")
    if p.exists():
        if p.is_dir():
            raise UserError(f"{flag} '{path}': is a folder; give a file path")
        if not p.is_file():
            raise UserError(f"{flag} '{path}': not a regular file; give a file path")
        if not os.access(p, os.W_OK):
            raise UserError(f"{flag} '{path}': not writable")
        return p
    parent = p.absolute().parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} '{path}': '{parent}' is not a folder, so the file cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} '{path}': cannot create files in '{parent}' (permission denied)")
    return p


# -- model cards ----------------------------------------------------------------------------------------------------
MAX_IMAGE_SIDE = 4096            # pixels: the square an image is resized to (CLIP: 336; 4096² RGB floats: 200 MB)
MAX_CONTEXT_TOKENS = 1_048_576   # text.max_length
MAX_NEW_TOKENS = 65_536          # generation.max_new_tokens
MAX_BEAMS = 64                   # generation.num_beams


def _bounded_int(value: Any, low: int, high: int, where: str, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: expected a whole number, got {value!r}")
    if not low <= value <= high:
        raise UserError(f"{where}: {value} is outside {low}..{high} ({why})")


def _image_sizes(node: Any, path: str) -> list[tuple[str, Any]]:
    """Every ``image_size`` under a card's model section (a vision encoder's ``config.image_size``)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}"
            if key == "image_size" and not isinstance(value, (dict, list)):
                found.append((where, value))
            else:
                found += _image_sizes(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _image_sizes(value, f"{path}[{i}]")
    return found


def check_card_limits(card: dict, source: str | os.PathLike) -> None:
    """Refuse a model card (an export's ``config.yaml``, read as a dict) whose numbers would size allocations
    beyond the limits above: the processor's and the vision encoder's ``image_size`` (an image is padded and
    resized to that square), the context length ``max_length`` (``processor``, or a legacy card's ``text``),
    ``generation.max_new_tokens`` and ``num_beams``. One
    `UserError` line naming the file, the key and the limit. Keys a card lacks are not judged here."""
    sides = [(f"{source} processor.image_size", (card.get("processor") or {}).get("image_size"))]
    sides += [(f"{source} {where}", v) for where, v in _image_sizes(card.get("model") or {}, "model")]
    for where, value in sides:
        if value is not None:
            _bounded_int(value, 1, MAX_IMAGE_SIDE, where,
                         "the limit of regionvlm.guards.MAX_IMAGE_SIDE: an image is resized to a square of this side")
    for section in ("processor", "text"):  # text: cards written before the processor held the text settings
        node = card.get(section) or {}
        if isinstance(node, dict) and node.get("max_length") is not None:
            _bounded_int(node["max_length"], 1, MAX_CONTEXT_TOKENS, f"{source} {section}.max_length",
                         "the limit of regionvlm.guards.MAX_CONTEXT_TOKENS")
    generation = card.get("generation") or {}
    if generation.get("max_new_tokens") is not None:
        _bounded_int(generation["max_new_tokens"], 1, MAX_NEW_TOKENS, f"{source} generation.max_new_tokens",
                     "the limit of regionvlm.guards.MAX_NEW_TOKENS")
    if generation.get("num_beams") is not None:
        _bounded_int(generation["num_beams"], 1, MAX_BEAMS, f"{source} generation.num_beams",
                     "the limit of regionvlm.guards.MAX_BEAMS")
