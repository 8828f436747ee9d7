"""The `depth_anything` and `depth_anything_v2` preprocessors, as the A1111 ControlNet extension runs them.

Weights: the original files (`depth_anything_vitl14.pth`, `..._vitb14`, `..._vits14`; `depth_anything_v2_vitl`
/ `vitb` / `vits` as .safetensors or .pth), or a transformers folder (save_pretrained layout, e.g.
`depth-anything-small-hf`), in `models/ControlNetPreprocessor` or its `depth_anything` / `depth_anything_v2`
sub-folder. The largest model present is used, as the extension only ships vitl.

The map is the extension's: the picture's short side resized to the resolution and padded to a multiple of
64 (edge), the network run at >= 518 px (a multiple of 14), its relative depth (disparity: near is large)
resized back, scaled to 0..255 over the padded picture and cropped. Near is white, as the depth ControlNets
were trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles
from lorastudio.generation.preprocessors.picture_steps import gray_to_rgb, pad_to_64

_SIZES = ("vitl", "vitb", "vits")
_HF_SIZES = ("large", "base", "small")
V1_FILES = tuple(f"depth_anything_{s}14.{ext}" for s in _SIZES for ext in ("safetensors", "pth"))
V2_FILES = tuple(f"depth_anything_v2_{s}.{ext}" for s in _SIZES for ext in ("safetensors", "pth"))
V1_FOLDERS = tuple(f"depth-anything-{s}-hf" for s in _HF_SIZES)
V2_FOLDERS = tuple(f"Depth-Anything-V2-{s.capitalize()}-hf" for s in _HF_SIZES)
# name -> (version, files, transformers folders, sub-folders searched)
VERSIONS = {
    "depth_anything": (1, V1_FILES, V1_FOLDERS, ("depth_anything", "LiheYoung/Depth-Anything/checkpoints",
                                                 "LiheYoung")),
    "depth_anything_v2": (2, V2_FILES, V2_FOLDERS, ("depth_anything_v2", "depth-anything")),
}
# The Depth Anything transform: the short side to at least 518, both sides multiples of 14, ImageNet statistics.
NET_SIZE, MULTIPLE = 518, 14
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _multiple_of_14(x: float, minimum: int) -> int:
    y = int(np.round(x / MULTIPLE) * MULTIPLE)
    return y if y >= minimum else int(np.ceil(x / MULTIPLE) * MULTIPLE)


def network_input(image: np.ndarray):
    """Depth Anything's input tensor (1, 3, H, W) for an RGB uint8 picture.

    The extension converts with cv2.COLOR_BGR2RGB a picture that is already RGB, so the network sees
    the channels swapped; that is kept so the maps equal the extension's."""
    import cv2
    import torch

    h, w = image.shape[:2]
    x = image[:, :, ::-1] / 255.0
    scale = max(NET_SIZE / h, NET_SIZE / w)  # "lower_bound": both sides at least 518
    nh, nw = _multiple_of_14(scale * h, NET_SIZE), _multiple_of_14(scale * w, NET_SIZE)
    x = cv2.resize(x, (nw, nh), interpolation=cv2.INTER_CUBIC)
    x = (x - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32))[None]


def depth_map(model, image: np.ndarray, resolution: int, device="cpu") -> np.ndarray:
    """HWC uint8 RGB -> the extension's depth map (HWC uint8, gray in all three channels, near = white), the
    network, the resize back and the 0..255 scaling run on `device`."""
    import torch
    import torch.nn.functional as F

    padded, (th, tw) = pad_to_64(image, resolution)
    with torch.inference_mode():
        depth = model(pixel_values=network_input(padded).to(device)).predicted_depth
        depth = F.interpolate(depth[None], padded.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        span = depth.max() - depth.min()
        depth = (depth - depth.min()) / (span if span > 0 else 1) * 255.0
    gray = depth.cpu().numpy().astype(np.uint8)[:th, :tw]
    return gray_to_rgb(gray)


def missing_message(name: str, files: AnnotatorFiles) -> str:
    version, names, folders, subs = VERSIONS[name]
    return (f"needs {names[1]} (or {', '.join(n for n in names[2:] if n.endswith('.pth'))}, a .safetensors of the "
            f"same name, or a transformers folder such as {folders[-1]}) in {files.folder} or its {subs[0]} "
            f"sub-folder; lorastudio never downloads it. Or preprocess the picture elsewhere and use module 'none'")


def find_weights(name: str, files: AnnotatorFiles) -> Path | None:
    version, names, folders, subs = VERSIONS[name]
    return files.find_first(names + folders, subs)


def load_model(name: str, path: Path, files: AnnotatorFiles):
    """transformers' DepthAnythingForDepthEstimation from an original file or a save_pretrained folder, float32
    on the detector's device."""
    from lorastudio.core.errors import ModelFileError
    from lorastudio.generation.preprocessors.depth_anything_net import build_from_original

    version = VERSIONS[name][0]
    if path.is_dir():
        return files.place(load_folder(path, allow_pickle=files.allow_pickle))
    sd = files.read(path)
    try:
        model = build_from_original(sd, version)
    except (KeyError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(path, f"not a Depth Anything{' V2' if version == 2 else ''} file: {first}") from None
    return files.place(model)


def load_folder(path: Path, *, allow_pickle: bool):
    """A transformers folder: safetensors weights freely, a pytorch_model.bin pickle only when allowed."""
    from transformers import DepthAnythingForDepthEstimation

    from lorastudio.core.errors import ModelFileError, PickleRefused
    from lorastudio.generation.preprocessors.depth_anything_net import use_original_pos_encoding
    from lorastudio.models.loader import PICKLE_HELP

    has_safetensors = any(path.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        raise PickleRefused(path / "pytorch_model.bin", PICKLE_HELP)
    try:
        model = DepthAnythingForDepthEstimation.from_pretrained(path, local_files_only=True,
                                                                use_safetensors=has_safetensors)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(path, f"not a transformers Depth Anything folder: {first}") from None
    use_original_pos_encoding(model)
    return model.eval()


def run(name: str, image: np.ndarray, resolution: int, files: AnnotatorFiles) -> np.ndarray:
    from lorastudio.core.errors import InvalidParameter

    path = find_weights(name, files)
    if path is None:
        raise InvalidParameter("module", name, missing_message(name, files))
    return depth_map(load_model(name, path, files), image, resolution, files.device)
