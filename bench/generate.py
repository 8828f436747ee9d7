#!/usr/bin/env python
"""txt2img speed: lorastudio's engine against a plain diffusers call, and what a LoRA costs.

One tiny random SD 1.x model (lorastudio.testing.tiny_sd.tiny_sd1_pipeline(0)) is written as an
A1111 single file into a temporary models root and loaded through GenerationEngine, exactly as
users load checkpoints. Everything below runs on the CPU in float32, one image per call, same
prompt, negative prompt, seed, CFG, size and steps.

    ours        GenerationEngine.txt2img(params, save=False)   (validation, A1111 prompt parsing and
                encoding, scheduler built from the sampler name, CPU noise, infotext, PIL output)
    diffusers   StableDiffusionPipeline(**the same components)(prompt, negative_prompt, ...,
                generator=torch.Generator("cpu").manual_seed(seed)) with the scheduler set once
    lora none / fused / unfused
                ours without a LoRA, and with `<lora:benchlora:1>` on an engine built with
                StudioSettings(lora_mode="fused") and one with lora_mode="unfused". The LoRA is made
                with peft on the same UNet (rank --rank on to_q/to_k/to_v/to_out.0, random A and B)
                and exported with kohya_lora_from_peft into models/Lora.

Samplers: Euler and DPM++ 2M (schedule "Automatic"). The reference's scheduler is built from the
config lorastudio built for the same sampler (type(s).from_config(s.config) after lorastudio's call),
so both sides run the same schedule; the usual diffusers idiom Cls.from_config(pipe.scheduler.config)
differs (timestep_spacing "linspace" instead of the "leading" that lorastudio carries over from the
checkpoint's PNDM config), which pixel_identical_vs_default_scheduler_config and
scheduler_config_vs_default report.

Each round runs every configuration once, compared runs next to each other (blocks [ours, diffusers]
per sampler and [lora none, fused, unfused], block order and order inside shuffled per round,
seeded), after one untimed
warm-up call each (the warm-up also loads and, in fused mode, merges the LoRA, and gives the pixels
compared). The time of a call is the CPU time of this process (time.process_time, all threads; torch
uses --threads threads on every side): on a shared machine the wall clock also counts the time other
processes held the cores. Wall-clock figures are reported beside (wall_*), and ratios of the best
(minimum) CPU times (best_cpu_*). Ratios are taken within a round (paired, so a load change hits both
sides) and the median over rounds is reported:

    ratio_vs_diffusers   ours / diffusers time per image; the worse of the two samplers
                         (per sampler in ratio_by_sampler); target <= 1.05
    lora_fused_ratio     fused LoRA / no LoRA time per image; target <= 1.05
    lora_unfused_ratio   unfused LoRA / no LoRA time per image
    pixel_identical      ours and diffusers give byte-identical RGB pixels for both samplers
    overhead_cpu_ms_by_sampler  median over rounds of (ours - diffusers) CPU ms per image
    unet_call_fused_ratio / unet_call_unfused_ratio
                         the UNet alone (one batch-2 call, --unet-calls interleaved calls per mode),
                         LoRA-mode UNet / plain UNet, median of paired ratios: the same question
                         as the lora_* ratios with far less noise
    lora_lookup_cpu_ms   CPU ms of Catalog.find_lora, which txt2img runs for every <lora:> tag of
                         every call, with --lora-library files in models/Lora (20 sub-folders);
                         lora_lookup_vs_image = that / the CPU time of one no-LoRA image here

Sizes: the tiny VAE downsamples by 2 (two blocks), so --size 32 means 16x16 latents, the UNet's
native sample_size. One CFG step is one UNet call on a batch of 2 (~40 ms of CPU here), a 20-step
image ~0.8 s of CPU, so the fixed per-call cost of either side (prompt encoding, scheduler set-up,
VAE decode, PIL conversion) is small against the denoising it wraps. (At --size 128 the latents are
64x64 and one image takes ~1 min on this machine, too long for repeated rounds.) The last line of
output is one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/generate.py [--size 32] [--steps 20] [--rounds 8] [--threads 1]

--fast-full-size: the fast mode (GenerationParams.fast) against a plain diffusers call on the
full-size SD 1.5 architecture (random weights, written as an A1111 single file and loaded through
GenerationEngine; no download), Euler, one image per call, CPU time paired per round:

    fast_vs_diffusers_speedup          diffusers / fast CPU time per image, median over rounds; goal >= 1.3
    mean_abs_pixel_diff_fast_vs_exact  mean |fast - exact| per pixel and channel in levels of 255; tolerance 2
                                       (the exact mode gives diffusers' pixels; --check-exact draws it too)
    unet_call_levers                   one CFG-sized UNet call with each lever added in turn (float32,
                                       autocast, the bf16 copy, + channels_last, + fused QKV, --compile)
    embedding_cache                    CPU seconds of one prompt encoding, saved by each cache hit
    lora_switch                        a rank --rank LoRA of the UNet attention (128 modules), fused:
                                       each switch's CPU time over one 512 px CFG step, and whether
                                       A -> B -> none leaves every weight bit-identical
    load_average_*                     the machine's load average at each run (a shared machine)

    .venv/bin/python bench/generate.py --fast-full-size --size 256 --steps 20 --rounds 2 --threads 2 --rank 16
    (--rounds 0 --lever-calls 0: the LoRA switch only)
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

PROMPT = "a red circle on a white background, simple"
NEGATIVE = "blurry, lowres"
LORA_NAME = "benchlora"
SAMPLERS = ("Euler", "DPM++ 2M")


def make_models_root(root: Path, rank: int) -> Path:
    """Write the tiny checkpoint and a LoRA for its UNet into an A1111 models folder."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    from lorastudio.models.formats.kohya_lora_sd import kohya_lora_from_peft
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    (root / "Stable-diffusion").mkdir(parents=True)
    (root / "Lora").mkdir()
    pipe = tiny_sd1_pipeline(0)
    ckpt = save_sd1_single_file(pipe, root / "Stable-diffusion" / "tiny-sd1.safetensors")

    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:  # B starts at zero; give it weights so the LoRA changes the picture
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    sd = {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    kohya = kohya_lora_from_peft(sd, {}, alpha=float(rank), rank=rank, unet_naming="diffusers")
    lora = root / "Lora" / f"{LORA_NAME}.safetensors"
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(lora))
    # Files written seconds ago are re-hashed on every call (HashCache's racy window); real model
    # files are old, so age these by an hour.
    old = time.time() - 3600
    for p in (ckpt, lora):
        os.utime(p, (old, old))
    return root


