#!/usr/bin/env python
"""Hires fix speed: lorastudio's txt2img with enable_hr against plain diffusers doing the same two passes.

One tiny random SD 1.x model (lorastudio.testing.tiny_sd.tiny_sd1_pipeline(0)), written as an A1111
single file and loaded through GenerationEngine. CPU, float32, one image per call.

    ours       GenerationEngine.txt2img(enable_hr=True, hr_upscaler="Latent", hr_scale=2,
               denoising_strength=0.6, sampler Euler), save=False
    diffusers  StableDiffusionPipeline(same components)(..., output_type="latent"), then
               torch.nn.functional.interpolate(scale 2, bilinear), then
               StableDiffusionImg2ImgPipeline.from_pipe(pipe)(image=latents, strength=run/schedule,
               num_inference_steps=schedule), both with the scheduler lorastudio built (same schedule:
               A1111 runs `steps` steps of an int(steps / strength)-step schedule in the second pass)

Each round times both (order shuffled per round, seeded) after an untimed warm-up; the time of a
call is this process's CPU time (time.process_time). The ratio ours / diffusers is taken per round
and the median reported. Last line: one JSON object. Goal: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.generation.hires_fix import second_pass_steps
    from lorastudio.core.params import GenerationParams
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        (root / "Stable-diffusion").mkdir(parents=True)
        save_sd1_single_file(tiny_sd1_pipeline(0), root / "Stable-diffusion" / "tiny-sd1.safetensors")
        engine = GenerationEngine(StudioSettings(models_dir=root, outdir=Path(tmp) / "out", device="cpu",
                                                 include_bundled=False))
        params = dict(prompt="a red circle", negative_prompt="blurry", width=args.size, height=args.size,
                      steps=args.steps, sampler="Euler", cfg_scale=5.0, seed=3, enable_hr=True,
                      hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6)
        schedule, run = second_pass_steps(GenerationParams(**params))

        def ours():
            return engine.txt2img(params, save=False).images[0].image

        ours()  # loads the model, builds the scheduler
        pipe = engine.model.pipe
        scheduler_config = pipe.scheduler.config
        i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
        f = pipe.vae_scale_factor

        def diffusers_two_passes():
            pipe.scheduler = type(pipe.scheduler).from_config(scheduler_config)
            latents = pipe("a red circle", negative_prompt="blurry", width=args.size, height=args.size,
                           num_inference_steps=args.steps, guidance_scale=5.0,
                           generator=torch.Generator().manual_seed(3), output_type="latent").images
            up = torch.nn.functional.interpolate(latents, size=(2 * args.size // f, 2 * args.size // f),
                                                 mode="bilinear")
            i2i.scheduler = type(pipe.scheduler).from_config(scheduler_config)
            return i2i("a red circle", negative_prompt="blurry", image=up, strength=run / schedule,
                       num_inference_steps=schedule, guidance_scale=5.0,
                       generator=torch.Generator().manual_seed(3)).images[0]

        ref = diffusers_two_passes()
        mine = ours()
        max_diff = float(np.abs(np.asarray(ref, np.float64) - np.asarray(mine, np.float64)).max())
        rng = random.Random(0)
        ratios, t_ours, t_ref = [], [], []
        for _ in range(args.rounds):
            order = [("ours", ours), ("diffusers", diffusers_two_passes)]
            rng.shuffle(order)
            times = {}
            for name, fn in order:
                c = time.process_time()
                fn()
                times[name] = time.process_time() - c
            ratios.append(times["ours"] / times["diffusers"])
            t_ours.append(times["ours"])
            t_ref.append(times["diffusers"])
    print(json.dumps({"bench": "hires", "size": args.size, "hires_size": 2 * args.size, "steps": args.steps,
                      "second_pass": {"schedule": schedule, "run": run}, "rounds": args.rounds,
                      "ours_s": round(statistics.median(t_ours), 4), "diffusers_s": round(statistics.median(t_ref), 4),
                      "ratio_vs_diffusers": round(statistics.median(ratios), 4), "goal_ratio": 1.05,
                      "max_pixel_level_difference": max_diff}))


if __name__ == "__main__":
    main()
