"""Train a LoRA on a tiny single-file SD 1.x model, then use it everywhere users would."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lorastudio.core.errors import DatasetError, InvalidParameter, LorastudioError, NotFound

BASE = dict(trigger="DeltamonStamp", base="tiny", steps=4, resolution=[64], rank=4, lr=5e-3, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory, training_world):
    return training_world(tmp_path_factory.mktemp("train"), images=4, size=64)


def cfg(world, **kw):
    return {**BASE, "images": world / "data", "models_dir": world / "models", "projects_dir": world / "projects", **kw}


@pytest.fixture(scope="module")
def trained(world):
    from lorastudio.training.api import train

    events = []
    result = train(cfg(world, save_every=2, sample_every=2, sample_steps=2, project="main"), on_event=events.append)
    return result, events


def test_run_layout_metadata_and_events(trained):
    from safetensors import safe_open

    result, events = trained
    v = result.version_dir
    assert v.parts[-3:] == ("main", "versions", "v1")
    assert result.lora_path == v / "main.safetensors" and result.lora_path.exists()
    assert (v / "diffusers" / "pytorch_lora_weights.safetensors").exists()
    config = json.loads((v / "config.json").read_text())
    assert config["rank"] == 4 and config["alpha"] == 8.0 and config["trigger"] == "DeltamonStamp"
    assert config["optimizer"] == "adamw" and config["steps"] == 4  # defaults resolved and recorded
    assert (v / "logs" / "loss.png").exists()
    rows = [json.loads(line) for line in (v / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
    assert [e.step for e in events if e.kind == "progress"] == [1, 2, 3, 4]
    assert any(e.kind == "checkpoint" for e in events) and any(e.kind == "sample" for e in events)
    assert sorted(p.name for p in (v / "samples").iterdir())[:1] == ["step-000002-00.png"]
    with safe_open(str(result.lora_path), "pt") as f:
        md = f.metadata()
        keys = list(f.keys())
        alphas = {k: f.get_tensor(k) for k in keys if k.endswith(".alpha")}
    assert md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "8.0"
    assert md["modelspec.trigger_phrase"] == "DeltamonStamp" and md["ss_base_model_version"] == "sd_v1"
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert all(k.startswith("lora_unet_") for k in keys)
    assert alphas and all(float(a) == 8.0 for a in alphas.values())
    # The full key set kohya's train_network.py writes (below), nothing missing.
    assert KOHYA_SS_KEYS - set(md) == set()
    assert set(md) & set(KOHYA_SS_NOT_WRITTEN) == set()
    assert md["ss_steps"] == "4" and md["ss_max_train_steps"] == "4" and md["ss_seed"] == "3"
    assert md["ss_total_batch_size"] == "1" and md["ss_num_reg_images"] == "0"
    assert md["ss_new_sd_model_hash"] == hashlib.sha256((WORLD_BASE(result)).read_bytes()).hexdigest()
    _assert_sshs_hashes_as_kohya_computes_them(result.lora_path, md)


# Every ss_* key kohya-ss/sd-scripts train_network.py (commit 48d368f, Feb 2026) writes on a plain
# LoRA run: the fixed `metadata = {...}` block, the dataset keys of its non-config-file branch, the
# base-model keys and the per-save ss_steps / ss_epoch / ss_training_finished_at. Written by hand from
# reading that file, not from our export.
KOHYA_SS_KEYS = {
    "ss_session_id", "ss_training_started_at", "ss_output_name", "ss_learning_rate", "ss_text_encoder_lr",
    "ss_unet_lr", "ss_num_train_images", "ss_num_validation_images", "ss_num_reg_images", "ss_num_epochs",
    "ss_gradient_checkpointing", "ss_gradient_accumulation_steps", "ss_max_train_steps", "ss_lr_warmup_steps",
    "ss_lr_scheduler", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_dropout",
    "ss_mixed_precision", "ss_full_fp16", "ss_v2", "ss_base_model_version", "ss_clip_skip", "ss_max_token_length",
    "ss_cache_latents", "ss_seed", "ss_lowram", "ss_noise_offset", "ss_multires_noise_iterations",
    "ss_multires_noise_discount", "ss_adaptive_noise_scale", "ss_zero_terminal_snr", "ss_training_comment",
    "ss_optimizer", "ss_max_grad_norm", "ss_caption_dropout_rate", "ss_caption_dropout_every_n_epochs",
    "ss_caption_tag_dropout_rate", "ss_face_crop_aug_range", "ss_prior_loss_weight", "ss_min_snr_gamma",
    "ss_scale_weight_norms", "ss_ip_noise_gamma", "ss_debiased_estimation", "ss_noise_offset_random_strength",
    "ss_ip_noise_gamma_random_strength", "ss_loss_type", "ss_huber_schedule", "ss_huber_scale", "ss_huber_c",
    "ss_fp8_base", "ss_fp8_base_unet", "ss_validation_seed", "ss_validation_split", "ss_max_validation_steps",
    "ss_validate_every_n_epochs", "ss_validate_every_n_steps", "ss_resize_interpolation",
    # dataset keys (train_network.py's branch without a dataset config file)
    "ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug", "ss_flip_aug",
    "ss_random_crop", "ss_shuffle_caption", "ss_enable_bucket", "ss_bucket_no_upscale", "ss_keep_tokens",
    "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency",
    # base model, and the keys each save adds
    "ss_sd_model_name", "ss_sd_model_hash", "ss_new_sd_model_hash",
    "ss_training_finished_at", "ss_steps", "ss_epoch",
}
# Keys train_network.py writes that lorastudio leaves out, and why.
KOHYA_SS_NOT_WRITTEN = {
    "ss_num_batches_per_epoch": "the export is not told the batches per epoch (training/api.py would pass it)",
    "ss_min_bucket_reso": "kohya's min/max bucket side; lorastudio buckets by aspect range, not side bounds",
    "ss_max_bucket_reso": "as ss_min_bucket_reso",
    "ss_bucket_info": "the export is not told the bucket counts (training/api.py would pass them)",
    "ss_sd_scripts_commit_hash": "names an sd-scripts commit; lorastudio is not sd-scripts",
    "ss_datasets": "written by kohya only when trained from a dataset config file",
    "ss_vae_name": "written by kohya only with --vae; lorastudio trains with the checkpoint's VAE",
    "ss_vae_hash": "as ss_vae_name",
    "ss_new_vae_hash": "as ss_vae_name",
}


def WORLD_BASE(result) -> Path:
    # <world>/projects/main/versions/v1 -> <world>/models/Stable-diffusion/tiny.safetensors
    return result.version_dir.parents[3] / "models" / "Stable-diffusion" / "tiny.safetensors"


def _assert_sshs_hashes_as_kohya_computes_them(path: Path, md: dict) -> None:
    """kohya (library/train_util.py precalculate_safetensors_hashes): serialize the tensors with the
    ss_* metadata only; sshs_model_hash = sha256 of everything after the 8-byte length and the JSON
    header; sshs_legacy_hash = first 8 hex of sha256 of the 64 KiB at offset 1 MiB. Written here from
    that definition, without lorastudio's hashing code."""
    from safetensors.torch import load_file, save

    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    data_region = raw[8 + header_len:]
    # The tensor bytes do not depend on the metadata, so the final file's data region is the one
    # kohya hashes.
    assert md["sshs_model_hash"] == hashlib.sha256(data_region).hexdigest()
    ss_only = save(load_file(str(path)), {k: v for k, v in md.items() if k.startswith("ss_")})
    assert md["sshs_legacy_hash"] == hashlib.sha256(ss_only[0x100000:0x100000 + 0x10000]).hexdigest()[:8]


