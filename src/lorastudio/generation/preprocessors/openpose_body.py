"""OpenPose body detection as the A1111 ControlNet extension runs it: the network's part heatmaps and
part-affinity fields -> people (18 COCO keypoints each) -> the stick figure on black, and the
OpenPose JSON the extension's /controlnet/detect returns.

The steps, constants and drawing follow the extension's `annotator/openpose` (CMU's algorithm as
ported by pytorch-openpose): the ControlNet openpose models were trained on exactly these pictures
(limb colours, stick width 4, joint radius 4), so they are reproduced, not approximated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOX_SIZE = 368  # the network's training box: the picture is scaled so its height is half of it
SCALE = 0.5
STRIDE = 8  # the network's maps are 1/8 of its input
PAD_VALUE = 128
PEAK_THRESHOLD = 0.1  # a part's heatmap peak counts above this
PAF_THRESHOLD = 0.05  # a sample along a limb supports it above this
PAF_SAMPLES = 10
PARTS = 18  # nose, neck, r shoulder, r elbow, r wrist, l shoulder, ..., r eye, l eye, r ear, l ear

# (part a, part b) of each limb (1-based, as OpenPose lists them) and the two PAF channels of each.
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18))
LIMB_PAF = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
            (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))
DRAWN_LIMBS = 17  # the last two (ear-shoulder) join people but are not drawn
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
STICK_WIDTH = 4
JOINT_RADIUS = 4


@dataclass(frozen=True)
class Person:
    keypoints: tuple[tuple[float, float] | None, ...]  # 18 (x, y) in 0..1 of the picture, None where not found
    score: float
    parts: int
    pixels: tuple[tuple[float, float] | None, ...] = ()  # the same keypoints in pixels (hand and face boxes)
    left_hand: list | None = None  # openpose_full: 21 (x, y) in 0..1, negative where not found
    right_hand: list | None = None
    face: list | None = None  # openpose_full: up to 71 (x, y) in 0..1


def annotator_resize(x: np.ndarray, width: int, height: int, k: float | None = None) -> np.ndarray:
    """cv2.resize channel by channel (area when shrinking by `k`, Lanczos when enlarging), as the annotator does."""
    import cv2

    ho, wo = x.shape[:2]
    k = (height + width) / (ho + wo) if k is None else k
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LANCZOS4
    if x.ndim == 2 or x.shape[2] in (1, 3):
        return cv2.resize(x, (width, height), interpolation=interp)
    return np.stack([cv2.resize(x[:, :, c], (width, height), interpolation=interp) for c in range(x.shape[2])], 2)


def network_maps(net, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's (heatmaps HxWx19, PAFs HxWx38) at the picture's size, float64."""
    import torch

    h, w = bgr.shape[:2]
    k = SCALE * BOX_SIZE / h
    small = annotator_resize(bgr, int(w * k), int(h * k), (h * k + w * k) / (h + w))
    sh, sw = small.shape[:2]
    pad_h, pad_w = -sh % STRIDE, -sw % STRIDE
    padded = np.pad(small, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=PAD_VALUE)
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / 256 - 0.5)
    param = next(net.parameters())
    with torch.no_grad():
        paf, heat = net(x.to(param.device, param.dtype))

    def full_size(t) -> np.ndarray:
        m = t[0].float().cpu().numpy().transpose(1, 2, 0)
        m = annotator_resize(m, m.shape[1] * STRIDE, m.shape[0] * STRIDE, float(STRIDE))[:sh, :sw]
        return annotator_resize(m, w, h).astype(np.float64)

    return full_size(heat), full_size(paf)


def find_peaks(heatmaps: np.ndarray) -> list[list[tuple[int, int, float, int]]]:
    """Per part, its (x, y, score, id) local maxima of the smoothed heatmap; ids run over all parts."""
    from scipy.ndimage import gaussian_filter

    peaks, next_id = [], 0
    for part in range(PARTS):
        raw = heatmaps[:, :, part]
        g = gaussian_filter(raw, sigma=3)
        # a peak is >= its four neighbours (zero outside the picture) and above the threshold
        up, down, left, right = (np.zeros_like(g) for _ in range(4))
        up[1:, :], down[:-1, :], left[:, 1:], right[:, :-1] = g[:-1, :], g[1:, :], g[:, :-1], g[:, 1:]
        ys, xs = np.nonzero((g >= up) & (g >= down) & (g >= left) & (g >= right) & (g > PEAK_THRESHOLD))
        peaks.append([(int(x), int(y), float(raw[y, x]), next_id + i) for i, (x, y) in enumerate(zip(xs, ys))])
        next_id += len(xs)
    return peaks