def lora_lookup_ms(base: Path, n_files: int, repeats: int = 5) -> float:
    """Median ms of Catalog.find_lora (run for every <lora:> tag of every txt2img call) in a Lora
    folder of n_files small files spread over 20 sub-folders, the last one wanted."""
    from lorastudio.core.paths import ModelsRoot
    from lorastudio.models.catalog import Catalog

    root = base / "library" / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    per = max(1, n_files // 20)
    for sub in range(20):
        folder = root / "Lora" / f"artist{sub:02d}" / "styles"
        folder.mkdir(parents=True)
        for i in range(per):
            (folder / f"lora{sub:02d}_{i:04d}.safetensors").write_bytes(b"\0")
    # A library written an hour ago, as users' are: the catalog rescans a folder changed in the last
    # seconds (coarse mtime ticks), so fresh folders would time the scan, not the lookup.
    old = time.time() - 3600
    for dirpath, _dirs, _files in os.walk(root / "Lora"):
        os.utime(dirpath, (old, old))
    catalog = Catalog(ModelsRoot.at(root), include_bundled=False)
    want = f"lora19_{per - 1:04d}"
    catalog.find_lora(want)
    times = []
    for _ in range(repeats):
        c = time.process_time()
        catalog.find_lora(want)
        times.append(time.process_time() - c)
    return statistics.median(times) * 1000


def engine(models: Path, outdir: Path, lora_mode: str):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    eng = GenerationEngine(StudioSettings(models_dir=models, outdir=outdir, device="cpu", dtype="float32",
                                          include_bundled=False, lora_mode=lora_mode))
    eng.load()
    return eng


def rgb(img):
    import numpy as np

    return np.asarray(img.convert("RGB"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=32, help="width = height in pixels (tiny VAE: latents are size/2)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, same for every side")
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--unet-calls", type=int, default=40, help="interleaved UNet-only calls per LoRA mode")
    ap.add_argument("--lora-library", type=int, default=2000,
                    help="files in the Lora folder for the find_lora timing (0: skip)")
    ap.add_argument("--fast-full-size", action="store_true",
                    help="instead: the fast mode against plain diffusers on the full-size SD 1.5 architecture "
                         "(use with --size 256 --rounds 2 --threads 2), each lever's gain, the LoRA switch time")
    ap.add_argument("--lever-calls", type=int, default=2, help="--fast-full-size: timed UNet calls per lever")
    ap.add_argument("--check-exact", action="store_true", help="--fast-full-size: also draw the exact picture")
    ap.add_argument("--compile", action="store_true", help="--fast-full-size: also time regional torch.compile")
    ap.add_argument("--no-lora-switch", dest="lora_switch", action="store_false",
                    help="--fast-full-size: skip the LoRA switch timing")
    return ap.parse_args(argv)


class Sides:
    """lorastudio's engines (no LoRA, fused, unfused) and a plain diffusers pipeline over the very
    same modules; `runs[name]()` draws one image."""

    def __init__(self, args, base: Path):
        import torch
        from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

        self.args = args
        models = make_models_root(base / "models", args.rank)
        self.eng_none = engine(models, base / "out", "fused")
        self.eng_fused = engine(models, base / "out", "fused")
        self.eng_unfused = engine(models, base / "out", "unfused")
        self.src = src = self.eng_none.model.pipe
        sched_cfg = dict(src.scheduler.config)  # the checkpoint's own scheduler config (PNDM, SD 1.5 values)
        self.ref = StableDiffusionPipeline(vae=src.vae, text_encoder=src.text_encoder, tokenizer=src.tokenizer,
                                           unet=src.unet, scheduler=src.scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        self.ref.set_progress_bar_config(disable=True)
        self.default_schedulers = {  # what `Cls.from_config(pipe.scheduler.config)` gives: the diffusers idiom
            "Euler": EulerDiscreteScheduler.from_config(sched_cfg),
            "DPM++ 2M": DPMSolverMultistepScheduler.from_config(sched_cfg, algorithm_type="dpmsolver++",
                                                                solver_order=2),
        }
        self.ref_schedulers: dict = {}  # the same scheduler config lorastudio built, filled by warm_up
        self.torch = torch
        lora_prompt = f"<lora:{LORA_NAME}:1> {PROMPT}"
        self.runs = {}
        for s in SAMPLERS:
            self.runs[f"ours {s}"] = lambda s=s: self.ours(s)
            self.runs[f"diffusers {s}"] = lambda s=s: self.diffusers_call(s)
        self.runs["lora none"] = lambda: self.ours("Euler")  # the same call as "ours Euler", beside the LoRA runs
        self.runs["lora fused"] = lambda: self.ours("Euler", self.eng_fused, lora_prompt)
        self.runs["lora unfused"] = lambda: self.ours("Euler", self.eng_unfused, lora_prompt)

    def ours(self, sampler: str, eng=None, prompt: str = PROMPT):
        a = self.args
        common = dict(negative_prompt=NEGATIVE, steps=a.steps, width=a.size, height=a.size, cfg_scale=a.cfg,
                      seed=a.seed)
        return (eng or self.eng_none).txt2img(dict(prompt=prompt, sampler=sampler, **common),
                                              save=False).images[0].image

    def diffusers_call(self, sampler: str, schedulers=None):
        a = self.args
        self.ref.scheduler = (schedulers if schedulers is not None else self.ref_schedulers)[sampler]
        return self.ref(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=a.steps, guidance_scale=a.cfg,
                        width=a.size, height=a.size, generator=self.torch.Generator("cpu").manual_seed(a.seed),
                        output_type="pil").images[0]


def warm_up(sides: Sides) -> tuple[dict, dict]:
    """One untimed call of every run, which doubles as the correctness check: (images, scheduler
    config differences [lorastudio, diffusers idiom] per sampler)."""
    images, sched_notes = {}, {}
    for s in SAMPLERS:
        images[f"ours {s}"] = sides.runs[f"ours {s}"]()
        built = sides.src.scheduler  # the scheduler run_txt2img just built for this sampler
        sides.ref_schedulers[s] = type(built).from_config(dict(built.config))
        images[f"diffusers {s}"] = sides.runs[f"diffusers {s}"]()
        default = sides.default_schedulers[s]
        images[f"diffusers-default {s}"] = sides.diffusers_call(s, sides.default_schedulers)
        sched_notes[s] = {k: [built.config.get(k), default.config.get(k)]
                          for k in set(built.config) | set(default.config)
                          if not k.startswith("_") and built.config.get(k) != default.config.get(k)}
    for name in ("lora none", "lora fused", "lora unfused"):
        images[name] = sides.runs[name]()
    return images, sched_notes


def compare_pixels(images: dict) -> tuple[dict, dict, dict, dict]:
    import numpy as np

    identical, max_diff, default_identical = {}, {}, {}
    for s in SAMPLERS:
        a, b = rgb(images[f"ours {s}"]), rgb(images[f"diffusers {s}"])
        identical[s] = bool(np.array_equal(a, b))
        max_diff[s] = int(np.abs(a.astype(int) - b.astype(int)).max())
        default_identical[s] = bool(np.array_equal(a, rgb(images[f"diffusers-default {s}"])))
    none_px, fused_px, unfused_px = (rgb(images[k]) for k in ("ours Euler", "lora fused", "lora unfused"))
    lora_check = {
        "lora_changes_image": bool(not np.array_equal(none_px, fused_px)),
        "fused_vs_unfused_max_abs_diff": int(np.abs(fused_px.astype(int) - unfused_px.astype(int)).max()),
    }
    return identical, max_diff, default_identical, lora_check


def timed_rounds(args, runs: dict, order_rng: random.Random) -> tuple[dict, dict]:
    """CPU time of this process (all its threads) is the primary measure: on a shared machine the wall
    clock also counts the time other processes held the cores. Wall times are reported beside it."""
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    # Runs that are compared sit next to each other: blocks in a shuffled order, shuffled inside.
    blocks = [[f"ours {s}", f"diffusers {s}"] for s in SAMPLERS] + [["lora none", "lora fused", "lora unfused"]]
    for r in range(args.rounds):
        order_rng.shuffle(blocks)
        order = []
        for block in blocks:
            order_rng.shuffle(block)
            order += block
        for name in order:
            c, t = time.process_time(), time.perf_counter()
            runs[name]()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds} cpu s: " + ", ".join(f"{k} {cpu[k][-1]:.3f}" for k in runs)
              + " | wall s: " + ", ".join(f"{k} {wall[k][-1]:.3f}" for k in runs), flush=True)
    return cpu, wall


def unet_call_times(args, sides: Sides, order_rng: random.Random) -> dict:
    """The UNet alone (one CFG-sized call, batch 2), many short interleaved calls: the LoRA cost
    with less noise than whole images."""
    import torch

    unets = {"none": sides.eng_none.model.pipe.unet, "fused": sides.eng_fused.model.pipe.unet,
             "unfused": sides.eng_unfused.model.pipe.unet}
    src = sides.src
    shape = sides.eng_none.model.family.latent_shape(src, args.size, args.size)
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
    hidden = torch.randn((2, 77, src.text_encoder.config.hidden_size), generator=torch.Generator().manual_seed(1))
    unet_cpu: dict[str, list[float]] = {k: [] for k in unets}
    with torch.inference_mode():
        for _ in range(args.unet_calls):
            for k in order_rng.sample(list(unets), len(unets)):
                c = time.process_time()
                unets[k](x, 500, encoder_hidden_states=hidden)
                unet_cpu[k].append(time.process_time() - c)
    return unet_cpu


# --- the fast mode on the full-size SD 1.5 architecture (--fast-full-size) -----------------------

FULL_PROMPT = "a photograph of an astronaut riding a horse, detailed, sharp focus"


def sd15_pipeline(seed: int = 0):
    """The SD 1.5 architecture at full size (UNet 860M, CLIP ViT-L/14 text encoder 123M, VAE 84M)
    with random weights: diffusers' UNet2DConditionModel defaults are SD 1.5's UNet except the
    cross-attention width (768, CLIP-L's); the VAE and CLIP-L configs are those of
    stable-diffusion-v1-5; the tokenizer is the project's bundled CLIP vocabulary."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorastudio.models.formats.sd_config_inference import SD1_SCHEDULER
    from lorastudio.testing.tiny_sd import tiny_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215).eval()
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                          hidden_act="quick_gelu", projection_dim=768, bos_token_id=0,
                                          eos_token_id=2, pad_token_id=1)).eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tiny_clip_tokenizer(), unet=unet,
                                   scheduler=PNDMScheduler.from_config(SD1_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_full_size_root(root: Path, rank: int) -> tuple[Path, list[str]]:
    """The full-size SD 1.5 file (stored in float16 to halve the bytes; loaded in float32) and two
    rank-`rank` LoRAs of its UNet attention (kohya format) in an A1111 models folder."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    from lorastudio.models.formats.kohya_lora_sd import kohya_lora_from_peft
    from lorastudio.testing.tiny_sd import save_sd1_single_file

    (root / "Stable-diffusion").mkdir(parents=True)
    (root / "Lora").mkdir()
    pipe = sd15_pipeline(0)
    pipe.to(torch.float16)
    ckpt = save_sd1_single_file(pipe, root / "Stable-diffusion" / "sd15-random.safetensors")
    pipe.unet.to(torch.float32)
    names = []
    for k in range(2):
        unet = pipe.unet
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name=f"b{k}")
        gen = torch.Generator().manual_seed(10 + k)
        with torch.no_grad():
            for name, p in unet.named_parameters():
                if "lora_B" in name and f".b{k}." in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        sd = {key.replace(f".b{k}", ""): v.detach().float().contiguous()
              for key, v in get_peft_model_state_dict(unet, adapter_name=f"b{k}").items()}
        kohya = kohya_lora_from_peft(sd, {}, alpha=float(rank), rank=rank, unet_naming="diffusers")
        save_file({n: v.contiguous() for n, v in kohya.items()}, str(root / "Lora" / f"switch{k}.safetensors"))
        unet.delete_adapters(f"b{k}")
        names.append(f"switch{k}")
    old = time.time() - 3600  # see make_models_root
    for p in [ckpt, *(root / "Lora").iterdir()]:
        os.utime(p, (old, old))
    return ckpt, names


