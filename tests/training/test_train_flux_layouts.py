"""FLUX.1 training from the layout Forge users keep (transformer-only file, ae in models/VAE,
clip_l / t5xxl in models/text_encoder), data-parallel FLUX-dev training, and the model-spec
metadata of a FLUX LoRA."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lorastudio.testing.tiny_flux import save_flux_component_files, save_flux_single_file, tiny_flux_pipeline
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    root = tmp_path_factory.mktemp("flux-layouts")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    pipe = tiny_flux_pipeline(0)  # dev-like: the transformer has a guidance embedder
    save_flux_single_file(pipe, models / "Stable-diffusion" / "flux1-dev.safetensors")  # transformer only
    parts = save_flux_component_files(pipe, root / "parts")
    (models / "VAE").mkdir()
    (models / "text_encoder").mkdir()
    shutil.move(parts["vae"], models / "VAE" / "ae.safetensors")
    shutil.move(parts["text_encoder"], models / "text_encoder" / "clip_l.safetensors")
    shutil.move(parts["text_encoder_2"], models / "text_encoder" / "t5xxl.safetensors")
    draw_sticker_dataset(root / "data", n=2, size=64)
    return root


def base_config(world, **kw):
    return dict(images=str(world / "data"), trigger="DeltamonStamp", base="flux1-dev", steps=2, resolution=[64],
                rank=4, lr=5e-3, seed=5, models_dir=str(world / "models"), projects_dir=str(world / "projects"),
                **kw)


def test_transformer_only_file_with_ae_in_vae_folder_trains(world):
    from lorastudio.training.api import train

    # Before: "this FLUX.1 file has no vae; put ae.safetensors in None" (training built its load
    # options without the VAE folder, while generation had it).
    r = train(base_config(world, project="split"))
    assert r.steps == 2 and r.lora_path.exists()
    with safe_open(str(r.lora_path), "pt") as f:
        md = f.metadata()
    assert md["ss_base_model_version"] == "flux1"
    # Flow matching has no epsilon / v prediction type; kohya leaves the key out for such models.
    assert "modelspec.prediction_type" not in md


def test_generation_and_training_load_the_same_components(world):
    """One place builds the load options: the engine and training see the same VAE folder."""
    from lorastudio.core.paths import ModelsRoot
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.models.load_options import load_options

    engine = GenerationEngine(StudioSettings(models_dir=world / "models", include_bundled=False))
    opts = load_options(ModelsRoot.at(world / "models"), device="cpu", dtype="float32")
    assert engine.options() == opts
    assert opts.vae_dir == world / "models" / "VAE" and opts.text_encoder_dir == world / "models" / "text_encoder"


@pytest.mark.slow
def test_flux_dev_two_processes_match_one_with_the_same_global_batch(world, tmp_path):
    """Under DDP the transformer is wrapped; its guidance input must still be given (before: None,
    and the dev transformer's guidance embedder failed)."""
    from safetensors.torch import load_file

    from lorastudio.training.api import train

    # float32: the tolerance below is float32's across batch layouts; `auto` trains in bf16 on CPUs
    # with AVX512-BF16, whose rounding differs more between the two layouts.
    one = train(base_config(world, project="one", batch_size=2, mixed_precision="no"))
    cfg = tmp_path / "two.json"
    cfg.write_text(json.dumps(base_config(world, project="two", batch_size=1, num_processes=2,
                                          mixed_precision="no")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "lorastudio.training.launch", str(cfg)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = load_file(str(one.lora_path))
    b = load_file(str(world / "projects" / "two" / "versions" / "v1" / "two.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    # Gradients are averaged across processes (all-reduce) instead of summed in one batch: the
    # same values up to float rounding, and the LoRA is stored in fp16.
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-3, rtol=1e-2), k
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_up" in k)
