"""Preprocessors that need a detector's weights: what each needs, those that run, and the message
when a file is absent.

The file names are those of lllyasviel/Annotators, which the A1111 extension and controlnet_aux
download into `.../ControlNetPreprocessor` or `.../lllyasviel/Annotators`; lorastudio never downloads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorastudio.core.errors import InvalidParameter
from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles, find_annotator_file
from lorastudio.generation.preprocessors.line_detectors import LINE_DETECTORS
from lorastudio.generation.preprocessors.mlsd import mlsd
from lorastudio.generation.preprocessors.model_free import _RES, Slider
from lorastudio.generation.preprocessors.normal_bae import normal_bae
from lorastudio.generation.preprocessors.pidinet import PIDINET_DETECTORS

WITH_WEIGHTS: dict[str, tuple[str, ...]] = {
    "depth_midas": ("dpt_hybrid-midas-501f0c75.pt",),
    "depth_leres": ("res101.pth",),
    "depth_leres++": ("res101.pth", "latest_net_G.pth"),  # LeReS with the pix2pix merging network (boost)
    "normal_bae": ("scannet.pt",),
    "openpose": ("body_pose_model.pth",),
    "openpose_full": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    "lineart_realistic": ("sk_model.pth",),
    "lineart_coarse": ("sk_model2.pth",),
    "lineart_anime": ("netG.pth",),
    "softedge_hed": ("ControlNetHED.pth",),
    "softedge_hedsafe": ("ControlNetHED.pth",),
    "softedge_pidinet": ("table5_pidinet.pth",),
    "softedge_pidisafe": ("table5_pidinet.pth",),
    "scribble_pidinet": ("table5_pidinet.pth",),
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "seg_ofade20k": ("250_16_swin_l_oneformer_ade20k_160k.pth",),
    "depth_anything": ("depth_anything_vitl14.pth",),
    "depth_anything_v2": ("depth_anything_v2_vitl.safetensors",),
}


def _openpose(image: np.ndarray, resolution, a, b, files: AnnotatorFiles) -> tuple[np.ndarray, dict]:
    from lorastudio.generation.preprocessors.openpose_body import run_openpose

    return run_openpose(image, int(resolution), files)


def _openpose_full(image: np.ndarray, resolution, a, b, files: AnnotatorFiles) -> tuple[np.ndarray, dict]:
    from lorastudio.generation.preprocessors.openpose_body import run_openpose

    return run_openpose(image, int(resolution), files, hands_and_face=True)


def _depth_anything(name: str):
    def detect(image: np.ndarray, resolution, a, b, files: AnnotatorFiles) -> tuple[np.ndarray, None]:
        from lorastudio.generation.preprocessors import depth_anything

        return depth_anything.run(name, image, int(resolution), files), None
    return detect


def _depth_midas(image: np.ndarray, resolution, a, b, files: AnnotatorFiles) -> tuple[np.ndarray, None]:
    from lorastudio.generation.preprocessors import depth_midas

    return depth_midas.run(image, int(resolution), files), None


def _depth_leres(image: np.ndarray, resolution, a, b, files: AnnotatorFiles) -> tuple[np.ndarray, None]:
    from lorastudio.generation.preprocessors import depth_leres

    return depth_leres.run(image, int(resolution), a, b, files), None


def _map_only(run):
    """A detector that reports only its map, in the (map, extra) shape of the table below."""
    def detect(image: np.ndarray, resolution, a, b, files: AnnotatorFiles) -> tuple[np.ndarray, None]:
        return run(image, resolution, a, b, files=files), None
    return detect


# The modules lorastudio runs when their files are present: name -> (detect(HWC uint8 RGB, resolution,
# threshold_a, threshold_b, AnnotatorFiles) -> (map, extra JSON or None), (resolution, threshold_a,
# threshold_b) sliders as the extension's).
RUNNABLE = {
    **{name: (_map_only(run), (_RES, None, None)) for name, run in LINE_DETECTORS.items()},
    **{name: (_map_only(run), (_RES, None, None)) for name, run in PIDINET_DETECTORS.items()},
    "openpose": (_openpose, (_RES, None, None)),
    "openpose_full": (_openpose_full, (_RES, None, None)),
    "depth_anything": (_depth_anything("depth_anything"), (_RES, None, None)),
    "depth_anything_v2": (_depth_anything("depth_anything_v2"), (_RES, None, None)),
    "depth_midas": (_depth_midas, (_RES, None, None)),  # the extension's "depth": resolution only
    "depth_leres": (_depth_leres, (_RES, Slider("Remove Near %", 0, 0, 100),
                                   Slider("Remove Background %", 0, 0, 100))),
    "mlsd": (_map_only(mlsd), (_RES, Slider("MLSD Value Threshold", 0.1, 0.01, 2.0),
                               Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0))),
    "normal_bae": (_map_only(normal_bae), (_RES, None, None)),  # resolution only
}
# Those that accept several file names or a transformers folder: they look for their weights themselves
# and name what to put where when none is there.
FINDS_OWN_FILES = frozenset({"depth_anything", "depth_anything_v2", "depth_midas", "depth_leres"})


def missing_weights_error(name: str, files: tuple[str, ...], models_root) -> InvalidParameter:
    where = Path(models_root) / "ControlNetPreprocessor" if models_root else Path("models/ControlNetPreprocessor")
    present = [f for f in files if find_annotator_file(where.parent, f) is not None]
    if len(present) == len(files):
        why = (f"needs its detector network, which lorastudio does not run yet ({', '.join(files)} found in "
               f"{where}); preprocess the picture elsewhere and use module 'none'")
    else:
        need = ", ".join(f for f in files if f not in present)
        why = (f"needs {need} in {where} (from lllyasviel/Annotators; lorastudio never downloads it), "
               f"or preprocess the picture elsewhere and use module 'none'")
    return InvalidParameter("module", name, why)
