#!/usr/bin/env python
"""The normal_bae preprocessor: lorastudio's against controlnet_aux's NormalBaeDetector, same pictures and weights.

Random weights are written at real size in the real file layout (scannet.pt: a pickle of {"model": weights},
keys prefixed "module.", 72.6 M parameters; `lorastudio.testing.annotator_files.normal_bae_state_dict`);
lorastudio (this interpreter, PYTHONPATH = this checkout's src) and controlnet_aux (run by --aux-python, a
separate venv holding controlnet_aux; it is never imported here) load that same file, controlnet_aux with its
own NNET (its bundled gen_efficientnet) and its own checkpoint loading. controlnet_aux's NormalBaeDetector
runs the network and maps the normals to RGB as the A1111 extension's annotator does; only the resize around
it differs (controlnet_aux rounds sides to multiples of 64, the extension pads), so the controlnet_aux side
is given the extension's resize-and-pad first (its own resize is then the identity) and the padding is cut
after.

Compared, per picture:
- net/res8 .. net/res1: both networks' four predictions (x, y, z, kappa) on the same input tensor;
- map: the final uint8 maps (max / mean abs difference, fraction of values that differ).
The last line is one JSON object.

    PYTHONPATH=src /work/main/.venv/bin/python bench/normal_bae_vs_controlnet_aux.py \
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
FILE = "scannet.pt"
# (height, width, detect resolution): square and not, the default 512, sizes the extension pads
PICTURES = ((512, 512, 512), (512, 768, 512), (333, 517, 500), (600, 450, 384), (100, 70, 64))
SCALES = ("res8", "res4", "res2", "res1")


# ---------------------------------------------------------------------------------------------
# The controlnet_aux side: this same file run by --aux-python with AUX_SIDE; it imports only
# controlnet_aux, torch, numpy, cv2.

def aux_side(job: dict) -> dict:
    import torch
    from controlnet_aux.normalbae import NormalBaeDetector

    det = NormalBaeDetector.from_pretrained(job["folder"])  # controlnet_aux's own loading of the pickle
    out: dict = {}
    for name, (path, res) in job["pictures"].items():
        padded, (w, h) = extension_resize_with_pad(np.load(path), res)
        with torch.no_grad():
            preds = det.model(torch.from_numpy(np.load(job["inputs"][name])))[0]
        for scale, p in zip(SCALES, preds):
            out[f"{name}/net/{scale}"] = p.numpy()
        side = min(padded.shape[:2])
        t = time.perf_counter()
        m = np.asarray(det(padded, detect_resolution=side, image_resolution=side, output_type="np"))
        out[f"{name}/seconds"] = np.array(time.perf_counter() - t)
        out[f"{name}/map"] = m[:h, :w]
    return out


# ---------------------------------------------------------------------------------------------
# The lorastudio side.

def write_inputs(work: Path, seed: int) -> dict:
    from lorastudio.generation.preprocessors.picture_steps import pad_to_64
    from lorastudio.generation.preprocessors.normal_bae import network_input
    from lorastudio.testing.annotator_files import edge_picture, normal_bae_state_dict, write_annotator_file

    folder = work / "models" / "ControlNetPreprocessor"
    state = normal_bae_state_dict(seed)
    write_annotator_file(folder, FILE, {"model": {f"module.{k}": v for k, v in state.items()}})
    pictures, inputs = {}, {}
    for i, (h, w, res) in enumerate(PICTURES):
        name = f"{h}x{w}@{res}"
        rgb = edge_picture(h, w, seed=seed + i)
        if i % 2:  # and some noise pictures
            rgb = (np.random.RandomState(seed + i).rand(h, w, 3) * 255).astype(np.uint8)
        np.save(work / f"{name}.npy", rgb)
        np.save(work / f"{name}_input.npy", network_input(pad_to_64(rgb, res)[0]).numpy())
        pictures[name], inputs[name] = (str(work / f"{name}.npy"), res), str(work / f"{name}_input.npy")
    return {"folder": str(folder), "models_root": str(work / "models"), "pictures": pictures, "inputs": inputs}


def ours(job: dict) -> dict:
    import torch

    from lorastudio.generation.preprocessors import run_preprocessor
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles
    from lorastudio.generation.preprocessors.normal_bae import load_network

    net = load_network(AnnotatorFiles(Path(job["models_root"]), allow_pickle=True))
    out: dict = {}
    for name, (path, res) in job["pictures"].items():
        with torch.inference_mode():
            preds = net(torch.from_numpy(np.load(job["inputs"][name])))
        for scale, p in zip(SCALES, preds):
            out[f"{name}/net/{scale}"] = p.numpy()
        t = time.perf_counter()  # includes reading the 290 MB file: lorastudio reads the weights for each map
        out[f"{name}/map"] = run_preprocessor("normal_bae", np.load(path), resolution=res, threshold_a=-1,
                                              threshold_b=-1, models_root=job["models_root"], allow_pickle=True)
        out[f"{name}/seconds"] = np.array(time.perf_counter() - t)
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
        row = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
        if key.endswith("/map"):
            row["differing_fraction"] = float((diff > 0).mean())
            row["std_aux"] = float(b.std())
            seconds = key.replace("/map", "/seconds")
            row["seconds_ours"], row["seconds_aux"] = float(mine[seconds]), float(theirs[seconds])
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
    with tempfile.TemporaryDirectory(prefix="normalbae-vs-aux-") as tmp:
        work = Path(tmp)
        job = write_inputs(work, args.seed)
        theirs = run_aux_side(args.aux_python, __file__, work, job, args.threads)
        rows = compare(ours(job), theirs)
    print_rows(rows, 26)
    maps = [r for k, r in rows.items() if k.endswith("/map")]
    print(json.dumps({"bench": "normal_bae_vs_controlnet_aux", "seed": args.seed,
                      "map_max_abs": max(r.get("max_abs", float("inf")) for r in maps),
                      "map_differing_fraction_max": max(r.get("differing_fraction", 1.0) for r in maps),
                      "net_max_abs": max(r.get("max_abs", float("inf")) for k, r in rows.items() if "/net/" in k),
                      "rows": rows}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == AUX_SIDE:
        job_path, out_path, threads = sys.argv[2:5]
        import torch

        torch.set_num_threads(int(threads))
        np.savez(out_path, **aux_side(json.loads(Path(job_path).read_text())))
    else:
        main()
