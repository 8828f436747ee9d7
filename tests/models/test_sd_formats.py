"""SD 1.x / SDXL single-file layout: names, conversion, config inference, offline loading."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from lorastudio.core.errors import InvalidParameter, ModelFileError
from lorastudio.models.formats.config_dir import make_config_dir
from lorastudio.models.formats.ldm_unet_names import (
    UNetLayout,
    diffusers_to_ldm_unet_key,
    layout_from_diffusers_keys,
    layout_from_unet_config,
    ldm_to_diffusers_unet_key,
)
from lorastudio.models.formats.sd_checkpoint import sd1_checkpoint_from_diffusers, sdxl_checkpoint_from_diffusers
from lorastudio.testing.pixels import assert_same_picture
from lorastudio.models.formats.sd_config_inference import (
    CONFIG_METADATA_KEY,
    SD1_SCHEDULER,
    SD1_TOKENIZERS,
    SDXL_SCHEDULER,
    SDXL_TOKENIZERS,
    infer_sd1_configs,
    infer_sdxl_configs,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# config.json of stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0 (fields as published)
SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": None,
    "addition_embed_type_num_heads": 64, "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "cross_attention_dim": 768, "cross_attention_norm": None,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
    "projection_class_embeddings_input_dim": None, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default", "sample_size": 64, "time_cond_proj_dim": None, "time_embedding_act_fn": None,
    "time_embedding_dim": None, "time_embedding_type": "positional", "timestep_post_act": None,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": None, "use_linear_projection": False,
}
SDXL_UNET = {
    **SD15_UNET, "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048, "encoder_hid_dim_type": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "num_attention_heads": None,
    "projection_class_embeddings_input_dim": 2816, "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}
SD15_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SDXL_VAE = {**SD15_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}
CLIP_L = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
    "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0, "initializer_range": 0.02,
    "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408,
}
CLIP_BIGG = {
    **CLIP_L, "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu", "hidden_size": 1280,
    "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280,
}

# (key, shape) pairs as they appear in the released v1-5-pruned / sd_xl_base_1.0 safetensors
SD15_ANCHORS = {
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
    "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
    "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
    "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "model.diffusion_model.time_embed.2.weight": (1280, 1280),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
    "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
    "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
    "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
    "cond_stage_model.transformer.text_model.final_layer_norm.bias": (768,),
}
SDXL_ANCHORS = {
    "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (640, 2048),
    "model.diffusion_model.input_blocks.6.0.op.weight": (640, 640, 3, 3),
    "model.diffusion_model.input_blocks.7.1.proj_in.weight": (1280, 1280),
    "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
    "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
    "model.diffusion_model.output_blocks.8.0.out_layers.3.weight": (320, 320, 3, 3),
    "first_stage_model.decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
    "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
    "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight": (5120, 1280),
    "conditioner.embedders.1.model.text_projection": (1280, 1280),
    "conditioner.embedders.1.model.positional_embedding": (77, 1280),
    "conditioner.embedders.1.model.ln_final.weight": (1280,),
}


def _meta_models(unet_cfg, vae_cfg, te_cfgs):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        tes = []
        for cfg in te_cfgs:
            cls = CLIPTextModelWithProjection if "WithProjection" in cfg["architectures"][0] else CLIPTextModel
            tes.append(cls(CLIPTextConfig(**{k: v for k, v in cfg.items() if k != "dropout"})))
    return unet, vae, tes


@pytest.fixture(scope="module")
def real_sd15():
    unet, vae, (te,) = _meta_models(SD15_UNET, SD15_VAE, [CLIP_L])
    # keep_vars: the checkpoint then holds the very parameter objects, so identity is checkable
    ckpt = sd1_checkpoint_from_diffusers(unet.state_dict(keep_vars=True), vae.state_dict(), te.state_dict())
    return unet, vae, [te], ckpt


@pytest.fixture(scope="module")
def real_sdxl():
    unet, vae, tes = _meta_models(SDXL_UNET, SDXL_VAE, [CLIP_L, CLIP_BIGG])
    ckpt = sdxl_checkpoint_from_diffusers(unet.state_dict(keep_vars=True), vae.state_dict(), *(t.state_dict() for t in tes))
    return unet, vae, tes, ckpt


# --- UNet names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, name, ldm",
    [
        (SD15_UNET, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
        (SD15_UNET, "down_blocks.3.resnets.1.conv1.weight", "input_blocks.11.0.in_layers.2.weight"),
        (SD15_UNET, "up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
        (SD15_UNET, "up_blocks.3.attentions.2.proj_out.bias", "output_blocks.11.1.proj_out.bias"),
        (SD15_UNET, "mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
        (SDXL_UNET, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
        (SDXL_UNET, "down_blocks.0.downsamplers.0", "input_blocks.3.0"),
        (SDXL_UNET, "down_blocks.1.downsamplers.0.conv.weight", "input_blocks.6.0.op.weight"),
        (SDXL_UNET, "up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
        (SDXL_UNET, "up_blocks.2.resnets.2.conv_shortcut", "output_blocks.8.0.skip_connection"),
        (SDXL_UNET, "mid_block.attentions.0.transformer_blocks.3.attn2.to_out.0", "middle_block.1.transformer_blocks.3.attn2.to_out.0"),
        (SDXL_UNET, "add_embedding.linear_2.weight", "label_emb.0.2.weight"),
        (SDXL_UNET, "time_embedding.linear_1", "time_embed.0"),
        (SDXL_UNET, "conv_in.bias", "input_blocks.0.0.bias"),
        (SDXL_UNET, "conv_norm_out.weight", "out.0.weight"),
    ],
)
def test_unet_names_both_ways(config, name, ldm):
    layout = layout_from_unet_config(config)
    assert diffusers_to_ldm_unet_key(name, layout) == ldm
    assert ldm_to_diffusers_unet_key(ldm, layout) == name


def test_unet_names_reject_names_without_counterpart():
    layout = layout_from_unet_config(SDXL_UNET)
    for bad in ["down_blocks.0", "down_blocks.0.attentions.0.norm", "up_blocks.2.upsamplers.0", "down_blocks.0.resnets.0.bogus"]:
        with pytest.raises(ValueError):
            diffusers_to_ldm_unet_key(bad, layout)
    with pytest.raises(ValueError):
        UNetLayout(layers_per_block=(2, 2), down_attention=(True,), up_attention=(True, True))


@pytest.mark.parametrize("which", ["real_sd15", "real_sdxl"])
def test_unet_names_are_a_bijection_on_real_models(which, request):
    unet = request.getfixturevalue(which)[0]
    layout = layout_from_unet_config(unet.config)
    assert layout_from_diffusers_keys(unet.state_dict().keys()) == layout
    names = [n for n, _ in unet.named_parameters()]
    ldm = [diffusers_to_ldm_unet_key(n, layout) for n in names]
    assert len(set(ldm)) == len(names)
    assert [ldm_to_diffusers_unet_key(n, layout) for n in ldm] == names


# --- real-size layout (meta tensors: shapes only) ---------------------------------------------------


@pytest.mark.parametrize("which, anchors", [("real_sd15", SD15_ANCHORS), ("real_sdxl", SDXL_ANCHORS)])
def test_real_layout_has_the_published_keys(which, anchors, request):
    ckpt = request.getfixturevalue(which)[3]
    for key, shape in anchors.items():
        assert key in ckpt, key
        assert tuple(ckpt[key].shape) == shape, key


@pytest.mark.parametrize("which", ["real_sd15", "real_sdxl"])
def test_real_layout_reads_back_with_diffusers_converters(which, request):
    """diffusers' own single-file readers recover every parameter name and shape."""
    from diffusers.loaders import single_file_utils as sfu

    unet, vae, tes, ckpt = request.getfixturevalue(which)
    got = sfu.convert_ldm_unet_checkpoint(ckpt, dict(unet.config))
    want = unet.state_dict(keep_vars=True)
    assert got.keys() == want.keys()
    assert all(got[k] is want[k] for k in want)  # UNet tensors pass through unchanged

    got = sfu.convert_ldm_vae_checkpoint(ckpt, dict(vae.config))
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in vae.state_dict().items()}

    te_l = {k.removeprefix("text_model."): v for k, v in sfu.convert_ldm_clip_checkpoint(ckpt).items()}
    assert {k: tuple(v.shape) for k, v in te_l.items()} == {k: tuple(v.shape) for k, v in tes[0].state_dict().items()}
    if len(tes) == 2:
        te_g = sfu.convert_open_clip_checkpoint(tes[1], ckpt, prefix="conditioner.embedders.1.model.")
        assert {k: tuple(v.shape) for k, v in te_g.items()} == {k: tuple(v.shape) for k, v in tes[1].state_dict().items()}
        assert sfu.infer_diffusers_model_type(ckpt) == "xl_base"
    else:
        assert sfu.infer_diffusers_model_type(ckpt) == "v1"


