"""Dataset side of training: ingest a folder or zip, check it, caption and bucket the pictures.

Importable without torch. Entry points: `open_source`, `check_dataset`, `build_dataset`.
"""

from lorastudio.training.dataset.buckets import Bucket, BucketPlan, assign_bucket, fit_to_bucket, make_buckets
from lorastudio.training.dataset.captions import (
    augment_caption,
    default_caption,
    ensure_trigger,
    read_caption_file,
    safe_filename,
)
from lorastudio.training.dataset.checks import build_dataset, check_dataset
from lorastudio.training.dataset.config import DatasetConfig, dataset_config
from lorastudio.training.dataset.images import PreparedImage, load_training_image, probe_image
from lorastudio.training.dataset.ingest import DatasetSource, SourceFile, open_source
from lorastudio.training.dataset.report import DatasetReport, Problem, TrainingItem

__all__ = [
    "Bucket", "BucketPlan", "DatasetConfig", "DatasetReport", "DatasetSource", "PreparedImage", "Problem",
    "SourceFile", "TrainingItem", "assign_bucket", "augment_caption", "build_dataset", "check_dataset",
    "dataset_config", "default_caption", "ensure_trigger", "fit_to_bucket", "load_training_image",
    "make_buckets", "open_source", "probe_image", "read_caption_file", "safe_filename",
]
