"""Caption pictures with local models: plan every caption first, then write them.

Nothing is written until every picture has been captioned, so a model that fails half-way
leaves no half-captioned folder; each caption file appears complete under its final name.
A picture that cannot be read is reported by name and gets no caption.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol

from lorastudio.core.atomic import atomic_write_text
from lorastudio.core.errors import DatasetError
from lorastudio.core.prompt_syntax import escape_prompt_text
from lorastudio.training.dataset.caption_options import CaptionOptions
from lorastudio.training.dataset.captions import normalize_caption, split_tags
from lorastudio.training.dataset.images import load_training_image
from lorastudio.training.dataset.interrogators import resolve_interrogator
from lorastudio.training.dataset.masks import is_mask_file


class Captioner(Protocol):
    def caption(self, image) -> str: ...


@dataclass
class Interrogators:
    tagger: object | None = None  # WD14Tagger
    captioner: Captioner | None = None
    tagger_path: Path | None = None
    captioner_path: Path | None = None


@dataclass(frozen=True)
class CaptionEntry:
    image: Path
    caption_file: Path
    name: str  # how the user knows the picture
    action: Literal["write", "keep"]  # keep: a caption exists and overwrite is off
    caption: str | None  # the new caption (None for keep)
    existing: str | None  # the text already there, when there is one


@dataclass
class CaptionPlan:
    entries: list[CaptionEntry] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # full sentences naming the file

    @property
    def to_write(self) -> list[CaptionEntry]:
        return [e for e in self.entries if e.action == "write"]

    def tag_frequency(self) -> dict[str, int]:
        """Tags of the new captions and their counts, most common first (kohya's ss_tag_frequency)."""
        counts: Counter[str] = Counter()
        for e in self.to_write:
            counts.update(split_tags(e.caption or ""))
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def load_interrogators(options: CaptionOptions, models_dir: str | Path) -> Interrogators:
    """Open the models the options name (a folder path, or a name under models/interrogators/)."""
    loaded = Interrogators()
    mode = options.resolved_mode()
    if mode is None:
        raise DatasetError("no tagger or captioner given: pass --tagger and/or --captioner")
    if mode in ("tags", "both"):
        from lorastudio.training.dataset.taggers.wd14 import load_wd14

        loaded.tagger_path = resolve_interrogator(options.tagger, models_dir, option="--tagger")
        loaded.tagger = load_wd14(loaded.tagger_path)
    if mode in ("caption", "both"):
        from lorastudio.training.dataset.captioners.blip import load_captioner

        loaded.captioner_path = resolve_interrogator(options.captioner, models_dir, option="--captioner")
        loaded.captioner = load_captioner(loaded.captioner_path, task_prompt=options.task_prompt,
                                          max_length=options.max_length)
    return loaded


def caption_for(image, models: Interrogators, options: CaptionOptions, trigger: str | None) -> str:
    """One picture's caption: prefix (the trigger by default), sentence, tags, suffix."""
    mode = options.resolved_mode()
    parts: list[str] = []
    prefix = options.prefix if options.prefix is not None else (escape_prompt_text(trigger) if trigger else "")
    if prefix.strip():
        parts.append(prefix.strip())
    if mode in ("caption", "both"):
        sentence = " ".join(models.captioner.caption(image).split())
        if sentence:
            # A sentence is prompt text too: brackets in it must stay literal.
            parts.append(escape_prompt_text(sentence))
    if mode in ("tags", "both"):
        taken = set(split_tags(", ".join(parts)))
        parts.extend(t.text for t in models.tagger.tag(image, options.wd14) if t.text not in taken)
    if options.suffix and options.suffix.strip():
        parts.append(options.suffix.strip())
    return normalize_caption(", ".join(parts))


def plan_captions(images: list[tuple[Path, str]], models: Interrogators, options: CaptionOptions, *,
                  trigger: str | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> CaptionPlan:
    """Caption each (path, display name); nothing is written here."""
    plan = CaptionPlan()
    claimed: dict[Path, str] = {}
    for i, (path, name) in enumerate(images):
        caption_file = path.with_suffix(".txt")
        if caption_file in claimed:
            # a.png and a.jpg would share a.txt: the second would silently take the first's caption.
            plan.failures.append(f"{name}: shares the caption file {caption_file.name} with {claimed[caption_file]}; "
                                 "rename one; no caption written")
            continue
        claimed[caption_file] = name
        # kohya's other caption extension counts as a caption the user wrote.
        existing = _existing(caption_file)
        if existing is None:
            existing = _existing(path.with_suffix(".caption"))
        if existing is not None and not options.overwrite:
            plan.entries.append(CaptionEntry(path, caption_file, name, "keep", None, existing))
        else:
            try:
                # No CRC pass (verify=False): a truncated file still fails to decode, and captioning
                # does not need the second full read the dataset check makes.
                prepared = load_training_image(path, (255, 255, 255), min_size=0, max_pixels=options.max_pixels,
                                               verify=False)
            except DatasetError as exc:
                plan.failures.append(f"{name}: {getattr(exc, 'why', exc)}; no caption written")
            else:
                try:
                    caption = caption_for(prepared.rgb, models, options, trigger)
                except Exception as exc:  # noqa: BLE001 - onnxruntime / torch errors are untyped
                    # Nothing has been written yet: the run stops here with the picture named.
                    raise DatasetError(f"{name}: the model failed on this picture ({type(exc).__name__}: "
                                       f"{str(exc).strip()[:300]}); no caption was written") from exc
                plan.entries.append(CaptionEntry(path, caption_file, name, "write", caption, existing))
        if on_progress:
            on_progress(i + 1, len(images))
    return plan


def write_captions(plan: CaptionPlan) -> list[Path]:
    written = []
    for e in plan.to_write:
        atomic_write_text(e.caption_file, e.caption + "\n")
        written.append(e.caption_file)
    return written


def caption_images_in(root: Path) -> list[Path]:
    """The pictures of a folder (recursively) that get captions: mask files are left out."""
    from lorastudio.training.dataset.ingest import open_source

    with open_source(root) as src:
        return [f.path for f in src.images if not is_mask_file(f.rel)]


def _existing(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