def _resolved_diffusers(cls, config):
    with torch.device("meta"):
        return {k: json.loads(json.dumps(v)) for k, v in cls.from_config(config).config.items() if not k.startswith("_")}


def _resolved_clip(config):
    from transformers import CLIPTextConfig

    d = CLIPTextConfig(**{k: v for k, v in config.items() if k not in {"dropout", "architectures"}}).to_dict()
    return {k: d[k] for k in CLIP_L if k not in {"dropout", "architectures"}}


@pytest.mark.parametrize("which", ["real_sd15", "real_sdxl"])
def test_infer_real_configs_exactly(which, request):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet, vae, tes, ckpt = request.getfixturevalue(which)
    shapes = {k: tuple(v.shape) for k, v in ckpt.items()}
    if which == "real_sd15":
        got = infer_sd1_configs(shapes, {})
        real = {"unet": SD15_UNET, "vae": SD15_VAE, "text_encoder": CLIP_L}
    else:
        got = infer_sdxl_configs(shapes, {})
        real = {"unet": SDXL_UNET, "vae": SDXL_VAE, "text_encoder": CLIP_L, "text_encoder_2": CLIP_BIGG}
    assert set(got) == set(real)
    assert _resolved_diffusers(UNet2DConditionModel, got["unet"]) == _resolved_diffusers(UNet2DConditionModel, real["unet"])
    assert _resolved_diffusers(AutoencoderKL, got["vae"]) == _resolved_diffusers(AutoencoderKL, real["vae"])
    for name in [n for n in real if n.startswith("text_encoder")]:
        assert got[name]["architectures"] == real[name]["architectures"]
        assert _resolved_clip(got[name]) == _resolved_clip(real[name])


