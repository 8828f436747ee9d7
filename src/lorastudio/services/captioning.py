"""One captioning run over a dataset folder or zip, as the CLI and the HTTP API start it.

A folder is captioned in place (`<image>.txt` beside each picture). A zip is first extracted
safely into `out_dir` (which must not exist or be empty) and captioned there, so the archive
itself is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lorastudio.core.errors import DatasetError
from lorastudio.training.dataset.autocaption import (
    CaptionPlan,
    Interrogators,
    load_interrogators,
    plan_captions,
    write_captions,
)
from lorastudio.training.dataset.masks import is_mask_file
from lorastudio.training.dataset.caption_options import CaptionOptions
from lorastudio.training.dataset.ingest import open_source


@dataclass
class CaptionRun:
    root: Path  # the folder whose captions were (or would be) written
    plan: CaptionPlan
    written: list[Path] = field(default_factory=list)
    dry_run: bool = False

    def preview(self, width: int = 100) -> str:
        """The table `--dry-run` prints: picture, what happens, the caption."""
        rows = []
        for e in self.plan.entries:
            what = ("keep" if e.action == "keep" else "replace" if e.existing is not None else "new")
            text = e.existing if e.action == "keep" else e.caption
            rows.append((e.name, what, _clip(text or "", width)))
        rows += [(msg.split(": ", 1)[0], "FAILED", _clip(msg.split(": ", 1)[-1], width)) for msg in self.plan.failures]
        if not rows:
            return "no pictures"
        w0 = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{w0}}  {what:<7}  {text}" for name, what, text in rows)

    def frequency_text(self, top: int = 30) -> str:
        freq = self.plan.tag_frequency()
        if not freq:
            return "tag frequency: no new captions"
        items = list(freq.items())
        lines = [f"tag frequency ({len(items)} tags in {len(self.plan.to_write)} new captions):"]
        lines += [f"  {count:>5}  {tag}" for tag, count in items[:top]]
        if len(items) > top:
            lines.append(f"  ... and {len(items) - top} more")
        return "\n".join(lines)

    def summary(self) -> dict:
        entries = [{"image": e.image.relative_to(self.root).as_posix(), "action": e.action, "caption": e.caption,
                    "existing": e.existing} for e in self.plan.entries]
        return {"root": str(self.root), "dry_run": self.dry_run, "entries": entries,
                "written": [str(p) for p in self.written],
                "kept": [e.name for e in self.plan.entries if e.action == "keep"],
                "failures": list(self.plan.failures),
                "captions": {e.name: e.caption for e in self.plan.to_write},
                "tag_frequency": self.plan.tag_frequency()}


def caption_dataset(source: str | Path, options: CaptionOptions, *, models_dir: str | Path,
                    trigger: str | None = None, out_dir: str | Path | None = None, dry_run: bool = False,
                    models: Interrogators | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> CaptionRun:
    """Caption every picture of a folder (or of a zip extracted into `out_dir`).

    Models are loaded (or taken from `models`) before any picture is read: a missing model
    file fails the run before anything is written.
    """
    source = Path(source)
    models = models or load_interrogators(options, models_dir)
    if source.is_dir():
        opened = open_source(source)
    elif out_dir is None:
        raise DatasetError(f"{source}: captions of a zip need a folder to go to (--out DIR); the archive "
                           "itself is never changed")
    else:
        opened = open_source(source, extract_to=out_dir)
    with opened:
        images = [(f.path, opened.display(f.rel)) for f in opened.images
                  if not is_mask_file(f.rel)]
        if not images:
            raise DatasetError(f"{source}: no pictures (PNG, JPEG, WebP, BMP) to caption")
        plan = plan_captions(images, models, options, trigger=trigger, on_progress=on_progress)
        run = CaptionRun(root=opened.root, plan=plan, dry_run=dry_run)
        if not dry_run:
            run.written = write_captions(plan)
    return run


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
