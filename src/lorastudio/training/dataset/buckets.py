"""Aspect-ratio bucketing: which width x height each picture is trained at.

Buckets for a base resolution R are the sizes w x h, both multiples of `step`, with
w*h <= R*R and min_aspect <= w/h <= max_aspect, where for each width the tallest such height
is taken (the largest area that shape allows). A picture goes to the bucket whose aspect
ratio is closest to its own (compared on a log scale, so 2:1 and 1:2 are equally far from
1:1), is resized so that it covers the bucket, then centre-cropped.

Without `allow_upscale`, a picture smaller than its bucket would have to be enlarged; it gets
a bucket of its own instead: its size scaled down to area R*R at most, aspect clamped to the
allowed range, each side rounded down to the step. So a 128 px sticker trains at 128x128,
never blown up to 512x512.

Several resolutions: every picture is assigned once per resolution, as multi-resolution
training does (each epoch sees the picture at each size). When two resolutions give a picture
the same bucket (a small picture that cannot be enlarged), it is kept once, so that small
pictures do not weigh double.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass, field

from PIL import Image

from lorastudio.core.errors import DatasetError


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int
    resolution: int = field(compare=False)

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"


@functools.lru_cache(maxsize=64)
def make_buckets(resolution: int, step: int = 64, min_aspect: float = 0.25,
                 max_aspect: float = 4.0) -> tuple[Bucket, ...]:
    """All standard buckets for one base resolution, sorted by width."""
    _check_args(resolution, step, min_aspect, max_aspect)
    area = resolution * resolution
    sizes: set[tuple[int, int]] = set()
    w = step
    while w * step <= area:
        h = (area // w) // step * step
        # The transposed size too: walking widths alone gives wide shapes a finer set of
        # buckets than tall ones (704x320 and 768x320 but only 320x768).
        for bw, bh in ((w, h), (h, w)):
            if bh >= step and bw * bh <= area and min_aspect <= bw / bh <= max_aspect:
                sizes.add((bw, bh))
        w += step
    if not sizes:
        raise DatasetError(f"resolution {resolution} with step {step} allows no bucket")
    return tuple(Bucket(bw, bh, resolution) for bw, bh in sorted(sizes))


def _check_args(resolution: int, step: int, min_aspect: float, max_aspect: float) -> None:
    if step <= 0 or resolution < step:
        raise DatasetError(f"resolution={resolution}, bucket_step={step}: the resolution must be at least one step")
    if not (0 < min_aspect <= 1 <= max_aspect):
        raise DatasetError(f"aspect range {min_aspect}..{max_aspect} must contain 1")


def _log_distance(a: float, b: float) -> float:
    return abs(math.log(a) - math.log(b))


def assign_bucket(size: tuple[int, int], resolution: int, *, step: int = 64, min_aspect: float = 0.25,
                  max_aspect: float = 4.0, allow_upscale: bool = False) -> Bucket:
    """The bucket one picture of `size` (width, height) trains at, for one base resolution."""
    iw, ih = size
    if iw <= 0 or ih <= 0:
        raise DatasetError(f"cannot bucket an image of size {iw}x{ih}")
    buckets = make_buckets(resolution, step, min_aspect, max_aspect)
    aspect = iw / ih
    # Ties (equally close aspect) go to the larger area, then the wider bucket: fixed order.
    best = min(buckets, key=lambda b: (_log_distance(b.aspect, aspect), -b.width * b.height, -b.width))
    if allow_upscale or cover_scale(size, best) <= 1.0:
        return best
    return _own_bucket(iw, ih, resolution, step, min_aspect, max_aspect)


def _own_bucket(iw: int, ih: int, resolution: int, step: int, min_aspect: float, max_aspect: float) -> Bucket:
    # Crop to the allowed aspect range first, then shrink to the area limit: the other order
    # can shrink a long thin picture below one step before the crop would have saved it.
    cw, ch = float(iw), float(ih)
    if cw / ch > max_aspect:
        cw = ch * max_aspect
    elif cw / ch < min_aspect:
        ch = cw / min_aspect
    s = min(1.0, math.sqrt(resolution * resolution / (cw * ch)))
    w = int(cw * s // step) * step
    h = int(ch * s // step) * step
    if w >= step and h >= step:
        # Rounding each side down separately can push a clamped ratio just past the limit.
        if w / h > max_aspect:
            w = int(h * max_aspect // step) * step
        elif w / h < min_aspect:
            h = int(w / min_aspect // step) * step
        return Bucket(w, h, resolution)
    # Still below one step on a side: the standard bucket closest in shape that fits inside.
    fitting = [b for b in make_buckets(resolution, step, min_aspect, max_aspect) if b.width <= iw and b.height <= ih]
    if not fitting:
        raise DatasetError(f"an image of {iw}x{ih} is too small for any {step}-px bucket without upscaling")
    aspect = iw / ih
    return min(fitting, key=lambda b: (_log_distance(b.aspect, aspect), -b.width * b.height, -b.width))


def cover_scale(size: tuple[int, int], bucket: Bucket) -> float:
    """Scale factor that makes a picture cover the bucket (above 1 means enlarging)."""
    return max(bucket.width / size[0], bucket.height / size[1])


def crop_geometry(size: tuple[int, int], bucket: Bucket) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(resized size, centre-crop box) taking a picture of `size` onto `bucket`."""
    iw, ih = size
    scale = cover_scale(size, bucket)
    rw = max(bucket.width, round(iw * scale))
    rh = max(bucket.height, round(ih * scale))
    left = (rw - bucket.width) // 2
    top = (rh - bucket.height) // 2
    return (rw, rh), (left, top, left + bucket.width, top + bucket.height)


