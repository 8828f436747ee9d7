"""How long the LoRA report takes on the bundled base (goal: <= 30 s on 2 CPU cores).

Trains a LoRA first (the demo's recipe, small: 150 steps at the base's 32 px, 16
regularisation pictures; not timed), then times `write_report` with its defaults: weights
0-1.25 x 5 prompts x 2 seeds = 60 images of 20 steps, model load and scoring included.

    .venv/bin/python bench/report.py [--seeds 2] [--steps 150] [--threads N]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=150, help="training steps of the LoRA under report")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the goal is stated for 2 cores)")
    ap.add_argument("--workspace", type=Path, default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.services.class_images import write_class_images
    from lorastudio.services.report import write_report
    from lorastudio.testing.shapes import random_captions
    from lorastudio.training.api import train
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    ws = args.workspace or Path(tempfile.mkdtemp(prefix="lora-report-"))
    models = ws / "models"
    settings = StudioSettings(models_dir=models, outdir=ws / "out", device="cpu")
    engine = GenerationEngine(settings)
    base = engine.default_checkpoint()
    draw_sticker_dataset(ws / "data", n=12, trigger="DeltamonStamp", seed=0, size=128)
    write_class_images(engine, random_captions(16, seed=77), ws / "reg", seed=5000, width=32, height=32, steps=20,
                       cfg_scale=5.0, sampler="DPM++ 2M")
    del engine
    result = train(dict(images=ws / "data", trigger="DeltamonStamp", base=base.name, models_dir=models,
                        projects_dir=ws / "p", steps=args.steps, batch_size=4, rank=8, alpha=8.0, lr=2e-3,
                        resolution=[32], seed=0, sample_every=max(1, args.steps // 2), reg_images=ws / "reg"))
    cpu0, t0 = time.process_time(), time.monotonic()
    report = write_report(result.version_dir, settings, {"seeds": args.seeds})
    seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
    print(json.dumps({
        "bench": "report",
        "base_model": base.name,
        "report_seconds": round(seconds, 1),
        "report_cpu_seconds": round(cpu, 1),
        "goal_seconds": 30,
        "images": len(report["pictures"]),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "recommended_weight": report["recommended_weight"],
        "verdict": report["recommendation"]["verdict"],
        "concept_score": report["concept_score"]["by_weight"],
        "base_preservation": report["base_preservation"]["by_weight"],
        "scorer": report["concept_score"]["scorer"],
        "workspace": str(ws),
    }))


if __name__ == "__main__":
    main()
