#!/usr/bin/env python
"""The depth_leres preprocessor: lorastudio's against controlnet_aux's LeresDetector on the same pictures and weights.

Random weights of the real size are written in the real file layout (res101.pth: a checkpoint whose
`depth_model` entry holds the ResNeXt-101 LeReS network, keys prefixed `module.`, 115.6 M parameters;
`lorastudio.testing.annotator_files.leres_state_dict`), plus small `shift_model` / `focal_model` entries as
the published checkpoint has. lorastudio (this interpreter, PYTHONPATH = this checkout's src) and
controlnet_aux (run by --aux-python, a separate venv holding controlnet_aux; never imported here) load that
same file: controlnet_aux with its own RelDepthModel, strip_prefix_if_present and a strict load (its
from_pretrained also insists on the pix2pix file of depth_leres++, which this bench does not compare).

controlnet_aux's LeresDetector runs the network and the normalisation / thresholds / inversion exactly as the
A1111 extension's apply_leres (the same estimateleres); only the resize around it differs (controlnet_aux
rounds sides to multiples of 64, the extension pads), so the controlnet_aux side is given the extension's
resize-and-pad first (its own resize is then the identity) and the padding is cut after.

Compared per picture: `input` the network input tensors (controlnet_aux's scale_torch of the flipped
picture vs ours), `net` both networks' raw predictions on the same input, `map` the final uint8 maps for the
default sliders and one other (Remove Near %, Remove Background %) pair. A `known` case replaces the network
on both sides by one returning a constructed prediction (a ramp with noise and ties; a flat one), so the
normalisation and the thresholds are compared on more than what random weights give.

    PYTHONPATH=src /work/main/.venv/bin/python bench/depth_leres_vs_controlnet_aux.py \
        --aux-python /work/kohya/venv/bin/python [--threads 2]

`--golden FILE` writes instead the fixture of tests/generation/test_depth_leres.py: controlnet_aux's own
blocks (its Bottleneck, FTB, FFM, AO and the forwards of its ResNet, Decoder, DepthNet, DepthModel) assembled
at the test's small size (GOLDEN_SIZES), loading strictly the test's small file (`leres_state_dict(0, **sizes)`,
written by this side), run by its LeresDetector on the extension's padded picture: the prediction and the maps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aux_side import AUX_SIDE, extension_resize_with_pad, aux_env, print_rows, run_aux_side
# (height, width, detect resolution, (remove near %, remove background %) besides the defaults 0, 0)
PICTURES = ((512, 512, 512, (20.0, 0.0)), (333, 517, 320, (0.0, 35.0)), (600, 450, 384, (12.5, 60.0)),
            (100, 70, 64, (50.0, 50.0)))
# the test's small network: the stem, the stages' widths (= their outputs), groups, blocks, decoder widths
GOLDEN_SIZES = dict(stem=16, widths=(32, 64, 128, 256), groups=4, blocks=(1, 1, 2, 1), mids=(32, 32, 32, 64))
GOLDEN_SLIDERS = ((0.0, 0.0), (20.0, 30.0))
KNOWN_SLIDERS = ((0.0, 0.0), (20.0, 0.0), (0.0, 35.0), (33.3, 66.6), (100.0, 0.0))


def known_predictions() -> dict:
    """Constructed (1, 1, H, W) predictions: a ramp with noise and repeated values, and a flat one."""
    rng = np.random.RandomState(3)
    yy, xx = np.mgrid[:128, :192].astype(np.float32)
    ramp = (xx / 191 - 0.3 * yy / 127 + 0.05 * rng.randn(128, 192)).astype(np.float32)
    ramp[40:60, 50:90] = 0.25  # ties
    return {"ramp": ramp[None, None], "flat": np.full((1, 1, 64, 64), 0.7, np.float32)}


def _sliders(key: str) -> tuple[float, float]:
    a, b = key.split("/")[-2].removeprefix("t").split("_")
    return float(a), float(b)


# ---------------------------------------------------------------------------------------------
# The controlnet_aux side: this same file run by --aux-python with AUX_SIDE; it imports only
# controlnet_aux, torch, numpy, cv2.

class _FixedDepth:
    """Stands in for RelDepthModel on the controlnet_aux side: its depth_model returns the given prediction."""

    def __init__(self, out):
        import torch

        self._p = torch.nn.Parameter(torch.zeros(1))
        self.depth_model = lambda x: torch.from_numpy(out)

    def parameters(self):
        return iter([self._p])


def aux_side(job: dict) -> dict:
    import torch
    from controlnet_aux.leres import LeresDetector
    from controlnet_aux.leres.leres.depthmap import scale_torch
    from controlnet_aux.leres.leres.multi_depth_model_woauxi import RelDepthModel
    from controlnet_aux.leres.leres.net_tools import strip_prefix_if_present

    checkpoint = torch.load(job["file"], map_location="cpu")  # as LeresDetector.from_pretrained loads it
    model = RelDepthModel(backbone="resnext101")
    model.load_state_dict(strip_prefix_if_present(checkpoint["depth_model"], "module."), strict=True)
    model.eval()
    del checkpoint
    det = LeresDetector(model, None)
    out: dict = {}
    for name, (path, res, sliders) in job["pictures"].items():
        padded, (w, h) = extension_resize_with_pad(np.load(path), res)
        x = scale_torch(padded[:, :, ::-1].copy())[None]  # estimateleres's input
        out[f"{name}/input"] = x.numpy()
        with torch.no_grad():
            out[f"{name}/net"] = model.depth_model(torch.from_numpy(np.load(job["inputs"][name]))).numpy()
        side = min(padded.shape[:2])
        for a, b in ((0.0, 0.0), tuple(sliders)):
            t = time.perf_counter()
            m = np.asarray(det(padded, thr_a=a, thr_b=b, boost=False, detect_resolution=side, image_resolution=side,
                               output_type="np"))
            out[f"{name}/t{a}_{b}/seconds"] = np.array(time.perf_counter() - t)
            out[f"{name}/t{a}_{b}/map"] = m[:h, :w]
    for kind, path in job["known"].items():
        pred = np.load(path)
        det.model = _FixedDepth(pred)
        picture = np.zeros(pred.shape[2:] + (3,), np.uint8)
        for a, b in KNOWN_SLIDERS:
            out[f"known_{kind}/t{a}_{b}/map"] = np.asarray(det(picture, thr_a=a, thr_b=b, detect_resolution=min(
                picture.shape[:2]), image_resolution=min(picture.shape[:2]), output_type="np"))
    return out


def _aux_small_model(sizes: dict):
    """controlnet_aux's RelDepthModel at other sizes, built from its own modules (its constructors fix the
    ResNeXt-101 sizes); the forwards are all controlnet_aux's."""
    from torch import nn
    from controlnet_aux.leres.leres import Resnext_torch as R
    from controlnet_aux.leres.leres import network_auxi as N
    from controlnet_aux.leres.leres.multi_depth_model_woauxi import DepthModel, RelDepthModel

    enc = R.ResNet.__new__(R.ResNet)
    nn.Module.__init__(enc)
    enc.conv1 = nn.Conv2d(3, sizes["stem"], kernel_size=7, stride=2, padding=3, bias=False)
    enc.bn1, enc.relu = nn.BatchNorm2d(sizes["stem"]), nn.ReLU(inplace=True)
    enc.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    cin = sizes["stem"]
    for i, (w, n) in enumerate(zip(sizes["widths"], sizes["blocks"]), start=1):
        planes, stride = w // 4, 1 if i == 1 else 2
        base_width = 256 // sizes["groups"]  # the bottleneck's width is then its output (4 x planes), as in 32x8d
        down = nn.Sequential(R.conv1x1(cin, w, stride), nn.BatchNorm2d(w))
        blocks = [R.Bottleneck(cin, planes, stride, down, sizes["groups"], base_width)]
        blocks += [R.Bottleneck(w, planes, groups=sizes["groups"], base_width=base_width) for _ in range(n - 1)]
        setattr(enc, f"layer{i}", nn.Sequential(*blocks))
        cin = w
    net = N.DepthNet.__new__(N.DepthNet)
    nn.Module.__init__(net)
    net.encoder = enc
    w, m = sizes["widths"], sizes["mids"]
    dec = N.Decoder.__new__(N.Decoder)
    nn.Module.__init__(dec)
    dec.conv = N.FTB(inchannels=w[3], midchannels=m[3])
    dec.conv1 = nn.Conv2d(m[3], m[2], kernel_size=3, padding=1, stride=1, bias=True)
    dec.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    for i in (2, 1, 0):
        setattr(dec, f"ffm{i}", N.FFM(inchannels=w[i], midchannels=m[i], outchannels=m[i], upfactor=2))
    dec.outconv = N.AO(inchannels=m[0], outchannels=1, upfactor=2)
    depth = DepthModel.__new__(DepthModel)
    nn.Module.__init__(depth)
    depth.encoder_modules, depth.decoder_modules = net, dec
    model = RelDepthModel.__new__(RelDepthModel)
    nn.Module.__init__(model)
    model.depth_model = depth
    return model


