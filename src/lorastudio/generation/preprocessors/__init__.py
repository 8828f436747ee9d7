"""ControlNet preprocessors ("modules" in the A1111 extension): a picture -> the control map.

Those that need no weights run here (OpenCV, NumPy); those that need a detector's weights run when
the file is in `models/ControlNetPreprocessor` (RUNS_WITH_WEIGHTS), otherwise they name the file to put
there; nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from lorastudio.generation.preprocessors.annotator_files import AnnotatorFiles
from lorastudio.generation.preprocessors.model_free import _RES, MODEL_FREE, Slider
from lorastudio.generation.preprocessors.with_weights import RUNS_WITH_WEIGHTS, WITH_WEIGHTS, missing_weights_error


@dataclass(frozen=True)
class Preprocessor:
    name: str
    # (HWC uint8 RGB, resolution, threshold_a, threshold_b) -> HWC uint8; those with `weights` also get
    # an AnnotatorFiles (where to look, whether pickles may be read)
    run: Callable[..., np.ndarray] | None
    resolution: Slider | None = None
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    weights: tuple[str, ...] = ()  # files it needs in models/ControlNetPreprocessor


def preprocessors() -> dict[str, Preprocessor]:
    table = {name: Preprocessor(name, run, *sliders) for name, (run, sliders) in MODEL_FREE.items()}
    table.update({name: Preprocessor(name, RUNS_WITH_WEIGHTS.get(name), _RES if name in RUNS_WITH_WEIGHTS else None,
                                     weights=files) for name, files in WITH_WEIGHTS.items()})
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
                     models_root=None, allow_pickle: bool = False) -> np.ndarray:
    """HWC uint8 RGB -> the control map (HWC uint8 RGB). `allow_pickle` is the studio's setting: a detector's
    .pth is read (weights-only) only with it."""
    pre = find_preprocessor(name)
    if pre.run is None:
        raise missing_weights_error(pre.name, pre.weights, models_root)
    if pre.weights:
        return pre.run(image, resolution, threshold_a, threshold_b, AnnotatorFiles(models_root, allow_pickle))
    return pre.run(image, resolution, threshold_a, threshold_b)
