"""``regionvlm predict``: ask a trained model about regions of your images.

Single question::

    regionvlm predict --model runs/rgpt-tiny-stage2/export --image photo.jpg \\
        --region box:10,20,120,200 --region mask:cat_mask.png --prompt "What is <region1> next to <region2>?" \\
        [--viz answer.png]

Batch (rows in the conversation-jsonl format; the last human turn is the question)::

    regionvlm predict --model DIR --input questions.jsonl --out answers.jsonl [--batch-size 8]

Batch output is resumable: rows already in ``--out`` are skipped on a rerun, so each row is written once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionvlm.errors import DataError, UserError

GENERATION_FLAGS = {"max_new_tokens": int, "temperature": float, "top_p": float, "num_beams": int}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from regionvlm.commands.engine_options import add_engine_arguments

    parser.add_argument("--model", required=True, help="export folder (from train or export)")
    parser.add_argument("--image", help="image file for a single question")
    parser.add_argument("--region", action="append", default=[], metavar="KIND:VALUE",
                        help="box:x1,y1,x2,y2 | mask:PATH.png | polygon:x1,y1,x2,y2,... | rle:PATH.json "
                             "(repeatable; the K-th is <regionK>)")
    parser.add_argument("--prompt", help="the question; name regions as <region1>, <region2>, ...")
    parser.add_argument("--viz", help="also draw the regions and the answer into this PNG")
    parser.add_argument("--input", help="batch mode: conversation jsonl with one question per row")
    parser.add_argument("--out", help="batch mode: answers jsonl (resumable)")
    parser.add_argument("--image-root", default="", help="batch mode: folder that relative image paths are in")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    for flag, kind in GENERATION_FLAGS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=None,
                            help=f"generation: {flag} (default: the export's config)")
    parser.add_argument("--sample", action="store_true", help="generation: sample instead of greedy decoding")
    add_engine_arguments(parser)
    parser.add_argument("--imports", action="store_true",
                        help="import the modules that registered the export's own components (its card's imports:, "
                             "found on PYTHONPATH, here or in the export folder); importing runs their code: only "
                             "for exports you trust")


def parse_region(spec: str, where: str = "--region") -> Any:
    """``box:x1,y1,x2,y2`` | ``mask:FILE.png`` | ``polygon:x,y,...`` | ``rle:FILE.json`` → a `Regions` item
    (`regionvlm.data.region_input.parse_region_spec`: the one region parser, non-zero mask pixels = inside)."""
    from regionvlm.data.region_input import parse_region_spec

    return parse_region_spec(spec, where)


def generation_overrides(args: argparse.Namespace) -> dict:
    out = {k: getattr(args, k) for k in GENERATION_FLAGS if getattr(args, k) is not None}
    if args.sample:
        out["do_sample"] = True
    return out


def question_of(row: dict) -> str | None:
    """The question a batch row asks: its last human turn (as `batch_samples` takes it)."""
    turns = [t for t in row.get("conversations", []) if t.get("from") in ("human", "user")]
    return turns[-1]["value"] if turns else None


def answer_line(row: dict, question: str, answer: str) -> str:
    """One line of ``--out``: the input row with the question asked and the answer."""
    return json.dumps({**row, "question": question, "answer": answer}, ensure_ascii=False) + "\n"


_SENTINEL = "\x00regionvlm-answer\x00"


def _starts_one_of_our_lines(tail: bytes, rows: list[dict]) -> bool:
    """Whether ``tail`` (a last line without its newline) is the beginning of the line this command would write
    for one of ``rows``: everything up to the answer is known in advance."""
    for row in rows:
        question = question_of(row)
        if question is None:
            continue
        head = answer_line(row, question, _SENTINEL).split(json.dumps(_SENTINEL))[0].encode("utf-8")
        if tail[:len(head)] == head[:len(tail)]:
            return True
    return False


@dataclass
class DoneRows:
    """What an earlier run left in ``--out``: the ids answered, and how to append after them."""

    ids: set[str]
    cut_at: int | None = None    # truncate the file here before appending: a torn last line
    add_newline: bool = False    # the last complete row lacks its newline


def read_done_rows(out_path: Path, rows: list[dict] | None = None, source: str = "--input") -> DoneRows:
    """Check what an earlier, possibly killed run left in ``out_path``, without changing the file. It may be
    resumed only if every complete line is an answer row of ours: a JSON object with an ``id`` of the input
    ``rows`` (``None``: any id) and a string ``answer``, each id once; anything else is a `DataError` naming the
    line, and the file is left as it is. A last line without its newline (the kill case) is cut before appending
    only when it is the beginning of one of our lines: after our complete rows, or matching the line one of
    ``rows`` would get. A file that is one JSON document without a newline (a ``json.dump``) is not ours."""
    if not out_path.exists():
        return DoneRows(set())
    ids = None if rows is None else {str(r["id"]) for r in rows}
    refuse = f"refusing to append to a file that is not this command's answers to {source} (another --out, or " \
             f"remove the file)"
    data = out_path.read_bytes()
    end = data.rfind(b"\n") + 1
    complete, tail = data[:end], data[end:]
    done: dict[str, int] = {}

    def check_ours(row: Any, n: int) -> None:
        if not isinstance(row, dict) or "id" not in row:
            raise DataError(f"{out_path}: line {n}: not an answer row (a JSON object with an 'id'); {refuse}")
        rid = str(row["id"])
        if ids is not None and rid not in ids:
            raise DataError(f"{out_path}: line {n}: id {rid!r} is not a row of {source}; {refuse}")
        if not isinstance(row.get("answer"), str):
            raise DataError(f"{out_path}: line {n}: no 'answer' string, so not an answer row; {refuse}")
        if rid in done:
            raise DataError(f"{out_path}: line {n}: id {rid!r} answered twice (first at line {done[rid]}); {refuse}")
        done[rid] = n

    lines = complete.decode("utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{out_path}: line {n}: not valid JSON ({exc.msg}); fix or remove it to resume") from None
        check_ours(row, n)
    if not tail.strip():
        return DoneRows(set(done), cut_at=end if tail else None)
    try:
        row = json.loads(tail.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        if done or (rows is not None and _starts_one_of_our_lines(tail, rows)):
            return DoneRows(set(done), cut_at=end)  # torn by a kill: only the tail goes
        raise DataError(f"{out_path}: line {len(lines) + 1}: an incomplete line, and no answer row of ours before it; "
                        f"{refuse}") from None
    check_ours(row, len(lines) + 1)  # a complete row whose newline was not written yet
    return DoneRows(set(done), add_newline=True)


def batch_samples(rows: list[tuple[int, dict]], image_root: str, source: str) -> list[dict]:
    """``(line number, conversation-jsonl row)`` pairs → raw samples asking their last human turn."""
    from regionvlm.data.processing import image_under_root
    from regionvlm.data.region_input import parse_regions

    samples = []
    for n, row in rows:
        where = f"{source}:{n}"
        turns = [t for t in row.get("conversations", []) if t.get("from") in ("human", "user")]
        if not turns:
            raise DataError(f"{where}: conversations: no human turn to answer")
        question = turns[-1]["value"]
        image = image_under_root(image_root, row["image"], f"{where}: image", allow_absolute=True)
        samples.append({"id": str(row["id"]), "image": image,
                        "regions": parse_regions(row.get("regions", []), where=f"{where}: regions"),
                        "conversations": [{"from": "human", "value": question}], "row": row})
    return samples


def read_questions(path: str) -> list[tuple[int, dict]]:
    """``(line number, row)`` of a questions file, each row checked for the fields and types a question needs
    (one `DataError` naming ``file:line`` and the field), ids unique: before anything loads or is written."""
    from regionvlm.data.formats import iter_jsonl

    rows: list[tuple[int, dict]] = []
    seen: dict[str, int] = {}
    for n, row in iter_jsonl(path):
        where = f"{path}:{n}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if "id" not in row or "image" not in row:
            raise DataError(f"{where}: row needs 'id' and 'image'")
        rid = row["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
            raise DataError(f"{where}: 'id' must be a non-empty string or an integer, got {rid!r}")
        if not isinstance(row["image"], str) or not row["image"]:
            raise DataError(f"{where}: 'image' must be a path string, got {row['image']!r}")
        turns = row.get("conversations", [])
        if not isinstance(turns, list):
            raise DataError(f"{where}: 'conversations' must be a list of turns, got {type(turns).__name__}")
        for k, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise DataError(f"{where}: conversations[{k}] must be an object with 'from' and 'value', "
                                f"got {turn!r}")
            for field in ("from", "value"):
                if not isinstance(turn.get(field), str):
                    raise DataError(f"{where}: conversations[{k}].{field} must be a string, got {turn.get(field)!r}")
        regions = row.get("regions", [])
        if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
            raise DataError(f"{where}: 'regions' must be a list of region objects, got {regions!r:.80}")
        if str(rid) in seen:
            raise DataError(f"{path}: duplicate id {str(rid)!r} (lines {seen[str(rid)]} and {n})")
        seen[str(rid)] = n
        rows.append((n, row))
    return rows


def _region_files(specs: list[str]) -> dict[str, str]:
    """``{"--region[i]": path}`` of the ``mask:``/``rle:`` regions given on the command line."""
    out = {}
    for i, spec in enumerate(specs):
        kind, _, value = spec.partition(":")
        if kind in ("mask", "rle") and value:
            out[f"--region[{i}]"] = value
    return out


def _check_generation_flags(args: argparse.Namespace) -> None:
    import math

    from regionvlm.guards import MAX_BEAMS, MAX_NEW_TOKENS

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    for flag, high in (("max_new_tokens", MAX_NEW_TOKENS), ("num_beams", MAX_BEAMS)):
        value = getattr(args, flag)
        if value is not None and not 1 <= value <= high:
            raise UserError(f"--{flag.replace('_', '-')} {value}: expected 1..{high}")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UserError(f"--temperature {args.temperature}: expected a finite number > 0")
    if args.top_p is not None and not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        raise UserError(f"--top-p {args.top_p}: expected a number in (0, 1]")


def check_before_loading(args: argparse.Namespace) -> None:
    """Every flag, input and output checked before the model loads: a mistake costs no loading or generation,
    and nothing is written (regionvlm.guards)."""
    from regionvlm.card import CONFIG_FILE, read_card
    from regionvlm.guards import check_card_limits, check_input_file, check_output_file

    if bool(args.input) == bool(args.image):
        raise UserError("give either --image with --prompt (one question) or --input with --out (batch)")
    if args.input:
        for flag in ("prompt", "viz"):
            if getattr(args, flag):
                raise UserError(f"--{flag}: only for one question (--image); with --input the questions are the rows")
        if args.region:
            raise UserError("--region: only for one question (--image); with --input each row has its regions")
        if not args.out:
            raise UserError("--out: required with --input")
        check_input_file(args.input, "--input")
        check_output_file(args.out, "--out", inputs={"--input": args.input})
    else:
        if not args.prompt:
            raise UserError("--prompt: required with --image")
        if args.out:
            raise UserError("--out: only with --input (batch); one answer is printed (--viz draws it)")
        check_input_file(args.image, "--image")
        if args.viz:
            check_output_file(args.viz, "--viz", inputs={"--image": args.image, **_region_files(args.region)})
    _check_generation_flags(args)
    check_card_limits(read_card(args.model), Path(args.model) / CONFIG_FILE)


def run_batch(chat: Any, args: argparse.Namespace, rows: list[tuple[int, dict]], done: DoneRows) -> int:
    from rich.progress import Progress

    out_path = Path(args.out)
    # rows are appended batch by batch (fsynced): a killed run leaves complete rows and at most one torn line
    todo = [(n, r) for n, r in rows if str(r["id"]) not in done.ids]
    samples = batch_samples(todo, args.image_root, args.input)
    settings = generation_overrides(args)
    with Progress() as progress, contextlib.ExitStack() as stack:
        out = None  # opened at the first answered batch: a run that fails before it leaves the file as it was
        task = progress.add_task("answering", total=len(rows), completed=len(rows) - len(todo))
        for start in range(0, len(samples), args.batch_size):
            chunk = samples[start:start + args.batch_size]
            answers = chat.generate(chunk, **settings)
            if out is None:
                if done.cut_at is not None:
                    os.truncate(out_path, done.cut_at)  # drop the torn tail only: the complete rows stay untouched
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out = stack.enter_context(out_path.open("a", encoding="utf-8"))
                if done.add_newline:
                    out.write("\n")
            for sample, answer in zip(chunk, answers):
                out.write(answer_line(sample["row"], sample["conversations"][0]["value"], answer))
            out.flush()
            os.fsync(out.fileno())
            progress.advance(task, len(chunk))
    print(f"{len(todo)} answered, {len(done.ids)} already done → {out_path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from regionvlm.commands.engine_options import open_engine
    from regionvlm.inference import RegionChat

    check_before_loading(args)
    if args.input:
        rows = read_questions(args.input)
        done = read_done_rows(Path(args.out), [r for _, r in rows], args.input)
    else:  # read before the model loads: a region file that is a FIFO, a device or too large is refused at once
        regions = [parse_region(spec, f"--region[{i}]") for i, spec in enumerate(args.region)]
    with RegionChat.from_pretrained(args.model, device=args.device, imports=args.imports) as chat:
        open_engine(chat, args, args.model)
        if args.input:
            return run_batch(chat, args, rows, done)
        answer = chat.ask(args.image, regions, args.prompt, **generation_overrides(args))
    print(answer)
    if args.viz:
        from regionvlm.viz import draw_regions, overlay_text, save_png

        picture = overlay_text(draw_regions(args.image, regions), [f"A: {answer}"])
        save_png(picture, args.viz)
        print(f"picture written to {args.viz}")
    return 0
