"""Long-tailed datasets for the audit: profile, selection, groups and loaders (docs/method.md)."""
from __future__ import annotations

from .core import IMAGE_EXTENSIONS, ArrayImageDataset, ImageFileDataset, LTDataset, default_data_root
from .datasets import dataset_names, load_dataset, read_class_counts
from .inmemory import from_torch
from .longtail import (GROUPS, assign_groups, class_groups, groups_to_indices, is_balanced, longtail_counts,
                       select_longtail, stratified_subset)
from .safe_pickle import RestrictedUnpickler, load_pickle

__all__ = [
    "GROUPS",
    "IMAGE_EXTENSIONS",
    "ArrayImageDataset",
    "ImageFileDataset",
    "LTDataset",
    "RestrictedUnpickler",
    "assign_groups",
    "class_groups",
    "dataset_names",
    "from_torch",
    "default_data_root",
    "groups_to_indices",
    "is_balanced",
    "load_dataset",
    "load_pickle",
    "longtail_counts",
    "read_class_counts",
    "select_longtail",
    "stratified_subset",
]