def _limb_score(a, b, paf_x: np.ndarray, paf_y: np.ndarray, height: int) -> float | None:
    """How well the PAF between two peaks points from a to b (None when it does not support a limb)."""
    vx, vy = b[0] - a[0], b[1] - a[1]
    norm = max(0.001, math.sqrt(vx * vx + vy * vy))
    ux, uy = vx / norm, vy / norm
    xs = np.rint(np.linspace(a[0], b[0], num=PAF_SAMPLES)).astype(int)
    ys = np.rint(np.linspace(a[1], b[1], num=PAF_SAMPLES)).astype(int)
    along = paf_x[ys, xs] * ux + paf_y[ys, xs] * uy
    # a sequential sum, as the reference's Python sum(): it decides ties between candidate limbs
    score = sum(along.tolist()) / PAF_SAMPLES + min(0.5 * height / norm - 1, 0)
    if np.count_nonzero(along > PAF_THRESHOLD) > 0.8 * PAF_SAMPLES and score > 0:
        return score
    return None


def connect_limbs(peaks, pafs: np.ndarray, height: int) -> list[np.ndarray | None]:
    """Per limb, its accepted (id a, id b, score, index a, index b) rows, each peak used once; None
    where one of its parts has no peak."""
    out = []
    for (pa, pb), (cx, cy) in zip(LIMBS, LIMB_PAF):
        cand_a, cand_b = peaks[pa - 1], peaks[pb - 1]
        if not cand_a or not cand_b:
            out.append(None)
            continue
        scored = []
        for i, a in enumerate(cand_a):
            for j, b in enumerate(cand_b):
                s = _limb_score(a, b, pafs[:, :, cx], pafs[:, :, cy], height)
                if s is not None:
                    scored.append((i, j, s))
        scored.sort(key=lambda c: c[2], reverse=True)  # stable, as the reference's sorted()
        rows, used_a, used_b = [], set(), set()
        for i, j, s in scored:
            if i not in used_a and j not in used_b:
                rows.append((cand_a[i][3], cand_b[j][3], s, i, j))
                used_a.add(i)
                used_b.add(j)
                if len(rows) >= min(len(cand_a), len(cand_b)):
                    break
        out.append(np.array(rows, dtype=np.float64).reshape(-1, 5))
    return out


def assemble_people(peaks, connections) -> tuple[np.ndarray, np.ndarray]:
    """(candidates N x 4 of x, y, score, id; people M x 20: 18 candidate ids or -1, total score, part count)."""
    candidates = np.array([p for part in peaks for p in part], dtype=np.float64).reshape(-1, 4)
    people = -np.ones((0, PARTS + 2))
    for k, rows in enumerate(connections):
        if rows is None:
            continue
        ia, ib = LIMBS[k][0] - 1, LIMBS[k][1] - 1
        for id_a, id_b, s, _i, _j in rows:
            hits = [n for n in range(len(people)) if people[n][ia] == id_a or people[n][ib] == id_b][:2]
            if len(hits) == 1 or (len(hits) == 2 and ((people[hits[0]] >= 0) & (people[hits[1]] >= 0))[:-2].any()):
                # the limb extends one person (two that share a part: the first)
                row = people[hits[0]]
                if len(hits) == 2 or row[ib] != id_b:
                    row[ib] = id_b
                    row[-1] += 1
                    row[-2] += candidates[int(id_b), 2] + s
            elif len(hits) == 2:  # it joins two disjoint people into one
                p1, p2 = hits
                people[p1][:-2] += people[p2][:-2] + 1
                people[p1][-2:] += people[p2][-2:]
                people[p1][-2] += s
                people = np.delete(people, p2, 0)
            elif k < len(LIMBS) - 2:  # a new person (the ear-shoulder limbs never start one)
                row = -np.ones(PARTS + 2)
                row[ia], row[ib] = id_a, id_b
                row[-1] = 2
                row[-2] = candidates[int(id_a), 2] + candidates[int(id_b), 2] + s
                people = np.vstack([people, row])
    keep = [n for n in range(len(people)) if people[n][-1] >= 4 and people[n][-2] / people[n][-1] >= 0.4]
    return candidates, people[keep]


