#!/usr/bin/env python
"""Measure how well the bundled shapes base model draws what it was taught.

For every colour x shape of ``lorastudio.testing.shapes`` (10 x 4) it generates
``--per-pair`` pictures (default 2 -> 80 prompts, each "a {colour} {shape} on a
{background} background" with varied backgrounds), using StableDiffusionPipeline with
DPM++ 2M (DPMSolverMultistepScheduler), 20 steps, CFG 5, 32x32, one fixed seed per
prompt.  Each picture is judged by ``shapes.classify_image`` (documented there: border
median = background; largest blob far from it = foreground; its colour is the nearest
named colour; its shape comes from bounding-box fill ratio and the row-width/row-index
correlation).

    colour_accuracy = share of pictures whose foreground colour is the prompt's colour
    shape_accuracy  = share whose shape is the prompt's shape
    both_accuracy   = share with both right

Targets: colour >= 0.80, shape >= 0.60.  The last line of output is one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/base_quality.py [--model PATH] [--save-grid out.png]

``--model`` is a diffusers folder or an SD1 single-file ``.safetensors`` (loaded with the
project's loader, ``lorastudio.models.loader.load_model``).  Default: the bundled
``src/lorastudio/models/bundled/base/lorastudio-shapes-v1.safetensors``, else ``build/base``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BUNDLED = ROOT / "src" / "lorastudio" / "models" / "bundled" / "base"


def default_model() -> Path:
    single = BUNDLED / "lorastudio-shapes-v1.safetensors"
    if single.exists():
        return single
    return ROOT / "build" / "base"


def load_pipeline(model: Path):
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    if model.is_dir():
        pipe = StableDiffusionPipeline.from_pretrained(
            model, safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32
        )
    else:  # the project's own single-file loader (configs from key shapes + `lorastudio.config` metadata)
        import tempfile

        from lorastudio.models.families.base import LoadOptions
        from lorastudio.models.loader import load_model

        cache = Path(tempfile.mkdtemp(prefix="lorastudio-bench-"))
        pipe = load_model(model, LoadOptions(device="cpu", dtype="float32", cache_dir=cache)).pipe
        pipe.to(torch.float32)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--per-pair", type=int, default=2, help="pictures per colour x shape (2 -> 80 prompts)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-grid", type=Path, default=None, help="write all pictures as one PNG grid")
    return p.parse_args(argv)


def draw(pipe, items: list[dict], args) -> list:
    """One picture per prompt, in batches, each with its own seeded generator."""
    import torch

    images = []
    for i in range(0, len(items), args.batch):
        chunk = items[i : i + args.batch]
        gens = [torch.Generator().manual_seed(args.seed + i + k) for k in range(len(chunk))]
        images.extend(pipe([it["prompt"] for it in chunk], height=args.size, width=args.size,
                           num_inference_steps=args.steps, guidance_scale=args.cfg, generator=gens).images)
    return images


def score(items: list[dict], images: list) -> dict:
    """Colour, shape and both accuracies, per colour and per shape, and the shape confusions."""
    from lorastudio.testing import shapes

    per_colour: dict[str, list[int]] = {}
    per_shape: dict[str, list[int]] = {}
    c_ok = s_ok = both = 0
    confusions: dict[str, int] = {}
    for it, img in zip(items, images):
        r = shapes.classify_image(img)
        c = r["colour"] == it["colour"]
        s = r["shape"] == it["shape"]
        c_ok += c
        s_ok += s
        both += c and s
        per_colour.setdefault(it["colour"], [0, 0])
        per_colour[it["colour"]][0] += c
        per_colour[it["colour"]][1] += 1
        per_shape.setdefault(it["shape"], [0, 0])
        per_shape[it["shape"]][0] += s
        per_shape[it["shape"]][1] += 1
        if not s:
            key = f"{it['shape']}->{r['shape']}"
            confusions[key] = confusions.get(key, 0) + 1
    n = len(items)
    return {
        "n_prompts": n,
        "colour_accuracy": round(c_ok / n, 4),
        "shape_accuracy": round(s_ok / n, 4),
        "both_accuracy": round(both / n, 4),
        "targets": {"colour": 0.8, "shape": 0.6},
        "meets_targets": c_ok / n >= 0.8 and s_ok / n >= 0.6,
        "per_colour": {k: round(v[0] / v[1], 3) for k, v in per_colour.items()},
        "per_shape": {k: round(v[0] / v[1], 3) for k, v in per_shape.items()},
        "shape_confusions": dict(sorted(confusions.items(), key=lambda kv: -kv[1])),
    }


def save_grid(images: list, size: int, path: Path) -> None:
    from PIL import Image

    from lorastudio.testing import shapes

    cols = 2 * len(shapes.SHAPES)
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * (size + 2), rows * (size + 2)), (128, 128, 128))
    for k, img in enumerate(images):
        grid.paste(img, ((k % cols) * (size + 2), (k // cols) * (size + 2)))
    grid.resize((grid.width * 3, grid.height * 3), Image.Resampling.NEAREST).save(path)


def main(argv=None) -> int:
    args = parse_args(argv)

    import torch

    from lorastudio.testing import shapes

    torch.set_num_threads(args.threads)
    model = args.model or default_model()
    t0 = time.time()
    pipe = load_pipeline(model)
    load_s = time.time() - t0
    items = shapes.benchmark_prompts(n_per_pair=args.per_pair)
    t1 = time.time()
    images = draw(pipe, items, args)
    gen_s = time.time() - t1
    if args.save_grid:
        save_grid(images, args.size, args.save_grid)
    result = {
        "bench": "base_quality",
        "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
        **score(items, images),
        "sampler": f"DPM++ 2M, {args.steps} steps, CFG {args.cfg}, {args.size}x{args.size}",
        "load_seconds": round(load_s, 2),
        "generate_seconds": round(gen_s, 2),
        "seconds_per_image": round(gen_s / len(items), 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
