#!/usr/bin/env python
"""Our depth_midas against the A1111 ControlNet extension's own code, on the same pictures and weights.

The reference side runs sd-webui-controlnet's files unchanged: `scripts/preprocessor/legacy/processor.py`
(`midas`: resize_image_with_pad, the call, remove_pad) and `annotator/midas` (`apply_midas`, `MiDaSInference`,
`DPTDepthModel(backbone="vitb_rn50_384")` on timm's `vit_base_resnet50_384`). Only what ties them to the web UI
is stood in for: `modules.devices` (the CPU), `modules.safe`, `scripts.logging` and `annotator.annotator_path`
(the folder the weights are read from). It runs under --ext-python (a venv with timm, torchvision and einops),
with --ext-src on its path: an export of the extension's tree (`git archive HEAD annotator scripts`).

It builds the real-size network with the extension's code, gives it random weights (scaled so the maps are not
flat) and saves them as the users' `dpt_hybrid-midas-501f0c75.pt`, which our side loads (pickle allowed).

    /work/main/.venv/bin/python bench/depth_midas_vs_extension.py --ext-src /tmp/sd-webui-controlnet

Prints per picture and resolution: max / mean absolute difference of the uint8 maps, the share of pixels that
differ, and the largest difference of the float predictions relative to their range; the last line is JSON.

`--golden FILE` writes instead the fixture of tests/generation/test_depth_midas.py: a tiny hybrid (BiT of one
block per stage, a 12-block ViT 32 wide) with weights from a fixed formula (numpy's frozen RandomState, so the
test rebuilds them without this venv), run through the extension's `midas` at resolution 64 on one picture.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE = "dpt_hybrid-midas-501f0c75.pt"
# the tiny hybrid of the golden fixture: ViT width / blocks / pos grid, BiT stem / stage widths / depths,
# DPT neck (the reassemble widths of BiT stages 1, 2 and ViT blocks 8, 11) and fusion width
TINY = dict(hidden=32, layers=12, grid=8, stem=32, widths=(128, 128, 128), depths=(1, 1, 1),
            neck=(128, 128, 32, 32), features=16)


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


def golden_picture():
    """The golden fixture's picture (tests/generation/test_depth_midas.py draws the same)."""
    import numpy as np

    yy, xx = np.mgrid[:48, :80]
    im = np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy) * 2 % 256], axis=2).astype(np.uint8)
    im[12:36, 20:40] = (240, 200, 30)
    return im


def formula_weights(shapes: dict) -> dict:
    """Weights from numpy's legacy RandomState (its streams are frozen), one seed per key name; the test
    file has the same function."""
    import numpy as np

    out = {}
    for key, shape in shapes.items():
        x = np.random.RandomState(zlib.crc32(key.encode())).standard_normal(shape)
        if key.endswith("bias"):
            x = 0.1 * x
        elif len(shape) == 1:  # LayerNorm / GroupNorm scales
            x = 1 + 0.1 * x
        else:
            x = x / max(1, int(np.prod(shape[1:]))) ** 0.5
        if key.startswith("scratch.output_conv.4."):
            x = np.abs(x) + 0.1  # the last conv positive, so the final ReLU keeps a live depth
        out[key] = x.astype(np.float32)
    return out