def aux_golden(job: dict) -> dict:
    import torch
    from controlnet_aux.leres import LeresDetector
    from controlnet_aux.leres.leres.depthmap import estimateleres
    from controlnet_aux.leres.leres.net_tools import strip_prefix_if_present

    model = _aux_small_model(job["sizes"])
    checkpoint = torch.load(job["file"], map_location="cpu")
    model.load_state_dict(strip_prefix_if_present(checkpoint["depth_model"], "module."), strict=True)
    model.eval()
    det = LeresDetector(model, None)
    picture = np.load(job["picture"])
    padded, (w, h) = extension_resize_with_pad(picture, job["resolution"])
    side = min(padded.shape[:2])
    out = {"picture": picture, "padded": padded}
    with torch.no_grad():
        out["prediction"] = estimateleres(padded, model, padded.shape[1], padded.shape[0])
    for a, b in GOLDEN_SLIDERS:
        m = np.asarray(det(padded, thr_a=a, thr_b=b, detect_resolution=side, image_resolution=side,
                           output_type="np"))
        out[f"map_{a}_{b}"] = m[:h, :w, 0]
    return out


def golden(path: Path, aux_python: str, env: dict) -> None:
    import torch

    from lorastudio.testing.annotator_files import edge_picture, leres_state_dict

    with tempfile.TemporaryDirectory(prefix="leres-golden-") as tmp:
        work = Path(tmp)
        torch.save({"depth_model": leres_state_dict(0, **GOLDEN_SIZES)}, work / "res101.pth")
        np.save(work / "picture.npy", edge_picture(48, 80))
        job = {"file": str(work / "res101.pth"), "picture": str(work / "picture.npy"), "resolution": 64,
               "sizes": GOLDEN_SIZES}
        (work / "job.json").write_text(json.dumps(job))
        subprocess.run([aux_python, __file__, AUX_SIDE, str(work / "job.json"), str(work / "aux.npz"), "1", "golden"],
                       check=True, env=env)
        got = dict(np.load(work / "aux.npz"))
    np.savez_compressed(path, **got)
    print(f"wrote {path}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in got.items()))


# ---------------------------------------------------------------------------------------------
# The lorastudio side.

def write_inputs(work: Path, seed: int) -> dict:
    import torch

    from lorastudio.generation.preprocessors.depth_leres import network_input
    from lorastudio.generation.preprocessors.picture_steps import pad_to_64
    from lorastudio.testing.annotator_files import edge_picture, leres_state_dict

    folder = work / "models" / "ControlNetPreprocessor"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed + 1)
    extra = {"module.fc.weight": torch.randn(8, 4, generator=g)}  # the checkpoint's other entries: not read
    torch.save({"depth_model": leres_state_dict(seed), "shift_model": extra, "focal_model": extra},
               folder / "res101.pth")
    pictures, inputs = {}, {}
    for i, (h, w, res, sliders) in enumerate(PICTURES):
        name = f"{h}x{w}@{res}"
        rgb = edge_picture(h, w, seed=seed + i)
        if i % 2:  # and some noise pictures
            rgb = (np.random.RandomState(seed + i).rand(h, w, 3) * 255).astype(np.uint8)
        np.save(work / f"{name}.npy", rgb)
        np.save(work / f"{name}_input.npy", network_input(pad_to_64(rgb, res)[0]).numpy())
        pictures[name], inputs[name] = (str(work / f"{name}.npy"), res, sliders), str(work / f"{name}_input.npy")
    known = {}
    for kind, pred in known_predictions().items():
        np.save(work / f"known_{kind}.npy", pred)
        known[kind] = str(work / f"known_{kind}.npy")
    return {"file": str(folder / "res101.pth"), "models_root": str(work / "models"), "pictures": pictures,
            "inputs": inputs, "known": known}


