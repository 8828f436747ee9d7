"""Preprocessors that need a detector's weights: what each needs, and the message when it is absent.

The file names are those of lllyasviel/Annotators, which the A1111 extension and controlnet_aux
download into `.../ControlNetPreprocessor` or `.../lllyasviel/Annotators`; lorastudio never downloads.
"""

from __future__ import annotations

from pathlib import Path

from lorastudio.core.errors import InvalidParameter

WITH_WEIGHTS: dict[str, tuple[str, ...]] = {
    "depth_midas": ("dpt_hybrid-midas-501f0c75.pt",),
    "depth_leres": ("res101.pth",),
    "normal_bae": ("scannet.pt",),
    "openpose": ("body_pose_model.pth",),
    "openpose_full": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    "lineart_realistic": ("sk_model.pth",),
    "lineart_coarse": ("sk_model2.pth",),
    "lineart_anime": ("netG.pth",),
    "softedge_hed": ("ControlNetHED.pth",),
    "softedge_pidinet": ("table5_pidinet.pth",),
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "seg_ofade20k": ("250_16_swin_l_oneformer_ade20k_160k.pth",),
    "depth_anything": ("depth_anything_vitl14.pth",),
    "depth_anything_v2": ("depth_anything_v2_vitl.safetensors",),
}


def _depth_anything(name: str):
    def run(image, resolution, a, b, files):
        from lorastudio.generation.preprocessors import depth_anything

        return depth_anything.run(name, image, resolution, files)
    return run


# Those that run here when their weights are present: name -> run(image, resolution, a, b, AnnotatorFiles);
# each raises the missing-weights message itself, naming the file, when they are absent.
RUNS_WITH_WEIGHTS = {name: _depth_anything(name) for name in ("depth_anything", "depth_anything_v2")}


def missing_weights_error(name: str, files: tuple[str, ...], models_root) -> InvalidParameter:
    where = Path(models_root) / "ControlNetPreprocessor" if models_root else Path("models/ControlNetPreprocessor")
    present = [f for f in files if (where / f).is_file() or (where / "lllyasviel" / "Annotators" / f).is_file()]
    if len(present) == len(files):
        why = (f"needs its detector network, which lorastudio does not run yet ({', '.join(files)} found in "
               f"{where}); preprocess the picture elsewhere and use module 'none'")
    else:
        need = ", ".join(f for f in files if f not in present)
        why = (f"needs {need} in {where} (from lllyasviel/Annotators; lorastudio never downloads it), "
               f"or preprocess the picture elsewhere and use module 'none'")
    return InvalidParameter("module", name, why)
