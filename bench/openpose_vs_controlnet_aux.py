#!/usr/bin/env python
"""ControlNet preprocessors with weights: lorastudio's against controlnet_aux's on the same pictures and weights.

Random weights are written in the real file layout (the keys and shapes of lllyasviel/Annotators'
file, as a .pth pickle); lorastudio (this interpreter, PYTHONPATH = this checkout's src) and
controlnet_aux's detector (run by --aux-python, a separate venv holding controlnet_aux; it is never
imported here) load that same file and run on the same pictures. Pictures are sized so the two
projects' resizes are both the identity (short side = the resolution, sides multiples of 64):
controlnet_aux rounds sides to 64 where the A1111 extension pads, so for other sizes the controlnet_aux
side is given the extension's resize-and-pad first (and the padding cut after), as the extension runs it.

Per module and picture it prints the max / mean absolute difference of the raw network outputs and
of the final maps (0..255), and how many people / keypoints agree; the last line is one JSON object.

openpose also runs a "known pose" case: both sides get the same synthetic network output (one
drawn skeleton's heatmaps and part-affinity fields) in place of the network, so the people
assembly and the drawing are compared on a real person, not only on what random weights yield.

    PYTHONPATH=src /work/main/.venv/bin/python bench/openpose_vs_controlnet_aux.py \
        --aux-python /work/kohya/venv/bin/python [--modules openpose] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from aux_side import AUX_SIDE, extension_resize_with_pad

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# The controlnet_aux side: this same file run by --aux-python with "--aux-side"; it imports only
# controlnet_aux, torch, numpy.



def aux_openpose(job: dict) -> dict:
    import torch
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body

    body = Body(job["weights"])
    det = OpenposeDetector(body)
    out = {}
    for name, path in job["pictures"].items():
        rgb = np.load(path)
        out[f"{name}/map"] = np.asarray(det(rgb, detect_resolution=job["resolution"],
                                            image_resolution=job["resolution"], output_type="np"))
        x = _net_input(rgb[:, :, ::-1])
        with torch.no_grad():
            paf, heat = body.model(torch.from_numpy(x))
        out[f"{name}/paf"], out[f"{name}/heat"] = paf.numpy(), heat.numpy()
        out[f"{name}/keypoints"] = _aux_keypoints(det.detect_poses(rgb))
    for name, (path, res) in job["padded_pictures"].items():
        padded, (w, h) = extension_resize_with_pad(np.load(path), res)
        side = min(padded.shape[:2])  # controlnet_aux's own resize is then the identity
        out[f"{name}/map"] = np.asarray(det(padded, detect_resolution=side, image_resolution=side,
                                            output_type="np"))[:h, :w]
    # the known pose: the network replaced by one returning the synthetic maps
    fake = np.load(job["known_pose_maps"])
    body.model = _FixedOutput(fake["paf"], fake["heat"])
    rgb = np.load(job["known_pose_picture"])
    out["known_pose/map"] = np.asarray(det(rgb, detect_resolution=job["resolution"],
                                           image_resolution=job["resolution"], output_type="np"))
    out["known_pose/keypoints"] = _aux_keypoints(det.detect_poses(rgb))
    return out


def _aux_keypoints(poses) -> np.ndarray:
    return np.array([[(k.x, k.y) if k is not None else (-1.0, -1.0) for k in p.body.keypoints] for p in poses],
                    dtype=np.float64).reshape(-1, 18, 2)


def _net_input(bgr: np.ndarray) -> np.ndarray:
    """The network input both projects build (scale to half of 368 high, pad to 8): for the raw-output figures."""
    import cv2

    h, w = bgr.shape[:2]
    k = 0.5 * 368 / h
    small = cv2.resize(bgr, (int(w * k), int(h * k)), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LANCZOS4)
    small = np.pad(small, ((0, -small.shape[0] % 8), (0, -small.shape[1] % 8), (0, 0)), constant_values=128)
    return np.ascontiguousarray(small.transpose(2, 0, 1)[None], dtype=np.float32) / 256 - 0.5


class _FixedOutput:
    """Stands in for the body network on both sides: returns the given stage-6 maps."""

    def __init__(self, paf, heat):
        import torch

        self.paf, self.heat = torch.from_numpy(paf), torch.from_numpy(heat)
        self._p = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self._p])

    def __call__(self, x):
        return self.paf, self.heat

    def to(self, device):
        return self


# ---------------------------------------------------------------------------------------------
# The lorastudio side.

def ours_openpose(job: dict) -> dict:
    import torch

    from lorastudio.generation.preprocessors import detect
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles, load_network
    from lorastudio.generation.preprocessors.openpose_body import detect_people, draw_people
    from lorastudio.generation.preprocessors.openpose_net import BodyPoseNet

    root = job["models_root"]
    source = AnnotatorFiles(Path(root), allow_pickle=True)
    net = load_network(BodyPoseNet(), source.find("body_pose_model.pth"), source)
    out = {}
    for name, path in job["pictures"].items():
        rgb = np.load(path)
        m, _poses = detect("openpose", rgb, resolution=job["resolution"], threshold_a=-1, threshold_b=-1,
                          models_root=root, allow_pickle=True)
        out[f"{name}/map"] = m
        with torch.no_grad():
            paf, heat = net(torch.from_numpy(_net_input(rgb[:, :, ::-1])))
        out[f"{name}/paf"], out[f"{name}/heat"] = paf.numpy(), heat.numpy()
        out[f"{name}/keypoints"] = _our_keypoints(detect_people(net, rgb))
    for name, (path, res) in job["padded_pictures"].items():
        out[f"{name}/map"] = detect("openpose", np.load(path), resolution=res, threshold_a=-1, threshold_b=-1,
                                    models_root=root, allow_pickle=True)[0]
    fake = np.load(job["known_pose_maps"])
    rgb = np.load(job["known_pose_picture"])
    people = detect_people(_FixedOutput(fake["paf"], fake["heat"]), rgb)
    out["known_pose/map"] = draw_people(people, *rgb.shape[:2])
    out["known_pose/keypoints"] = _our_keypoints(people)
    return out


def _our_keypoints(people) -> np.ndarray:
    return np.array([[k if k is not None else (-1.0, -1.0) for k in p.keypoints] for p in people],
                     dtype=np.float64).reshape(-1, 18, 2)


# ---------------------------------------------------------------------------------------------
# Inputs: real-layout random weights, pictures, the known pose.

def write_openpose_inputs(work: Path, seed: int, resolution: int) -> dict:
    import cv2
    import torch

    folder = work / "models" / "ControlNetPreprocessor"
    folder.mkdir(parents=True, exist_ok=True)
    from lorastudio.generation.preprocessors.openpose_net import BodyPoseNet

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in BodyPoseNet().state_dict().items():
        # He-scaled, so activations stay O(1) through 6 stages and the maps hold peaks to compare
        std = (2.0 / t[0].numel()) ** 0.5 if t.ndim == 4 else 0.05
        state[key] = torch.randn(t.shape, generator=gen) * std
    weights = folder / "body_pose_model.pth"
    torch.save(state, weights)

    rng = np.random.RandomState(seed)
    pictures = {}
    for name, (h, w) in {"noise_512x512": (resolution, resolution), "shapes_512x768": (resolution, resolution * 3 // 2),
                         "shapes_768x512": (resolution * 3 // 2, resolution)}.items():
        if name.startswith("noise"):
            im = (rng.rand(h, w, 3) * 255).astype(np.uint8)
        else:
            im = np.full((h, w, 3), 40, np.uint8)
            for _ in range(12):
                color = tuple(int(c) for c in rng.randint(0, 256, 3))
                cv2.circle(im, (int(rng.randint(0, w)), int(rng.randint(0, h))), int(rng.randint(8, h // 4)), color, -1)
            im = cv2.GaussianBlur(im, (5, 5), 1.5)
        path = work / f"{name}.npy"
        np.save(path, im)
        pictures[name] = str(path)

    # sizes the extension pads (the unit's resolution is not the short side, sides not multiples of 64)
    padded = {}
    for name, (h, w, res) in {"shapes_333x517_at_500": (333, 517, 500), "noise_100x70_at_64": (100, 70, 64),
                              "shapes_600x450_at_384": (600, 450, 384)}.items():
        im = cv2.resize(np.load(pictures["shapes_512x768" if name.startswith("shapes") else "noise_512x512"]), (w, h),
                        interpolation=cv2.INTER_AREA)
        path = work / f"{name}.npy"
        np.save(path, im)
        padded[name] = (str(path), res)

    # the known pose: a standing figure, its heatmaps (Gaussian per joint) and PAFs (unit vectors
    # along each limb) at the network's 1/8 resolution for a resolution x resolution picture
    from lorastudio.generation.preprocessors.openpose_body import LIMB_PAF, LIMBS

    side = resolution
    k = 0.5 * 368 / side
    n = int(side * k)
    cells = (n + (-n % 8)) // 8
    joints = np.array([(0.50, 0.15), (0.50, 0.25), (0.40, 0.25), (0.36, 0.40), (0.34, 0.55), (0.60, 0.25),
                       (0.64, 0.40), (0.66, 0.55), (0.44, 0.55), (0.43, 0.72), (0.42, 0.90), (0.56, 0.55),
                       (0.57, 0.72), (0.58, 0.90), (0.48, 0.13), (0.52, 0.13), (0.46, 0.15), (0.54, 0.15)])
    pts = joints * (n / 8.0)
    yy, xx = np.mgrid[0:cells, 0:cells].astype(np.float32)
    heat = np.zeros((1, 19, cells, cells), np.float32)
    for j, (x, y) in enumerate(pts):
        heat[0, j] = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 0.8 ** 2))
    heat[0, 18] = 1 - heat[0, :18].max(0)
    paf = np.zeros((1, 38, cells, cells), np.float32)
    for (a, b), (cx, cy) in zip(LIMBS, LIMB_PAF):
        p, q = pts[a - 1], pts[b - 1]
        v = q - p
        length = max(np.hypot(*v), 1e-6)
        u = v / length
        t = (xx - p[0]) * u[0] + (yy - p[1]) * u[1]
        d = np.abs((xx - p[0]) * u[1] - (yy - p[1]) * u[0])
        on = (t >= -1) & (t <= length + 1) & (d <= 1.0)
        paf[0, cx][on], paf[0, cy][on] = u[0], u[1]
    np.savez(work / "known_pose_maps.npz", paf=paf, heat=heat)
    picture = np.full((side, side, 3), 90, np.uint8)
    np.save(work / "known_pose.npy", picture)
    return {"weights": str(weights), "models_root": str(work / "models"), "pictures": pictures,
            "padded_pictures": padded, "resolution": resolution, "known_pose_maps": str(work / "known_pose_maps.npz"),
            "known_pose_picture": str(work / "known_pose.npy")}


# --- openpose_full: hands and face on the known pose's person (the body network replaced, as above,
# so that one person with arms and a head is found; the hand and face networks are the files')

def write_openpose_full_inputs(work: Path, seed: int, resolution: int) -> dict:
    import torch

    from lorastudio.generation.preprocessors.openpose_hand_face_net import FACE_MAPS, HAND_MAPS, KeypointHeatmapNet

    job = write_openpose_inputs(work, seed, resolution)
    folder = Path(job["models_root"]) / "ControlNetPreprocessor"
    for i, (name, maps) in enumerate((("hand_pose_model.pth", HAND_MAPS), ("facenet.pth", FACE_MAPS))):
        gen = torch.Generator().manual_seed(seed + 1 + i)
        state = {k: torch.randn(t.shape, generator=gen) * ((2.0 / t[0].numel()) ** 0.5 if t.ndim == 4 else 0.05)
                 for k, t in KeypointHeatmapNet(maps).state_dict().items()}
        torch.save(state, folder / name)
        job[name] = str(folder / name)
    # a picture with something in it where the hands and the face are
    job["full_picture"] = job["pictures"]["shapes_512x768"].replace("512x768", "512x512_full")
    np.save(job["full_picture"], np.load(job["pictures"]["shapes_512x768"])[:resolution, :resolution])
    return job


def aux_openpose_full(job: dict) -> dict:
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face
    from controlnet_aux.open_pose.hand import Hand

    body = Body(job["weights"])
    fake = np.load(job["known_pose_maps"])
    body.model = _FixedOutput(fake["paf"], fake["heat"])
    det = OpenposeDetector(body, Hand(job["hand_pose_model.pth"]), Face(job["facenet.pth"]))
    rgb = np.load(job["full_picture"])
    poses = det.detect_poses(rgb, include_hand=True, include_face=True)
    out = {"full/map": np.asarray(det(rgb, detect_resolution=job["resolution"], image_resolution=job["resolution"],
                                      include_hand=True, include_face=True, output_type="np"))}
    for part in ("left_hand", "right_hand", "face"):
        points = [getattr(p, part) for p in poses]
        out[f"full/{part}/keypoints"] = np.array([[(k.x, k.y) for k in pts] if pts else [] for pts in points],
                                                 dtype=np.float64).reshape(len(points), -1, 2)
    return out


def ours_openpose_full(job: dict) -> dict:
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles, load_network
    from lorastudio.generation.preprocessors.openpose_body import openpose_map
    from lorastudio.generation.preprocessors.openpose_hand_face_net import FACE_MAPS, HAND_MAPS, KeypointHeatmapNet

    source = AnnotatorFiles(Path(job["models_root"]), allow_pickle=True)
    hand = load_network(KeypointHeatmapNet(HAND_MAPS), source.find("hand_pose_model.pth"), source)
    face = load_network(KeypointHeatmapNet(FACE_MAPS), source.find("facenet.pth"), source)
    fake = np.load(job["known_pose_maps"])
    rgb = np.load(job["full_picture"])
    pose_map, poses = openpose_map(rgb, job["resolution"], _FixedOutput(fake["paf"], fake["heat"]), hand, face)
    out = {"full/map": pose_map}
    for part, key in (("left_hand", "hand_left_keypoints_2d"), ("right_hand", "hand_right_keypoints_2d"),
                      ("face", "face_keypoints_2d")):
        points = [p[key] for p in poses["people"]]
        out[f"full/{part}/keypoints"] = np.array([np.array(pts).reshape(-1, 3)[:, :2] if pts else [] for pts in points],
                                                 dtype=np.float64).reshape(len(points), -1, 2)
    return out


MODULES = {"openpose": (write_openpose_inputs, ours_openpose, aux_openpose),
           "openpose_full": (write_openpose_full_inputs, ours_openpose_full, aux_openpose_full)}


def compare(ours: dict, theirs: dict) -> dict:
    rows = {}
    for key in sorted(theirs):
        a, b = ours[key], theirs[key]
        if key.endswith("/keypoints"):
            same = a.shape == b.shape
            rows[key] = {"people_ours": int(a.shape[0]), "people_aux": int(b.shape[0]),
                         "points_ours": int(a.shape[0] and a.shape[1]), "points_aux": int(b.shape[0] and b.shape[1]),
                         "found_aux": int((b >= 0).all(axis=-1).sum()),  # points inside the picture
                         "max_abs": float(np.abs(a - b).max()) if same and a.size else (0.0 if same else None)}
            continue
        a, b = a.astype(np.float64), b.astype(np.float64)
        if a.shape != b.shape:
            rows[key] = {"shape_ours": list(a.shape), "shape_aux": list(b.shape)}
            continue
        diff = np.abs(a - b)
        rows[key] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                     "differing_fraction": float((diff > 0).mean()), "range_aux": [float(b.min()), float(b.max())],
                     "nonzero_fraction_aux": float((b != 0).mean())}  # a map with something drawn on it
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aux-python", required=True, help="a python whose environment holds controlnet_aux")
    ap.add_argument("--modules", default=",".join(MODULES))
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    summary = {}
    with tempfile.TemporaryDirectory(prefix="pp-vs-aux-") as tmp:
        for name in args.modules.split(","):
            write_inputs, ours_fn, _ = MODULES[name]
            work = Path(tmp) / name
            job = write_inputs(work, args.seed, args.resolution)
            (work / "job.json").write_text(json.dumps(job))
            subprocess.run([args.aux_python, __file__, AUX_SIDE, name, str(work / "job.json"), str(work / "aux.npz"),
                            str(args.threads)], check=True, env=env)
            theirs = dict(np.load(work / "aux.npz"))
            ours = ours_fn(job)
            rows = compare(ours, theirs)
            for key, row in rows.items():
                print(f"{name:10s} {key:28s} " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                          for k, v in row.items()))
            summary[name] = rows
    print(json.dumps({"bench": "openpose_vs_controlnet_aux", "resolution": args.resolution, "seed": args.seed,
                      "modules": summary}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == AUX_SIDE:
        name, job_path, out_path, threads = sys.argv[2:6]
        import torch

        torch.set_num_threads(int(threads))
        result = MODULES[name][2](json.loads(Path(job_path).read_text()))
        np.savez(out_path, **result)
    else:
        main()
