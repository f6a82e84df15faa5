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
from pathlib import Path
from typing import Any

from regionvlm.errors import DataError, UserError

GENERATION_FLAGS = {"max_new_tokens": int, "temperature": float, "top_p": float, "num_beams": int}


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def read_done_rows(out_path: Path) -> list[dict]:
    """Complete rows of an earlier, possibly killed run. A torn last line (the kill case: no newline yet) is cut
    off the file; any other line that is not a JSON object with an ``id`` is an error naming it, and the file is
    left as it is."""
    if not out_path.exists():
        return []
    data = out_path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    rows = []
    for n, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{out_path}: line {n}: not valid JSON ({exc.msg}); fix or remove it to resume") from None
        if not isinstance(row, dict) or "id" not in row:
            raise DataError(f"{out_path}: line {n}: expected a JSON object with an 'id'; fix or remove it to resume")
        rows.append(row)
    if len(complete) < len(data):
        os.truncate(out_path, len(complete))  # drop the torn tail only: the complete rows stay untouched
    return rows


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


def run_batch(chat: Any, args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from regionvlm.data.formats import read_jsonl

    if not args.out:
        raise UserError("--out: required with --input")
    rows = read_jsonl(args.input)
    for n, row in enumerate(rows, 1):  # before anything is written: a bad row stops the run with the file intact
        if "id" not in row or "image" not in row:
            raise DataError(f"{args.input}:{n}: row needs 'id' and 'image'")
    ids = [str(r.get("id")) for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{args.input}: duplicate id {dup!r}")
    out_path = Path(args.out)
    done_ids = {str(r["id"]) for r in read_done_rows(out_path)}
    # rows are appended batch by batch (fsynced): a killed run leaves complete rows and at most one torn line
    todo = [(n, r) for n, r in enumerate(rows, 1) if str(r["id"]) not in done_ids]
    samples = batch_samples(todo, args.image_root, args.input)
    settings = generation_overrides(args)
    with Progress() as progress, contextlib.ExitStack() as stack:
        out = None  # opened at the first answered batch: a run that fails before it leaves no file behind
        task = progress.add_task("answering", total=len(rows), completed=len(rows) - len(todo))
        for start in range(0, len(samples), args.batch_size):
            chunk = samples[start:start + args.batch_size]
            answers = chat.generate(chunk, **settings)
            out = out or stack.enter_context(out_path.open("a"))
            for sample, answer in zip(chunk, answers):
                question = sample["conversations"][0]["value"]
                out.write(json.dumps({**sample["row"], "question": question, "answer": answer},
                                     ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            progress.advance(task, len(chunk))
    print(f"{len(todo)} answered, {len(done_ids)} already done → {out_path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from regionvlm.inference import RegionChat

    if bool(args.input) == bool(args.image):
        raise UserError("give either --image with --prompt (one question) or --input with --out (batch)")
    if args.image and not args.prompt:
        raise UserError("--prompt: required with --image")
    if args.image and not Path(args.image).is_file():
        raise UserError(f"--image: no such file '{args.image}'")
    chat = RegionChat.from_pretrained(args.model, device=args.device)
    if args.input:
        return run_batch(chat, args)
    regions = [parse_region(spec, f"--region[{i}]") for i, spec in enumerate(args.region)]
    answer = chat.ask(args.image, regions, args.prompt, **generation_overrides(args))
    print(answer)
    if args.viz:
        from regionvlm.viz import draw_regions, overlay_text, save_png

        picture = overlay_text(draw_regions(args.image, regions), [f"A: {answer}"])
        save_png(picture, args.viz)
        print(f"picture written to {args.viz}")
    return 0
