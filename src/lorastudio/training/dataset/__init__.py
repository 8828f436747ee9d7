"""Dataset side of training: ingest a folder or zip, check it, caption and bucket the pictures.

Importable without torch. Entry points: `open_source`, `check_dataset`, `build_dataset`.

The names below are imported on first use (PEP 562), so importing one light submodule (the
TrainingConfig needs only `config`) does not load Pillow and numpy: `lorastudio --help` builds
the train command's flags from TrainingConfig and stays quick.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Bucket": "buckets", "BucketPlan": "buckets", "assign_bucket": "buckets", "fit_to_bucket": "buckets",
    "make_buckets": "buckets",
    "augment_caption": "captions", "default_caption": "captions", "ensure_trigger": "captions",
    "read_caption_file": "captions", "safe_filename": "captions",
    "build_dataset": "checks", "check_dataset": "checks",
    "DatasetConfig": "config", "dataset_config": "config",
    "PreparedImage": "images", "load_training_image": "images", "probe_image": "images",
    "DatasetSource": "ingest", "SourceFile": "ingest", "open_source": "ingest",
    "DatasetReport": "report", "Problem": "report", "TrainingItem": "report",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
