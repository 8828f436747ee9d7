"""LoRA on the layers kohya's networks.lora trains by default, with kohya's names, loaded back.

The expected layer sets are written here from kohya sd-scripts' stated rule (networks/lora.py:
every Linear and 1x1 Conv2d inside modules of class Transformer2DModel; with conv_dim, also
every Linear / Conv2d inside ResnetBlock2D, Downsample2D and Upsample2D, the 3x3 ones at
conv_dim), without lorastudio's resolver.
"""

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

BASE = dict(trigger="DeltamonStamp", base="tiny", steps=2, resolution=[32], rank=4, alpha=2.0, lr=5e-3, seed=3)


def kohya_layers(unet, *, conv: bool) -> tuple[set[str], set[str]]:
    """(layers at the network rank, 3x3 convs at conv_dim) by kohya's rule, computed independently."""
    plain, convs = set(), set()
    for name, block in unet.named_modules():
        cls = type(block).__name__
        in_transformer = cls == "Transformer2DModel"
        in_conv_block = conv and cls in ("ResnetBlock2D", "Downsample2D", "Upsample2D")
        if not (in_transformer or in_conv_block):
            continue
        for child_name, child in block.named_modules():
            path = f"{name}.{child_name}"
            if type(child).__name__ == "Linear":
                plain.add(path)
            elif type(child).__name__ == "Conv2d":
                if child.kernel_size == (1, 1):
                    plain.add(path)
                elif in_conv_block:
                    convs.add(path)
    return plain, convs


def _targets(unet, **cfg):
    from lorastudio.models.families.sd1 import SD1Family
    from lorastudio.training.network import LoraTargets, lora_targets

    config = SimpleNamespace(**{"lora_modules": "kohya", "conv_dim": None, **cfg})
    spec = lora_targets(SD1Family(), {"unet": unet}, config)["unet"]
    return spec if isinstance(spec, LoraTargets) else spec


def test_full_size_sd15_unet_gets_kohyas_192_layers_and_attention_only_keeps_128():
    from diffusers import UNet2DConditionModel

    # SD 1.5's UNet shape (diffusers' defaults with its cross-attention width), on the meta device:
    # no weights are allocated.
    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)
    plain, convs = kohya_layers(unet, conv=False)
    assert len(plain) == 192 and not convs  # kohya's count for SD 1.5 (issue 16)
    spec = _targets(unet)
    assert set(spec.names) == plain and spec.convs == []

    plain_c, convs_c = kohya_layers(unet, conv=True)
    spec_c = _targets(unet, conv_dim=8)
    assert set(spec_c.names) == plain_c and set(spec_c.convs) == convs_c
    assert len(convs_c) > 0 and len(plain_c) > 192  # time_emb_proj / conv_shortcut join at the rank

    # kohya's text encoder set on SD 1.5's CLIP ViT-L/14: 12 layers x (q, k, v, out, fc1, fc2) = 72, the count
    # kohya's train_network.py prints ("create LoRA for Text Encoder: 72 modules")
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorastudio.models.families.sd1 import SD1Family
    from lorastudio.training.network import lora_targets

    with torch.device("meta"):
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12))
    te_spec = lora_targets(SD1Family(), {"text_encoder": te}, SimpleNamespace(lora_modules="kohya", conv_dim=None))
    te_names = te_spec["text_encoder"].names
    assert len(te_names) == 72 and sum(n.endswith("mlp.fc1") for n in te_names) == 12

    attention = _targets(unet, lora_modules="attention")
    matched = {n for n, m in unet.named_modules()
               if type(m).__name__ == "Linear" and n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")
               or n.endswith("to_out.0")}
    assert len(matched) == 128
    assert sorted(attention) == ["to_k", "to_out.0", "to_q", "to_v"]


def test_conv_settings_are_checked():
    from lorastudio.core.errors import InvalidParameter
    from lorastudio.training.config import training_config

    ok = dict(images="x", trigger="t", base="b")
    with pytest.raises(InvalidParameter, match="conv_dim"):
        training_config({**ok, "lora_modules": "attention", "conv_dim": 4})
    with pytest.raises(InvalidParameter, match="conv_dim"):
        training_config({**ok, "conv_alpha": 2})
    with pytest.raises(InvalidParameter, match="lora_modules"):
        training_config({**ok, "lora_modules": "everything"})


@pytest.fixture(scope="module")
def world(tmp_path_factory, training_world):
    return training_world(tmp_path_factory.mktemp("kohya_set"), images=2, size=32)


