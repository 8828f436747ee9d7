"""The `mlsd` preprocessor (M-LSD straight lines), as the A1111 ControlNet extension runs it.

The picture's short side goes to the unit's resolution and the sides are edge-padded to multiples of
64 (the extension's resize-with-pad); the network (mlsd_net.MlsdNet, `mlsd_large_512_fp32.pth`) runs
on that padded picture at its own size (the extension asks M-LSD for the picture's own shape, so
512 x 512 only for a square picture at 512), its input being RGB and a constant plane, x / 127.5 - 1.

Line decoding (M-LSD's "TP map" decoding) reads the network's half-size output: channel 0 is the
line-centre logit, 1..4 the displacements (x, y of one end, x, y of the other) from that cell. The
centres are the 3x3 local maxima of sigmoid(logit), the 200 strongest kept; a centre makes a line
when its score exceeds the "MLSD Value Threshold" slider (threshold_a, default 0.1) and its length
in cells exceeds the "MLSD Distance Threshold" slider (threshold_b, default 0.1). Each end is the
centre cell plus its displacement, doubled to pixels; the coordinates are truncated to integers and
the lines drawn 1 px wide, white on black, on the padded canvas, which is then cropped back to the
resized picture. When no centre passes, the map is black.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles

WEIGHTS = "mlsd_large_512_fp32.pth"
TOP_K = 200  # centres considered, strongest first
NMS_KERNEL = 3  # a centre must be the maximum of its 3 x 3 neighbourhood
OUTPUT_STRIDE = 2  # the TP map is at half the network's input size
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1  # what cv2.line accepts


def network_input(rgb: np.ndarray):
    """(1, 4, H, W) float32: RGB and a plane of ones, each x / 127.5 - 1 (computed in float32, as M-LSD).

    The tensor keeps M-LSD's memory layout, a (1, H, W, 4) buffer seen as (1, 4, H, W) (channels last):
    the convolutions then take the same kernels as in the extension, and the network's floats agree
    bit for bit (a contiguous copy rounds differently in the last place, enough to reorder near ties)."""
    import torch

    planes = np.concatenate([rgb.astype(np.float32), np.ones(rgb.shape[:2] + (1,), np.float32)], axis=2)
    x = planes[None] / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def line_centres(tp_map) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, scores) of the TOP_K strongest local maxima of sigmoid(channel 0), strongest first,
    and the displacement channels as an (h, w, 4) array.

    Cells that are not maxima score 0 (they fill the top list only when fewer maxima exist). The
    sigmoid, the max-pool and the top-k are torch's own, so scores and ties come out as in M-LSD."""
    import torch
    import torch.nn.functional as F

    tp = torch.as_tensor(tp_map).detach().to("cpu", torch.float32)
    if tp.ndim != 4 or tp.shape[0] != 1 or tp.shape[1] < 5:
        raise ValueError(f"a (1, >=5, h, w) TP map is needed, got {tuple(tp.shape)}")
    h, w = tp.shape[2:]
    heat = torch.sigmoid(tp[:, 0])
    peak = F.max_pool2d(heat, NMS_KERNEL, stride=1, padding=NMS_KERNEL // 2)
    heat = (heat * (peak == heat).float()).reshape(-1)
    scores, index = torch.topk(heat, min(TOP_K, heat.numel()))
    index = index.numpy()
    return index // w, index % w, scores.numpy(), tp[0, 1:5].numpy().transpose(1, 2, 0)


def decode_lines(tp_map, score_threshold: float, distance_threshold: float) -> np.ndarray:
    """(n, 4) float64 segments (x_start, y_start, x_end, y_end) in network-input pixels, strongest first."""
    rows, cols, scores, disp = line_centres(tp_map)
    d = disp[rows, cols]  # (k, 4) float32
    length = np.sqrt(np.sum((d[:, :2] - d[:, 2:]) ** 2, axis=-1))  # in TP-map cells, float32 as M-LSD
    keep = (scores > float(score_threshold)) & (length > float(distance_threshold))
    centre = np.stack([cols, rows, cols, rows], axis=1)[keep].astype(np.float64)
    return OUTPUT_STRIDE * (centre + d[keep].astype(np.float64))


def draw_lines(lines: np.ndarray, height: int, width: int) -> np.ndarray:
    """HxW uint8: each segment 1 px wide (8-connected), white on black; coordinates truncated toward 0.

    Drawing stops at a segment with an infinite coordinate or one past OpenCV's int32 range: the
    extension's loop stops there too (the error is swallowed), keeping the lines drawn so far."""
    import cv2

    canvas = np.zeros((height, width), np.uint8)
    for segment in lines:
        if not np.isfinite(segment).all():
            break
        xs, ys, xe, ye = ends = [int(v) for v in segment]
        if not all(_INT32_MIN <= v <= _INT32_MAX for v in ends):
            break
        cv2.line(canvas, (xs, ys), (xe, ye), 255, 1)
    return canvas


def mlsd_map(image: np.ndarray, resolution: int, value_threshold: float, distance_threshold: float,
             net: Callable, device="cpu") -> np.ndarray:
    """HWC uint8 RGB -> the extension's mlsd map (HWC uint8, white lines on black) with `net` as the network,
    run on `device` (the decoding runs on the CPU)."""
    import torch

    from lorastudio.generation.preprocessors.picture_steps import gray_to_rgb, pad_to_64

    padded, (h, w) = pad_to_64(image, resolution)
    with torch.inference_mode():
        tp_map = net(network_input(padded).to(device))
    lines = decode_lines(tp_map, value_threshold, distance_threshold)
    # the network ran at the padded picture's own size, so the lines are already in its pixels
    gray = draw_lines(lines, *padded.shape[:2])[:h, :w]
    return gray_to_rgb(gray)


def mlsd(image, resolution, value_threshold, distance_threshold, *, files: AnnotatorFiles) -> np.ndarray:
    from lorastudio.generation.preprocessors.mlsd_net import MlsdNet

    net = files.network(WEIGHTS, MlsdNet)
    return mlsd_map(image, int(resolution), value_threshold, distance_threshold, net, files.device)
