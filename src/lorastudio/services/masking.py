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
    root: Path | None = None  # the folder the masks are in (a zip's extraction folder)


def mask_dataset(folder: str | Path, *, model: str | None, models_dir: str | Path,
                 overwrite: bool = False, u2net_home: str | Path | None = None,
                 out_dir: str | Path | None = None) -> MaskRun:
    """Masks beside the pictures of `folder`, or of a zip extracted safely into `out_dir` (which
    must not exist or be empty: the archive itself is never changed), as `dataset caption` does.
    The model loads first (a bad file fails before anything is extracted or written); a picture
    that cannot be read is reported by name and gets no mask."""
    folder = Path(folder)
    if not folder.is_dir() and out_dir is None:
        raise DatasetError(f"{folder}: masks of a zip need a folder to go to (--out DIR); the archive itself is "
                           "never changed" if folder.is_file() else f"{folder}: no such folder or .zip file")
    seg = load_segmentation_model(resolve_segmentation_model(model, models_dir, u2net_home)) if model else None
    run = MaskRun()
    with open_source(folder, extract_to=None if folder.is_dir() else out_dir) as src:
        run.root = src.root
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
