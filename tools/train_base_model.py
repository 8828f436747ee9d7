#!/usr/bin/env python
"""Train lorastudio's bundled SD-1.x-architecture base model ("lorastudio-shapes-v1") on CPU.

Reproducible from ``--seed``: the pictures are drawn procedurally by
``lorastudio.testing.shapes`` (10 colours x 4 shapes x 3 sizes x random positions on
a background of another colour), captioned like ``"a red circle on a blue background"``
(plus shorter forms such as ``"red circle"``).

Architecture: SD 1.x classes from diffusers / transformers
  * CLIP text encoder (CLIPTextModel) with the real CLIP BPE vocabulary (49408 tokens,
    77 positions), small width,
  * AutoencoderKL, 32x32 RGB <-> 8x8x4 latents (x4 downsampling), scaling_factor
    measured from the latents,
  * UNet2DConditionModel with the SD1 block pattern (CrossAttnDown, CrossAttnDown, Down /
    Up, CrossAttnUp, CrossAttnUp), conv proj_in/proj_out (use_linear_projection=False),
  * DDPM epsilon-prediction training with the SD1 scheduler (scaled_linear 0.00085-0.012,
    1000 steps).

Phases: (1) VAE on single-shape pictures + busier multi-shape scenes, then frozen;
(2) the training set is encoded once to latent mean/std; (3) UNet + text encoder
jointly with AdamW (warm-up + cosine), min-SNR-5 loss weighting, EMA, 10 % empty
captions for classifier-free guidance.  Output: a diffusers StableDiffusionPipeline
folder (``--out``), converted to the single-file checkpoint when the converter exists.

    HF_HUB_OFFLINE=1 nice -n 5 .venv/bin/python tools/train_base_model.py --out build/base
    HF_HUB_OFFLINE=1 .venv/bin/python tools/train_base_model.py --quick --out build/base-quick
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lorastudio.testing import shapes  # noqa: E402

TOKENIZER_DIR = ROOT / "src" / "lorastudio" / "models" / "bundled" / "tokenizers" / "clip"

# The standard SD 1.x noise schedule.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)


def text_encoder_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=64,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def vae_kwargs(size: int, groups: int = 4, channels: tuple[int, ...] = (16, 32, 64), layers: int = 1) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=tuple(channels),
        layers_per_block=layers,
        latent_channels=4,
        # few groups: with one channel per group GroupNorm would strip each channel's mean,
        # i.e. the flat colours this VAE must carry
        norm_num_groups=groups,
        sample_size=size,
    )


def unet_kwargs(size: int, cross_dim: int, groups: int = 8) -> dict:
    return dict(
        sample_size=size // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        attention_head_dim=2,  # SD1 naming: the number of heads
        cross_attention_dim=cross_dim,
        norm_num_groups=groups,
        use_linear_projection=False,
    )


def make_tokenizer():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), pad_token="<|endoftext|>")
    tok.model_max_length = 77
    return tok


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_tensor(imgs) -> torch.Tensor:
    a = np.stack([np.asarray(i, dtype=np.float32) for i in imgs]) / 127.5 - 1.0
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def lr_at(step: int, total: int, base: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


# ------------------------------------------------------------------ phase 1: VAE


def vae_cache_dir(args) -> Path:
    keys = ("seed", "size", "vae_images", "vae_steps", "vae_batch", "vae_lr", "vae_kl")
    blob = json.dumps({k: getattr(args, k) for k in keys} | {"arch": vae_kwargs(args.size, args.vae_groups, args.vae_channels, args.vae_layers)}, sort_keys=True)
    return Path(args.cache) / ("vae-" + hashlib.sha256(blob.encode()).hexdigest()[:12])


def train_vae(args, rng: np.random.Generator):
    from diffusers import AutoencoderKL

    cache = vae_cache_dir(args) if args.cache else None
    if cache is not None and (cache / "psnr.json").exists():
        # same seed + same VAE arguments -> bit-identical VAE; reuse it
        vae = AutoencoderKL.from_pretrained(cache).eval().requires_grad_(False)
        psnr = json.loads((cache / "psnr.json").read_text())["psnr"]
        log(f"VAE reused from {cache} (PSNR {psnr:.1f} dB)")
        return vae, psnr
    t0 = time.time()
    n = args.vae_images
    imgs = []
    for i in range(n):
        if i % 2 == 0:
            imgs.append(shapes.render(shapes.sample_spec(rng), args.size))
        else:
            imgs.append(shapes.render_scene(rng, args.size))
    data = to_tensor(imgs)
    log(f"VAE data: {n} pictures rendered in {time.time() - t0:.1f}s")

    vae = AutoencoderKL(**vae_kwargs(args.size, args.vae_groups, args.vae_channels, args.vae_layers))
    log(f"VAE: {n_params(vae) / 1e6:.3f} M parameters")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    t1 = time.time()
    for step in range(args.vae_steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args.vae_steps, args.vae_lr, warmup=max(1, min(50, args.vae_steps // 10)))
        idx = torch.randint(0, n, (args.vae_batch,), generator=g)
        x = data[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = rec_loss + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.vae_steps - 1:
            log(f"vae step {step:5d} rec {rec_loss.item():.4f} kl {kl.item():.3f} ({time.time() - t1:.0f}s)")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        x = data[:256]
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        psnr = 10 * math.log10(4.0 / F.mse_loss(rec, x).item())
    log(f"VAE done in {time.time() - t0:.0f}s, reconstruction PSNR {psnr:.1f} dB")
    if cache is not None:
        vae.save_pretrained(cache)
        (cache / "psnr.json").write_text(json.dumps({"psnr": psnr, "seconds": time.time() - t0}))
    return vae, psnr


# ------------------------------------------------------------ phase 2: latents


def encode_dataset(args, vae, rng: np.random.Generator):
    t0 = time.time()
    specs = [shapes.sample_spec(rng) for _ in range(args.images)]
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(specs), 256):
            x = to_tensor([shapes.render(s, args.size) for s in specs[i : i + 256]])
            post = vae.encode(x).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    mean, std = torch.cat(means), torch.cat(stds)
    g = torch.Generator().manual_seed(args.seed + 2)
    sample = mean + std * torch.randn(mean.shape, generator=g)
    scaling = float(1.0 / sample.std())
    vae.register_to_config(scaling_factor=round(scaling, 5))
    log(f"encoded {len(specs)} pictures in {time.time() - t0:.0f}s; latent std {sample.std():.4f} -> scaling_factor {scaling:.5f}")
    return specs, mean, std


# ------------------------------------------------------- phase 3: UNet + text


class CaptionCache:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        out = []
        for c in captions:
            ids = self.cache.get(c)
            if ids is None:
                ids = self.tok(c, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]
                self.cache[c] = ids
            out.append(ids)
        return torch.stack(out)


@torch.no_grad()
def ema_update(ema, model, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)


def train_unet(args, vae, specs, lat_mean, lat_std, rng: np.random.Generator):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = make_tokenizer()
    text_encoder = CLIPTextModel(text_encoder_config())
    unet = UNet2DConditionModel(**unet_kwargs(args.size, text_encoder.config.hidden_size, args.unet_groups))
    log(f"text encoder: {n_params(text_encoder) / 1e6:.3f} M parameters; UNet: {n_params(unet) / 1e6:.3f} M parameters")
    sched = DDPMScheduler(**SCHEDULER_CONFIG)
    alphas_cumprod = sched.alphas_cumprod.float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    loss_w = torch.clamp(snr, max=args.min_snr_gamma) / snr  # min-SNR weighting for epsilon targets
    scaling = vae.config.scaling_factor

    emb = [p for n, p in text_encoder.named_parameters() if "token_embedding" in n]
    rest_te = [p for n, p in text_encoder.named_parameters() if "token_embedding" not in n]
    opt = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "weight_decay": 0.01},
            {"params": rest_te, "weight_decay": 0.01},
            {"params": emb, "weight_decay": 0.0},  # unused vocabulary rows stay untouched
        ],
        lr=args.lr,
        betas=(0.9, 0.99),
    )
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_te = copy.deepcopy(text_encoder).requires_grad_(False)
    captions = CaptionCache(tokenizer)
    g = torch.Generator().manual_seed(args.seed + 3)
    unet.train()
    text_encoder.train()
    n = len(specs)
    t0 = time.time()
    running = 0.0
    for step in range(args.steps):
        lr = lr_at(step, args.steps, args.lr, warmup=args.warmup)
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = rng.integers(0, n, size=args.batch)
        caps = [shapes.caption_for(specs[i], rng) if rng.random() >= args.uncond_prob else "" for i in idx]
        ids = captions(caps)
        ti = torch.from_numpy(idx)
        z0 = (lat_mean[ti] + lat_std[ti] * torch.randn(lat_mean[ti].shape, generator=g)) * scaling
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        zt = sched.add_noise(z0, noise, t)
        hidden = text_encoder(ids)[0]
        pred = unet(zt, t, hidden).sample
        per = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per * loss_w[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_te, text_encoder, decay)
        running = 0.98 * running + 0.02 * per.mean().item() if step else per.mean().item()
        if step % 50 == 0 or step == args.steps - 1:
            el = time.time() - t0
            log(f"step {step:5d}/{args.steps} loss {running:.4f} lr {lr:.2e} {el:.0f}s ({el / (step + 1):.2f} s/step)")
    log(f"UNet + text encoder trained in {time.time() - t0:.0f}s")
    return ema_unet.eval(), ema_te.eval(), tokenizer, sched


def build_pipeline(unet, vae, text_encoder, tokenizer):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDPMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def export_single_file(pipe, path: Path, dtype: str = "float16") -> None:
    """Write the SD 1.x single-file (A1111 key layout) checkpoint + a config folder beside it."""
    from lorastudio.testing.tiny_sd import save_sd1_single_file

    pipe = copy.deepcopy(pipe).to(torch.float16 if dtype == "float16" else torch.float32)
    if dtype == "mixed":
        # float32 everywhere except the 49408-row token embedding (fp16 there costs nothing
        # measurable; fp16 UNet/VAE weights cost a few benchmark points; all-fp32 is > 25 MB)
        emb = pipe.text_encoder.get_input_embeddings()
        emb.weight.data = emb.weight.data.half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_sd1_single_file(pipe, path)
    os.chmod(path, 0o644)
    # diffusers configs (small) beside it, for tools that want them instead of shape inference
    cfg = path.parent / "configs"
    for name in ("unet", "vae", "scheduler"):
        (cfg / name).mkdir(parents=True, exist_ok=True)
        obj = getattr(pipe, name)
        data = json.loads(obj.to_json_string())
        data.pop("_name_or_path", None)  # a path on the machine that trained it
        (cfg / name / ("scheduler_config.json" if name == "scheduler" else "config.json")).write_text(
            json.dumps(data, indent=2, sort_keys=True) + "\n")
    (cfg / "text_encoder").mkdir(parents=True, exist_ok=True)
    te_cfg = pipe.text_encoder.config.to_dict()
    te_cfg.pop("torch_dtype", None)
    te_cfg.pop("dtype", None)
    te_cfg.pop("_name_or_path", None)
    (cfg / "text_encoder" / "config.json").write_text(json.dumps(te_cfg, indent=2, sort_keys=True))
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {dtype}) and {cfg}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "build" / "base"), help="diffusers folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="~1 minute smoke run (tiny data, few steps)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--size", type=int, default=32, help="picture side in pixels (latents are size/4)")
    p.add_argument("--vae-images", type=int, default=6000)
    p.add_argument("--vae-steps", type=int, default=4000)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-kl", type=float, default=1e-4)
    p.add_argument("--vae-groups", type=int, default=4, help="VAE GroupNorm groups")
    p.add_argument("--vae-channels", type=lambda v: tuple(int(x) for x in v.split(",")), default=(16, 32, 64),
                   help="VAE block widths, comma-separated (3 blocks -> 4x downsampling)")
    p.add_argument("--vae-layers", type=int, default=1, help="VAE resnet layers per block")
    p.add_argument("--unet-groups", type=int, default=8, help="UNet GroupNorm groups")
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--min-snr-gamma", type=float, default=5.0)
    p.add_argument("--uncond-prob", type=float, default=0.1)
    p.add_argument("--cache", default=str(ROOT / "build" / "base-cache"), help="reuse an identical earlier VAE ('' = off)")
    p.add_argument("--stop-after-vae", action="store_true")
    p.add_argument("--single-file", default=None, help="also write the SD1 single-file checkpoint here")
    p.add_argument("--dtype", default="float16", choices=["mixed", "float16", "float32"],
                   help="single-file tensor dtype (mixed: fp32, token embedding fp16)")
    p.add_argument("--export-from", default=None, help="skip training: convert this diffusers folder to --single-file")
    args = p.parse_args(argv)
    if args.quick:
        args.vae_images, args.vae_steps, args.images, args.steps, args.warmup = 256, 30, 512, 30, 5
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.export_from:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.export_from, safety_checker=None, requires_safety_checker=False)
        export_single_file(pipe, Path(args.single_file), args.dtype)
        return 0
    t_all = time.time()
    log(f"args: {vars(args)}")
    # one independent random stream per phase, all derived from --seed
    vae, psnr = train_vae(args, np.random.default_rng([args.seed, 1]))
    if args.stop_after_vae:
        return 0
    specs, lat_mean, lat_std = encode_dataset(args, vae, np.random.default_rng([args.seed, 2]))
    unet, text_encoder, tokenizer, _ = train_unet(args, vae, specs, lat_mean, lat_std, np.random.default_rng([args.seed, 3]))
    pipe = build_pipeline(unet, vae, text_encoder, tokenizer)
    out = Path(args.out)
    pipe.save_pretrained(out, safe_serialization=True)
    total = time.time() - t_all
    info = {
        "seed": args.seed,
        "quick": args.quick,
        "size": args.size,
        "params": {"unet": n_params(unet), "vae": n_params(vae), "text_encoder": n_params(text_encoder)},
        "vae_psnr_db": round(psnr, 2),
        "scaling_factor": vae.config.scaling_factor,
        "train_seconds": round(total, 1),
        "args": vars(args),
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2))
    if args.single_file:
        export_single_file(pipe, Path(args.single_file), args.dtype)
    log(f"done in {total:.0f}s -> {out}")
    print(json.dumps({k: info[k] for k in ("params", "vae_psnr_db", "scaling_factor", "train_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