def cpu_timed(fn):
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - t


def unet_lever_times(eng, args) -> dict:
    """CPU seconds of one CFG-sized denoiser call (batch 2) with each lever added in turn, median of
    --lever-calls interleaved calls, after one untimed call each."""
    import torch

    from lorastudio.generation.fast_mode import FastLevers, FastMode

    model = eng.model
    pipe, family = model.pipe, model.family
    shape = family.latent_shape(pipe, args.size, args.size)
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
    hidden = torch.randn((2, 77, 768), generator=torch.Generator().manual_seed(1))
    t = torch.tensor(500)
    fast_dtype = eng.fast_mode().levers.dtype or torch.float32
    variants = {
        "float32 (exact)": lambda: pipe.unet,
        f"autocast {str(fast_dtype)[6:]} (instead of a copy)": lambda: pipe.unet,
        f"{str(fast_dtype)[6:]} copy": lambda: FastMode(FastLevers(dtype=fast_dtype, channels_last=False,
                                                                  fuse_qkv=False)).denoiser_copy(family, pipe, []).module,
        "+ channels_last": lambda: FastMode(FastLevers(dtype=fast_dtype, fuse_qkv=False)).denoiser_copy(
            family, pipe, []).module,
        "+ fused QKV": lambda: FastMode(FastLevers(dtype=fast_dtype, fuse_qkv=True)).denoiser_copy(
            family, pipe, []).module,
    }
    if args.compile:
        variants["+ regional torch.compile"] = lambda: FastMode(FastLevers(dtype=fast_dtype, compile=True)).denoiser_copy(
            family, pipe, []).module
    out = {}
    base = None
    for name, make in variants.items():
        module = make()
        autocast = name.startswith("autocast")

        def call():
            with torch.inference_mode(), torch.autocast("cpu", dtype=fast_dtype, enabled=autocast):
                return module(x, t, encoder_hidden_states=hidden).sample.float()
        first, first_cpu, first_wall = cpu_timed(call)
        times = [cpu_timed(call)[1] for _ in range(args.lever_calls)]
        row = {"cpu_s": round(statistics.median(times), 3), "first_call_cpu_s": round(first_cpu, 2)}
        if base is None:
            base = (first, row["cpu_s"])
        row["speedup_vs_float32"] = round(base[1] / row["cpu_s"], 3)
        row["max_abs_diff_vs_float32"] = float((first - base[0]).abs().max())
        if "compile" in name:
            row["compile_wall_s"] = round(first_wall - statistics.median(times), 1)
        out[name] = row
        print(f"lever {name}: {row}", flush=True)
        del module
    return out


