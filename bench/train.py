#!/usr/bin/env python
"""Training step speed and memory: lorastudio's Trainer against a plain diffusers + peft step.

Same tiny random SD 1.x model (lorastudio.testing.tiny_sd.tiny_sd1_pipeline(0); ours loads it from
the A1111 single file written from that pipeline, the reference uses the pipeline object itself:
identical weights), same sticker pictures (training.dataset.fixtures.draw_sticker_dataset), same
bucketed pixels and captions, same batches (the reference takes the indices of
Trainer.micro_batches(step)), same LoRA rank/alpha/targets, AdamW (lr, weight decay 1e-2), constant
LR schedule, gradient clipping at 1.0, float32 on the CPU. Four variants:

    ours            Trainer.step(step) of the Trainer lorastudio.training.api.prepare sets up (the
                    first of train()'s public steps, prepare -> run -> export): latents come from
                    its latent cache, captions from its text-embedding cache.
    ours_uncached   the same with cache_text_embeddings=False (captions go through the text
                    encoder every step) and, since TrainingConfig.cache_latents is not read by the
                    loop (it always caches), the latent cache EMULATED by this file: the cache's
                    batch() is replaced by family.encode_images(pipe, pixels) under no_grad.
    reference       the math of diffusers' examples/text_to_image/train_text_to_image_lora.py, written
                    out below: vae.encode(pixels).latent_dist.sample() * scaling_factor, randn noise,
                    randint timesteps, DDPMScheduler.add_noise, text_encoder(input_ids), UNet forward,
                    F.mse_loss, backward, clip_grad_norm_, AdamW step, lr step, zero_grad. It encodes
                    every step (no caches), as the example does.
    reference_cached the same with latents (VAE mean * scaling) and text embeddings computed once.

Timing: one untimed warm-up step per variant, then --rounds rounds; each round runs --steps steps of
every variant, in an order shuffled per round (seeded). The time of a step is the CPU time of this
process (time.process_time, all threads; torch uses --threads threads for every variant): on a
shared machine the wall clock also counts the time other processes held the cores. Wall-clock
ratios are reported beside (wall_*). Ratios are steps/s of one variant over another within a round
(paired against load changes), median over rounds:

    ratio_vs_reference           ours / reference (target >= 1.0; ours uses its caches, the
                                 reference encodes each step: what users get against the example)
    ratio_uncached_vs_reference  ours_uncached / reference (no caches on either side)
    ratio_cached_vs_reference_cached  ours / reference_cached (the loop's own overhead)

ours_uncached_text_encoder_got_grads tells whether the frozen text encoder received gradients in
ours_uncached (lorastudio does not freeze it, so with cache_text_embeddings=False it runs backward
through it every step).

Memory: a variant runs again in a fresh child process (`--child NAME`; ours and reference by default,
all four with --memory-all): set-up, one warm-up step, then the peak-RSS counter is reset (write "5"
to /proc/self/clear_refs, Linux >= 4.0) and --mem-steps steps run. Reported per variant:
setup_peak_mb (VmHWM before the reset: peak resident size of imports + model + set-up + warm-up),
rss_after_setup_mb (VmRSS before the measured steps), step_peak_mb (VmHWM after them) and
step_peak_delta_mb (step_peak_mb - rss_after_setup_mb: what training steps add at their peak).
tracemalloc is not used: it only sees Python's allocator, not torch's tensor memory; ru_maxrss is not
used in the children either: Linux carries the parent's RSS at fork into a child's ru_maxrss. Where
clear_refs is not writable the step figures fall back to ru_maxrss deltas (0 whenever set-up peaked
higher) and memory_method says so.

The last line of output is one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py [--resolution 64] [--batch 2] [--rounds 5] [--steps 2] [--memory-all]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRIGGER = "DeltamonStamp"
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the diffusers example's target_modules, lorastudio's for SD 1.x
VARIANTS = ("ours", "ours_uncached", "reference", "reference_cached")


# --- the world: models root + pictures ------------------------------------------------------------
def make_world(base: Path, n_images: int, resolution: int) -> tuple[Path, Path]:
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    models = base / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Lora").mkdir()
    ckpt = save_sd1_single_file(tiny_sd1_pipeline(0), models / "Stable-diffusion" / "tiny-sd1.safetensors")
    old = time.time() - 3600  # outside HashCache's racy window, like any real model file
    os.utime(ckpt, (old, old))
    draw_sticker_dataset(base / "data", n=n_images, trigger=TRIGGER, seed=0, size=resolution)
    return models, base / "data"


def train_config(args, projects: Path, models: Path, data: Path, project: str, cache_text: bool) -> dict:
    return dict(images=data, trigger=TRIGGER, base="tiny-sd1", models_dir=models, projects_dir=projects,
                project=project, steps=1_000_000, resolution=[args.resolution], rank=args.rank, alpha=float(args.rank),
                lr=args.lr, batch_size=args.batch, seed=0, mixed_precision="no", optimizer="adamw",
                lr_scheduler="constant", max_grad_norm=1.0, weight_decay=1e-2, gradient_checkpointing=False,
                cache_text_embeddings=cache_text, lora_modules="attention")  # the reference's TARGETS


def setup_ours(cfg: dict):
    """The set-up Trainer of lorastudio's public first step (`prepare`), as `train` runs it; no previews."""
    from lorastudio.training.api import prepare

    return prepare(cfg, previews=None).trainer


