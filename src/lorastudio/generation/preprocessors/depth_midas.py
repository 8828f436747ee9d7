"""The `depth_midas` preprocessor (the extension's "depth"), as the A1111 ControlNet extension runs it.

Weights: `dpt_hybrid-midas-501f0c75.pt` (lllyasviel/Annotators; MiDaS v3 DPT-Hybrid) or a `.safetensors` of the
same stem, in `models/ControlNetPreprocessor`, its `midas` sub-folder (the extension's `downloads/midas`) or
the `lllyasviel/Annotators` layout.

The map is the extension's (`processor.midas` + `annotator/midas.apply_midas`): the picture's short side
resized to the resolution and edge-padded to multiples of 64; the network runs on that picture as it is
(no resize to 384: the MiDaS transform with keep-aspect and multiple-of-32 is built but never applied; the
position embeddings are interpolated to the picture's patch grid), with the pixels scaled to -1..1; its
relative inverse depth is scaled to 0..255 over the padded picture, then the padding is cut off. Near is
white, as the depth ControlNets were trained on. The module has only the resolution slider.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles

FILE = "dpt_hybrid-midas-501f0c75.pt"
NAMES = (FILE, "dpt_hybrid-midas-501f0c75.safetensors")
SUBFOLDERS = ("midas",)


def network_input(image: np.ndarray):
    """(1, 3, H, W) float32 in -1..1, computed as the extension does (float32, / 127.5 - 1)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image)).float() / 127.5 - 1.0
    return x.permute(2, 0, 1)[None].contiguous()


def depth_map(model, image: np.ndarray, resolution: int, device="cpu") -> np.ndarray:
    """HWC uint8 RGB -> the extension's depth map (HWC uint8, gray in all three channels, near = white), the
    network and the 0..1 scaling run on `device`."""
    import torch

    from lorastudio.generation.preprocessors.picture_steps import gray_to_rgb, pad_to_64
    from lorastudio.generation.preprocessors.midas_net import predict

    padded, (th, tw) = pad_to_64(image, resolution)
    with torch.inference_mode():
        depth = predict(model, network_input(padded).to(device))[0]
        depth = depth - depth.min()
        top = depth.max()
        # a flat prediction is black (the extension divides 0 by 0 there and casts NaN to uint8)
        depth = depth / (top if top > 0 else 1)
    gray = (depth.cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)[:th, :tw]
    return gray_to_rgb(gray)


def missing_message(files: AnnotatorFiles) -> str:
    return (f"needs {FILE} (from lllyasviel/Annotators, or a .safetensors of the same name) in {files.folder} or "
            f"its {SUBFOLDERS[0]} sub-folder; lorastudio never downloads it. Or preprocess the picture elsewhere "
            f"and use module 'none'")


def find_weights(files: AnnotatorFiles) -> Path | None:
    return files.find_first(NAMES, SUBFOLDERS)


def load_model(path: Path, files: AnnotatorFiles):
    """transformers' DPTForDepthEstimation (hybrid) from the original file, float32 on the detector's device;
    another network's file is refused."""
    from lorastudio.core.errors import ModelFileError
    from lorastudio.generation.preprocessors.midas_net import build_from_original

    sd = files.read(path)
    try:
        model = build_from_original(sd)
    except (KeyError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(path, f"not a MiDaS DPT-Hybrid file: {first[:400]}") from None
    return files.place(model)


def run(image: np.ndarray, resolution: int, files: AnnotatorFiles) -> np.ndarray:
    from lorastudio.core.errors import InvalidParameter

    path = find_weights(files)
    if path is None:
        raise InvalidParameter("module", "depth_midas", missing_message(files))
    return depth_map(load_model(path, files), image, resolution, files.device)
