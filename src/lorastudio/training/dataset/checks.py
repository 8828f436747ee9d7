"""Find every problem in a dataset before training starts, and build the training items.

Each picture is decoded once, fully, so that a truncated file fails here and not at step
3,000. Problems are collected, never raised one at a time: the user fixes everything in one go.

Codes (severity): empty, no_images (error, cannot be skipped); unreadable, not_an_image,
unsupported_image, corrupt, too_small, too_large, duplicate, shared_stem, caption_unreadable
(error; the picture is left out with skip_bad); missing_caption, empty_caption,
several_captions, orphan_caption, unsupported_file, blank, cropped, colour (warning).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import PurePosixPath

from lorastudio.core.errors import DatasetError
from lorastudio.core.prompt_syntax import escape_prompt_text
from lorastudio.training.dataset.buckets import Bucket, BucketPlan, assign_bucket, cropped_fraction
from lorastudio.training.dataset.captions import default_caption, ensure_trigger, read_caption_file
from lorastudio.training.dataset.config import DatasetConfig
from lorastudio.training.dataset.images import (
    ImageRejected,
    file_digest,
    load_training_image,
    pixel_digest,
    probe_image,
)
from lorastudio.training.dataset.ingest import DatasetSource, SourceFile, open_source
from lorastudio.training.dataset.masks import is_mask_file
from lorastudio.training.dataset.report import DatasetReport, Problem, TrainingItem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".dib")
# Cropping away more than this share of a picture is worth a warning: the subject may be cut.
CROP_WARNING = 0.35


class _Collector:
    def __init__(self, source: DatasetSource):
        self.source = source
        self.problems: list[Problem] = []
        self.bad: set[str] = set()  # rel paths of pictures with an error

    def add(self, rel: str | None, code: str, why: str, severity: str = "error") -> None:
        file = self.source.display(rel) if rel is not None else str(self.source.origin)
        self.problems.append(Problem(file=file, code=code, message=f"{file}: {why}", severity=severity))
        if severity == "error" and rel is not None:
            self.bad.add(rel)


def check_dataset(source: DatasetSource | str | os.PathLike[str], config: DatasetConfig) -> DatasetReport:
    """Check every file of a dataset; never raises for problems in the data, only reports them.

    Given a path, the source is opened and closed here: for a zip, the report's items then
    point into a folder that no longer exists, so open the source yourself to train from it.
    """
    if not isinstance(source, DatasetSource):
        with open_source(source, max_unzipped_bytes=config.max_unzipped_bytes) as opened:
            return check_dataset(opened, config)
    out = _Collector(source)
    caption_exts = config.caption_extensions
    images, mask_files = _split_masks(source.images)
    captions = [f for f in source.files if f.image_format is None and f.suffix in caption_exts]
    used = {f.rel for f in images} | {f.rel for f in captions} | set(mask_files.values())
    others = [f for f in source.files if f.rel not in used]
    counts = {"images": len(images), "captions": len(captions), "other": len(others),
              "ignored": len(source.ignored)}
    settings = (f"trigger: {config.trigger_word}   resolutions: {', '.join(map(str, config.resolutions))}   "
                f"bucket step: {config.bucket_step}   upscale: {'yes' if config.allow_upscale else 'no'}")

    def report(items: list[TrainingItem], plan_rows: list[tuple[str, Bucket, int]]) -> DatasetReport:
        skipped = sorted(source.display(r) for r in out.bad)
        return DatasetReport(origin=str(source.origin), problems=out.problems, skipped_if_allowed=skipped,
                             plan=BucketPlan.build(plan_rows), items=items, counts=counts,
                             settings_line=settings)

    if not source.files:
        what = "archive" if source.is_zip else "folder"
        extra = f" ({len(source.ignored)} hidden/OS files ignored)" if source.ignored else ""
        out.add(None, "empty", f"the {what} is empty{extra}; put the pictures (PNG, JPEG, WebP, BMP) in it")
        return report([], [])

    for f in others:
        _classify_other(out, f, caption_exts)
    if not images:
        out.add(None, "no_images",
                f"no images found ({len(captions)} caption files, {len(others)} other files); "
                "supported pictures are PNG, JPEG, WebP and BMP")
        return report([], [])

    _shared_stems(out, images)
    caption_files = _caption_index(captions, caption_exts)
    any_captioned = any(f.stem_key in caption_files for f in images)
    seen_bytes: dict[str, str] = {}
    seen_pixels: dict[str, str] = {}
    items: list[TrainingItem] = []
    plan_rows: list[tuple[str, Bucket, int]] = []
    transparent = 0
    # Captioned pictures first, so that of two duplicates the one with a caption is kept.
    for f in sorted(images, key=lambda im: (im.stem_key not in caption_files, im.rel)):
        prepared_size, has_alpha = _check_picture(out, f, config, seen_bytes, seen_pixels)
        caption = _caption_for(out, f, caption_files.get(f.stem_key, []), any_captioned, config)
        if has_alpha:
            transparent += 1
        if f.rel in out.bad or prepared_size is None or caption is None:
            continue
        repeats = f.repeats if f.repeats is not None else config.repeats
        for bucket in _buckets_for(out, f, prepared_size, config):
            items.append(TrainingItem(image_path=f.path, caption=caption, repeats=repeats, bucket=bucket,
                                      mask_available=(has_alpha or f.stem_key in mask_files)
                                      and config.use_alpha_mask,
                                      original_size=prepared_size, name=source.display(f.rel)))
            plan_rows.append((source.display(f.rel), bucket, repeats))
    counts["transparent"] = transparent

    for stem, files in sorted(caption_files.items()):
        if not any(img.stem_key == stem for img in images):
            for cap in files:
                out.add(cap.rel, "orphan_caption", "caption without a picture of the same name; not used",
                        "warning")
    # A picture left out anyway gets only its errors: "no caption" or "flat colour" on a
    # truncated file is noise.
    bad_files = {source.display(r) for r in out.bad}
    out.problems = [p for p in out.problems if p.severity == "error" or p.file not in bad_files]
    out.problems.sort(key=lambda p: (p.file, p.severity != "error", p.code))
    items.sort(key=lambda i: (i.name, i.bucket.resolution))
    return report(items, plan_rows)


def build_dataset(source: DatasetSource, config: DatasetConfig, skip_bad: bool = False, *,
                  report: DatasetReport | None = None) -> list[TrainingItem]:
    """The training items of a dataset; raises DatasetError listing every error first.

    With skip_bad, pictures with errors are left out (warnings never block). An empty
    dataset, one without pictures, or one where every picture is bad still raises.
    """
    report = report if report is not None else check_dataset(source, config)
    if report.errors and (not skip_bad or report.blocking):
        raise DatasetError(f"{report.origin}: {len(report.errors)} error(s) in the dataset:\n"
                           + report.problems_text(errors_only=True))
    if not report.items:
        raise DatasetError(f"{report.origin}: no usable pictures left after skipping the bad ones:\n"
                           + report.problems_text(errors_only=True))
    return list(report.items)


def _split_masks(images: list[SourceFile]) -> tuple[list[SourceFile], dict[str, str]]:
    """Pictures to train on, and {picture stem: rel} of `<stem>.mask.png` subject masks beside them."""
    stems = {f.stem_key for f in images if not is_mask_file(f.rel)}
    masks = {f.stem_key[: -len(".mask")]: f.rel for f in images
             if is_mask_file(f.rel) and f.stem_key[: -len(".mask")] in stems}
    used = set(masks.values())
    return [f for f in images if f.rel not in used], masks


def _classify_other(out: _Collector, f: SourceFile, caption_exts: tuple[str, ...]) -> None:
    if f.image_format is not None:
        out.add(f.rel, "unsupported_image",
                f"{f.image_format} pictures are not supported; convert it to PNG (or JPEG/WebP/BMP)")
    elif f.suffix in IMAGE_EXTENSIONS:
        out.add(f.rel, "not_an_image", f"has the extension {f.suffix} but its content is not a picture")
    else:
        known = ", ".join(caption_exts)
        out.add(f.rel, "unsupported_file", f"neither a picture nor a caption ({known}); ignored", "warning")


def _shared_stems(out: _Collector, images: list[SourceFile]) -> None:
    by_stem: dict[str, list[SourceFile]] = defaultdict(list)
    for f in images:
        by_stem[f.stem_key].append(f)
    for stem, files in by_stem.items():
        if len(files) < 2:
            continue
        first = files[0]
        for f in files[1:]:
            out.add(f.rel, "shared_stem",
                    f"shares the name {PurePosixPath(stem).name!r} with {PurePosixPath(first.rel).name}; "
                    "one caption file would serve both. Rename or remove one")


def _caption_index(captions: list[SourceFile], exts: tuple[str, ...]) -> dict[str, list[SourceFile]]:
    index: dict[str, list[SourceFile]] = defaultdict(list)
    for f in captions:
        index[f.stem_key].append(f)
    for files in index.values():
        # The configured order decides which one wins when a stem has both .txt and .caption.
        files.sort(key=lambda c: (exts.index(c.suffix), c.rel))
    return dict(index)


def _check_picture(out: _Collector, f: SourceFile, config: DatasetConfig, seen_bytes: dict[str, str],
                   seen_pixels: dict[str, str]) -> tuple[tuple[int, int] | None, bool]:
    """Record every problem of one picture; (displayed size, has transparency) when it decodes."""
    try:
        info = probe_image(f.path, max_pixels=config.max_pixels)
    except ImageRejected as exc:
        out.add(f.rel, exc.code, exc.why)
        return None, False
    w, h = info.oriented_size
    if min(w, h) < config.min_size:
        out.add(f.rel, "too_small", f"is {w}x{h}; the shortest side must be at least {config.min_size} px "
                                    "(min_size)")
    try:
        prepared = load_training_image(f.path, config.background, min_size=0, max_pixels=config.max_pixels)
    except ImageRejected as exc:
        out.add(f.rel, exc.code, exc.why)
        return None, False
    for note in prepared.notes:
        out.add(f.rel, "colour", note, "warning")
    byte_key = file_digest(f.path)
    pixel_key = pixel_digest(prepared)
    if byte_key in seen_bytes:
        out.add(f.rel, "duplicate", f"is an identical copy of {seen_bytes[byte_key]}")
    elif pixel_key in seen_pixels:
        out.add(f.rel, "duplicate", f"has exactly the same pixels as {seen_pixels[pixel_key]}")
    seen_bytes.setdefault(byte_key, f.rel)
    seen_pixels.setdefault(pixel_key, f.rel)
    extrema = prepared.rgb.getextrema()
    if all(lo == hi for lo, hi in extrema):
        out.add(f.rel, "blank", "is a single flat colour (fully transparent?); it teaches nothing", "warning")
    return prepared.original_size, prepared.has_alpha


def _caption_for(out: _Collector, f: SourceFile, files: list[SourceFile], any_captioned: bool,
                 config: DatasetConfig) -> str | None:
    if config.add_trigger:
        fallback = default_caption(config.trigger_word, config.class_word)
    else:  # a regularisation picture shows the class without the concept: no trigger
        fallback = escape_prompt_text(config.class_word) if config.class_word else ""
    if not files:
        if any_captioned:
            exts = " / ".join(PurePosixPath(f.rel).stem + e for e in config.caption_extensions)
            out.add(f.rel, "missing_caption", f"has no caption file ({exts}) while other pictures do; "
                                              f"it is captioned {fallback!r}", "warning")
        return fallback
    chosen = files[0]
    if len(files) > 1:
        ignored = ", ".join(PurePosixPath(c.rel).name for c in files[1:])
        out.add(chosen.rel, "several_captions",
                f"used as the caption of {PurePosixPath(f.rel).name}; also found {ignored}, ignored", "warning")
    try:
        text = read_caption_file(chosen.path, out.source.display(chosen.rel))
    except DatasetError as exc:
        out.add(f.rel, "caption_unreadable", f"its caption cannot be read: {exc}")
        return None
    if not text:
        out.add(chosen.rel, "empty_caption", f"is empty; {PurePosixPath(f.rel).name} is captioned {fallback!r}",
                "warning")
        return fallback
    return ensure_trigger(text, config.trigger_word) if config.add_trigger else text


def _buckets_for(out: _Collector, f: SourceFile, size: tuple[int, int], config: DatasetConfig) -> list[Bucket]:
    buckets: list[Bucket] = []
    seen: set[tuple[int, int]] = set()
    for res in config.resolutions:
        try:
            b = assign_bucket(size, res, step=config.bucket_step, min_aspect=config.min_aspect,
                              max_aspect=config.max_aspect, allow_upscale=config.allow_upscale)
        except DatasetError as exc:
            out.add(f.rel, "too_small", str(exc))
            return []
        # One picture at one size once: see the buckets module on several resolutions.
        if (b.width, b.height) in seen:
            continue
        seen.add((b.width, b.height))
        buckets.append(b)
    if buckets:
        lost = cropped_fraction(size, buckets[0])
        if lost > CROP_WARNING:
            out.add(f.rel, "cropped", f"is {size[0]}x{size[1]}; {lost:.0%} of it is cut away to fit "
                                      f"{buckets[0].label} (aspect range {config.min_aspect:g}..{config.max_aspect:g})",
                    "warning")
    return buckets
