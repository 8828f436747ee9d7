"""Hands and face for the extension's `openpose_full`: boxes from a body's keypoints, each box run
through its network, the keypoints drawn on the body's canvas.

As the A1111 extension's annotator (CMU's hand and face detectors as ported by pytorch-openpose and
ControlNet): a hand box from the wrist, elbow and shoulder (OpenPose's handDetector), the hand network
at 4 scales averaged, one peak per keypoint from the strongest blob; a face box from the nose, eyes and
ears, the face network once at 384 px, one peak per map. Drawn as the extension draws them (hand bones
in 20 hues 2 px wide, joints red radius 4; face points white radius 3), so the ControlNet openpose
models see the pictures they were trained on.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from lorastudio.generation.preprocessors.openpose_body import PAD_VALUE, STRIDE, annotator_resize

HAND_SCALES = (0.5, 1.0, 1.5, 2.0)
BOX = 368
HAND_MAP_SIZE = 128
HAND_THRESHOLD = 0.05
FACE_INPUT = 384
FACE_THRESHOLD = 0.05
MIN_BOX = 20  # smaller hands and faces are skipped
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
EPS = 0.01


def hand_boxes(keypoints, width: int, height: int) -> list[tuple[int, int, int, bool]]:
    """(x, y, side, is_left) of each hand whose shoulder, elbow and wrist were found; keypoints in pixels."""
    out = []
    sides = []
    if all(keypoints[i] is not None for i in (5, 6, 7)):
        sides.append((5, 6, 7, True))
    if all(keypoints[i] is not None for i in (2, 3, 4)):
        sides.append((2, 3, 4, False))
    for s, e, w, is_left in sides:
        (x1, y1), (x2, y2), (x3, y3) = keypoints[s], keypoints[e], keypoints[w]
        # the box centre lies a third of the forearm beyond the wrist; its side 1.5x the longer of
        # forearm and 0.9 upper arm (OpenPose's handDetector)
        x, y = x3 + 0.33 * (x3 - x2), y3 + 0.33 * (y3 - y2)
        side = 1.5 * max(math.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2), 0.9 * math.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2))
        x, y = max(x - side / 2, 0), max(y - side / 2, 0)
        side = min(width - x if x + side > width else side, height - y if y + side > height else side)
        if side >= MIN_BOX:
            out.append((int(x), int(y), int(side), is_left))
    return out


def face_box(keypoints, width: int, height: int) -> tuple[int, int, int] | None:
    """(x, y, side) around the nose, sized by the eyes (3x) and ears (1.5x); None without them."""
    nose = keypoints[0]
    others = [(keypoints[i], f) for i, f in ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5))]
    if nose is None or all(k is None for k, _ in others):
        return None
    half = 0.0
    for k, factor in others:
        if k is not None:
            half = max(half, max(abs(nose[0] - k[0]), abs(nose[1] - k[1])) * factor)
    x, y = max(nose[0] - half, 0), max(nose[1] - half, 0)
    # as the extension: the clipping compares x + half (not x + 2 half) with the picture's size
    side = min(width - x if x + half > width else half * 2, height - y if y + half > height else half * 2)
    return (int(x), int(y), int(side)) if side >= MIN_BOX else None


def hand_peaks(net, crop_bgr: np.ndarray) -> np.ndarray:
    """21 (x, y) in the crop's pixels; (0, 0) where a keypoint is not found."""
    import cv2
    import torch
    from scipy.ndimage import gaussian_filter, label

    h, w = crop_bgr.shape[:2]
    blurred = cv2.GaussianBlur(crop_bgr, (0, 0), 0.8)
    avg = np.zeros((HAND_MAP_SIZE, HAND_MAP_SIZE, 22))
    param = next(net.parameters())
    for scale in HAND_SCALES:
        size = int(scale * BOX)
        im = annotator_resize(blurred, size, size)
        pad_h, pad_w = -im.shape[0] % STRIDE, -im.shape[1] % STRIDE
        padded = np.pad(im, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=PAD_VALUE)
        x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / 256 - 0.5)
        with torch.no_grad():
            out = net(x.to(param.device, param.dtype))[0].float().cpu().numpy().transpose(1, 2, 0)
        out = annotator_resize(out, out.shape[1] * STRIDE, out.shape[0] * STRIDE, float(STRIDE))[:im.shape[0], :im.shape[1]]
        avg += annotator_resize(out, HAND_MAP_SIZE, HAND_MAP_SIZE) / len(HAND_SCALES)
    peaks = []
    for part in range(21):
        raw = avg[:, :, part]
        blobs = gaussian_filter(raw, sigma=3) > HAND_THRESHOLD
        if not blobs.any():
            peaks.append((0, 0))
            continue
        labels, n = label(blobs, structure=np.ones((3, 3)))
        best = int(np.argmax([np.sum(raw[labels == i]) for i in range(1, n + 1)])) + 1
        kept = np.where(labels == best, raw, 0)
        py = int(kept.max(1).argmax())
        px = int(kept[py].argmax())
        peaks.append((int(float(px) * float(w) / HAND_MAP_SIZE), int(float(py) * float(h) / HAND_MAP_SIZE)))
    return np.array(peaks)