def test_lora_loads_in_diffusers_and_changes_output(trained, world, caplog):
    import logging

    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline

    result, _ = trained
    caplog.set_level(logging.WARNING)

    def render(pipe):
        pipe.set_progress_bar_config(disable=True)
        return np.asarray(pipe("DeltamonStamp", num_inference_steps=2, width=64, height=64,
                               generator=torch.Generator().manual_seed(0), output_type="np").images[0])

    plain = render(tiny_sd1_pipeline(0))
    for source in (str(result.lora_path), str(result.diffusers_lora_dir)):
        pipe = tiny_sd1_pipeline(0)
        caplog.clear()
        pipe.load_lora_weights(source, adapter_name="t")
        leftovers = [r.getMessage() for r in caplog.records
                     if "unexpected key" in r.getMessage().lower() or "not used" in r.getMessage().lower()]
        assert leftovers == []  # no key of the file left over
        assert any("lora_A" in n for n, _ in pipe.unet.named_parameters())
        assert not np.allclose(render(pipe), plain, atol=1e-5)


def test_lora_tag_in_prompt_applies_it(trained, world, tmp_path):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    result, _ = trained
    shutil.copy(result.lora_path, world / "models" / "Lora" / "deltamon.safetensors")
    engine = GenerationEngine(StudioSettings(models_dir=world / "models", outdir=tmp_path, device="cpu",
                                             include_bundled=False))
    p = dict(width=64, height=64, steps=2, seed=1, sampler="Euler")
    none = engine.txt2img({**p, "prompt": "DeltamonStamp"}, save=False).images[0]
    zero = engine.txt2img({**p, "prompt": "DeltamonStamp <lora:deltamon:0>"}, save=False).images[0]
    one = engine.txt2img({**p, "prompt": "DeltamonStamp <lora:deltamon:1>"}, save=False).images[0]
    assert np.array_equal(np.asarray(none.image), np.asarray(zero.image))
    assert not np.array_equal(np.asarray(none.image), np.asarray(one.image))
    from lorastudio.core.infotext import parse_infotext

    assert parse_infotext(one.infotext)["Lora hashes"].startswith("deltamon: ")
    with pytest.raises(NotFound) as e:
        engine.txt2img({**p, "prompt": "x <lora:deltamn:1>"}, save=False)
    assert "deltamon" in str(e.value)


