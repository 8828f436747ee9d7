"""The two-venv protocol of the detector benches: this project's side writes the inputs and a job
(JSON), the same bench file runs again under another Python (`--aux-python`, an environment holding
controlnet_aux, which this venv never imports) with AUX_SIDE and writes its outputs to an .npz; each side's
arrays are then compared key by key.

Imported by bench/<detector>_vs_controlnet_aux.py on both sides, so it imports nothing beyond the
standard library and NumPy.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

AUX_SIDE = "--aux-side"


def aux_env(threads: int) -> dict[str, str]:
    """The other Python's environment: its own packages only (no PYTHONPATH into our src), offline."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return env


def run_aux_side(aux_python: str, script: str, work: Path, job: dict, threads: int, *extra: str) -> dict:
    """`script` run by `aux_python` on `job` (written to work/job.json); its arrays (work/aux.npz)."""
    (work / "job.json").write_text(json.dumps(job))
    subprocess.run([aux_python, script, AUX_SIDE, str(work / "job.json"), str(work / "aux.npz"), str(threads),
                    *extra], check=True, env=aux_env(threads))
    return dict(np.load(work / "aux.npz"))


def extension_resize_with_pad(rgb: np.ndarray, resolution: int):
    """The extension's resize_image_with_pad, written here as the reference the detector benches give the
    controlnet_aux side: short side to `resolution` (cubic up, area down), edge padding to multiples of
    64; returns the padded picture and the (w, h) before padding."""
    import cv2

    h, w = rgb.shape[:2]
    k = resolution / min(h, w)
    size = (int(np.round(w * k)), int(np.round(h * k)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    return np.pad(small, ((0, -size[1] % 64), (0, -size[0] % 64), (0, 0)), mode="edge"), size


def print_rows(rows: dict[str, dict], width: int) -> None:
    for key, row in rows.items():
        print(f"{key:{width}s} " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in row.items()))
