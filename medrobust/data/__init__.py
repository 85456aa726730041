"""Data: readers, manifests, MONAI transform chains, MedMNIST, synthetic phantoms, splits."""

from medrobust.data.dataset import DataInfo, DataModule, MedDataset, PreparedCase, collate, prepare_case
from medrobust.data.samplers import ShapeBucketBatchSampler, ShardedShuffleSampler
from medrobust.data.manifests import CaseRecord, Manifest, load_manifest
from medrobust.data.phantoms import make_phantom, phantom_cases, write_phantom_dataset
from medrobust.data.readers import read_image, read_images, write_nifti
from medrobust.data.splits import split_cases

__all__ = [
    "CaseRecord", "DataInfo", "DataModule", "Manifest", "MedDataset", "PreparedCase", "ShapeBucketBatchSampler",
    "ShardedShuffleSampler", "collate", "load_manifest", "make_phantom", "phantom_cases", "prepare_case",
    "read_image", "read_images", "split_cases", "write_nifti", "write_phantom_dataset",
]
