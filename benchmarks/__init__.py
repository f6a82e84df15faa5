"""Registered evaluation benchmarks, one module + YAML each (see docs/benchmarks.md).

Importing this package registers every benchmark in `regionvlm.registry.BENCHMARKS`; the registry does it on
first lookup, so nothing here runs at ``import regionvlm``.
"""

from regionvlm.benchmarks import coco_cls, dlc, pope, refcocog_caption, refcocog_rec, spatial, vg_caption  # noqa: F401
