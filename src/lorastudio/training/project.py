"""The on-disk layout of a run, as the A1111 train-tools extension has it:

projects/<project>/versions/<version>/
    dataset/        the prepared pictures and captions actually trained on
    reg/            the regularisation pictures, when the run has them
    cache/          latents and text embeddings
    checkpoints/    step-000100/ … (resumable state)
    samples/        preview PNGs with infotext
    logs/           metrics.jsonl, loss.png
    <name>.safetensors          kohya-format LoRA (A1111 / Forge / ComfyUI)
    diffusers/pytorch_lora_weights.safetensors   diffusers / PEFT format
    config.json     the full resolved configuration
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lorastudio.training.dataset.captions import safe_filename


@dataclass(frozen=True)
class VersionDir:
    root: Path

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def reg(self) -> Path:
        return self.root / "reg"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def diffusers(self) -> Path:
        return self.root / "diffusers"

    def lora(self, name: str) -> Path:
        return self.root / f"{name}.safetensors"

    def make(self) -> "VersionDir":
        for p in (self.dataset, self.cache, self.checkpoints, self.samples, self.logs):
            p.mkdir(parents=True, exist_ok=True)
        return self


def project_name(project: str | None, trigger: str) -> str:
    return project or safe_filename(trigger)


def version_dir(projects_dir: Path, project: str, version: str | None, *, resume: bool) -> VersionDir:
    versions = Path(projects_dir) / project / "versions"
    if version is None:
        existing = sorted(int(m.group(1)) for p in versions.glob("v*")
                          if (m := re.fullmatch(r"v(\d+)", p.name))) if versions.is_dir() else []
        if resume and existing:
            version = f"v{existing[-1]}"
        else:
            version = f"v{existing[-1] + 1 if existing else 1}"
    return VersionDir(versions / version)