def pixel_tensors(trainer) -> dict:
    """The bucketed pixels of every item, exactly what the latent cache encodes."""
    from lorastudio.training.data import image_tensor

    bg = trainer.latents.background
    return {i: image_tensor(it, bg)[0] for i, it in enumerate(trainer.items)}


def uncache_latents(trainer, pixels: dict) -> None:
    """Emulate cache_latents=False: encode the batch's pixels with the VAE at every step."""
    import torch

    def batch(indices):
        px = torch.stack([pixels[i] for i in indices])
        with torch.no_grad():
            return trainer.family.encode_images(trainer.pipe, px.to(trainer.acc.device)), None

    trainer.latents.batch = batch


# --- the reference step ----------------------------------------------------------------------------
class Reference:
    """diffusers' train_text_to_image_lora.py, one step at a time, on the same data and batches."""

    def __init__(self, args, pixels: dict, captions: dict, cached: bool):
        import torch
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig

        from lorastudio.models.formats.sd_config_inference import SD1_SCHEDULER
        from lorastudio.testing.tiny_sd import tiny_sd1_pipeline

        pipe = tiny_sd1_pipeline(0)
        self.vae, self.text_encoder, self.tokenizer, self.unet = pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet
        self.noise_scheduler = DDPMScheduler.from_config(SD1_SCHEDULER)
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False)
        torch.manual_seed(0)
        self.unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                         target_modules=TARGETS))
        self.lora_layers = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.lora_layers, lr=args.lr, betas=(0.9, 0.999), weight_decay=1e-2,
                                           eps=1e-8)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer, num_warmup_steps=0,
                                          num_training_steps=1_000_000)
        self.pixels = pixels
        ids = self.tokenizer([captions[i] for i in sorted(captions)], max_length=self.tokenizer.model_max_length,
                             padding="max_length", truncation=True, return_tensors="pt").input_ids
        self.input_ids = {i: ids[k] for k, i in enumerate(sorted(captions))}
        self.cached = cached
        self.unet.train()  # the example calls it once per epoch, not per step
        if cached:
            with torch.no_grad():
                self.latents = {i: self.vae.encode(px[None]).latent_dist.mean[0] * self.vae.config.scaling_factor
                                for i, px in pixels.items()}
                self.hidden = {i: self.text_encoder(ids[None], return_dict=False)[0][0]
                               for i, ids in self.input_ids.items()}

    def step(self, indices: list[int]) -> float:
        import torch
        import torch.nn.functional as F

        if self.cached:
            latents = torch.stack([self.latents[i] for i in indices])
            encoder_hidden_states = torch.stack([self.hidden[i] for i in indices])
        else:
            pixel_values = torch.stack([self.pixels[i] for i in indices])
            latents = self.vae.encode(pixel_values).latent_dist.sample()
            latents = latents * self.vae.config.scaling_factor
            input_ids = torch.stack([self.input_ids[i] for i in indices])
            encoder_hidden_states = self.text_encoder(input_ids, return_dict=False)[0]
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
        timesteps = timesteps.long()
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise  # prediction_type "epsilon"
        model_pred = self.unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.lora_layers, 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        return float(loss.detach())


# --- building the variants -----------------------------------------------------------------------------
def build_ours(args, world: Path, name: str):
    models, data = world / "models", world / "data"
    trainer = setup_ours(train_config(args, world / f"projects-{name}", models, data, f"bench-{name}",
                                      cache_text=name == "ours"))
    if name == "ours_uncached":
        uncache_latents(trainer, pixel_tensors(trainer))
    return trainer