def fast_full_size(args) -> dict:
    """lorastudio's fast mode against plain diffusers on the full-size SD 1.5 architecture."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from lorastudio.core.samplers import resolve_sampler

    tmp = tempfile.TemporaryDirectory(prefix="bench-generate-full-")
    base = Path(tmp.name)
    t0 = time.perf_counter()
    ckpt, lora_names = write_full_size_root(base / "models", args.rank)
    eng = engine(base / "models", base / "out", "fused")
    src = eng.model.pipe
    print(f"setup (build, write {ckpt.stat().st_size / 1e9:.1f} GB, load) {time.perf_counter() - t0:.0f} s; "
          f"fast levers here: {eng.fast_mode().levers.describe()}", flush=True)
    ref = StableDiffusionPipeline(vae=src.vae, text_encoder=src.text_encoder, tokenizer=src.tokenizer, unet=src.unet,
                                  scheduler=src.scheduler, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    common = dict(negative_prompt=NEGATIVE, steps=args.steps, width=args.size, height=args.size, cfg_scale=args.cfg,
                  seed=args.seed, sampler="Euler")

    def ours(fast: bool):
        return eng.txt2img(dict(prompt=FULL_PROMPT, fast=fast, **common), save=False).images[0].image

    def diffusers_call():
        return ref(prompt=FULL_PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps,
                   guidance_scale=args.cfg, width=args.size, height=args.size,
                   generator=torch.Generator("cpu").manual_seed(args.seed), output_type="pil").images[0]

    # The exact picture: lorastudio's exact mode gives diffusers' pixels (the tiny bench checks that
    # every run, tests/generation the same); --check-exact draws it here too (one more image).
    exact_img = ours(False) if args.check_exact else None
    # the Euler schedule lorastudio builds, for the plain diffusers side too
    src.scheduler = eng.model.family.make_scheduler(eng.model.base_scheduler_config, resolve_sampler("Euler", "Automatic"))
    # the fast copy of the denoiser is made once per model and LoRA set: made here, its time reported
    eng.fast_mode().denoiser_copy(eng.model.family, src, [])
    ref.scheduler = type(src.scheduler).from_config(dict(src.scheduler.config))  # the schedule ours just built
    fm = eng.fast_mode()
    result = {
        "bench": "generate --fast-full-size",
        "model": "SD 1.5 architecture, full size, random weights (UNet 860M, CLIP-L 123M, VAE 84M), float32",
        "size": [args.size, args.size], "steps": args.steps, "sampler": "Euler", "cfg": args.cfg,
        "threads": args.threads, "rounds": args.rounds, "fast_levers": fm.levers.describe(),
        "vae_tiling": f"not used at {args.size} px (from {fm.levers.vae_tiling_from_pixels} pixels)",
        "sdpa": "the default attention processor of both sides (AttnProcessor2_0)",
        "time_measure": "process CPU time per image (time.process_time), paired per round, median of ratios",
        "torch": torch.__version__,
    }
    # the text-embedding cache: what one request's prompt encoding costs, saved on a repeat
    _, enc_cpu, _ = cpu_timed(lambda: eng.model.family.encode_prompts(src, FULL_PROMPT, NEGATIVE, clip_skip=1,
                                                                      cfg_scale=args.cfg, guidance=3.5))
    print(f"prompt encoding cpu s {enc_cpu:.3f}", flush=True)
    result.update(levers_and_switch(eng, src, args, lora_names))
    print("partial: " + json.dumps(result), flush=True)
    if args.rounds == 0:  # the levers and the LoRA switch only
        tmp.cleanup()
        return result
    cpu: dict[str, list[float]] = {"diffusers": [], "fast": []}
    wall: dict[str, list[float]] = {"diffusers": [], "fast": []}
    loads: list[float] = []
    images = {}
    order_rng = random.Random(0)
    runs = {"diffusers": diffusers_call, "fast": lambda: ours(True)}
    for r in range(args.rounds):
        order = order_rng.sample(list(runs), 2) if r else ["fast", "diffusers"]  # fast first: its copy is built
        for name in order:
            loads.append(os.getloadavg()[0])
            img, c, w = cpu_timed(runs[name])
            images.setdefault(name, img)
            cpu[name].append(c)
            wall[name].append(w)
        print(f"round {r + 1}/{args.rounds}: cpu s diffusers {cpu['diffusers'][-1]:.1f} fast {cpu['fast'][-1]:.1f} | "
              f"wall s diffusers {wall['diffusers'][-1]:.1f} fast {wall['fast'][-1]:.1f} | load {loads[-1]:.1f}",
              flush=True)
    fast_px, diff_px = (rgb(i).astype(int) for i in (images["fast"], images["diffusers"]))
    exact = rgb(exact_img).astype(int) if exact_img is not None else diff_px
    fm = eng.fast_mode()
    copy_build_s = round(fm.copy.build_s, 2) if fm.copy else None
    result.update({
        "fast_vs_diffusers_speedup": round(statistics.median(d / f for d, f in zip(cpu["diffusers"], cpu["fast"])), 3),
        "fast_vs_diffusers_speedup_by_round": [round(d / f, 3) for d, f in zip(cpu["diffusers"], cpu["fast"])],
        "goal_speedup": 1.3,
        "wall_speedup_by_round": [round(d / f, 3) for d, f in zip(wall["diffusers"], wall["fast"])],
        "median_cpu_s": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
        "mean_abs_pixel_diff_fast_vs_exact": round(float(np.abs(fast_px - exact).mean()), 3),
        "max_abs_pixel_diff_fast_vs_exact": int(np.abs(fast_px - exact).max()),
        "exact_reference": "lorastudio exact mode" if exact_img is not None else "plain diffusers (= exact mode)",
        "tolerance_mean_abs": 2.0,
        "exact_equals_diffusers": bool(np.array_equal(exact, diff_px)) if exact_img is not None else None,
        "fast_copy_build_s": copy_build_s,
        "embedding_cache": {"hits": fm.embeddings.hits, "misses": fm.embeddings.misses,
                            "encode_cpu_s_saved_per_hit": round(enc_cpu, 3)},
        "load_average_at_each_run": [round(v, 1) for v in loads],
        "load_average_end": [round(v, 1) for v in os.getloadavg()],
    })
    tmp.cleanup()
    return result


def levers_and_switch(eng, src, args, lora_names) -> dict:
    import hashlib

    import torch

    from lorastudio.core.prompt_syntax import extract_lora_tags

    family = eng.model.family
    levers = unet_lever_times(eng, args) if args.lever_calls else {}
    switch = {}
    if args.lora_switch:
        def touched() -> str:  # every weight of the LoRA-able components, hashed
            h = hashlib.sha256()
            for m in (src.unet, src.text_encoder):
                for name, p in m.named_parameters():
                    if "lora_" not in name:
                        h.update(p.detach().contiguous().numpy().tobytes())
            return h.hexdigest()
        before = touched()

        def activate(prompt):
            with eng._lock:
                return cpu_timed(lambda: eng._activate_loras(extract_lora_tags(prompt)[1]))[1:]
        a, b = (f"<lora:{n}:1>" for n in lora_names)
        steps = {"none -> A (read, attach, merge)": a, "A -> B (read, attach, merge)": b,
                 "B -> A (both loaded)": a, "A -> B (both loaded)": b, "B -> none": ""}
        for label, prompt in steps.items():
            c, w = activate(prompt)
            switch[label] = {"cpu_s": round(c, 3), "wall_s": round(w, 3)}
            print(f"LoRA switch {label}: {switch[label]}", flush=True)
        after = touched()
        lat = family.latent_shape(src, 512, 512)
        x = torch.randn((2, *lat), generator=torch.Generator().manual_seed(0))
        hidden = torch.randn((2, 77, 768), generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            _, step512, _ = cpu_timed(lambda: src.unet(x, torch.tensor(500), encoder_hidden_states=hidden))
        print(f"one 512 px step (CFG batch 2) cpu s {step512:.1f}", flush=True)
        warm = max(switch["B -> A (both loaded)"]["cpu_s"], switch["A -> B (both loaded)"]["cpu_s"])
        cold = switch["A -> B (read, attach, merge)"]["cpu_s"]
        switch = {"steps": switch, "step_512px_cpu_s": round(step512, 2),
                  "switch_loaded_vs_512px_step": round(warm / step512, 4),
                  "switch_from_file_vs_512px_step": round(cold / step512, 4),
                  "weights_bit_identical_after_A_B_none": before == after, "lora_rank": args.rank,
                  "lora_modules": "UNet to_q/to_k/to_v/to_out.0 (128)"}

    return {"unet_call_levers": levers, "lora_switch": switch}


def main(argv=None) -> None:
    args = parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.fast_full_size:
        print(json.dumps(fast_full_size(args)))
        return
    t_setup = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="bench-generate-")
    base = Path(tmp.name)
    sides = Sides(args, base)
    images, sched_notes = warm_up(sides)
    setup_s = time.perf_counter() - t_setup
    identical, max_diff, default_identical, lora_check = compare_pixels(images)
    print(f"setup {setup_s:.1f}s; pixels identical: {identical} (max |diff| {max_diff}); {lora_check}", flush=True)
    print(f"with Cls.from_config(pipe.scheduler.config) instead: identical {default_identical}; "
          f"config differences [lorastudio, diffusers idiom]: {sched_notes}", flush=True)

    order_rng = random.Random(0)
    cpu, wall = timed_rounds(args, sides.runs, order_rng)
    unet_cpu = unet_call_times(args, sides, order_rng)

    def paired(a: str, b: str, times=cpu) -> float:  # per-round ratio a / b, median over rounds
        return round(statistics.median(x / y for x, y in zip(times[a], times[b])), 4)

    def paired_diff_ms(a: str, b: str) -> float:
        return round(statistics.median(x - y for x, y in zip(cpu[a], cpu[b])) * 1000, 1)

    def unet_ratio(k: str) -> float:
        return round(statistics.median(a / b for a, b in zip(unet_cpu[k], unet_cpu["none"])), 4)

    lookup_ms = lora_lookup_ms(base, args.lora_library) if args.lora_library else None
    by_sampler = {s: paired(f"ours {s}", f"diffusers {s}") for s in SAMPLERS}
    by_sampler_wall = {s: paired(f"ours {s}", f"diffusers {s}", wall) for s in SAMPLERS}
    result = {
        "bench": "generate",
        "pixel_identical": all(identical.values()),
        "pixel_identical_by_sampler": identical,
        "max_abs_pixel_diff_by_sampler": max_diff,
        "pixel_identical_vs_default_scheduler_config": default_identical,
        "scheduler_config_vs_default": sched_notes,
        "ratio_vs_diffusers": max(by_sampler.values()),
        "ratio_by_sampler": by_sampler,
        "lora_fused_ratio": paired("lora fused", "lora none"),
        "lora_unfused_ratio": paired("lora unfused", "lora none"),
        **lora_check,
        "unet_call_fused_ratio": unet_ratio("fused"),
        "unet_call_unfused_ratio": unet_ratio("unfused"),
        "unet_call_median_cpu_ms": {k: round(statistics.median(v) * 1000, 2) for k, v in unet_cpu.items()},
        "lora_library_files": args.lora_library,
        "lora_lookup_cpu_ms": round(lookup_ms, 1) if lookup_ms is not None else None,
        "lora_lookup_vs_image": (round(lookup_ms / 1000 / statistics.median(cpu["lora none"]), 4)
                                 if lookup_ms is not None else None),
        "time_measure": "process CPU time per image (time.process_time), paired per round, median of ratios",
        "wall_ratio_vs_diffusers": max(by_sampler_wall.values()),
        "wall_ratio_by_sampler": by_sampler_wall,
        "wall_lora_fused_ratio": paired("lora fused", "lora none", wall),
        "wall_lora_unfused_ratio": paired("lora unfused", "lora none", wall),
        "overhead_cpu_ms_by_sampler": {s: paired_diff_ms(f"ours {s}", f"diffusers {s}") for s in SAMPLERS},
        "best_cpu_ratio_vs_diffusers": max(round(min(cpu[f"ours {s}"]) / min(cpu[f"diffusers {s}"]), 4)
                                           for s in SAMPLERS),
        "best_cpu_lora_fused_ratio": round(min(cpu["lora fused"]) / min(cpu["lora none"]), 4),
        "best_cpu_lora_unfused_ratio": round(min(cpu["lora unfused"]) / min(cpu["lora none"]), 4),
        "median_cpu_s": {k: round(statistics.median(v), 4) for k, v in cpu.items()},
        "median_wall_s": {k: round(statistics.median(v), 4) for k, v in wall.items()},
        "size": [args.size, args.size],
        "latent_size": list(sides.eng_none.model.family.latent_shape(sides.src, args.size, args.size)),
        "steps": args.steps,
        "cfg": args.cfg,
        "lora_rank": args.rank,
        "rounds": args.rounds,
        "threads": args.threads,
        "model": "tiny_sd1_pipeline(0): UNet blocks (32, 64), CLIP 2x32, VAE (32, 64)",
        "setup_s": round(setup_s, 1),
        "torch": torch.__version__,
    }
    tmp.cleanup()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
