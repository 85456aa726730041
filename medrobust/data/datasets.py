"""From config to model inputs (kept for its import path): the names now live in

- :mod:`medrobust.data.sources`: the case records of the configured source (``list_cases``);
- :mod:`medrobust.data.dataset`: case preparation and caching, the dataset, ``DataInfo``, ``DataModule``;
- :mod:`medrobust.data.samplers`: slices of volumes, shuffled shards, shape buckets;
- :mod:`medrobust.data.labels`: label maps and label checks.
"""

from medrobust.data.dataset import (
    DataInfo,
    DataModule,
    MedDataset,
    PreparedCase,
    affine_spacing,
    collate,
    meta_tensor_free,
    prepare_case,
)
from medrobust.data.labels import check_labels, infer_label_map, label_hint
from medrobust.data.samplers import ShapeBucketBatchSampler, ShardedShuffleSampler, SliceLayout
from medrobust.data.sources import list_cases

__all__ = [
    "DataInfo", "DataModule", "MedDataset", "PreparedCase", "ShapeBucketBatchSampler", "ShardedShuffleSampler", "SliceLayout",
    "affine_spacing", "check_labels", "collate", "infer_label_map", "label_hint", "list_cases", "meta_tensor_free", "prepare_case",
]