def reference_inputs(ours, steps: int) -> dict:
    """What the reference needs from lorastudio's set-up: pixels, captions, the batches of steps 0..steps-1."""
    return {"pixels": pixel_tensors(ours), "captions": {i: it.caption for i, it in enumerate(ours.items)},
            "batches": [ours.micro_batches(s)[0] for s in range(steps)]}


def save_reference_inputs(inputs: dict, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({str(i): t.contiguous() for i, t in inputs["pixels"].items()}, str(folder / "pixels.safetensors"))
    (folder / "meta.json").write_text(json.dumps({"captions": inputs["captions"], "batches": inputs["batches"]}))


def load_reference_inputs(folder: Path) -> dict:
    from safetensors.torch import load_file

    meta = json.loads((folder / "meta.json").read_text())
    return {"pixels": {int(k): v for k, v in load_file(str(folder / "pixels.safetensors")).items()},
            "captions": {int(k): v for k, v in meta["captions"].items()}, "batches": meta["batches"]}


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def child(args) -> None:
    """One variant in a fresh process: its memory figures, as one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    world = Path(args.world)
    if args.child.startswith("ours"):
        run = build_ours(args, world, args.child).step
    else:
        inputs = load_reference_inputs(world / "reference-inputs")
        ref = Reference(args, inputs["pixels"], inputs["captions"], cached=args.child == "reference_cached")
        run = lambda s: ref.step(inputs["batches"][s])  # noqa: E731
    run(0)  # warm-up: optimizer state, lazy buffers
    rss0 = _status_kb("VmRSS")
    setup_peak = _status_kb("VmHWM")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        method = "VmHWM after /proc/self/clear_refs reset"
    except OSError:
        method = "ru_maxrss delta (clear_refs not writable)"
    max0 = _maxrss_kb()
    for s in range(1, args.mem_steps + 1):
        run(s)
    hwm = _status_kb("VmHWM") if method.startswith("VmHWM") else None
    peak = hwm if hwm is not None else _maxrss_kb()
    if hwm is None:
        rss0 = max0
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    print(json.dumps({"variant": args.child, "rss_after_setup_mb": mb(rss0), "step_peak_mb": mb(peak),
                      "step_peak_delta_mb": mb(max(0, peak - rss0)),
                      "setup_peak_mb": mb(setup_peak) if setup_peak is not None else None,
                      "method": method}))


def memory(args, world: Path, names) -> dict:
    """Run the memory children at once (timing is over, and RSS does not depend on the CPU share)."""
    procs = {}
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, f"--world={world}"] + [
            f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
            ("resolution", "batch", "rank", "lr", "images", "threads", "mem_steps")]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate()
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            out[name] = {"error": (stderr or stdout).strip().splitlines()[-1:]}
        else:
            out[name] = json.loads(lines[-1])
        print(f"memory {name}: {out[name]}", flush=True)
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, default=64, help="training side in pixels (tiny VAE: latents /2)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps of each variant per round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, same for every variant")
    ap.add_argument("--mem-steps", type=int, default=3, help="steps measured in each memory child")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant memory child processes")
    ap.add_argument("--memory-all", action="store_true",
                    help="memory children for all four variants (default: ours and reference; adds ~1 min)")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--world", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def build_runners(args, base: Path) -> dict:
    """Every variant set up on the same world; `runners[name](s)` trains its step s."""
    make_world(base, args.images, args.resolution)
    ours = build_ours(args, base, "ours")
    unc = build_ours(args, base, "ours_uncached")
    inputs = reference_inputs(ours, max(1 + args.rounds * args.steps, args.mem_steps + 1))
    refs = {name: Reference(args, inputs["pixels"], inputs["captions"], cached=name == "reference_cached")
            for name in ("reference", "reference_cached")}
    runners = {"ours": ours.step, "ours_uncached": unc.step,
               # the reference trains on exactly the indices of lorastudio's step s
               "reference": lambda s: refs["reference"].step(inputs["batches"][s]),
               "reference_cached": lambda s: refs["reference_cached"].step(inputs["batches"][s])}
    return {"runners": runners, "inputs": inputs, "ours": ours, "unc": unc, "refs": refs,
            "latent_shape": list(ours.latents.memory[0][0].shape)}


def timed_rounds(args, runners: dict) -> tuple[dict, dict, dict]:
    """Rounds of interleaved steps (order shuffled per round, seeded): CPU s per step, per-round
    CPU and wall means. CPU time of this process is the primary measure: on a shared machine the
    wall clock also counts the time other processes held the cores."""
    cpu_step: dict[str, list[float]] = {k: [] for k in VARIANTS}
    cpu_round: dict[str, list[float]] = {k: [] for k in VARIANTS}
    wall_round: dict[str, list[float]] = {k: [] for k in VARIANTS}
    next_step = {k: 1 for k in VARIANTS}
    order_rng = random.Random(0)
    for r in range(args.rounds):
        order = list(VARIANTS)
        order_rng.shuffle(order)
        for name in order:
            cpu_times = []
            w = time.perf_counter()
            for _ in range(args.steps):
                c = time.process_time()
                runners[name](next_step[name])
                cpu_times.append(time.process_time() - c)
                next_step[name] += 1
            wall_round[name].append((time.perf_counter() - w) / args.steps)
            cpu_step[name] += cpu_times
            cpu_round[name].append(statistics.fmean(cpu_times))
        print(f"round {r + 1}/{args.rounds} cpu s/step: " + ", ".join(f"{k} {cpu_round[k][-1]:.3f}" for k in VARIANTS)
              + " | wall s/step: " + ", ".join(f"{k} {wall_round[k][-1]:.3f}" for k in VARIANTS), flush=True)
    return cpu_step, cpu_round, wall_round


def ratio(a: str, b: str, per_round: dict) -> float:
    """Steps/s of a over steps/s of b, paired by round, median over rounds."""
    return round(statistics.median(tb / ta for ta, tb in zip(per_round[a], per_round[b])), 4)


def summary(args, timings: tuple[dict, dict, dict], mem: dict, *, te_grads: bool, latent_shape: list,
            setup_s: float, timing_s: float) -> dict:
    import torch

    cpu_step, cpu_round, wall_round = timings
    return {
        "bench": "train",
        "ratio_vs_reference": ratio("ours", "reference", cpu_round),
        "ratio_uncached_vs_reference": ratio("ours_uncached", "reference", cpu_round),
        "ratio_cached_vs_reference_cached": ratio("ours", "reference_cached", cpu_round),
        "time_measure": "process CPU time per step (time.process_time), paired per round, median of ratios",
        "steps_per_s_cpu": {k: round(1 / statistics.median(v), 3) for k, v in cpu_step.items()},
        "median_step_cpu_s": {k: round(statistics.median(v), 4) for k, v in cpu_step.items()},
        "wall_ratio_vs_reference": ratio("ours", "reference", wall_round),
        "wall_ratio_uncached_vs_reference": ratio("ours_uncached", "reference", wall_round),
        "wall_ratio_cached_vs_reference_cached": ratio("ours", "reference_cached", wall_round),
        "median_step_wall_s": {k: round(statistics.median(v), 4) for k, v in wall_round.items()},
        "ours_uncached_is_emulated": True,
        "cache_latents_switch": "TrainingConfig.cache_latents is never read by training/loop.py; latents are "
                                "always cached, so ours_uncached replaces LatentCache.batch in this file",
        "ours_uncached_text_encoder_got_grads": te_grads,
        "memory": mem,
        "memory_method": next((v.get("method") for v in mem.values() if "method" in v), None),
        "resolution": args.resolution,
        "latent_shape": latent_shape,
        "batch": args.batch,
        "rank": args.rank,
        "lr": args.lr,
        "images": args.images,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "threads": args.threads,
        "model": "tiny_sd1_pipeline(0): UNet blocks (32, 64), CLIP 2x32, VAE (32, 64)",
        "setup_s": round(setup_s, 1),
        "timing_phase_s": round(timing_s, 1),
        "torch": torch.__version__,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args)

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        base = Path(tmp)
        world = build_runners(args, base)
        runners = world.pop("runners")
        # Warm-up step 0 of every variant, then rounds of interleaved steps.
        first_loss = {name: runners[name](0) for name in VARIANTS}
        setup_s = time.perf_counter() - t0
        print(f"setup {setup_s:.1f}s; threads {torch.get_num_threads()}; step-0 losses "
              + ", ".join(f"{k} {v:.4f}" for k, v in first_loss.items()), flush=True)
        timings = timed_rounds(args, runners)
        te_grads = any(p.grad is not None for p in world["unc"].pipe.text_encoder.parameters())
        timing_s = time.perf_counter() - t0
        inputs, latent_shape = world["inputs"], world["latent_shape"]
        del world, runners  # the memory children measure alone
        mem = {}
        if not args.no_memory:
            save_reference_inputs(inputs, base / "reference-inputs")
            mem = memory(args, base, VARIANTS if args.memory_all else ("ours", "reference"))
    print(json.dumps(summary(args, timings, mem, te_grads=te_grads, latent_shape=latent_shape, setup_s=setup_s,
                             timing_s=timing_s)))


if __name__ == "__main__":
    main()
