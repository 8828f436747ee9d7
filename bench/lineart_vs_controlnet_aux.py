#!/usr/bin/env python
"""lorastudio's line-art / soft-edge preprocessors vs controlnet_aux's detectors, same weights, same pictures.

Random weights are written in the real file layouts (ControlNetHED.pth, sk_model.pth,
sk_model2.pth, netG.pth, as torch pickles like lllyasviel/Annotators' files) into a temporary
models/ControlNetPreprocessor. This process (the project's venv) runs lorastudio's
`run_preprocessor`; the same script, started with --aux-python (a venv holding controlnet_aux,
which lorastudio does not depend on), loads the files with controlnet_aux's own loaders
(`from_pretrained` of the folder) and runs them two ways:

- network: the raw outputs of both networks on the same input tensor (float max/mean abs diff);
- map: controlnet_aux's detector (`HEDdetector`, `LineartDetector`, `LineartAnimeDetector`) on pictures whose short side
  is the detect resolution and whose sides are multiples of 64, where its resizing (rounding to
  64, Lanczos) and the A1111 extension's (resize, edge-pad to 64) both leave the picture as it is,
  so the uint8 maps should agree up to float rounding.

Prints per-module max/mean abs differences and timings; the last line is one JSON object.

    .venv/bin/python bench/lineart_vs_controlnet_aux.py --aux-python /path/to/venv/bin/python
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

# module -> (file, how controlnet_aux runs it)
MODULES = {
    "softedge_hed": ("ControlNetHED.pth", {"safe": False}),
    "softedge_hedsafe": ("ControlNetHED.pth", {"safe": True}),
    "lineart_realistic": ("sk_model.pth", {"coarse": False}),
    "lineart_coarse": ("sk_model2.pth", {"coarse": True}),
    "lineart_anime": ("netG.pth", {}),
}
# (height, width, detect resolution): short side = resolution, sides multiples of 64
PICTURES = ((256, 384, 256), (512, 768, 512))


def aux_side(work: Path) -> None:
    """Runs in the controlnet_aux venv: no lorastudio import."""
    import numpy as np
    import torch
    from controlnet_aux.hed import HEDdetector
    from controlnet_aux.lineart import LineartDetector
    from controlnet_aux.lineart_anime import LineartAnimeDetector

    # controlnet_aux's own loading from a local folder (from_pretrained with a directory)
    folder = str(work / "models" / "ControlNetPreprocessor")
    hed_det, line_det = HEDdetector.from_pretrained(folder), LineartDetector.from_pretrained(folder)
    anime_det = LineartAnimeDetector.from_pretrained(folder)
    x = torch.from_numpy(np.load(work / "net_input.npy"))
    with torch.no_grad():
        for i, s in enumerate(hed_det.netNetwork(x * 255.0)):
            np.save(work / f"aux_net_hed_{i}.npy", s.numpy())
        np.save(work / "aux_net_sk_model.pth.npy", line_det.model(x).numpy())
        np.save(work / "aux_net_sk_model2.pth.npy", line_det.model_coarse(x).numpy())
        x256 = torch.from_numpy(np.load(work / "net_input_256.npy"))
        np.save(work / "aux_net_netG.pth.npy", anime_det.model(x256).numpy())
    timings = {}
    for h, w, res in PICTURES:
        img = np.load(work / f"picture_{h}x{w}.npy")
        for module, (_, how) in MODULES.items():
            det = hed_det if module.startswith("softedge") else anime_det if module == "lineart_anime" else line_det
            t = time.perf_counter()
            out = det(img, detect_resolution=res, image_resolution=res, output_type="np", **how)
            timings[f"{module}@{h}x{w}"] = time.perf_counter() - t
            np.save(work / f"aux_{module}_{h}x{w}.npy", out)
    (work / "aux_timings.json").write_text(json.dumps(timings))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aux-python", required=False, help="python of a venv with controlnet_aux installed")
    ap.add_argument("--aux-side", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.aux_side:
        return aux_side(args.aux_side)
    if not args.aux_python:
        ap.error("--aux-python is required")

    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import torch

    from lorastudio.generation.preprocessors import run_preprocessor
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles
    from lorastudio.generation.preprocessors.hed_net import HedNet
    from lorastudio.generation.preprocessors.lineart_anime_net import LineartAnimeNet
    from lorastudio.generation.preprocessors.lineart_net import LineartNet
    from lorastudio.testing.annotator_files import (edge_picture, hed_state_dict, lineart_anime_state_dict,
                                                    lineart_state_dict, write_annotator_file)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = work / "models"
        folder = models / "ControlNetPreprocessor"
        write_annotator_file(folder, "ControlNetHED.pth", hed_state_dict(args.seed))
        write_annotator_file(folder, "sk_model.pth", lineart_state_dict(args.seed + 1))
        write_annotator_file(folder, "sk_model2.pth", lineart_state_dict(args.seed + 2))
        # saved from a DataParallel model, as the extension's and controlnet_aux's loaders expect it may be
        anime = lineart_anime_state_dict(args.seed + 3)
        write_annotator_file(folder, "netG.pth", {f"module.{k}": v for k, v in anime.items()})
        x = torch.rand((1, 3, 128, 192), generator=torch.Generator().manual_seed(args.seed))
        np.save(work / "net_input.npy", x.numpy())
        x256 = torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(args.seed)) * 2 - 1
        np.save(work / "net_input_256.npy", x256.numpy())
        for h, w, _ in PICTURES:
            np.save(work / f"picture_{h}x{w}.npy", edge_picture(h, w, seed=args.seed))

        t = time.perf_counter()
        subprocess.run([args.aux_python, __file__, "--aux-side", str(work)], check=True, cwd=str(work))
        aux_wall = time.perf_counter() - t

        files = AnnotatorFiles(models, allow_pickle=True)
        report: dict = {"network": {}, "map": {}, "seconds": {}}
        with torch.inference_mode():
            ours = files.network("ControlNetHED.pth", HedNet)(x * 255.0)
            diffs = [np.abs(o.numpy() - np.load(work / f"aux_net_hed_{i}.npy")) for i, o in enumerate(ours)]
            report["network"]["ControlNetHED.pth"] = {"max": float(max(d.max() for d in diffs)),
                                                      "mean": float(np.mean([d.mean() for d in diffs]))}
            for name in ("sk_model.pth", "sk_model2.pth"):
                d = np.abs(files.network(name, LineartNet)(x).numpy() - np.load(work / f"aux_net_{name}.npy"))
                report["network"][name] = {"max": float(d.max()), "mean": float(d.mean())}
            d = np.abs(files.network("netG.pth", LineartAnimeNet)(x256).numpy()
                       - np.load(work / "aux_net_netG.pth.npy"))
            report["network"]["netG.pth"] = {"max": float(d.max()), "mean": float(d.mean())}
        aux_t = json.loads((work / "aux_timings.json").read_text())
        for h, w, res in PICTURES:
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
