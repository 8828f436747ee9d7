"""Resumable training state: LoRA weights, optimizer, LR schedule, RNG states and the step.

A checkpoint is a folder written under a `.partial` name and renamed when complete, so a
process killed at any moment leaves either a whole checkpoint or none. Only the last K are kept.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lorastudio.core import atomic
from lorastudio.core.atomic import disk_space_checked

_STEP_DIR = re.compile(r"^step-(\d{6,})$")


@dataclass
class TrainingState:
    step: int
    lora: dict[str, dict[str, torch.Tensor]]
    optimizer: dict
    lr_scheduler: dict
    rng: dict
    losses: list[float]


def save_checkpoint(folder: Path, state: TrainingState, *, keep: int) -> Path:
    from safetensors.torch import save as st_save

    final = folder / f"step-{state.step:06d}"
    staging = folder / f".step-{state.step:06d}.partial"
    with disk_space_checked(folder):
        folder.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        try:
            # Serialised in memory and written by us, so a full disk is an OSError (ENOSPC), not a
            # library's own message.
            for comp, sd in state.lora.items():
                _write(staging / f"lora-{comp}.safetensors", st_save(sd))
            blob = io.BytesIO()
            torch.save({"optimizer": state.optimizer, "lr_scheduler": state.lr_scheduler, "rng": state.rng}, blob)
            _write(staging / "trainer_state.pt", blob.getvalue())
            _write(staging / "progress.json", json.dumps({"step": state.step, "losses": state.losses}).encode())
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # the previous complete checkpoint stays the latest
            raise
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    _prune(folder, keep)
    return final


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        atomic.write_all(fh, data)
        fh.flush()
        os.fsync(fh.fileno())


def latest_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    steps = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir())
    for _, p in reversed(steps):
        if (p / "progress.json").exists() and (p / "trainer_state.pt").exists():
            return p
    return None


def load_checkpoint(path: Path) -> TrainingState:
    from safetensors.torch import load_file

    progress = json.loads((path / "progress.json").read_text())
    # weights_only: a checkpoint folder is data, never code.
    blob = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    lora = {p.stem.removeprefix("lora-"): load_file(str(p)) for p in sorted(path.glob("lora-*.safetensors"))}
    return TrainingState(progress["step"], lora, blob["optimizer"], blob["lr_scheduler"], blob["rng"],
                         progress.get("losses", []))


def capture_rng() -> dict:
    # Noise, timesteps and data order come from per-step generators; the global RNG only feeds
    # LoRA dropout, so it is all that needs carrying over.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _prune(folder: Path, keep: int) -> None:
    steps = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)))
    for _, p in steps[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