def test_metadata_overrides_and_errors(real_sd15, real_sdxl):
    shapes = {k: tuple(v.shape) for k, v in real_sd15[3].items()}
    meta = {CONFIG_METADATA_KEY: json.dumps({"unet": {"attention_head_dim": 4}, "vae": {"scaling_factor": 0.5}})}
    got = infer_sd1_configs(shapes, meta)
    assert got["unet"]["attention_head_dim"] == 4 and got["vae"]["scaling_factor"] == 0.5
    with pytest.raises(ModelFileError, match="text_encoder_9"):
        infer_sd1_configs(shapes, {CONFIG_METADATA_KEY: json.dumps({"text_encoder_9": {}})})
    with pytest.raises(ModelFileError, match="JSON"):
        infer_sd1_configs(shapes, {CONFIG_METADATA_KEY: "{not json"})
    with pytest.raises(ModelFileError, match=r"missing tensor conditioner\.embedders\.0"):
        infer_sdxl_configs(shapes, {})  # an SD 1.x file is not SDXL
    xl = {k: tuple(v.shape) for k, v in real_sdxl[3].items() if ".label_emb." not in k}
    with pytest.raises(ModelFileError, match="label_emb"):
        infer_sdxl_configs(xl, {})
    del shapes["model.diffusion_model.out.2.weight"]
    with pytest.raises(ModelFileError, match=r"model\.diffusion_model\.out\.2\.weight"):
        infer_sd1_configs(shapes, {})


