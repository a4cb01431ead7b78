"""Data: load image-classification datasets, derive transforms from the model, feed torch.

- :func:`load_split` reads one split whole, for evaluation or prediction.
- :func:`load_data` reads a Hub dataset, an image folder, a CSV/parquet of image paths or a ``datasets`` object
  into a :class:`DataBundle` (train/eval splits with one label vocabulary).
- :func:`load_stream` opens a Hub dataset's train split as a stream (``datasets.IterableDataset``), its eval split
  read once into memory, bounded.
- :func:`create_transforms` builds the train/eval transform from a model's ``pretrained_cfg`` (timm).
- :class:`ImageClassificationDataset` turns a split into ``(image_tensor, target)`` items, optionally from an
  in-memory cache decoded once.
- :func:`disable_datasets_extra_hosts` keeps ``datasets`` from contacting hosts other than ``HF_ENDPOINT``.
- :func:`load_segmentation_data`, :class:`SegmentationDataset` and :class:`SegmentationTransform`: image / mask
  pairs for semantic segmentation, with paired transforms; :func:`collate_masks` batches masks of several sizes.
- :func:`make_synthetic_image_dataset` / :func:`write_image_folder` build tiny learnable datasets for smoke tests.
"""

from hubft.data._digits import load_digits_dataset
from hubft.data._dataset import ImageClassificationDataset, preserve_global_rngs
from hubft.data._hosts import disable_datasets_extra_hosts
from hubft.data._sources import DataBundle, DataSource, DataSplit, load_data, load_split
from hubft.data._streaming import load_stream
from hubft.data._segmentation import (IGNORE_INDEX, OUTSIDE, SegmentationDataset, SegmentationTransform,
                                      collate_masks, load_segmentation_data, load_segmentation_split)
from hubft.data._synthetic import make_synthetic_image_dataset, synthetic_class_names, write_image_folder
from hubft.data._synthetic_segmentation import (SHAPE_CLASSES, make_synthetic_segmentation_dataset,
                                                write_segmentation_folder)
from hubft.data._transforms import ImageTransform, create_transforms, to_rgb

__all__ = [
    "IGNORE_INDEX",
    "OUTSIDE",
    "SHAPE_CLASSES",
    "SegmentationDataset",
    "SegmentationTransform",
    "collate_masks",
    "load_segmentation_data",
    "load_segmentation_split",
    "make_synthetic_segmentation_dataset",
    "write_segmentation_folder",
    "DataBundle",
    "DataSource",
    "DataSplit",
    "ImageClassificationDataset",
    "ImageTransform",
    "create_transforms",
    "disable_datasets_extra_hosts",
    "load_data",
    "load_digits_dataset",
    "load_split",
    "load_stream",
    "make_synthetic_image_dataset",
    "preserve_global_rngs",
    "synthetic_class_names",
    "to_rgb",
    "write_image_folder",
]
