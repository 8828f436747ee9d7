#!/usr/bin/env python
"""lorastudio's PiDiNet preprocessors vs controlnet_aux's PidiNetDetector, same weights, same pictures.

Random weights are written in table5_pidinet.pth's layout (a torch pickle whose `state_dict` has every key
prefixed with `module.`, as lllyasviel/Annotators' file) into a temporary models/ControlNetPreprocessor.
This process (the project's venv) runs lorastudio's `run_preprocessor`; the same script, started with
--aux-side by the python given as --aux-python (a venv holding controlnet_aux, which lorastudio does not
depend on), loads the file with controlnet_aux's own `PidiNetDetector.from_pretrained(folder)` and runs:

- network: the fused edge probability of both networks on the same input tensor (float max/mean abs diff);
- map: the detector (`safe` for softedge_pidisafe, `scribble` for scribble_pidinet) on pictures whose
  short side is the detect resolution and whose sides are multiples of 64, where controlnet_aux's resizing
  (rounding to 64, Lanczos) and the extension's (resize, edge-pad to 64) both leave the picture as it is;
- padded: a picture the extension resizes and pads (333x517 at 500 -> 500x776, padded to 512x832): the
  controlnet_aux side is given the extension's resize-and-pad (cubic/area, edge padding) before its detector
  and the padding cut off after it, so the padding, the network and the scribble steps are compared there too.

Prints per-module max/mean abs differences and timings; the last line is one JSON object.

    .venv/bin/python bench/pidinet_vs_controlnet_aux.py --aux-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> how controlnet_aux runs it
MODULES = {
    "softedge_pidinet": {},
    "softedge_pidisafe": {"safe": True},
    "scribble_pidinet": {"scribble": True},
}
# (height, width, detect resolution): short side = resolution, sides multiples of 64; then one to pad
PICTURES = ((256, 384, 256), (512, 768, 512))
PADDED = ((333, 517, 500),)


def extension_resize_and_pad(img, resolution):
    """The A1111 extension's resize_image_with_pad, for the controlnet_aux side: (padded, (h, w))."""
    import cv2
    import numpy as np

    h, w = img.shape[:2]
    k = float(resolution) / min(h, w)
    ht, wt = int(np.round(h * k)), int(np.round(w * k))
    img = cv2.resize(img, (wt, ht), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    return np.pad(img, [[0, -ht % 64], [0, -wt % 64], [0, 0]], mode="edge"), (ht, wt)


def aux_side(work: Path) -> None:
    """Runs in the controlnet_aux venv: no lorastudio import."""
    import numpy as np
    import torch
    from controlnet_aux.pidi import PidiNetDetector

    det = PidiNetDetector.from_pretrained(str(work / "models" / "ControlNetPreprocessor"))
    x = torch.from_numpy(np.load(work / "net_input.npy"))
    with torch.no_grad():
        np.save(work / "aux_net.npy", det.netNetwork(x)[-1].numpy())
    timings = {}
    for h, w, res in PICTURES + PADDED:
        img = np.load(work / f"picture_{h}x{w}.npy")
        feed, (ht, wt) = (img, (h, w)) if (h, w, res) in PICTURES else extension_resize_and_pad(img, res)
        res_feed = min(feed.shape[:2])
        for module, how in MODULES.items():
            t = time.perf_counter()
            if how.get("scribble") and (h, w, res) in PADDED:
                # the extension cuts the padding off before the scribble steps: soft map here, steps in main()
                out = det(feed, detect_resolution=res_feed, image_resolution=res_feed, output_type="np")
            else:
                out = det(feed, detect_resolution=res_feed, image_resolution=res_feed, output_type="np", **how)
            timings[f"{module}@{h}x{w}"] = time.perf_counter() - t
            np.save(work / f"aux_{module}_{h}x{w}.npy", out[:ht, :wt])
    (work / "aux_timings.json").write_text(json.dumps(timings))


def aux_scribble_steps(soft):
    """controlnet_aux's scribble steps (its nms, blur, > 4), applied to a soft map already cut to the picture."""
    import cv2
    from controlnet_aux.util import nms

    out = cv2.GaussianBlur(nms(soft, 127, 3.0), (0, 0), 3.0)
    out[out > 4] = 255
    out[out < 255] = 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aux-python", required=False, help="python of a venv with controlnet_aux installed")
    ap.add_argument("--aux-side", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--aux-scribble", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.aux_side:
        return aux_side(args.aux_side)
    if args.aux_scribble:
        import numpy as np

        for f in args.aux_scribble.glob("aux_scribble_pidinet_*_soft.npy"):
            np.save(f.with_name(f.name.replace("_soft", "")), aux_scribble_steps(np.load(f)))
        return None
    if not args.aux_python:
        ap.error("--aux-python is required")

    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import torch

    from lorastudio.generation.preprocessors import run_preprocessor
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles
    from lorastudio.generation.preprocessors.pidinet_net import PidiNet
    from lorastudio.testing.annotator_files import edge_picture, pidinet_state_dict, write_annotator_file

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = work / "models"
        state = pidinet_state_dict(args.seed)
        write_annotator_file(models / "ControlNetPreprocessor", "table5_pidinet.pth",
                             {"state_dict": {f"module.{k}": v for k, v in state.items()}})
        x = torch.rand((1, 3, 128, 192), generator=torch.Generator().manual_seed(args.seed))
        np.save(work / "net_input.npy", x.numpy())
        for h, w, _ in PICTURES + PADDED:
            np.save(work / f"picture_{h}x{w}.npy", edge_picture(h, w, seed=args.seed))

        t = time.perf_counter()
        subprocess.run([args.aux_python, __file__, "--aux-side", str(work)], check=True, cwd=str(work))
        for h, w, _ in PADDED:  # the padded picture's scribble: controlnet_aux's steps on its cut soft map
            name = f"aux_scribble_pidinet_{h}x{w}"
            (work / f"{name}.npy").rename(work / f"{name}_soft.npy")
        subprocess.run([args.aux_python, __file__, "--aux-scribble", str(work)], check=True, cwd=str(work))
        aux_wall = time.perf_counter() - t

        report: dict = {"network": {}, "map": {}, "seconds": {}}
        with torch.inference_mode():
            ours = AnnotatorFiles(models, allow_pickle=True).network("table5_pidinet.pth", PidiNet)(x).numpy()
        d = np.abs(ours - np.load(work / "aux_net.npy"))
        report["network"]["table5_pidinet.pth"] = {"max": float(d.max()), "mean": float(d.mean())}
        aux_t = json.loads((work / "aux_timings.json").read_text())
        for h, w, res in PICTURES + PADDED:
            img = np.load(work / f"picture_{h}x{w}.npy")
            for module in MODULES:
                t = time.perf_counter()
                got = run_preprocessor(module, img, resolution=res, threshold_a=-1, threshold_b=-1,
                                       models_root=models, allow_pickle=True)
                ours_s = time.perf_counter() - t
                want = np.load(work / f"aux_{module}_{h}x{w}.npy")
                key = f"{module}@{h}x{w}"
                if got.shape != want.shape:
                    report["map"][key] = {"shape": [list(got.shape), list(want.shape)]}
                    continue
                d = np.abs(got.astype(np.int16) - want.astype(np.int16))
                report["map"][key] = {"max": int(d.max()), "mean": float(d.mean()),
                                      "pixels_differing": float((d > 0).mean()),
                                      "map_mean": float(got.mean()), "map_std": float(got.std())}
                report["seconds"][key] = {"lorastudio": round(ours_s, 3), "controlnet_aux": round(aux_t[key], 3)}

    for what, rows in report.items():
        for key, row in rows.items():
            print(f"{what:8s} {key:32s} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                       for k, v in row.items()))
    report["aux_subprocess_s"] = round(aux_wall, 1)
    report["torch"] = torch.__version__
    print(json.dumps(report))


if __name__ == "__main__":
    main()