def detect_people(net, rgb: np.ndarray) -> list[Person]:
    """People in an RGB uint8 picture, keypoints in 0..1 of its width and height."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    h, w = bgr.shape[:2]
    heatmaps, pafs = network_maps(net, bgr)
    peaks = find_peaks(heatmaps)
    candidates, people = assemble_people(peaks, connect_limbs(peaks, pafs, h))
    return [Person(tuple((candidates[int(c)][0] / float(w), candidates[int(c)][1] / float(h)) if c != -1 else None
                         for c in row[:PARTS]), float(row[-2]), int(row[-1]),
                   tuple((candidates[int(c)][0], candidates[int(c)][1]) if c != -1 else None for c in row[:PARTS]))
            for row in people]


def draw_people(people: list[Person], height: int, width: int) -> np.ndarray:
    """The stick figures on a black RGB canvas, as the extension draws them."""
    import cv2

    canvas = np.zeros((height, width, 3), np.uint8)
    for person in people:
        kp = person.keypoints
        for (a, b), color in zip(LIMBS[:DRAWN_LIMBS], COLORS):
            if kp[a - 1] is None or kp[b - 1] is None:
                continue
            xs = np.array([kp[a - 1][0], kp[b - 1][0]]) * float(width)
            ys = np.array([kp[a - 1][1], kp[b - 1][1]]) * float(height)
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), STICK_WIDTH),
                                       int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color])
        for point, color in zip(kp, COLORS):
            if point is not None:
                cv2.circle(canvas, (int(point[0] * width), int(point[1] * height)), JOINT_RADIUS, color, thickness=-1)
        if person.left_hand or person.right_hand or person.face:
            from lorastudio.generation.preprocessors.openpose_hand_face import draw_face, draw_hand

            draw_hand(canvas, person.left_hand)
            draw_hand(canvas, person.right_hand)
            draw_face(canvas, person.face)
    return canvas


def poses_json(people: list[Person], height: int, width: int) -> dict:
    """The OpenPose JSON the extension returns (keypoints as x, y, confidence 1 in 0..1; 0, 0, 0 where absent)."""
    def flat(points):
        if not points:
            return None
        return [v for p in points for v in ((float(p[0]), float(p[1]), 1.0) if p is not None else (0.0, 0.0, 0.0))]

    return {"people": [{"pose_keypoints_2d": flat(p.keypoints), "face_keypoints_2d": flat(p.face),
                        "hand_left_keypoints_2d": flat(p.left_hand), "hand_right_keypoints_2d": flat(p.right_hand)}
                       for p in people],
            "animals": [], "canvas_height": height, "canvas_width": width}


BODY_FILE = "body_pose_model.pth"
HAND_FILE = "hand_pose_model.pth"
FACE_FILE = "facenet.pth"


def run_openpose(image: np.ndarray, resolution: int, source, *, hands_and_face: bool = False) -> tuple[np.ndarray, dict]:
    """RGB uint8 picture -> (the pose map, the OpenPose JSON), the extension's `openpose` module
    (`openpose_full` with hands_and_face), the networks read from `source`."""
    from lorastudio.generation.preprocessors.annotator_weights import load_network
    from lorastudio.generation.preprocessors.openpose_net import BodyPoseNet

    body = load_network(BodyPoseNet(), source.find(BODY_FILE), source)
    hand = face = None
    if hands_and_face:
        from lorastudio.generation.preprocessors.openpose_hand_face_net import FACE_MAPS, HAND_MAPS, KeypointHeatmapNet

        hand = load_network(KeypointHeatmapNet(HAND_MAPS), source.find(HAND_FILE), source)
        face = load_network(KeypointHeatmapNet(FACE_MAPS), source.find(FACE_FILE), source)
    return openpose_map(image, resolution, body, hand, face)


def openpose_map(image: np.ndarray, resolution: int, body, hand=None, face=None) -> tuple[np.ndarray, dict]:
    """As the extension: the short side goes to `resolution`, the picture is padded (edge pixels) to
    multiples of 64, detected (hands and face too when their networks are given) and drawn at that
    size, and the padding is cut from the map (the JSON keeps the padded canvas size, as the
    extension's does)."""
    from lorastudio.generation.preprocessors.picture_steps import resize_short_side

    small = resize_short_side(image, resolution)
    h, w = small.shape[:2]
    padded = np.pad(small, ((0, -h % 64), (0, -w % 64), (0, 0)), mode="edge")
    people = detect_people(body, padded)
    if hand is not None and face is not None:
        import dataclasses

        from lorastudio.generation.preprocessors.openpose_hand_face import detect_hands_and_face

        bgr = np.ascontiguousarray(padded[:, :, ::-1])
        people = [dataclasses.replace(p, **dict(zip(("left_hand", "right_hand", "face"),
                                                    detect_hands_and_face(hand, face, bgr, p.pixels))))
                  for p in people]
    ph, pw = padded.shape[:2]
    return np.ascontiguousarray(draw_people(people, ph, pw)[:h, :w]), poses_json(people, ph, pw)
