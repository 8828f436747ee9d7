#!/usr/bin/env python
"""Our weight-needing preprocessors against the reference implementations, on the same pictures and weights.

depth_anything / depth_anything_v2: the reference network is comfyui_controlnet_aux's `DepthAnythingV2`
(its vendored DINOv2 + DPT head, the published modules, loading the original files' key layout; for v1 it
takes the last four blocks, as Depth-Anything v1's `get_intermediate_layers(x, 4)` does), run with the A1111
extension's steps (annotator/depth_anything.py + resize_image_with_pad: short side to the resolution, edge
pad to 64, BGR2RGB on the RGB picture, Resize(518, lower_bound, multiple of 14, cubic), ImageNet normalise,
bilinear back, min-max to 0..255, crop). The pip package controlnet_aux 0.0.10 has no Depth Anything.

The reference side runs under --aux-python (another venv, where torchvision imports), with --aux-src on its
path (comfyui_controlnet_aux's `src`); it builds the networks, gives them random weights (real-size layout,
scaled so the maps are not flat) and saves them as the users' .pth files; our side loads those files.

    /work/main/.venv/bin/python bench/depth_anything_vs_controlnet_aux.py \
        --aux-python /work/kohya/venv/bin/python --aux-src /path/to/comfyui_controlnet_aux/src [--sizes vits vitb]

Prints per module/size: max / mean absolute difference of the uint8 maps and the share of pixels that differ;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {"vits": (64, [48, 96, 192, 384]), "vitb": (128, [96, 192, 384, 768]), "vitl": (256, [256, 512, 1024, 1024])}
FILES = {("depth_anything", s): f"depth_anything_{s}14.pth" for s in CONFIGS}
FILES.update({("depth_anything_v2", s): f"depth_anything_v2_{s}.pth" for s in CONFIGS})


def pictures():
    import numpy as np

    rng = np.random.RandomState(0)
    h, w = 200, 300
    yy, xx = np.mgrid[:h, :w]
    a = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], axis=2).astype(np.uint8)
    a[60:150, 90:200] = (230, 180, 40)
    b = np.clip(rng.normal(128, 60, (256, 256, 3)), 0, 255).astype(np.uint8)
    b[64:192, 100:160] = 30
    return {"gradient_300x200": a, "noise_256": b}


# --- reference side (runs under --aux-python; imports neither lorastudio nor its venv) ----------------------
def aux_side(args) -> None:
    import cv2
    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, args.aux_src)
    from custom_controlnet_aux.depth_anything_v2.dpt import DepthAnythingV2
    from custom_controlnet_aux.depth_anything_v2.util.transform import NormalizeImage, PrepareForNet, Resize

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    pics = dict(np.load(work / "pictures.npz"))
    transforms = [Resize(width=518, height=518, resize_target=False, keep_aspect_ratio=True, ensure_multiple_of=14,
                         resize_method="lower_bound", image_interpolation_method=cv2.INTER_CUBIC),
                  NormalizeImage(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]), PrepareForNet()]

    def extension_map(model, img_rgb, res):
        # processor.py resize_image_with_pad
        h_raw, w_raw = img_rgb.shape[:2]
        k = float(res) / float(min(h_raw, w_raw))
        ht, wt = int(np.round(h_raw * k)), int(np.round(w_raw * k))
        img = cv2.resize(img_rgb, (wt, ht), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
        pad = lambda x: int(np.ceil(float(x) / 64.0) * 64 - x)  # noqa: E731
        img = np.pad(img, [[0, pad(ht)], [0, pad(wt)], [0, 0]], mode="edge")
        # annotator/depth_anything.py DepthAnythingDetector.__call__
        h, w = img.shape[:2]
        sample = {"image": cv2.cvtColor(img, cv2.COLOR_BGR2RGB) / 255.0}
        for t in transforms:
            sample = t(sample)
        x = torch.from_numpy(sample["image"]).unsqueeze(0)
        with torch.no_grad():
            depth = model(x, max_depth=1.0)
            depth = F.interpolate(depth[None], (h, w), mode="bilinear", align_corners=False)[0, 0]
            depth = (depth - depth.min()) / (depth.max() - depth.min()) * 255.0
        return depth.numpy().astype(np.uint8)[:ht, :wt]

    out, timings = {}, {}
    for module, size in [tuple(c.split(":")) for c in args.cases]:
        features, outs = CONFIGS[size]
        torch.manual_seed(zlib.crc32(f"{module}:{size}".encode()))
        model = DepthAnythingV2(encoder=size, features=features, out_channels=outs).eval()
        if module == "depth_anything":
            model.intermediate_layer_idx[size] = 4  # v1: the last four blocks
        with torch.no_grad():  # random weights with live activations; the last conv positive so depth is not 0
            for name, p in model.named_parameters():
                fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
                if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma")):
                    p.copy_(1 + 0.1 * p)
                if "output_conv2.2" in name:
                    p.copy_(p.abs() + 0.1)
        torch.save(model.state_dict(), work / FILES[(module, size)])
        for pic_name, pic in pics.items():
            t = time.perf_counter()
            out[f"{module}:{size}:{pic_name}"] = extension_map(model, pic, args.resolution)
            timings[f"{module}:{size}:{pic_name}"] = time.perf_counter() - t
    np.savez(work / "aux_maps.npz", **out)
    (work / "aux_timings.json").write_text(json.dumps(timings))


# --- our side -----------------------------------------------------------------------------------------------
def our_side(args) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from lorastudio.generation.preprocessors import run_preprocessor

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="pp-vs-aux-", dir=args.tmp))
    pics = pictures()
    np.savez(work / "pictures.npz", **pics)
    cases = [f"{m}:{s}" for m in args.modules for s in args.sizes]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("PYTHONPATH", None)
    t = time.perf_counter()
    subprocess.run([args.aux_python, __file__, "--side", "aux", "--work", str(work), "--aux-src", args.aux_src,
                    "--resolution", str(args.resolution), "--threads", str(args.threads), "--cases", *cases],
                   check=True, env=env)
    aux_s = time.perf_counter() - t
    ref = dict(np.load(work / "aux_maps.npz"))
    aux_t = json.loads((work / "aux_timings.json").read_text())
    results = {}
    for case in cases:
        module, size = case.split(":")
        models = work / f"models-{module}-{size}"
        (models / "ControlNetPreprocessor").mkdir(parents=True)
        os.link(work / FILES[(module, size)], models / "ControlNetPreprocessor" / FILES[(module, size)])
        for pic_name, pic in pics.items():
            key = f"{case}:{pic_name}"
            t = time.perf_counter()
            ours = run_preprocessor(module, pic, resolution=args.resolution, threshold_a=-1, threshold_b=-1,
                                    models_root=models, allow_pickle=True)
            ours_s = time.perf_counter() - t
            want = ref[key]
            assert ours.shape[:2] == want.shape, (key, ours.shape, want.shape)
            d = np.abs(ours[..., 0].astype(int) - want.astype(int))
            results[key] = {"max_abs": int(d.max()), "mean_abs": round(float(d.mean()), 4),
                            "share_differing": round(float((d > 0).mean()), 4), "shape": list(want.shape),
                            "ref_range": [int(want.min()), int(want.max())], "ours_s": round(ours_s, 2),
                            "ref_s": round(aux_t[key], 2)}
            r = results[key]
            print(f"{key:48s} max|d|={r['max_abs']:3d}  mean|d|={r['mean_abs']:.4f}  differing={r['share_differing']:.4f}"
                  f"  map {r['shape']} range {r['ref_range']}  ours {r['ours_s']}s (incl. load) ref {r['ref_s']}s")
    return {"bench": "depth_anything_vs_controlnet_aux", "resolution": args.resolution, "reference":
            "comfyui_controlnet_aux DepthAnythingV2 network + the A1111 extension's depth_anything steps",
            "aux_total_s": round(aux_s, 1), "results": results,
            "worst_max_abs": max(r["max_abs"] for r in results.values()),
            "worst_mean_abs": max(r["mean_abs"] for r in results.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=("ours", "aux"), default="ours")
    p.add_argument("--aux-python", default="/work/kohya/venv/bin/python")
    p.add_argument("--aux-src", required=True, help="comfyui_controlnet_aux's src folder")
    p.add_argument("--modules", nargs="+", default=["depth_anything", "depth_anything_v2"])
    p.add_argument("--sizes", nargs="+", default=["vits"], choices=list(CONFIGS))
    p.add_argument("--resolution", type=int, default=384)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tmp", default=None)
    p.add_argument("--work")
    p.add_argument("--cases", nargs="*")
    args = p.parse_args()
    if args.side == "aux":
        aux_side(args)
        return
    print(json.dumps(our_side(args)))


if __name__ == "__main__":
    main()
