"""The same training code on SDXL and FLUX.1 (tiny single files in their real layouts)."""

import numpy as np
import pytest
import torch
from safetensors import safe_open


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lorastudio.testing.tiny_flux import save_flux_single_file, tiny_flux_pipeline
    from lorastudio.testing.tiny_sd import save_sdxl_single_file, tiny_sdxl_pipeline
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    root = tmp_path_factory.mktemp("families")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    save_sdxl_single_file(tiny_sdxl_pipeline(0), root / "models" / "Stable-diffusion" / "xl.safetensors")
    save_flux_single_file(tiny_flux_pipeline(0), root / "models" / "Stable-diffusion" / "flux.safetensors",
                          all_in_one=True)
    draw_sticker_dataset(root / "data", n=3, size=64)
    return root


def run(world, base, **kw):
    from lorastudio.training.api import train

    return train(dict(images=world / "data", trigger="DeltamonStamp", base=base, models_dir=world / "models",
                      projects_dir=world / "projects", project=base, steps=2, resolution=[64], rank=4, lr=5e-3,
                      **kw))


def test_sdxl_lora_has_kohya_sdxl_names_and_loads_in_diffusers(world):
    from lorastudio.testing.tiny_sd import tiny_sdxl_pipeline

    r = run(world, "xl")
    with safe_open(str(r.lora_path), "pt") as f:
        keys, md = list(f.keys()), f.metadata()
    assert md["ss_base_model_version"] == "sdxl_base_v1-0"
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    # kohya's SDXL trainer names the UNet with the original (SGM) block names.
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    assert not any("down_blocks" in k for k in keys)

    def render(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("DeltamonStamp", num_inference_steps=2, width=64, height=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    plain = render(tiny_sdxl_pipeline(0))
    pipe = tiny_sdxl_pipeline(0)
    pipe.load_lora_weights(str(r.lora_path))
    assert not np.allclose(render(pipe), plain, atol=1e-5)


def test_flux_lora_has_bfl_names_and_the_diffusers_copy_loads(world):
    from lorastudio.testing.tiny_flux import tiny_flux_pipeline

    r = run(world, "flux", sample_every=2, sample_steps=2)
    with safe_open(str(r.lora_path), "pt") as f:
        keys, md = list(f.keys()), f.metadata()
    assert md["ss_base_model_version"] == "flux1" and md["modelspec.trigger_phrase"] == "DeltamonStamp"
    assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv") for k in keys)
    assert any(k.startswith("lora_unet_single_blocks_0_linear1") for k in keys)
    pipe = tiny_flux_pipeline(0)
    pipe.load_lora_weights(str(r.diffusers_lora_dir))
    assert sum("lora_A" in n for n, _ in pipe.transformer.named_parameters()) > 0
    assert (r.version_dir / "samples" / "step-000002-00.png").exists()
