"""The `depth_leres` preprocessor (LeReS relative depth), as the A1111 ControlNet extension runs it.

Weights: `res101.pth` (lllyasviel/Annotators; AdelaiDepth's ResNeXt-101 LeReS), a checkpoint whose
`depth_model` entry holds the network (keys prefixed `module.`), or a `.safetensors` of the same stem holding
that entry's tensors flat; in `models/ControlNetPreprocessor`, its `leres` sub-folder (the extension's
`downloads/leres`) or the `lllyasviel/Annotators` layout.

The map is the extension's (`processor.leres` + `annotator/leres.apply_leres`, no boost):
- the picture's short side resized to the resolution (cubic up, area down) and edge-padded to multiples of 64;
- the network runs on that picture at its own size, its channels reversed (LeReS flips what it takes for
  OpenCV's BGR; the extension hands it RGB, so the network sees BGR) and normalised with ImageNet's mean and
  std on the 0..255 values (the float32 picture goes through ToTensor, which divides only uint8 by 255);
- the prediction (far is larger) is scaled to 0..65535 over the padded picture and truncated to uint16, then
  to uint8 (x 255/65535, rounded); a flat prediction gives 0 everywhere;
- "Remove Near %" (threshold_a, 0..100, default 0): when not 0, values not above a% of 255 (the nearest)
  become 0; then the map is inverted (near is white, as the depth ControlNets were trained on);
- "Remove Background %" (threshold_b, default 0): when not 0, values not above b% of 255 (the farthest)
  become 0 (black);
- the padding is cut off. The thresholds are OpenCV's THRESH_TOZERO, as in the extension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles

FILE = "res101.pth"
NAMES = (FILE, "res101.safetensors")
SUBFOLDERS = ("leres",)
ENTRY = "depth_model"  # the checkpoint's entry holding the network (it may hold others)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as LeReS's transform


def network_input(padded: np.ndarray):
    """(1, 3, H, W) float32: the RGB picture's channels reversed, (x - mean) / std on 0..255 values (float32)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(padded[:, :, ::-1]).astype(np.float32)).permute(2, 0, 1).contiguous()
    mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std)[None]


def depth_to_map(depth: np.ndarray, remove_near: float, remove_background: float) -> np.ndarray:
    """HxW float depth (far is larger) -> HxW uint8 map, near white, with the extension's normalisation and sliders."""
    import cv2

    lo, hi = depth.min(), depth.max()
    if hi - lo > np.finfo("float").eps:  # the extension's test (float64 epsilon) and arithmetic order
        scaled = 65535 * (depth - lo) / (hi - lo)
    else:
        scaled = np.zeros(depth.shape)
    gray = cv2.convertScaleAbs(scaled.astype("uint16"), alpha=255.0 / 65535.0)
    if remove_near != 0:
        gray = cv2.threshold(gray, remove_near / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    gray = cv2.bitwise_not(gray)
    if remove_background != 0:
        gray = cv2.threshold(gray, remove_background / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    return gray


def leres_map(image: np.ndarray, resolution: int, remove_near: float, remove_background: float,
              net: Callable, device="cpu") -> np.ndarray:
    """HWC uint8 RGB -> the extension's depth_leres map (HWC uint8, gray in all three channels), `net` run on
    `device` (the normalisation and sliders run on the CPU)."""
    import cv2
    import torch

    from lorastudio.generation.preprocessors.picture_steps import gray_to_rgb, pad_to_64

    padded, (h, w) = pad_to_64(image, resolution)
    with torch.inference_mode():
        depth = net(network_input(padded).to(device)).squeeze().float().cpu().numpy()
    if depth.shape != padded.shape[:2]:  # the extension brings the prediction to the picture's size (cubic)
        depth = cv2.resize(depth, (padded.shape[1], padded.shape[0]), interpolation=cv2.INTER_CUBIC)
    gray = depth_to_map(depth, float(remove_near), float(remove_background))[:h, :w]
    return gray_to_rgb(gray)


def missing_message(files: AnnotatorFiles) -> str:
    return (f"needs {FILE} (from lllyasviel/Annotators, or a .safetensors of the same name) in {files.folder} or "
            f"its {SUBFOLDERS[0]} sub-folder; lorastudio never downloads it. Or preprocess the picture elsewhere "
            f"and use module 'none'")


def load_network(path: Path, files: AnnotatorFiles):
    """LeresNet with the file's weights, loaded strictly, float32, eval mode, on the detector's device; another
    network's file is named."""
    import torch

    from lorastudio.core.errors import ModelFileError
    from lorastudio.generation.preprocessors.annotator_weights import load_state_strictly
    from lorastudio.generation.preprocessors.leres_net import LeresConfig, LeresNet

    # res101.pth was saved from a DataParallel model: every key starts with "module."
    state = {k.removeprefix("module."): v for k, v in files.read(path, entry=ENTRY).items()}
    try:
        cfg = LeresConfig.from_state_dict(state)
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise ModelFileError(path, f"not the LeReS depth network (res101.pth's '{ENTRY}'): no {exc}") from None
    with torch.device("meta"):
        net = LeresNet(cfg)
    load_state_strictly(net, state, path, assign=True)
    return files.place(net)


def run(image: np.ndarray, resolution: int, remove_near: float, remove_background: float,
        files: AnnotatorFiles) -> np.ndarray:
    from lorastudio.core.errors import InvalidParameter

    path = files.find_first(NAMES, SUBFOLDERS)
    if path is None:
        raise InvalidParameter("module", "depth_leres", missing_message(files))
    return leres_map(image, int(resolution), remove_near, remove_background, load_network(path, files),
                     files.device)