# --- the extension's side (runs under --ext-python; imports neither lorastudio nor its venv) ----------------
def ext_side(args) -> None:
    import importlib.util

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    models = work / "ext-models"
    (models / "midas").mkdir(parents=True, exist_ok=True)
    # what ties the extension's files to the web UI: the device, pickle safety, logging, the models folder
    stubs = {"modules": types.ModuleType("modules"), "modules.devices": types.ModuleType("modules.devices"),
             "modules.safe": types.ModuleType("modules.safe"), "scripts": types.ModuleType("scripts"),
             "scripts.logging": types.ModuleType("scripts.logging"),
             "annotator.annotator_path": types.ModuleType("annotator.annotator_path")}
    stubs["modules.devices"].get_device_for = lambda name: torch.device("cpu")
    stubs["modules.safe"].Extra = object
    stubs["scripts.logging"].logger = __import__("logging").getLogger("ext")
    stubs["annotator.annotator_path"].models_path = str(models)
    stubs["modules"].devices, stubs["modules"].safe = stubs["modules.devices"], stubs["modules.safe"]
    sys.modules.update(stubs)
    sys.path.insert(0, args.ext_src)
    spec = importlib.util.spec_from_file_location(
        "ext_processor", Path(args.ext_src) / "scripts" / "preprocessor" / "legacy" / "processor.py")
    processor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(processor)
    import annotator.midas as ext_midas
    from annotator.midas.api import MiDaSInference
    from annotator.midas.midas.dpt_depth import DPTDepthModel

    # keep the network's float prediction too: apply_midas reads `model(x)[0]`
    predictions = []

    class Recording(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            predictions.append(out[0].detach().clone())
            return out

    if args.golden:
        ext_midas.model = Recording(tiny_dpt(TINY))
        sd = ext_midas.model.inner.state_dict()
        weights = formula_weights({k: tuple(v.shape) for k, v in sd.items()})
        ext_midas.model.inner.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
        pic = golden_picture()
        padded, remove_pad = processor.resize_image_with_pad(pic, 64)
        result, _ = processor.midas(pic, res=64)
        np.savez_compressed(args.golden, picture=pic, padded=padded, depth=predictions[-1].numpy(), map=result,
                            keys=np.array(sorted(sd)), shapes=np.array([list(sd[k].shape) + [0] * (4 - sd[k].dim())
                                                                         for k in sorted(sd)]))
        print(f"wrote {args.golden}: map {result.shape}, depth range "
              f"{float(predictions[-1].min()):.4g}..{float(predictions[-1].max()):.4g}")
        return

    torch.manual_seed(args.seed)
    net = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True).eval()
    with torch.no_grad():  # random weights with live activations; the last conv positive so depth is not 0
        for name, p in net.named_parameters():
            fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
            p.copy_(torch.randn_like(p) / fan_in ** 0.5)
            if p.dim() == 1 and not name.endswith("bias"):
                p.copy_(1 + 0.1 * p)
            if name.startswith("scratch.output_conv.4."):
                p.copy_(p.abs() + 0.1)
    torch.save(net.state_dict(), models / "midas" / FILE)
    # the extension's own loading: MiDaSInference("dpt_hybrid") reads <models_path>/midas/<FILE> strictly
    ext_midas.model = Recording(MiDaSInference(model_type="dpt_hybrid"))
    pics = dict(np.load(work / "pictures.npz"))
    out, timings = {}, {}
    for res in args.resolutions:
        for name, pic in pics.items():
            t = time.perf_counter()
            result, _ = processor.midas(pic, res=res)
            timings[f"{name}@{res}"] = time.perf_counter() - t
            out[f"{name}@{res}"] = result
            out[f"{name}@{res}:depth"] = predictions[-1].numpy()
    np.savez(work / "ext_maps.npz", **out)
    (work / "ext_timings.json").write_text(json.dumps(timings))


