"""One masking run over a dataset folder: `<image>.mask.png` for every picture."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorastudio.core.errors import DatasetError, LorastudioError
from lorastudio.training.dataset.ingest import open_source
from lorastudio.training.dataset.masks import (
    MaskResult,
    is_mask_file,
    load_segmentation_model,
    make_mask,
    resolve_segmentation_model,
)


@dataclass
class MaskRun:
    results: list[MaskResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def mask_dataset(folder: str | Path, *, model: str | None, models_dir: str | Path,
                 overwrite: bool = False, u2net_home: str | Path | None = None) -> MaskRun:
    """Masks beside the pictures of `folder`. The model loads first (a bad file fails before any
    mask is written); a picture that cannot be read is reported by name and gets no mask."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (extract a zip first, e.g. with dataset caption --out)")
    seg = load_segmentation_model(resolve_segmentation_model(model, models_dir, u2net_home)) if model else None
    run = MaskRun()
    with open_source(folder) as src:
        pictures = [f for f in src.images if not is_mask_file(f.rel)]
        if not pictures:
            raise DatasetError(f"{folder}: no pictures (PNG, JPEG, WebP, BMP) to mask")
        for f in pictures:
            try:
                run.results.append(make_mask(f.path, seg, overwrite=overwrite))
            except LorastudioError as exc:
                run.failures.append(f"{exc}; no mask written" if str(f.path) in str(exc)
                                    else f"{f.path}: {exc}; no mask written")
    return run
