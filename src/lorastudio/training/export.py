"""Writing the finished LoRA in kohya format with kohya's metadata (the diffusers format: models/diffusers_lora.py).

The kohya file carries the `ss_*` keys kohya's train_network.py writes, the SAI model-spec keys
(`modelspec.*`) it adds, and `sshs_model_hash` / `sshs_legacy_hash` computed as kohya does
(over the file serialized with the ss_* metadata only), so A1111's Lora hashes and sites that
index LoRAs by hash recognise it.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lorastudio.core.atomic import atomic_write_bytes
from lorastudio.core.hashes import kohya_sshs_hashes


def kohya_metadata(*, config, family, output_name: str, rank: int, alpha: float, base_name: str,
                   base_sha256: str | None, started: float, finished: float, steps: int, epochs: int,
                   num_images: int, resolution: int, captions: list[str], mixed_precision: str,
                   num_reg_images: int = 0,
                   clip_skip: int = 1) -> dict[str, str]:
    tags = Counter(t.strip() for c in captions for t in c.split(",") if t.strip())
    md: dict[str, Any] = {
        "ss_session_id": str(abs(hash((output_name, started))) % 2**31),
        "ss_training_started_at": started,
        "ss_training_finished_at": finished,
        "ss_output_name": output_name,
        "ss_network_module": "networks.lora",
        "ss_network_dim": rank,
        "ss_network_alpha": alpha,
        "ss_network_dropout": config.dropout,
        "ss_base_model_version": family.base_model_version,
        "ss_v2": False,
        "ss_sd_model_name": base_name,
        "ss_sd_model_hash": (base_sha256 or "")[:8],
        "ss_new_sd_model_hash": base_sha256 or "",
        "ss_learning_rate": config.lr,
        "ss_unet_lr": config.lr,
        "ss_text_encoder_lr": config.te_lr if config.train_text_encoder else 0.0,
        "ss_optimizer": config.optimizer,
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": config.warmup,
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_steps": steps,
        "ss_max_train_steps": steps,
        "ss_epoch": epochs,
        "ss_num_epochs": epochs,
        "ss_num_train_images": num_images,
        "ss_num_reg_images": num_reg_images,
        "ss_prior_loss_weight": config.prior_loss_weight,
        "ss_batch_size_per_device": config.batch_size,
        "ss_gradient_accumulation_steps": config.grad_accum,
        "ss_gradient_checkpointing": bool(config.gradient_checkpointing),
        "ss_mixed_precision": mixed_precision,
        "ss_full_fp16": False,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_enable_bucket": True,
        "ss_bucket_no_upscale": True,
        "ss_seed": config.seed,
        "ss_clip_skip": clip_skip,
        "ss_cache_latents": True,  # always: no augmentation changes the pixels between steps
        "ss_noise_offset": config.noise_offset,
        "ss_min_snr_gamma": config.min_snr_gamma,
        "ss_caption_dropout_rate": config.caption_dropout,
        "ss_keep_tokens": config.keep_tokens,
        "ss_shuffle_caption": config.shuffle_tags,
        "ss_tag_frequency": json.dumps({output_name: dict(tags)}, ensure_ascii=False),
        "ss_dataset_dirs": json.dumps({output_name: {"n_repeats": config.repeats or 1, "img_count": num_images}}),
        "ss_training_comment": f"trigger: {config.trigger}",
        # kohya records LoCon's settings as strings in the network args
        "ss_network_args": json.dumps({"conv_dim": str(config.conv_dim), "conv_alpha": str(config.conv_alpha)}
                                      if config.conv_dim is not None else {}),
        "ss_total_batch_size": config.batch_size * config.grad_accum * config.num_processes,
        "ss_reg_dataset_dirs": json.dumps(
            {"reg": {"n_repeats": 1, "img_count": num_reg_images}} if num_reg_images else {}),
        "ss_num_validation_images": 0,
        # kohya writes every option of its own, at its default when unused; these name features
        # lorastudio does not have, at the value that means "off" in train_network.py.
        "ss_max_token_length": None,
        "ss_lowram": False,
        "ss_multires_noise_iterations": None,
        "ss_multires_noise_discount": 0.3,
        "ss_adaptive_noise_scale": None,
        "ss_zero_terminal_snr": False,
        "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": 0.0,
        "ss_face_crop_aug_range": None,
        "ss_scale_weight_norms": None,
        "ss_ip_noise_gamma": None,
        "ss_debiased_estimation": False,
        "ss_noise_offset_random_strength": False,
        "ss_ip_noise_gamma_random_strength": False,
        "ss_loss_type": "l2",
        "ss_huber_schedule": "snr",
        "ss_huber_scale": 1.0,
        "ss_huber_c": 0.1,
        "ss_fp8_base": False,
        "ss_fp8_base_unet": False,
        "ss_validation_seed": None,
        "ss_validation_split": 0.0,
        "ss_max_validation_steps": None,
        "ss_validate_every_n_epochs": None,
        "ss_validate_every_n_steps": None,
        "ss_resize_interpolation": None,
        "ss_color_aug": False,
        "ss_flip_aug": False,
        "ss_random_crop": False,
    }
    date = _dt.datetime.fromtimestamp(finished, tz=_dt.timezone.utc).isoformat(timespec="seconds")
    md.update({
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.title": output_name,
        "modelspec.date": date,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.trigger_phrase": config.trigger,
        "modelspec.encoder_layer": str(clip_skip),
        "modelspec.description": f"LoRA trained with lorastudio on {num_images} images; trigger word: {config.trigger}",
    })
    md.update(family.modelspec_fields())
    return {k: ("None" if v is None else str(v)) for k, v in md.items()}


def write_kohya_lora(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                     dtype: torch.dtype = torch.float16) -> Path:
    """Save atomically with kohya's sshs hashes added to the metadata."""
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().to("cpu", dtype if v.dim() else torch.float32).contiguous() for k, v in tensors.items()}
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    model_hash, legacy_hash = kohya_sshs_hashes(st_save(tensors, ss_only))
    full = dict(metadata) | {"sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}
    atomic_write_bytes(path, st_save(tensors, full))
    return path