def tiny_dpt(c: dict):
    """The extension's DPT-Hybrid modules at a tiny size: timm's hybrid ViT on a small ResNetV2, the extension's
    `_make_vit_b_rn50_backbone` hooks and readouts, `_make_scratch`, fusion blocks and depth head."""
    from functools import partial

    import torch
    from annotator.midas.midas.blocks import Interpolate, _make_scratch
    from annotator.midas.midas.dpt_depth import DPT, _make_fusion_block
    from annotator.midas.midas.vit import _make_vit_b_rn50_backbone
    from timm.layers import StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer_hybrid import _create_vision_transformer_hybrid

    backbone = ResNetV2(layers=c["depths"], channels=c["widths"], stem_chs=c["stem"], num_classes=0, global_pool="",
                        preact=False, stem_type="same", conv_layer=partial(StdConv2dSame, eps=1e-8))
    vit = _create_vision_transformer_hybrid("vit_base_r50_s16_384", backbone=backbone, pretrained=False,
                                            embed_dim=c["hidden"], depth=c["layers"], num_heads=1,
                                            img_size=c["grid"] * 16)
    net = torch.nn.Module()
    net.channels_last = False
    net.pretrained = _make_vit_b_rn50_backbone(vit, features=list(c["neck"]), size=[c["grid"] * 16] * 2,
                                               hooks=[0, 1, 8, 11], vit_features=c["hidden"], use_readout="project")
    net.scratch = _make_scratch(list(c["neck"]), c["features"], groups=1, expand=False)
    for i in range(1, 5):
        setattr(net.scratch, f"refinenet{i}", _make_fusion_block(c["features"], False))
    f = c["features"]
    net.scratch.output_conv = torch.nn.Sequential(  # DPTDepthModel's head, non_negative
        torch.nn.Conv2d(f, f // 2, 3, 1, 1), Interpolate(scale_factor=2, mode="bilinear", align_corners=True),
        torch.nn.Conv2d(f // 2, 32, 3, 1, 1), torch.nn.ReLU(True), torch.nn.Conv2d(32, 1, 1, 1, 0),
        torch.nn.ReLU(True), torch.nn.Identity())
    net.forward = types.MethodType(lambda self, x: DPT.forward(self, x).squeeze(dim=1), net)
    return net.eval()


# --- our side -----------------------------------------------------------------------------------------------
def our_side(args) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from lorastudio.generation.preprocessors import depth_midas
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles
    from lorastudio.generation.preprocessors.picture_steps import pad_to_64
    from lorastudio.generation.preprocessors.midas_net import predict

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="midas-vs-ext-", dir=args.tmp))
    pics = pictures()
    np.savez(work / "pictures.npz", **pics)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("PYTHONPATH", None)
    t = time.perf_counter()
    subprocess.run([args.ext_python, __file__, "--side", "ext", "--work", str(work), "--ext-src", args.ext_src,
                    "--threads", str(args.threads), "--seed", str(args.seed),
                    "--resolutions", *map(str, args.resolutions)], check=True, env=env)
    ext_s = time.perf_counter() - t
    ref = dict(np.load(work / "ext_maps.npz"))
    ext_t = json.loads((work / "ext_timings.json").read_text())
    files = AnnotatorFiles(work / "ext-models", allow_pickle=True)  # not our folder layout: the path is given
    t = time.perf_counter()
    model = depth_midas.load_model(work / "ext-models" / "midas" / FILE, files)
    load_s = time.perf_counter() - t
    results = {}
    for res in args.resolutions:
        for name, pic in pics.items():
            key = f"{name}@{res}"
            t = time.perf_counter()
            ours = depth_midas.depth_map(model, pic, res)
            ours_s = time.perf_counter() - t
            with torch.inference_mode():
                pred = predict(model, depth_midas.network_input(pad_to_64(pic, res)[0]))[0].numpy()
            want, want_depth = ref[key], ref[f"{key}:depth"]
            assert ours.shape[:2] == want.shape, (key, ours.shape, want.shape)
            d = np.abs(ours[..., 0].astype(int) - want.astype(int))
            rel = float(np.abs(pred - want_depth).max() / (want_depth.max() - want_depth.min()))
            results[key] = {"max_abs": int(d.max()), "mean_abs": round(float(d.mean()), 5),
                            "share_differing": round(float((d > 0).mean()), 5), "shape": list(want.shape),
                            "depth_rel_max": float(f"{rel:.3g}"), "ref_range": [int(want.min()), int(want.max())],
                            "ours_s": round(ours_s, 2), "ref_s": round(ext_t[key], 2)}
            r = results[key]
            print(f"{key:24s} max|d|={r['max_abs']:3d}  mean|d|={r['mean_abs']:.5f}"
                  f"  differing={r['share_differing']:.5f}"
                  f"  depth rel={r['depth_rel_max']:.2e}  map {r['shape']} range {r['ref_range']}"
                  f"  ours {r['ours_s']}s ref {r['ref_s']}s")
    return {"bench": "depth_midas_vs_extension", "reference": "sd-webui-controlnet processor.midas + annotator/midas "
            "(timm vit_base_resnet50_384), real-size random weights", "ext_total_s": round(ext_s, 1),
            "our_load_s": round(load_s, 1), "results": results,
            "worst_max_abs": max(r["max_abs"] for r in results.values()),
            "worst_mean_abs": max(r["mean_abs"] for r in results.values()),
            "worst_depth_rel": max(r["depth_rel_max"] for r in results.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=("ours", "ext"), default="ours")
    p.add_argument("--ext-python", default="/work/kohya/venv/bin/python")
    p.add_argument("--ext-src", required=True, help="an export of sd-webui-controlnet (annotator/, scripts/)")
    p.add_argument("--resolutions", nargs="+", type=int, default=[512, 384])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None)
    p.add_argument("--work")
    p.add_argument("--golden", help="write the test fixture (tiny network) to this .npz and stop")
    args = p.parse_args()
    if args.golden:
        args.work = args.work or tempfile.mkdtemp()
        env = {**os.environ}
        if args.side == "ours":  # the fixture comes from the extension's side only
            subprocess.run([args.ext_python, __file__, "--side", "ext", "--ext-src", args.ext_src, "--golden",
                            str(Path(args.golden).resolve()), "--work", args.work], check=True, env=env)
            return
        ext_side(args)
        return
    if args.side == "ext":
        ext_side(args)
        return
    print(json.dumps(our_side(args)))


if __name__ == "__main__":
    main()
