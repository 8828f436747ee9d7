"""PiDiNet soft edges (softedge_pidinet, softedge_pidisafe) and scribbles (scribble_pidinet), from
`table5_pidinet.pth`.

The processing is the A1111 ControlNet extension's: the picture's short side is resized to the unit's
processor resolution (cubic when enlarging, area when shrinking), its edges are replicated up to a
multiple of 64, the network sees the picture with its channels reversed (the extension flips its RGB
picture to BGR) scaled to 0..1, and its fused edge probability becomes the map, white edges on black
(not inverted: the softedge ControlNets are trained on that). softedge_pidisafe quantises the probability
to 0, 0.5 and 1 first. scribble_pidinet thins softedge_pidinet's map into scribble lines: a non-maximum
suppression along four directions of the blurred map, a threshold, a blur, and every pixel above 4 white.
The padding is cut off before the scribble steps, as the extension does.
"""

from __future__ import annotations

import numpy as np

from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles
from lorastudio.generation.preprocessors.picture_steps import gray_to_rgb, pad_to_64

WEIGHTS = "table5_pidinet.pth"


def pidinet_map(img: np.ndarray, files: AnnotatorFiles, *, safe: bool) -> np.ndarray:
    """HxW uint8 edge map of an RGB picture (at its own size; both sides multiples of 8)."""
    import torch

    from lorastudio.generation.preprocessors.pidinet_net import PidiNet

    net = files.network(WEIGHTS, PidiNet)
    # BGR, divided (not multiplied by 1/255): the same input, to the last bit, as the extension's
    bgr = np.ascontiguousarray(img[:, :, ::-1])
    with torch.inference_mode():
        x = torch.from_numpy(bgr).float().div(255.0).permute(2, 0, 1)[None]
        edge = net(x.to(files.device))[0, 0].cpu().numpy()
    if safe:
        # "safe" step: x * 3 truncated, halved (0, 0.5, 1 and 1.5 for x = 1), which hides the network's noise
        edge = (edge.astype(np.float32) * 3.0).astype(np.int32).astype(np.float32) / 2.0
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def thin_lines(edges: np.ndarray, level: int = 127, sigma: float = 3.0) -> np.ndarray:
    """The extension's non-maximum suppression: the map blurred (Gaussian, `sigma`), a pixel kept where
    it is the largest of its 3-pixel neighbourhood along any of four directions, and 255 where it is
    above `level`."""
    import cv2

    blurred = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), sigma)
    kept = np.zeros_like(blurred)
    directions = (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
        [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
    )
    for kernel in directions:
        np.putmask(kept, cv2.dilate(blurred, kernel=np.array(kernel, np.uint8)) == blurred, blurred)
    return np.where(kept > level, 255, 0).astype(np.uint8)


def _edges(image, resolution, files: AnnotatorFiles, *, safe: bool) -> np.ndarray:
    padded, (h, w) = pad_to_64(image, resolution)
    return np.ascontiguousarray(pidinet_map(padded, files, safe=safe)[:h, :w])


def softedge_pidinet(image, resolution, a, b, *, files: AnnotatorFiles):
    return gray_to_rgb(_edges(image, resolution, files, safe=False))


def softedge_pidisafe(image, resolution, a, b, *, files: AnnotatorFiles):
    return gray_to_rgb(_edges(image, resolution, files, safe=True))


def scribble_pidinet(image, resolution, a, b, *, files: AnnotatorFiles):
    import cv2

    lines = cv2.GaussianBlur(thin_lines(_edges(image, resolution, files, safe=False)), (0, 0), 3.0)
    return gray_to_rgb(np.where(lines > 4, 255, 0).astype(np.uint8))


# name -> run(image, resolution, threshold_a, threshold_b, *, files); each has only the resolution slider
PIDINET_DETECTORS = {
    "softedge_pidinet": softedge_pidinet,
    "softedge_pidisafe": softedge_pidisafe,
    "scribble_pidinet": scribble_pidinet,
}
