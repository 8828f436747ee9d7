#!/usr/bin/env python
"""The GPU memory a LoRA run needs on the paths for 12 GB cards, COMPUTED from the models' sizes.

Nothing here runs on a GPU: every model is built on torch's meta device (shapes only, no memory),
its parameters are counted, and the memory of each term is parameters x bytes:

    base      the frozen denoiser's weights in bf16 (2 bytes), or 8-bit (1 byte) where stated
    lora      the LoRA weights (fp32, 4 bytes) on kohya's default layer set at --rank
    grads     their gradients (fp32, 4 bytes)
    adamw     AdamW's two moments (fp32, 8 bytes per LoRA weight); adamw8bit: 2 bytes
    encoders  the text encoders and the VAE: 0 on the device when their outputs are cached and they
              are moved off it (lorastudio's default when the text encoder is not trained)

Activations are not computed here (they depend on resolution, batch and the attention kernel; with
gradient checkpointing only one block's activations are alive during backward). "left" is 12 GiB
less the computed terms: what remains for activations and the CUDA context (~0.3-0.5 GiB).
Prints a Markdown table (docs/benchmarks.md) and, last, one JSON object.

    .venv/bin/python bench/vram_table.py [--rank 16]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

GIB = 1024**3
CARD = 12 * GIB


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_params(module, rule, rank: int) -> int:
    from lorastudio.training.network import kohya_rule_targets

    targets = kohya_rule_targets(module, rule, conv=False)
    mods = dict(module.named_modules())
    total = 0
    for name in targets.names:
        m = mods[name]
        fan_in = m.in_features if hasattr(m, "in_features") else m.in_channels
        fan_out = m.out_features if hasattr(m, "out_features") else m.out_channels
        total += rank * (fan_in + fan_out)
    return total


def flux_lora_params(module, rank: int) -> int:
    from lorastudio.models.families.flux import TRANSFORMER_LORA_TARGETS

    total = 0
    for name, m in module.named_modules():
        if any(name == t or name.endswith("." + t) for t in TRANSFORMER_LORA_TARGETS) and hasattr(m, "in_features"):
            total += rank * (m.in_features + m.out_features)
    return total


def models():
    import torch
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    from lorastudio.models.families.sd1 import SD1Family
    from lorastudio.models.families.sdxl import SDXLFamily

    with torch.device("meta"):
        sd15 = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        sdxl = UNet2DConditionModel(
            sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        flux = FluxTransformer2DModel(guidance_embeds=True)
    return {"SD 1.5": (sd15, SD1Family().kohya_lora_rules()["unet"]),
            "SDXL": (sdxl, SDXLFamily().kohya_lora_rules()["unet"]), "FLUX.1-dev": (flux, None)}


def rows(rank: int) -> list[dict]:
    out = []
    for name, (model, rule) in models().items():
        base = count(model)
        lora = lora_params(model, rule, rank) if rule else flux_lora_params(model, rank)
        for optimizer, opt_bytes in (("adamw", 8), ("adamw8bit", 2)):
            for base_bits in ((16, 8) if name == "FLUX.1-dev" else (16,)):
                terms = {"base": base * base_bits / 8, "lora": lora * 4, "grads": lora * 4,
                         "optimizer_state": lora * opt_bytes, "encoders": 0}
                used = sum(terms.values())
                out.append({"model": name, "base_params": base, "lora_params": lora, "optimizer": optimizer,
                            "base_precision": "bf16" if base_bits == 16 else "8-bit",
                            **{k: round(v / GIB, 2) for k, v in terms.items()},
                            "total": round(used / GIB, 2), "left_of_12": round((CARD - used) / GIB, 2)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    table = rows(args.rank)
    print(f"| model | denoiser params | LoRA params (rank {args.rank}) | base | optimizer | base GiB | LoRA+grads GiB "
          f"| optimizer GiB | encoders on device | computed total GiB | left of 12 GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['model']} | {r['base_params'] / 1e9:.2f} B | {r['lora_params'] / 1e6:.1f} M "
              f"| {r['base_precision']} | {r['optimizer']} | {r['base']:.2f} | {r['lora'] + r['grads']:.2f} "
              f"| {r['optimizer_state']:.2f} | 0 (cached, moved off) | {r['total']:.2f} | {r['left_of_12']:.2f} |")
    print(json.dumps({"bench": "vram_table", "computed_not_measured": True, "rank": args.rank, "rows": table}))


if __name__ == "__main__":
    main()
