"""Does a LoRA trained on the bundled base learn the concept, and does it spare the base?

Concept score (lorastudio.evaluation.scores.concept_score, documented there): similarity of
generated images to the 12 training stickers, 0..1, for `<lora:deltamon:w>` at w = 0, 0.5, 1
over several prompts and seeds. The margin (w=1 minus w=0) is meaningful when it exceeds the
spread of the w=0 scores across seeds: we print both.

Base preservation: colour and shape accuracy (lorastudio.testing.shapes.classify_image) on the
benchmark prompts WITHOUT the trigger word, with the LoRA loaded at weight 1 vs without it.
Target: loses <= 10 points.

The recipe is the demo's: 12 stickers, 300 steps, batch 4, rank 8, lr 1e-3, plus 48
regularisation pictures the base draws for random prompts of its own kind (DreamBooth's prior
preservation; `--reg 0` trains without them, to see what they buy).

    .venv/bin/python bench/lora_efficacy.py [--steps 300] [--prompts 48] [--reg 48]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image


def parse_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--prompts", type=int, default=48, help="base-preservation prompts (>= 48 covers all pairs)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--reg", type=int, default=48, help="regularisation pictures drawn by the base (0 = none)")
    ap.add_argument("--prior-loss-weight", type=float, default=1.0)
    ap.add_argument("--workspace", type=Path, default=None)
    return ap.parse_args(argv)


def regularisation(args, engine, ws: Path, common: dict) -> dict:
    """The demo's recipe: class pictures drawn by the base (seed 77 is not the benchmark prompts' seed)."""
    if not args.reg:
        return {}
    from lorastudio.services.class_images import write_class_images
    from lorastudio.testing.shapes import random_captions

    write_class_images(engine, random_captions(args.reg, seed=77), ws / "reg", seed=5000, **common)
    return dict(reg_images=ws / "reg", prior_loss_weight=args.prior_loss_weight)


def concept_scores(args, engine, ws: Path, common: dict) -> tuple[dict[str, float], float]:
    """Concept score of the trigger prompts at LoRA weights 0, 0.5, 1; and the per-image spread at 0."""
    from lorastudio.evaluation.scores import concept_score

    refs = [Image.open(p) for p in sorted((ws / "dataset").glob("*.png"))]
    concept: dict[str, float] = {}
    per_seed0: list[float] = []
    for w in (0.0, 0.5, 1.0):
        imgs = []
        for prompt in ("DeltamonStamp", "DeltamonStamp, waving", "DeltamonStamp, sticker"):
            for s in range(args.seeds):
                im = engine.txt2img({**common, "prompt": f"{prompt} <lora:deltamon:{w:g}>", "seed": 1000 + s},
                                    save=False).images[0].image
                imgs.append(im)
                if w == 0.0:
                    per_seed0.append(concept_score([im], refs))
        concept[f"{w:g}"] = round(concept_score(imgs, refs), 4)
    return concept, statistics.pstdev(per_seed0) if len(per_seed0) > 1 else 0.0


def accuracy(engine, prompts: list[dict], common: dict, tag: str) -> tuple[float, float, dict[str, int]]:
    """Colour and shape accuracy (%) of the base's prompts with `tag` appended, and the shape confusions."""
    from lorastudio.testing.shapes import classify_image

    c = s = 0
    misses: dict[str, int] = {}
    for i, spec in enumerate(prompts):
        im = engine.txt2img({**common, "prompt": spec["prompt"] + tag, "seed": 2000 + i}, save=False).images[0].image
        r = classify_image(im)
        c += r["colour"] == spec["colour"]
        s += r["shape"] == spec["shape"]
        if r["shape"] != spec["shape"]:
            key = f"{spec['shape']}->{r['shape']}"
            misses[key] = misses.get(key, 0) + 1
    return 100.0 * c / len(prompts), 100.0 * s / len(prompts), misses


def main(argv=None) -> None:
    args = parse_args(argv)

    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.testing.shapes import benchmark_prompts
    from lorastudio.training.api import train
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    ws = args.workspace or Path(tempfile.mkdtemp(prefix="lora-efficacy-"))
    models = ws / "models"
    (models / "Lora").mkdir(parents=True, exist_ok=True)
    draw_sticker_dataset(ws / "dataset", n=12, trigger="DeltamonStamp", seed=0, size=128)
    engine = GenerationEngine(StudioSettings(models_dir=models, outdir=ws / "outputs", device="cpu"))
    base = engine.default_checkpoint()
    size = int(engine.load(base.name).pipe.unet.config.sample_size * engine.model.pipe.vae_scale_factor)
    common = dict(width=size, height=size, steps=20, cfg_scale=5.0, sampler="DPM++ 2M")

    t0 = time.monotonic()
    reg = regularisation(args, engine, ws, common)
    reg_s = time.monotonic() - t0
    t0 = time.monotonic()
    result = train(dict(images=ws / "dataset", trigger="DeltamonStamp", base=base.name, models_dir=models,
                        projects_dir=ws / "projects", project="deltamon", steps=args.steps, batch_size=4, rank=args.rank,
                        alpha=float(args.rank), lr=args.lr, resolution=[size], seed=0, **reg))
    train_s = time.monotonic() - t0
    (models / "Lora" / "deltamon.safetensors").write_bytes(result.lora_path.read_bytes())

    concept, spread = concept_scores(args, engine, ws, common)
    prompts = benchmark_prompts(n_per_pair=2)[: max(48, args.prompts)]
    base_c, base_s, base_miss = accuracy(engine, prompts, common, "")
    lora_c, lora_s, lora_miss = accuracy(engine, prompts, common, " <lora:deltamon:1>")
    out = {
        "bench": "lora_efficacy",
        "base_model": base.name,
        "train_steps": args.steps,
        "lr": args.lr,
        "rank": args.rank,
        "train_seconds": round(train_s, 1),
        "reg_images": args.reg,
        "prior_loss_weight": args.prior_loss_weight if args.reg else None,
        "reg_seconds": round(reg_s, 1),
        "concept_score": concept,
        "concept_margin_w1_minus_w0": round(concept["1"] - concept["0"], 4),
        "concept_w0_per_image_std": round(spread, 4),
        "base_colour_accuracy": {"without_lora": round(base_c, 1), "with_lora_w1": round(lora_c, 1)},
        "base_shape_accuracy": {"without_lora": round(base_s, 1), "with_lora_w1": round(lora_s, 1)},
        "preservation_loss_points": {"colour": round(base_c - lora_c, 1), "shape": round(base_s - lora_s, 1)},
        "shape_confusions": {"without_lora": base_miss, "with_lora_w1": lora_miss},
        "prompts": len(prompts),
        "workspace": str(ws),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
