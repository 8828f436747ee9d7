"""The `normal_bae` preprocessor (surface normals for control_v11p_sd15_normalbae), as the A1111 ControlNet
extension runs it.

Weights: `scannet.pt` (lllyasviel/Annotators; Bae et al.'s network trained on ScanNet, normal_bae_net) or a
`.safetensors` of the same stem, in `models/ControlNetPreprocessor` or its `lllyasviel/Annotators` layout.
The pickle holds its weights under "model", keys possibly prefixed "module."; both are unwrapped.

The map is the extension's (`processor.normal_bae` + `annotator/normalbae`): the picture's short side
resized to the resolution and edge-padded to multiples of 64; pixels / 255, ImageNet mean and std; the
network at that size; its full-size prediction's first three channels (the unit normal's x, y, z, no sign
flipped) mapped to 0..255 as ((n + 1) / 2) clipped to 0..1, x 255, truncated to uint8, into R, G, B; the
padding cut off. The module has only the resolution slider.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles

WEIGHTS = "scannet.pt"
ENTRY = "model"  # the checkpoint's entry holding the network
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def network_input(rgb: np.ndarray):
    """(1, 3, H, W) float32: x / 255, then (x - mean) / std per channel, in float32 as the extension does."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(rgb)).float() / 255.0
    x = x.permute(2, 0, 1)[None]
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def normals_to_rgb(normal) -> np.ndarray:
    """(1, >=3, H, W) normals in -1..1 -> HxWx3 uint8: channel c of the normal into colour c."""
    import torch

    n = torch.as_tensor(normal)[0, :3].float()
    n = ((n + 1) * 0.5).clip(0, 1)
    return (n.permute(1, 2, 0).cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)


def normal_map(image: np.ndarray, resolution: int, net: Callable, device="cpu") -> np.ndarray:
    """HWC uint8 RGB -> the extension's normal_bae map (HWC uint8) with `net` as the network, run on `device`."""
    import torch

    from lorastudio.generation.preprocessors.picture_steps import pad_to_64

    padded, (h, w) = pad_to_64(image, resolution)
    with torch.inference_mode():
        predictions = net(network_input(padded).to(device))
    # the last prediction is the full-size one (the refinement at 1/1)
    return np.ascontiguousarray(normals_to_rgb(predictions[-1])[:h, :w])


def load_network(files: AnnotatorFiles):
    """NormalBaeNet with the file's weights, loaded strictly, float32, eval mode, on the detector's device;
    another network's file is named. The pickle keeps the network under "model" (its .safetensors twin flat)."""
    from lorastudio.generation.preprocessors.normal_bae_net import NormalBaeNet

    return files.network(WEIGHTS, NormalBaeNet, entry=ENTRY)


def normal_bae(image, resolution, a=None, b=None, *, files: AnnotatorFiles) -> np.ndarray:
    return normal_map(image, int(resolution), load_network(files), files.device)