def ours(job: dict) -> dict:
    import torch

    from lorastudio.generation.preprocessors import run_preprocessor
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles
    from lorastudio.generation.preprocessors.depth_leres import leres_map, load_network, network_input
    from lorastudio.generation.preprocessors.picture_steps import pad_to_64

    files = AnnotatorFiles(Path(job["models_root"]), allow_pickle=True)
    net = load_network(Path(job["file"]), files)
    out: dict = {}
    for name, (path, res, sliders) in job["pictures"].items():
        rgb = np.load(path)
        out[f"{name}/input"] = network_input(pad_to_64(rgb, res)[0]).numpy()
        with torch.no_grad():
            out[f"{name}/net"] = net(torch.from_numpy(np.load(job["inputs"][name]))).numpy()
        for a, b in ((0.0, 0.0), tuple(sliders)):
            t = time.perf_counter()
            out[f"{name}/t{a}_{b}/map"] = run_preprocessor("depth_leres", rgb, resolution=res, threshold_a=a,
                                                           threshold_b=b, models_root=job["models_root"],
                                                           allow_pickle=True)
            out[f"{name}/t{a}_{b}/seconds"] = np.array(time.perf_counter() - t)
    for kind, path in job["known"].items():
        pred = torch.from_numpy(np.load(path))
        picture = np.zeros(tuple(pred.shape[2:]) + (3,), np.uint8)
        for a, b in KNOWN_SLIDERS:
            out[f"known_{kind}/t{a}_{b}/map"] = leres_map(picture, min(picture.shape[:2]), a, b, lambda x: pred)
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
            row["differing_pixels"] = float((diff > 0).mean())
            row["mean_value_aux"] = float(b.mean())
            seconds = key.replace("/map", "/seconds")
            if seconds in theirs:  # ours includes reading the 460 MB file: lorastudio reads it for each map
                row["seconds_ours"], row["seconds_aux"] = float(mine[seconds]), float(theirs[seconds])
        elif key.endswith("/net"):
            row["range_aux"] = float(b.max() - b.min())
        rows[key] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aux-python", required=True, help="a python whose environment holds controlnet_aux")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--golden", type=Path, help="write the test's fixture there instead")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    env = aux_env(args.threads)
    if args.golden:
        golden(args.golden, args.aux_python, env)
        return
    with tempfile.TemporaryDirectory(prefix="leres-vs-aux-") as tmp:
        work = Path(tmp)
        job = write_inputs(work, args.seed)
        theirs = run_aux_side(args.aux_python, __file__, work, job, args.threads)
        rows = compare(ours(job), theirs)
    print_rows(rows, 34)
    maps = [r.get("max_abs", float("inf")) for k, r in rows.items() if k.endswith("/map")]
    print(json.dumps({"bench": "depth_leres_vs_controlnet_aux", "seed": args.seed, "maps_max_abs": max(maps),
                      "input_max_abs": max(r.get("max_abs", float("inf")) for k, r in rows.items()
                                           if k.endswith("/input")),
                      "net_max_abs": max(r.get("max_abs", float("inf")) for k, r in rows.items()
                                         if k.endswith("/net")),
                      "rows": rows}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == AUX_SIDE:
        job_path, out_path, threads = sys.argv[2:5]
        import torch

        torch.set_num_threads(int(threads))
        side = aux_golden if sys.argv[5:] == ["golden"] else aux_side
        np.savez(out_path, **side(json.loads(Path(job_path).read_text())))
    else:
        main()
