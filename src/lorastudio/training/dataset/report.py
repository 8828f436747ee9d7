"""What a dataset check found, and the text `lorastudio dataset check DIR_OR_ZIP` prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lorastudio.training.dataset.buckets import Bucket, BucketPlan

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    file: str  # how the user knows the file: full path, or "archive.zip:inner/path"
    code: str  # short stable name: corrupt, too_small, too_large, duplicate, ...
    message: str  # full sentence, starting with the file name
    severity: Severity = "error"


@dataclass(frozen=True)
class TrainingItem:
    """One picture at one resolution, ready for the training loop.

    `caption` is the base caption in A1111 prompt syntax (trigger first, escaped); the loop
    applies `captions.augment_caption` to it per step. `mask_available` is True when the
    loss should be masked with the picture's alpha: it has transparency and the config's
    use_alpha_mask is on.
    """

    image_path: Path
    caption: str
    repeats: int
    bucket: Bucket
    mask_available: bool
    original_size: tuple[int, int] = (0, 0)
    name: str = ""  # display name, for logs


@dataclass
class DatasetReport:
    origin: str
    problems: list[Problem]
    skipped_if_allowed: list[str]  # pictures build_dataset(skip_bad=True) leaves out
    plan: BucketPlan  # of the pictures that would be used
    items: list[TrainingItem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # images, captions, other, ignored
    settings_line: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def problems_for(self, file: str) -> list[Problem]:
        return [p for p in self.problems if p.file == file]

    @property
    def blocking(self) -> list[Problem]:
        """Errors that skipping bad pictures cannot get around (empty dataset, no images)."""
        return [p for p in self.errors if p.file not in self.skipped_if_allowed]

    def problems_text(self, *, errors_only: bool = False) -> str:
        chosen = self.errors if errors_only else self.problems
        if not chosen:
            return "no problems"
        width = max(len(p.code) for p in chosen)
        return "\n".join(f"{p.severity:<7}  {p.code:<{width}}  {p.message}" for p in chosen)

    def render(self) -> str:
        c = self.counts
        lines = [f"Dataset: {self.origin}"]
        summary = (f"  {_n(c.get('images', 0), 'picture')}, {_n(c.get('captions', 0), 'caption file')}, "
                   f"{_n(c.get('other', 0), 'other file')}")
        if c.get("ignored"):
            summary += f" ({c['ignored']} hidden/OS files ignored)"
        lines.append(summary)
        if c.get("transparent"):
            lines.append(f"  {_n(c['transparent'], 'picture')} with transparency")
        if self.settings_line:
            lines.append(f"  {self.settings_line}")
        lines.append("")
        if self.problems:
            by_sev = Counter(p.severity for p in self.problems)
            lines.append(f"Problems: {_n(by_sev.get('error', 0), 'error')}, {_n(by_sev.get('warning', 0), 'warning')}")
            lines.extend("  " + ln for ln in self.problems_text().splitlines())
        else:
            lines.append("Problems: none")
        lines.append("")
        lines.append("Buckets:")
        lines.extend("  " + ln for ln in self.plan.render().splitlines())
        lines.append("")
        if self.ok:
            lines.append(f"Result: OK, {_n(len({i.image_path for i in self.items}), 'picture')}, "
                         f"{self.plan.total_samples} samples per epoch")
        elif self.blocking:
            lines.append(f"Result: NOT READY, {_n(len(self.errors), 'error')}; nothing can be trained until "
                         "they are fixed")
        else:
            names = ", ".join(self.skipped_if_allowed[:10])
            more = f" and {len(self.skipped_if_allowed) - 10} more" if len(self.skipped_if_allowed) > 10 else ""
            lines.append(f"Result: NOT READY, {_n(len(self.errors), 'error')}. Fix them, or skip the bad pictures "
                         f"(--skip-bad-images) to train without: {names}{more}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