@pytest.fixture(scope="module")
def locon(world):
    from lorastudio.training.api import train

    events = []
    result = train({**BASE, "images": world / "data", "models_dir": world / "models",
                    "projects_dir": world / "projects", "conv_dim": 2, "conv_alpha": 1.5, "sample_steps": 1,
                    "install_lora": False}, on_event=events.append)
    return result, events


def test_locon_export_has_kohyas_names_ranks_and_alphas(locon):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline

    result, events = locon
    # The run's one preview (the final one) is drawn after the LoRA is saved, at the training resolution.
    from PIL import Image

    assert len(result.samples) == 1 and result.samples[0].name.startswith("step-000002")
    with Image.open(result.samples[0]) as im:
        assert im.size == (32, 32)
    kinds = [(e.kind, e.message) for e in events]
    saved = next(i for i, (k, m) in enumerate(kinds) if k == "log" and m.startswith("saved "))
    assert saved < next(i for i, (k, _) in enumerate(kinds) if k == "sample")
    plain, convs = kohya_layers(tiny_sd1_pipeline(0).unet, conv=True)
    sd = load_file(str(result.lora_path))
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in sd}
    expected = {"lora_unet_" + p.replace(".", "_") for p in plain | convs}
    assert names == expected
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj" in names
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in names
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in names
    for p in convs:
        n = "lora_unet_" + p.replace(".", "_")
        assert sd[f"{n}.lora_down.weight"].shape[0] == 2 and sd[f"{n}.lora_down.weight"].shape[2:] == (3, 3)
        assert float(sd[f"{n}.alpha"]) == 1.5
    for p in plain:
        n = "lora_unet_" + p.replace(".", "_")
        assert sd[f"{n}.lora_down.weight"].shape[0] == 4 and float(sd[f"{n}.alpha"]) == 2.0
    with safe_open(str(result.lora_path), "pt") as f:
        md = f.metadata()
    assert md["ss_network_args"] == '{"conv_dim": "2", "conv_alpha": "1.5"}'


@pytest.mark.pixels
def test_locon_loads_in_diffusers_both_formats_and_through_lorastudio_alike(locon, world, tmp_path):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.testing.pixels import assert_same_picture
    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline

    result, _ = locon

    def render(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("DeltamonStamp", num_inference_steps=2, width=32, height=32, guidance_scale=7.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    plain = render(tiny_sd1_pipeline(0))
    shown = {}
    for source in (str(result.lora_path), str(result.diffusers_lora_dir)):
        pipe = tiny_sd1_pipeline(0)
        pipe.load_lora_weights(source, adapter_name="t")
        # every trained layer, 3x3 convs included, carries the adapter
        assert any("lora_A" in n for n, _ in pipe.unet.down_blocks[0].resnets[0].conv1.named_parameters())
        assert any("lora_A" in n for n, _ in
                   pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].ff.net[2].named_parameters())
        shown[source] = render(pipe)
    kohya, diffusers_dir = shown.values()
    assert not np.allclose(kohya, plain, atol=1e-4)  # the LoRA changes the picture
    # The same weights through two loaders: different kernels and summation orders, so a stated tolerance.
    assert_same_picture(kohya, diffusers_dir)

    shutil.copy(result.lora_path, world / "models" / "Lora" / "locon.safetensors")
    engine = GenerationEngine(StudioSettings(models_dir=world / "models", outdir=tmp_path, device="cpu",
                                             include_bundled=False))
    p = dict(width=32, height=32, steps=2, seed=1, sampler="Euler")
    none = engine.txt2img({**p, "prompt": "DeltamonStamp"}, save=False).images[0]
    one = engine.txt2img({**p, "prompt": "DeltamonStamp <lora:locon:1>"}, save=False).images[0]
    assert not np.array_equal(np.asarray(none.image), np.asarray(one.image))
    # Our loader against diffusers' load_lora_weights on the same file, through the same txt2img code.
    from lorastudio.core.params import GenerationParams
    from lorastudio.generation.txt2img import run_txt2img
    from lorastudio.models.load_options import load_options
    from lorastudio.models.loader import load_model

    model = load_model(world / "models" / "Stable-diffusion" / "tiny.safetensors",
                       load_options(engine.root, device="cpu", dtype="float32"), name="tiny", sha256=None)
    model.pipe.load_lora_weights(str(result.lora_path), adapter_name="direct")
    ref = run_txt2img(model, GenerationParams(**p, prompt="DeltamonStamp"), activate_loras=lambda tags: [],
                      model_hash=None, save_to=None).images[0]
    # Two loaders (ours may fuse the weights into the base): float rounding differs, so a stated tolerance.
    assert_same_picture(one.image, ref.image)
