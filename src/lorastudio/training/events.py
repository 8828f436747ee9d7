"""What a training run reports while it works: the CLI, the job queue and the API all listen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

EventKind = Literal["progress", "log", "sample", "checkpoint", "done"]


@dataclass(frozen=True)
class TrainingEvent:
    kind: EventKind
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    lr: float | None = None
    it_per_s: float | None = None
    eta_s: float | None = None
    message: str = ""
    path: Path | None = None


EventSink = Callable[[TrainingEvent], None]


@dataclass
class TrainingResult:
    version_dir: Path
    lora_path: Path
    diffusers_lora_dir: Path
    config_path: Path
    samples: list[Path] = field(default_factory=list)
    steps: int = 0
    final_loss: float | None = None


class TrainingStopped(Exception):
    """Raised when should_stop() turns true; the last checkpoint stays resumable."""