def test_interrupted_and_resumed_run_equals_uninterrupted(world):
    """On CPU with a fixed seed, stop + --resume ends with the same LoRA, bit for bit."""
    from safetensors.torch import load_file

    from lorastudio.training.api import train
    from lorastudio.training.events import TrainingStopped

    full = train(cfg(world, project="full", save_every=2))
    steps_seen = []

    def stop_after_two():
        return len(steps_seen) >= 2

    with pytest.raises(TrainingStopped):
        train(cfg(world, project="cut", save_every=100), on_event=lambda e: e.kind == "progress" and steps_seen.append(e.step),
              should_stop=stop_after_two)
    ckpts = list((world / "projects" / "cut" / "versions" / "v1" / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-000002"]  # no .partial left behind
    resumed = train(cfg(world, project="cut", resume=True, save_every=100))
    a, b = load_file(str(full.lora_path)), load_file(str(resumed.lora_path))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_in_the_second_epoch_with_caption_dropout_and_tag_shuffle_is_bit_identical(world):
    """4 pictures, batch 2: 2 steps an epoch. Stopped after step 3 (inside epoch 2), resumed to step 6:
    the epoch order, each step's caption dropout and tag shuffle, and the noise must all continue."""
    from safetensors.torch import load_file

    from lorastudio.training.api import train
    from lorastudio.training.events import TrainingStopped

    aug = dict(steps=6, batch_size=2, caption_dropout=0.3, shuffle_tags=True, keep_tokens=1, save_every=100)
    full = train(cfg(world, project="aug-full", **aug))
    seen = []
    with pytest.raises(TrainingStopped):
        train(cfg(world, project="aug-cut", **aug), on_event=lambda e: e.kind == "progress" and seen.append(e.step),
              should_stop=lambda: len(seen) >= 3)
    ckpts = sorted(p.name for p in (world / "projects" / "aug-cut" / "versions" / "v1" / "checkpoints").iterdir())
    assert ckpts == ["step-000003"]
    resumed_steps = []
    resumed = train(cfg(world, project="aug-cut", resume=True, **aug),
                    on_event=lambda e: e.kind == "progress" and resumed_steps.append(e.step))
    assert resumed_steps == [4, 5, 6]
    a, b = load_file(str(full.lora_path)), load_file(str(resumed.lora_path))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (resumed.version_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (full.version_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if r["step"] > 3] == [r["loss"] for r in ref if r["step"] > 3]


@pytest.mark.parametrize("change, field", [
    (dict(rank=0), "rank"), (dict(lr=float("nan")), "lr"), (dict(steps=-1), "steps"),
    (dict(rnak=4), "rnak"),
])
def test_bad_settings_are_refused_before_training(world, change, field):
    from lorastudio.training.api import train

    with pytest.raises(InvalidParameter) as e:
        train(cfg(world, **change))
    assert e.value.field == field


def test_missing_base_and_bad_datasets(world, tmp_path):
    from lorastudio.training.api import train

    with pytest.raises(NotFound):
        train(cfg(world, base="nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError):
        train(cfg(world, images=empty, project="empty"))
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("hello")
    with pytest.raises(DatasetError):
        train(cfg(world, images=texts, project="texts"))
    assert not (world / "projects" / "empty").exists() and not (world / "projects" / "texts").exists()


def test_trigger_with_prompt_syntax_is_stored_as_typed(world):
    from lorastudio.training.api import train

    r = train(cfg(world, trigger="Delta(mon):[x]", steps=1, project=None))
    config = json.loads(r.config_path.read_text())
    assert config["trigger"] == "Delta(mon):[x]"
    caption = next((r.version_dir / "dataset").glob("*.txt")).read_text()
    assert caption.startswith(r"Delta\(mon\):\[x\]")
    assert "/" not in r.version_dir.parent.parent.name
