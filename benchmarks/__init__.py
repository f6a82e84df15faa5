"""Registered evaluation benchmarks, one module + YAML each (see docs/benchmarks.md).

Importing this package registers every benchmark in `regionvlm.registry.BENCHMARKS`; the registry does it on
first lookup, so nothing here runs at ``import regionvlm``.
"""

from regionvlm.benchmarks import (  # noqa: F401
    coco_cls,
    dlc,
    osprey_cls,
    pope,
    refcocog_caption,
    refcocog_rec,
    scope,
    spatial,
    vg_caption,
)
