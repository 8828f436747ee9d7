#!/usr/bin/env python
"""Peak memory of tiled model upscaling: a 2048x2048 picture through a 4x ESRGAN (RRDBNet, read by spandrel).

The model is a random ESRGAN written as a .safetensors file into models/ESRGAN and loaded the way
users' files are (lorastudio.generation.model_upscalers.upscaler_function, spandrel underneath). Its
width and depth (--filters, --blocks) default far below the real 64 x 23 so the CPU run ends in
minutes; memory is dominated by the tile's activations and the 8192x8192 result, not the weights
(a real 4x ESRGAN holds 16.7 M parameters, 67 MB in float32: add that to compare).

The upscale runs in a fresh child process; peak RSS is that process's ru_maxrss, and the baseline
its RSS after imports and model loading, before the picture is made. Target: peak_rss_mb <= 2048.
The last line of output is one JSON object.

    .venv/bin/python bench/upscale_memory.py [--size 2048] [--tile 192] [--overlap 16] [--filters 8] [--blocks 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def child(args) -> None:
    import resource

    import numpy as np
    import torch
    from PIL import Image

    from lorastudio.generation.upscalers import upscaler_function

    torch.set_num_threads(args.threads)
    run = upscaler_function("bench-4x-esrgan", Path(args.root), allow_pickle=False, tile=args.tile,
                            overlap=args.overlap)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    pic = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    t0 = time.perf_counter()
    out = run(pic, args.size * 4, args.size * 4)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"baseline_rss_mb": round(base, 1), "peak_rss_mb": round(peak, 1), "out": list(out.size),
                      "seconds": round(seconds, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=192)
    ap.add_argument("--overlap", type=int, default=16)
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.root:
        return child(args)

    from safetensors.torch import save_file

    from lorastudio.testing.tiny_upscalers import rrdbnet_state_dict

    root = Path(tempfile.mkdtemp(prefix="bench-up-")) / "models"
    (root / "ESRGAN").mkdir(parents=True)
    # Real-ESRGAN's names (conv_first, body.N.rdbK...), written without spandrel: only the child loads it.
    save_file(rrdbnet_state_dict(4, feat=args.filters, blocks=args.blocks, seed=0),
              str(root / "ESRGAN" / "bench-4x-esrgan.safetensors"))
    cmd = [sys.executable, __file__, "--root", str(root), *[f"--{k}={v}" for k, v in vars(args).items() if k != "root"]]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"bench": "upscale_memory", "size": args.size, "scale": 4, "tile": args.tile,
                      "overlap": args.overlap, "filters": args.filters, "blocks": args.blocks, **result,
                      "target_peak_rss_mb": 2048}))


if __name__ == "__main__":
    main()
