#!/usr/bin/env python
"""The mlsd preprocessor: lorastudio's against controlnet_aux's MLSDdetector on the same pictures and weights.

Random weights are written in the real file layout (mlsd_large_512_fp32.pth's keys and shapes, as a
.pth pickle; `lorastudio.testing.annotator_files.mlsd_state_dict`, whose head is scaled so random
weights draw lines); lorastudio (this interpreter, PYTHONPATH = this checkout's src) and controlnet_aux
(run by --aux-python, a separate venv holding controlnet_aux; it is never imported here) load that same
file. controlnet_aux runs M-LSD exactly as the A1111 extension does (the same `pred_lines` on the
picture at its own size, the same drawing); only the resize around it differs (controlnet_aux rounds
sides to multiples of 64, the extension pads), so the controlnet_aux side is given the extension's
resize-and-pad first and the padding is cut after.

Compared, per picture and threshold pair:
- net: both networks' raw outputs on the same input tensor (in M-LSD's channels-last layout);
- lines: the segments (x0, y0, x1, y1, in pixels of the padded picture) of controlnet_aux's `pred_lines`
  and of lorastudio's decoding of its own network's output;
- map: the final uint8 maps.
A "known" case replaces the network on both sides by one returning a constructed output (centres,
some next to each other, displacements of every direction, some below the thresholds), so the
decoding is compared on more than what random weights give. The last line is one JSON object.

    PYTHONPATH=src /work/main/.venv/bin/python bench/mlsd_vs_controlnet_aux.py \
        --aux-python /work/kohya/venv/bin/python [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aux_side import AUX_SIDE, extension_resize_with_pad, print_rows, run_aux_side
# (height, width, detect resolution): square and not, the default 512, sizes the extension pads
PICTURES = ((512, 512, 512), (512, 768, 512), (333, 517, 500), (600, 450, 384), (100, 70, 64))
THRESHOLDS = ((0.1, 0.1), (0.2, 5.0), (0.01, 20.0))


def known_output(h: int, w: int) -> np.ndarray:
    """(1, 9, h, w): logits of -6 but for a few centres; displacements pointing every way, some short."""
    out = np.zeros((1, 9, h, w), np.float32)
    out[0, 0] = -6.0
    rng = np.random.RandomState(7)
    for i in range(60):
        y, x = rng.randint(0, h), rng.randint(0, w)
        out[0, 0, y, x] = rng.uniform(-4, 3)
        if i % 5 == 0 and x + 1 < w:  # a neighbour: only the larger of the two survives the 3x3 maximum
            out[0, 0, y, x + 1] = out[0, 0, y, x] + rng.uniform(-0.5, 0.5)
        length = rng.choice([0.04, 3.0, 12.0, 40.0])
        angle = rng.uniform(0, 2 * np.pi)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        out[0, 1:5, y, x] = (-dx, -dy, dx, dy)
    return out


def _nchw(nhwc: np.ndarray):
    import torch

    return torch.from_numpy(nhwc).permute(0, 3, 1, 2)


class _FixedOutput:
    """Stands in for the network on the controlnet_aux side: returns the given output."""

    def __init__(self, out):
        import torch

        self.out = torch.from_numpy(out)
        self._p = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self._p])

    def __call__(self, x):
        return self.out

    def to(self, device):
        return self

    def eval(self):
        return self


# ---------------------------------------------------------------------------------------------
# The controlnet_aux side: this same file run by --aux-python with AUX_SIDE; it imports only
# controlnet_aux, torch, numpy, cv2.

def aux_side(job: dict) -> dict:
    import torch
    from controlnet_aux.mlsd import MLSDdetector
    from controlnet_aux.mlsd.utils import pred_lines

    det = MLSDdetector.from_pretrained(job["folder"])  # controlnet_aux's own loading of the .pth
    out: dict = {}
    for name, (path, res) in job["pictures"].items():
        padded, (w, h) = extension_resize_with_pad(np.load(path), res)
        with torch.no_grad():
            out[f"{name}/net"] = det.model(_nchw(np.load(job["inputs"][name]))).numpy()
        side = min(padded.shape[:2])  # controlnet_aux's own resize is then the identity
        for a, b in THRESHOLDS:
            t = time.perf_counter()
            m = np.asarray(det(padded, thr_v=a, thr_d=b, detect_resolution=side, image_resolution=side,
                               output_type="np"))
            out[f"{name}/t{a}_{b}/seconds"] = np.array(time.perf_counter() - t)
            out[f"{name}/t{a}_{b}/map"] = m[:h, :w]
            with torch.no_grad():
                try:
                    lines = pred_lines(padded, det.model, [padded.shape[0], padded.shape[1]], a, b)
                except IndexError:  # no line passes: pred_lines fails, the detector draws nothing
                    lines = np.zeros((0, 4))
            out[f"{name}/t{a}_{b}/lines"] = np.asarray(lines, np.float64).reshape(-1, 4)
    det.model = _FixedOutput(np.load(job["known_output"]))
    padded = np.load(job["known_picture"])
    for a, b in THRESHOLDS:
        out[f"known/t{a}_{b}/map"] = np.asarray(det(padded, thr_v=a, thr_d=b, detect_resolution=min(padded.shape[:2]),
                                                    image_resolution=min(padded.shape[:2]), output_type="np"))
        with torch.no_grad():
            try:
                lines = pred_lines(padded, det.model, [padded.shape[0], padded.shape[1]], a, b)
            except IndexError:
                lines = np.zeros((0, 4))
        out[f"known/t{a}_{b}/lines"] = np.asarray(lines, np.float64).reshape(-1, 4)
    return out


# ---------------------------------------------------------------------------------------------
# The lorastudio side.

def write_inputs(work: Path, seed: int) -> dict:
    from lorastudio.generation.preprocessors.picture_steps import pad_to_64
    from lorastudio.generation.preprocessors.mlsd import network_input
    from lorastudio.testing.annotator_files import edge_picture, mlsd_state_dict, write_annotator_file

    folder = work / "models" / "ControlNetPreprocessor"
    write_annotator_file(folder, "mlsd_large_512_fp32.pth", mlsd_state_dict(seed))
    pictures, inputs = {}, {}
    for i, (h, w, res) in enumerate(PICTURES):
        name = f"{h}x{w}@{res}"
        rgb = edge_picture(h, w, seed=seed + i)
        if i % 2:  # and some noise pictures
            rgb = (np.random.RandomState(seed + i).rand(h, w, 3) * 255).astype(np.uint8)
        np.save(work / f"{name}.npy", rgb)
        # saved (1, H, W, 4); both sides look at it as (1, 4, H, W), M-LSD's own (channels-last) layout
        np.save(work / f"{name}_input.npy", network_input(pad_to_64(rgb, res)[0]).permute(0, 2, 3, 1).numpy())
        pictures[name], inputs[name] = (str(work / f"{name}.npy"), res), str(work / f"{name}_input.npy")
    np.save(work / "known_output.npy", known_output(128, 192))
    np.save(work / "known_picture.npy", edge_picture(256, 384, seed=seed))
    return {"folder": str(folder), "models_root": str(work / "models"), "pictures": pictures, "inputs": inputs,
            "known_output": str(work / "known_output.npy"), "known_picture": str(work / "known_picture.npy")}


def ours(job: dict) -> dict:
    import torch

    from lorastudio.generation.preprocessors import run_preprocessor
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles
    from lorastudio.generation.preprocessors.picture_steps import pad_to_64
    from lorastudio.generation.preprocessors.mlsd import decode_lines, mlsd_map, network_input
    from lorastudio.generation.preprocessors.mlsd_net import MlsdNet

    files = AnnotatorFiles(Path(job["models_root"]), allow_pickle=True)
    net = files.network("mlsd_large_512_fp32.pth", MlsdNet)
    out: dict = {}
    for name, (path, res) in job["pictures"].items():
        rgb = np.load(path)
        with torch.no_grad():
            raw = net(_nchw(np.load(job["inputs"][name])))
        out[f"{name}/net"] = raw.numpy()
        for a, b in THRESHOLDS:
            t = time.perf_counter()
            out[f"{name}/t{a}_{b}/map"] = run_preprocessor("mlsd", rgb, resolution=res, threshold_a=a, threshold_b=b,
                                                           models_root=job["models_root"], allow_pickle=True)
            out[f"{name}/t{a}_{b}/seconds"] = np.array(time.perf_counter() - t)
            with torch.no_grad():
                tp = net(network_input(pad_to_64(rgb, res)[0]))
            out[f"{name}/t{a}_{b}/lines"] = decode_lines(tp, a, b)
    known = torch.from_numpy(np.load(job["known_output"]))
    padded = np.load(job["known_picture"])
    for a, b in THRESHOLDS:
        out[f"known/t{a}_{b}/map"] = mlsd_map(padded, min(padded.shape[:2]), a, b, lambda x: known)
        out[f"known/t{a}_{b}/lines"] = decode_lines(known, a, b)
    return out


def compare(mine: dict, theirs: dict) -> dict:
    rows = {}
    for key in sorted(theirs):
        if key.endswith("/seconds"):
            continue
        a, b = mine[key].astype(np.float64), theirs[key].astype(np.float64)
        if a.shape != b.shape:
            rows[key] = {"shape_ours": list(a.shape), "shape_aux": list(b.shape)}
            continue
        diff = np.abs(a - b)
        row = {"max_abs": float(diff.max()) if diff.size else 0.0}
        if key.endswith("/lines"):
            row["lines"] = int(len(b))
        elif key.endswith("/map"):
            row["drawn_fraction_aux"] = float((b[..., 0] > 0).mean())
            seconds = key.replace("/map", "/seconds")
            if seconds in theirs:  # ours includes reading the file: lorastudio reads the weights for each map
                row["seconds_ours"], row["seconds_aux"] = float(mine[seconds]), float(theirs[seconds])
        else:
            row["mean_abs"] = float(diff.mean())
        rows[key] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aux-python", required=True, help="a python whose environment holds controlnet_aux")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mlsd-vs-aux-") as tmp:
        work = Path(tmp)
        job = write_inputs(work, args.seed)
        theirs = run_aux_side(args.aux_python, __file__, work, job, args.threads)
        rows = compare(ours(job), theirs)
    print_rows(rows, 34)
    worst = max((r.get("max_abs", 0.0) for k, r in rows.items() if not k.endswith("/net")), default=0.0)
    print(json.dumps({"bench": "mlsd_vs_controlnet_aux", "seed": args.seed, "lines_and_maps_max_abs": worst,
                      "net_max_abs": max(r.get("max_abs", 0.0) for k, r in rows.items() if k.endswith("/net")),
                      "rows": rows}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == AUX_SIDE:
        job_path, out_path, threads = sys.argv[2:5]
        import torch

        torch.set_num_threads(int(threads))
        np.savez(out_path, **aux_side(json.loads(Path(job_path).read_text())))
    else:
        main()
