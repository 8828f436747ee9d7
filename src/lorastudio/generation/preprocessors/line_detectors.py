"""Line-art and soft-edge detectors (lineart_realistic, lineart_coarse, lineart_anime, softedge_hed,
softedge_hedsafe).

Pre- and post-processing follow the A1111 ControlNet extension: the picture's short side is
resized to the unit's processor resolution (cubic when enlarging, area when shrinking), its edges
are replicated up to a multiple of 64, the network runs, the padding is cut off again, and the
map is returned at that size; line art is inverted to white lines on black, which is what the
lineart ControlNets are trained on.
"""

from __future__ import annotations

import numpy as np

from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles
from lorastudio.generation.preprocessors.picture_steps import gray_to_rgb, pad_to_64


def _tensor(img: np.ndarray, divisor: float):
    import torch

    # divided (not multiplied by 1/255): the same float rounding as the extension's input
    return torch.from_numpy(np.ascontiguousarray(img)).float().div(divisor).permute(2, 0, 1)[None]


def hed_map(img: np.ndarray, files: AnnotatorFiles, *, safe: bool) -> np.ndarray:
    """HxW uint8 soft edges of an RGB picture (at its own size)."""
    import cv2
    import torch

    from lorastudio.generation.preprocessors.hed_net import HedNet

    net = files.network("ControlNetHED.pth", HedNet)
    h, w = img.shape[:2]
    with torch.inference_mode():
        sides = net(_tensor(img, 1.0).to(files.device))
    # every side output brought to the picture's size (bilinear), averaged, then the sigmoid
    sides = [cv2.resize(s[0, 0].cpu().numpy().astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for s in sides]
    edge = 1 / (1 + np.exp(-np.mean(np.stack(sides, axis=2), axis=2).astype(np.float64)))
    if safe:
        # "safe" HED: quantised to 0, 0.5, 1 (x * 3 truncated, halved), which hides the network's noise
        edge = (edge.astype(np.float32) * 3.0).astype(np.int32).astype(np.float32) / 2.0
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def lineart_map(img: np.ndarray, files: AnnotatorFiles, filename: str) -> np.ndarray:
    """HxW uint8 line art, dark lines on white, as the network draws it."""
    import torch

    from lorastudio.generation.preprocessors.lineart_net import LineartNet

    net = files.network(filename, LineartNet)
    with torch.inference_mode():
        line = net(_tensor(img, 255.0).to(files.device))[0, 0].cpu().numpy()
    return (line * 255.0).clip(0, 255).astype(np.uint8)


def lineart_anime_map(img: np.ndarray, files: AnnotatorFiles) -> np.ndarray:
    """HxW uint8 anime line art, dark lines on white: the network runs at the next multiples of 256
    (cubic resize there and back, as the extension does)."""
    import cv2
    import torch

    from lorastudio.generation.preprocessors.lineart_anime_net import LineartAnimeNet

    net = files.network("netG.pth", LineartAnimeNet)
    h, w = img.shape[:2]
    hn, wn = 256 * -(-h // 256), 256 * -(-w // 256)
    feed = cv2.resize(img, (wn, hn), interpolation=cv2.INTER_CUBIC)
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(feed)).float().div(127.5).sub(1.0).permute(2, 0, 1)[None]
        line = (net(x.to(files.device))[0, 0] * 127.5 + 127.5).cpu().numpy()
    return cv2.resize(line, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def softedge_hed(image, resolution, a, b, *, files: AnnotatorFiles):
    padded, (h, w) = pad_to_64(image, resolution)
    return gray_to_rgb(hed_map(padded, files, safe=False)[:h, :w])


def softedge_hedsafe(image, resolution, a, b, *, files: AnnotatorFiles):
    padded, (h, w) = pad_to_64(image, resolution)
    return gray_to_rgb(hed_map(padded, files, safe=True)[:h, :w])


def lineart_realistic(image, resolution, a, b, *, files: AnnotatorFiles):
    padded, (h, w) = pad_to_64(image, resolution)
    return gray_to_rgb(255 - lineart_map(padded, files, "sk_model.pth")[:h, :w])


def lineart_coarse(image, resolution, a, b, *, files: AnnotatorFiles):
    padded, (h, w) = pad_to_64(image, resolution)
    return gray_to_rgb(255 - lineart_map(padded, files, "sk_model2.pth")[:h, :w])


def lineart_anime(image, resolution, a, b, *, files: AnnotatorFiles):
    padded, (h, w) = pad_to_64(image, resolution)
    return gray_to_rgb(255 - lineart_anime_map(padded, files)[:h, :w])


# name -> run(image, resolution, threshold_a, threshold_b, *, files); each has only the resolution slider
LINE_DETECTORS = {
    "lineart_realistic": lineart_realistic,
    "lineart_coarse": lineart_coarse,
    "lineart_anime": lineart_anime,
    "softedge_hed": softedge_hed,
    "softedge_hedsafe": softedge_hedsafe,
}