def face_peaks(net, crop_bgr: np.ndarray) -> np.ndarray:
    """(x, y) in the crop's pixels of each of the 71 maps that rises above the threshold (those only)."""
    import torch
    import torch.nn.functional as F

    h, w = crop_bgr.shape[:2]
    param = next(net.parameters())
    x = torch.from_numpy(annotator_resize(crop_bgr, FACE_INPUT, FACE_INPUT)).permute(2, 0, 1) / 256.0 - 0.5
    with torch.no_grad():
        maps = net(x[None].to(param.device, param.dtype)).float()
        maps = F.interpolate(maps, (h, w), mode="bilinear", align_corners=True).cpu().numpy()[0]
    peaks = []
    for m in maps:
        ys, xs = np.nonzero(m > FACE_THRESHOLD)
        if len(ys):
            i = int(np.argmax(m[ys, xs]))
            peaks.append((xs[i], ys[i]))
    return np.array(peaks)


def _normalized(peaks: np.ndarray, x0: int, y0: int, width: int, height: int):
    """Crop pixels -> 0..1 of the picture (float32, as the extension); a (0, 0) peak becomes negative."""
    peaks = peaks.astype(np.float32)
    if peaks.ndim != 2 or peaks.shape[1] != 2:
        return None
    xs = np.where(peaks[:, 0] < 1e-6, -1, peaks[:, 0] + x0) / float(width)
    ys = np.where(peaks[:, 1] < 1e-6, -1, peaks[:, 1] + y0) / float(height)
    return [(x, y) for x, y in zip(xs, ys)]


def detect_hands_and_face(hand_net, face_net, bgr: np.ndarray, body_pixels):
    """(left hand, right hand, face) keypoint lists in 0..1 (None where not found) for one body."""
    height, width = bgr.shape[:2]
    left = right = None
    for x, y, side, is_left in hand_boxes(body_pixels, width, height):
        found = _normalized(hand_peaks(hand_net, bgr[y:y + side, x:x + side]), x, y, width, height)
        if is_left:
            left = found
        else:
            right = found
    face = None
    box = face_box(body_pixels, width, height)
    if box is not None:
        x, y, side = box
        face = _normalized(face_peaks(face_net, bgr[y:y + side, x:x + side]), x, y, width, height)
    return left, right, face


def draw_hand(canvas: np.ndarray, keypoints) -> None:
    import cv2

    if not keypoints:
        return
    h, w = canvas.shape[:2]
    for i, (a, b) in enumerate(HAND_EDGES):
        x1, y1 = int(keypoints[a][0] * w), int(keypoints[a][1] * h)
        x2, y2 = int(keypoints[b][0] * w), int(keypoints[b][1] * h)
        if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
            color = tuple(c * 255 for c in colorsys.hsv_to_rgb(i / float(len(HAND_EDGES)), 1.0, 1.0))
            cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)
    for kx, ky in keypoints:
        x, y = int(kx * w), int(ky * h)
        if x > EPS and y > EPS:
            cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, keypoints) -> None:
    import cv2

    if not keypoints:
        return
    h, w = canvas.shape[:2]
    for kx, ky in keypoints:
        x, y = int(kx * w), int(ky * h)
        if x > EPS and y > EPS:
            cv2.circle(canvas, (x, y), 3, (255, 255, 255), thickness=-1)
