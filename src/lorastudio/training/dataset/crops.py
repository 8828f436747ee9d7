"""Subject-centred crops to the training buckets (`lorastudio dataset crop`).

Training centre-crops a picture that does not match its bucket's shape, which can cut a
subject standing near an edge. Cropping beforehand around the subject (the centroid of the
picture's mask: `<image>.mask.png` or its alpha) keeps it in frame; without a mask the crop
is the centre crop training would have made. Same resize-to-cover as training, so the result
is exactly the bucket's size and training uses it as it is.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lorastudio.core.atomic import atomic_path
from lorastudio.core.errors import DatasetError
from lorastudio.training.dataset.buckets import Bucket, assign_bucket, crop_geometry
from lorastudio.training.dataset.images import probe_image
from lorastudio.training.dataset.masks import is_mask_file, mask_path_for, read_mask


def subject_box(size: tuple[int, int], bucket: Bucket, mask: Image.Image | None) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(resized size, crop box) with the box centred on the mask's centroid, kept inside the picture."""
    (rw, rh), box = crop_geometry(size, bucket)
    if mask is None:
        return (rw, rh), box
    weights = np.asarray(mask.resize((rw, rh), Image.Resampling.BILINEAR), dtype=np.float64)
    total = weights.sum()
    if total <= 0:
        return (rw, rh), box
    ys, xs = np.indices(weights.shape)
    cx, cy = (xs * weights).sum() / total, (ys * weights).sum() / total
    left = int(round(min(max(cx - bucket.width / 2, 0), rw - bucket.width)))
    top = int(round(min(max(cy - bucket.height / 2, 0), rh - bucket.height)))
    return (rw, rh), (left, top, left + bucket.width, top + bucket.height)


def crop_to_bucket(image: Image.Image, bucket: Bucket, mask: Image.Image | None) -> tuple[Image.Image, tuple]:
    (rw, rh), box = subject_box(image.size, bucket, mask)
    resized = image.resize((rw, rh), Image.Resampling.LANCZOS) if (rw, rh) != image.size else image
    return resized.crop(box), ((rw, rh), box)


@dataclass(frozen=True)
class CropResult:
    source: Path
    target: Path
    bucket: Bucket


def crop_folder(folder: Path, out: Path, *, resolution: int, step: int = 64) -> list[CropResult]:
    """Crop every picture of `folder` into `out` (captions and masks follow, cropped alike). A zip
    is extracted with the dataset ingest's checks into a temporary folder, removed afterwards."""
    from lorastudio.training.dataset.ingest import open_source

    folder, out = Path(folder), Path(out)
    if out.resolve() == folder.resolve():
        raise DatasetError(f"{out}: the crops need another folder than the pictures (--out)")
    results = []
    with open_source(folder) as src:
        for f in src.images:
            if is_mask_file(f.rel):
                continue
            probe_image(f.path)  # size guard before decoding; raises naming the file
            with Image.open(f.path) as im:
                im.load()
                picture = ImageOps.exif_transpose(im)
            if picture.mode not in ("RGB", "RGBA", "L", "LA"):
                picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
            mask_file = mask_path_for(f.path)
            mask = read_mask(mask_file, picture.size) if mask_file.is_file() else (
                picture.getchannel("A") if picture.mode in ("RGBA", "LA") else None)
            bucket = assign_bucket(picture.size, resolution, step=step)
            cropped, geometry = crop_to_bucket(picture, bucket, mask)
            target = out / f.rel
            target = target.with_suffix(".png")
            with atomic_path(target) as tmp:
                cropped.save(tmp, format="PNG")
            if mask_file.is_file():
                (rw, rh), box = geometry
                with atomic_path(mask_path_for(target)) as tmp:
                    mask.resize((rw, rh), Image.Resampling.LANCZOS).crop(box).save(tmp, format="PNG")
            caption = f.path.with_suffix(".txt")
            if caption.is_file():
                with atomic_path(target.with_suffix(".txt")) as tmp:
                    shutil.copyfile(caption, tmp)
            results.append(CropResult(f.path, target, bucket))
    return results
