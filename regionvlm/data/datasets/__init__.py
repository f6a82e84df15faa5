"""Registered datasets: official annotation files → raw samples, one module per family.

The one sample path: training, validation and every benchmark build their samples here. A benchmark is a
dataset node built with ``train: false`` (first phrasing, no rng) + its prompt + its scorer
(`regionvlm.evaluation.benchmark`), so what is evaluated is exactly what could be trained on.

Each dataset reads its files once in ``__init__`` (parsing and indexing only, items in a fixed order: the
official id's) and builds a sample in ``__getitem__``: the image stays a path and segmentations stay as
annotated, so decoding happens in DataLoader workers (`ImageProcessor`), never in the main process.
``image_root`` is per dataset (write ``${oc.env:REGIONVLM_DATA,data}/coco/train2017`` in YAML). Prompts are
`PROMPTS` nodes; training samples a phrasing with a per-(seed, epoch, index) rng, evaluation (``train:
false``) uses the first phrasing.

A sample — the schema every dataset yields, stated here only (docs/architecture.md points here)::

    {"id": str,                      # unique within the dataset, e.g. "coco-123"
     "image": path | PIL.Image | None,   # decoded later, in DataLoader workers (None: a text-only row)
     "regions": Regions,             # always a `regionvlm.data.structures.Regions` (possibly empty)
     "conversations": [{"from": "human", "value": "<image>\\n... <region1> ..."}, {"from": "gpt", ...}],
     "target": dict | None,          # JSON-serialisable: the official ids and the reference ("answer",
                                     # "captions", ...); benchmarks read their official id from it
     "task": str,
     "turns": [conversation, ...]}   # only grouped samples (``regions_per_sample``): one independent
                                     # conversation per region, joined by the collator around one image

``<regionK>`` refers to ``regions[K-1]``. The answer turn is left out when the file has no answer (a test
set); generation drops the last answer turn itself, so an evaluation sample is the training sample.

``family modules``: `base` (`RegionDataset`), `coco` (``coco_instances``, ``refcoco``), `vg`
(``vg_regions``), `conversations` (``llava``, ``conversations``), `qa` (``pope``, ``spatial_qa``, ``dlc``),
`official` (benchmark files as distributed: ``region_captions``, ``spatialrgpt_bench``, ``dlc_bench``,
``osprey_categories``).
"""

from regionvlm.data.datasets.base import RegionDataset, ann_region, check_region_kind
from regionvlm.data.datasets.coco import CocoInstancesDataset, RefCocoDataset
from regionvlm.data.datasets.conversations import ConversationsDataset, LlavaDataset
from regionvlm.data.datasets.official import (
                                             DLCBenchDataset,
                                             OspreyCategoriesDataset,
                                             RegionCaptionsDataset,
                                             SpatialRGPTBenchDataset,
                                             spatial_kind,
)
from regionvlm.data.datasets.qa import DLCDataset, PopeDataset, SpatialQADataset, pope_split, question_kind
from regionvlm.data.datasets.vg import VgRegionsDataset

__all__ = [
    "CocoInstancesDataset",
    "ConversationsDataset",
    "DLCBenchDataset",
    "DLCDataset",
    "LlavaDataset",
    "OspreyCategoriesDataset",
    "PopeDataset",
    "RefCocoDataset",
    "RegionCaptionsDataset",
    "RegionDataset",
    "SpatialQADataset",
    "SpatialRGPTBenchDataset",
    "VgRegionsDataset",
    "ann_region",
    "check_region_kind",
    "pope_split",
    "question_kind",
    "spatial_kind",
]