def fit_to_bucket(image: Image.Image, bucket: Bucket) -> Image.Image:
    """Resize to cover the bucket, then centre-crop. Use the same call for the alpha mask."""
    (rw, rh), box = crop_geometry(image.size, bucket)
    if (rw, rh) != image.size:
        image = image.resize((rw, rh), Image.Resampling.LANCZOS)
    return image.crop(box) if image.size != (bucket.width, bucket.height) else image


def cropped_fraction(size: tuple[int, int], bucket: Bucket) -> float:
    """Share of the picture's area that the centre crop cuts away."""
    (rw, rh), _ = crop_geometry(size, bucket)
    return 1.0 - (bucket.width * bucket.height) / (rw * rh)


@dataclass(frozen=True)
class PlanEntry:
    bucket: Bucket
    images: tuple[str, ...]  # display names, sorted
    samples: int  # images weighted by their repeats: samples per epoch in this bucket


@dataclass(frozen=True)
class BucketPlan:
    entries: tuple[PlanEntry, ...]  # sorted by resolution, then width, then height

    @classmethod
    def build(cls, assignments: list[tuple[str, Bucket, int]]) -> "BucketPlan":
        """From (image name, bucket, repeats) triples; order of the input does not matter."""
        groups: dict[tuple[int, int, int], list[tuple[str, int]]] = defaultdict(list)
        for name, bucket, repeats in assignments:
            groups[(bucket.resolution, bucket.width, bucket.height)].append((name, repeats))
        entries = []
        for (res, w, h), members in sorted(groups.items()):
            members.sort()
            entries.append(PlanEntry(Bucket(w, h, res), tuple(n for n, _ in members),
                                     sum(r for _, r in members)))
        return cls(tuple(entries))

    @property
    def total_images(self) -> int:
        return sum(len(e.images) for e in self.entries)

    @property
    def total_samples(self) -> int:
        return sum(e.samples for e in self.entries)

    def counts(self) -> dict[tuple[int, str], int]:
        """{(resolution, "WxH"): image count}."""
        return {(e.bucket.resolution, e.bucket.label): len(e.images) for e in self.entries}

    def render(self) -> str:
        if not self.entries:
            return "(no images to bucket)"
        rows = [("resolution", "bucket", "aspect", "images", "per epoch")]
        for e in self.entries:
            rows.append((str(e.bucket.resolution), e.bucket.label, f"{e.bucket.aspect:.2f}",
                         str(len(e.images)), str(e.samples)))
        rows.append(("total", "", "", str(self.total_images), str(self.total_samples)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j]) for j, c in enumerate(r)).rstrip())
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()
