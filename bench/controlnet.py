#!/usr/bin/env python
"""One ControlNet unit: lorastudio's engine against diffusers' own StableDiffusionControlNetPipeline.

The tiny SD 1.x model with an 8x VAE and a tiny random ControlNet (lorastudio.testing.tiny_controlnet)
are written as A1111 single files into a temporary models root and loaded through GenerationEngine,
as users load them. CPU, float32, one image per call, same prompt, seed, CFG, size, steps, Euler.

    ours        GenerationEngine.txt2img(params, controlnet=[unit], save=False): unit validation,
                preprocessing ("none"), resize mode, the ControlNet pipeline built over the loaded
                modules (from_pipe), A1111 prompt encoding, CPU noise, infotext, PIL output
    diffusers   StableDiffusionControlNetPipeline(**the same components, controlnet=the same module)
                called with the control picture and torch.Generator("cpu").manual_seed(seed), its
                scheduler (Euler on SD's betas) built once

Rounds run both in shuffled order after one untimed warm-up each; times are CPU time of this
process (time.process_time); the ratio is taken per round (paired) and the median reported.
Target: ratio_vs_diffusers <= 1.05. The last line of output is one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/controlnet.py [--size 128] [--steps 10] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline
    from PIL import Image

    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.testing.tiny_controlnet import write_controlnet_models_root

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cn-"))
    originals = write_controlnet_models_root(tmp / "models")
    engine = GenerationEngine(StudioSettings(models_dir=tmp / "models", outdir=tmp / "out", device="cpu",
                                             include_bundled=False))
    size = args.size
    rng = np.random.RandomState(0)
    control = Image.fromarray((rng.rand(size, size, 3) * 255).astype(np.uint8))
    params = dict(prompt="a red circle", negative_prompt="blurry", seed=7, steps=args.steps, cfg_scale=6.0,
                  width=size, height=size, sampler="Euler", scheduler="Automatic")
    unit = {"module": "none", "model": "control_tiny", "image": control}

    def ours():
        return engine.txt2img(params, save=False, controlnet=[unit]).images[0].image

    ours()  # loads the model and the ControlNet
    p = engine.model.pipe
    ref = StableDiffusionControlNetPipeline(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
                                            controlnet=engine._load_controlnet("control_tiny")[0],
                                            scheduler=EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085,
                                                                             beta_end=0.012, beta_schedule="scaled_linear"),
                                            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)

    def theirs():
        return ref("a red circle", negative_prompt="blurry", image=control, width=size, height=size,
                   num_inference_steps=args.steps, guidance_scale=6.0,
                   generator=torch.Generator("cpu").manual_seed(7)).images[0]

    a, b = ours(), theirs()
    max_diff = int(np.abs(np.asarray(a, int) - np.asarray(b, int)).max())
    order = random.Random(0)
    ratios, t_ours, t_theirs = [], [], []
    for _ in range(args.rounds):
        times = {}
        runs = [("ours", ours), ("diffusers", theirs)]
        order.shuffle(runs)
        for name, fn in runs:
            t0 = time.process_time()
            fn()
            times[name] = time.process_time() - t0
        ratios.append(times["ours"] / times["diffusers"])
        t_ours.append(times["ours"])
        t_theirs.append(times["diffusers"])
        print(f"round: ours {times['ours']:.3f}s cpu, diffusers {times['diffusers']:.3f}s cpu", flush=True)
    print(json.dumps({"bench": "controlnet", "size": size, "steps": args.steps, "rounds": args.rounds,
                      "threads": args.threads, "ratio_vs_diffusers": round(statistics.median(ratios), 4),
                      "target": 1.05, "ours_cpu_s_median": round(statistics.median(t_ours), 4),
                      "diffusers_cpu_s_median": round(statistics.median(t_theirs), 4),
                      "max_level_difference": max_diff, "controlnet_params": sum(x.numel() for x in
                                                                                originals["controlnet"].parameters())}))


if __name__ == "__main__":
    main()
