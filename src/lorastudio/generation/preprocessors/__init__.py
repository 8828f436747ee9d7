"""ControlNet preprocessors ("modules" in the A1111 extension): a picture -> the control map.

Those that need no weights run here (OpenCV, NumPy); those that need a detector's weights run when
its file is in `models/ControlNetPreprocessor` (with_weights.RUNNABLE), otherwise they name the file to
put there; nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from lorastudio.generation.preprocessors.annotator_weights import AnnotatorCache, AnnotatorFiles
from lorastudio.generation.preprocessors.model_free import MODEL_FREE, Slider
from lorastudio.generation.preprocessors.with_weights import (FINDS_OWN_FILES, RUNNABLE, WITH_WEIGHTS,
                                                               missing_weights_error)


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[..., np.ndarray] | None  # (HWC uint8 RGB, resolution, threshold_a, threshold_b) -> HWC uint8
    resolution: Slider | None = None
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    weights: tuple[str, ...] = ()  # files it needs in models/ControlNetPreprocessor
    # (HWC uint8 RGB, resolution, threshold_a, threshold_b, AnnotatorFiles) -> (HWC uint8, extra JSON or None)
    detect: Callable[..., tuple[np.ndarray, dict | None]] | None = None
    finds_weights: bool = False  # detect looks for its files itself (several names accepted) and names them

    @property
    def runs(self) -> bool:
        return self.run is not None or self.detect is not None


def preprocessors() -> dict[str, Preprocessor]:
    table = {name: Preprocessor(name, run, *sliders) for name, (run, sliders) in MODEL_FREE.items()}
    for name, files in WITH_WEIGHTS.items():
        detect, sliders = RUNNABLE.get(name, (None, (None, None, None)))
        table[name] = Preprocessor(name, None, *sliders, weights=files, detect=detect,
                                   finds_weights=name in FINDS_OWN_FILES)
    return table


ALIASES = {"None": "none", "scribble_thr": "threshold", "invert (from white bg & black line)": "invert",
           "lineart_standard (from white bg & black line)": "invert"}


def find_preprocessor(name: str) -> Preprocessor:
    from lorastudio.core.errors import InvalidParameter

    table = preprocessors()
    key = ALIASES.get(name, name)
    if key not in table:
        raise InvalidParameter("module", name, "unknown preprocessor; known: " + ", ".join(sorted(table)))
    return table[key]


def run_preprocessor(name: str, image: np.ndarray, *, resolution: int, threshold_a: float, threshold_b: float,
                     models_root=None, allow_pickle: bool = False, device="cpu", cache=None) -> np.ndarray:
    """HWC uint8 RGB -> the control map (HWC uint8 RGB)."""
    return detect(name, image, resolution=resolution, threshold_a=threshold_a, threshold_b=threshold_b,
                  models_root=models_root, allow_pickle=allow_pickle, device=device, cache=cache)[0]


def detect(name: str, image: np.ndarray, *, resolution: int, threshold_a: float, threshold_b: float,
           models_root=None, allow_pickle: bool = False, device="cpu",
           cache: AnnotatorCache | None = None) -> tuple[np.ndarray, dict | None]:
    """HWC uint8 RGB -> (the control map, what else the module reports: the OpenPose JSON of openpose).

    Detector weights come from `models_root`; pickles are read only with `allow_pickle` (the studio's). The
    detector's network runs on `device` (the studio's generation device); `cache` (the engine's) keeps the
    tensors of the last file read, None reads the file every time."""
    pre = find_preprocessor(name)
    if pre.run is not None:
        return pre.run(image, resolution, threshold_a, threshold_b), None
    files = AnnotatorFiles(models_root, allow_pickle, device=device, cache=cache)
    if pre.detect is None or (not pre.finds_weights and any(files.find(f) is None for f in pre.weights)):
        raise missing_weights_error(pre.name, pre.weights, models_root)
    return pre.detect(image, resolution, threshold_a, threshold_b, files)