def test_legacy_clip_layout_and_adapter_guard(real_sd15):
    shapes = {k.replace(".transformer.text_model.", ".transformer."): tuple(v.shape) for k, v in real_sd15[3].items()}
    assert infer_sd1_configs(shapes, {})["text_encoder"]["num_hidden_layers"] == 12
    lora = {"down_blocks.0.attentions.0.proj_in.base_layer.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="LoRA"):
        sd1_checkpoint_from_diffusers(lora, {}, {})


# --- config folder ----------------------------------------------------------------------------------


def test_config_dir_is_content_addressed_and_reused(tmp_path):
    configs = {"text_encoder": CLIP_L, "unet": SD15_UNET, "vae": SD15_VAE}
    a = make_config_dir("StableDiffusionPipeline", configs, SD1_TOKENIZERS, SD1_SCHEDULER, tmp_path)
    mtime = (a / "model_index.json").stat().st_mtime_ns
    b = make_config_dir("StableDiffusionPipeline", configs, SD1_TOKENIZERS, SD1_SCHEDULER, tmp_path)
    assert a == b and (b / "model_index.json").stat().st_mtime_ns == mtime
    index = json.loads((a / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert json.loads((a / "unet" / "config.json").read_text())["cross_attention_dim"] == 768

    c = make_config_dir("StableDiffusionPipeline", configs, SDXL_TOKENIZERS, SD1_SCHEDULER, tmp_path)
    assert c != a
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind

    from transformers import CLIPTokenizer

    tok1 = CLIPTokenizer.from_pretrained(str(c / "tokenizer"), local_files_only=True)
    tok2 = CLIPTokenizer.from_pretrained(str(c / "tokenizer_2"), local_files_only=True)
    ids = tok2("a cat", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [49406, 320, 2368, 49407] and ids[4:] == [0] * 73  # "!" is id 0
    assert tok1("a cat", padding="max_length").input_ids[4:] == [49407] * 73
    assert tok1.model_max_length == tok2.model_max_length == 77

    # "files" tokenizers are copied and their content is part of the address
    d = make_config_dir("X", {}, {"tok": {"kind": "files", "path": str(c / "tokenizer_2")}}, SDXL_SCHEDULER, tmp_path)
    assert json.loads((d / "model_index.json").read_text())["tok"] == ["transformers", "CLIPTokenizer"]
    assert sorted(p.name for p in (d / "tok").iterdir()) == sorted(p.name for p in (c / "tokenizer_2").iterdir())
    with pytest.raises(InvalidParameter):
        make_config_dir("X", {}, {"tok": {"kind": "sentencepiece"}}, SDXL_SCHEDULER, tmp_path)


# --- tiny models: write, load offline with diffusers, compare ----------------------------------------


# fields the tiny models are allowed to take from metadata: anything else must come from shapes
_ALLOWED_OVERRIDES = {
    "unet": {"attention_head_dim", "norm_num_groups", "sample_size"},
    "vae": {"sample_size"},
    "text_encoder": {"num_attention_heads"},
    "text_encoder_2": {"num_attention_heads"},
}


@pytest.mark.pixels
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_tiny_single_file_loads_back_identically(family, tmp_path, no_network):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import safe_open

    from lorastudio.testing import tiny_sd

    if family == "sd1":
        pipe, save, infer = tiny_sd.tiny_sd1_pipeline(0), tiny_sd.save_sd1_single_file, infer_sd1_configs
        cls, toks, sched, extra = StableDiffusionPipeline, SD1_TOKENIZERS, SD1_SCHEDULER, {"requires_safety_checker": False}
        components = ["unet", "vae", "text_encoder"]
    else:
        pipe, save, infer = tiny_sd.tiny_sdxl_pipeline(0), tiny_sd.save_sdxl_single_file, infer_sdxl_configs
        cls, toks, sched, extra = StableDiffusionXLPipeline, SDXL_TOKENIZERS, SDXL_SCHEDULER, None
        components = ["unet", "vae", "text_encoder", "text_encoder_2"]

    path = save(pipe, tmp_path / "model.safetensors")
    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    overrides = json.loads(metadata[CONFIG_METADATA_KEY])
    for name, fields in overrides.items():
        assert set(fields) <= _ALLOWED_OVERRIDES[name], (name, fields)

    folder = make_config_dir(cls.__name__, infer(shapes, metadata), toks, sched, tmp_path / "configs", pipeline_extra=extra)
    loaded = cls.from_single_file(str(path), config=str(folder), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)

    total = 0
    for name in components:
        want, got = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert want.keys() == got.keys(), name
        for key in want:
            assert got[key].device.type == "cpu" and torch.equal(got[key], want[key]), f"{name}.{key}"
        total += sum(v.numel() for v in want.values())
    assert sum(math.prod(s) for s in shapes.values()) == total  # nothing extra in the file (fused q/k/v hold exactly the three projections)
    assert type(loaded.scheduler).__name__ == sched["_class_name"]

    kwargs = dict(prompt="a red cube", num_inference_steps=2, height=32, width=32, output_type="np")
    a = pipe(**kwargs, generator=torch.Generator().manual_seed(7)).images
    b = loaded(**kwargs, generator=torch.Generator().manual_seed(7)).images
    assert a.shape == (1, 32, 32, 3) and a.std() > 0
    # equal weights (above), modules built by two loaders: equal within the kernels' rounding
    assert_same_picture(a, b)


def test_tiny_pipelines_are_deterministic_and_seeded():
    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline

    torch.manual_seed(123)
    a, b, c = tiny_sd1_pipeline(0), tiny_sd1_pipeline(0), tiny_sd1_pipeline(1)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)  # building consumed nothing from the caller's RNG stream
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(a.unet.state_dict()[key], b.unet.state_dict()[key])
    assert not torch.equal(a.unet.state_dict()[key], c.unet.state_dict()[key])
