"""CLI commands: one module each, exposing ``add_arguments(parser)`` and ``run(args) -> int | None``.

Keep module top-levels light (no torch/lightning/transformers imports): the parser is built before the work.
"""
