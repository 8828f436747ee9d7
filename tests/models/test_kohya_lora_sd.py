"""peft-trained SD 1.x / SDXL LoRA -> kohya file -> diffusers `load_lora_weights` reproduces the model."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from lorastudio.core.errors import LoraError
from lorastudio.models.formats.kohya_lora_sd import kohya_lora_from_peft, peft_from_kohya_lora
from lorastudio.models.formats.ldm_unet_names import layout_from_unet_config

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
RANK, ALPHA = 4, 8.0  # alpha != rank so that a lost or doubled scale shows


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _pipeline(family: str):
    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline, tiny_sdxl_pipeline

    if family == "sd1":
        return tiny_sd1_pipeline(0), ["text_encoder"], "diffusers"
    return tiny_sdxl_pipeline(0), ["text_encoder", "text_encoder_2"], "ldm"


def _add_random_lora(pipe, encoders):
    from peft import LoraConfig

    pipe.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=UNET_TARGETS))
    for name in encoders:
        getattr(pipe, name).add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TE_TARGETS))
    g = torch.Generator().manual_seed(1)
    for model in [pipe.unet, *(getattr(pipe, n) for n in encoders)]:
        for name, p in model.named_parameters():
            if ".lora_B." in name:  # peft starts B at zero, which would make the LoRA a no-op
                p.data = torch.randn(p.shape, generator=g) * 0.2


def _lora_modules(model) -> set[str]:
    return {n.removesuffix(".lora_A") for n, _ in model.named_modules() if n.endswith(".lora_A")}


def _generate(pipe):
    kwargs = dict(prompt="a red cube", num_inference_steps=2, height=32, width=32, output_type="np")
    return pipe(**kwargs, generator=torch.Generator().manual_seed(3)).images


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.pixels
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_kohya_export_loads_in_diffusers_and_matches_peft(family):
    from peft import get_peft_model_state_dict

    trained, encoders, naming = _pipeline(family)
    _add_random_lora(trained, encoders)
    want = _generate(trained)

    layout = layout_from_unet_config(trained.unet.config)
    kohya = kohya_lora_from_peft(
        get_peft_model_state_dict(trained.unet),
        {n: get_peft_model_state_dict(getattr(trained, n)) for n in encoders},
        alpha=ALPHA,
        rank=RANK,
        unet_naming=naming,
        layout=layout,
    )
    names = {k.split(".")[0] for k in kohya}
    expected_unet = _lora_modules(trained.unet)
    assert sum(n.startswith("lora_unet_") for n in names) == len(expected_unet)
    if family == "sd1":
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
        assert "lora_te_text_model_encoder_layers_1_self_attn_out_proj" in names
    else:
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
        assert "lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_out_0" in names
        assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_k" in names
        assert "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_v" in names
        assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in names
        assert "lora_te2_text_model_encoder_layers_1_self_attn_v_proj" in names
    alpha = kohya[next(k for k in kohya if k.endswith(".alpha"))]
    assert alpha.ndim == 0 and alpha.item() == ALPHA

    fresh, _, _ = _pipeline(family)
    assert not (_generate(fresh) == want).all()  # the LoRA changes the image
    records = _Records()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for lg in loggers:
        lg.addHandler(records)
    try:
        fresh.load_lora_weights(dict(kohya))
    finally:
        for lg in loggers:
            lg.removeHandler(records)
    assert not [m for m in records.messages if "unexpected" in m.lower() or "not used" in m.lower()], records.messages
    for name in ["unet", *encoders]:
        assert _lora_modules(getattr(fresh, name)) == _lora_modules(getattr(trained, name)), name
    got = _generate(fresh)
    # peft's adapters vs diffusers' reading of the kohya file: the same update computed in another
    # order; float images in [0, 1], far below one 8-bit level (0.0039)
    assert abs(got - want).max() < 1e-4


def test_peft_round_trip_through_kohya_names():
    from peft import get_peft_model_state_dict

    trained, encoders, naming = _pipeline("sdxl")
    _add_random_lora(trained, encoders)
    layout = layout_from_unet_config(trained.unet.config)
    unet_sd = get_peft_model_state_dict(trained.unet)
    te_sds = {n: get_peft_model_state_dict(getattr(trained, n)) for n in encoders}
    kohya = kohya_lora_from_peft(unet_sd, te_sds, alpha=ALPHA, rank=RANK, unet_naming=naming, layout=layout)

    unet_back, te_back, alphas = peft_from_kohya_lora(
        kohya,
        unet_modules=[n for n, _ in trained.unet.named_modules()],
        text_encoder_modules={n: [m for m, _ in getattr(trained, n).named_modules()] for n in encoders},
        unet_naming=naming,
        layout=layout,
    )
    assert unet_back.keys() == unet_sd.keys() and all(unet_back[k] is unet_sd[k] for k in unet_sd)
    for n in encoders:
        assert te_back[n].keys() == te_sds[n].keys()
    assert set(alphas.values()) == {ALPHA} and len(alphas) == len(kohya) // 3


def test_export_refuses_what_it_cannot_represent():
    a = torch.zeros(RANK, 8)
    b = torch.zeros(8, RANK)
    sd = {"down_blocks.0.attentions.0.proj_in.lora_A.weight": a, "down_blocks.0.attentions.0.proj_in.lora_B.weight": b}
    with pytest.raises(LoraError, match="rank"):
        kohya_lora_from_peft(sd, {}, alpha=1, rank=8, unet_naming="diffusers")
    with pytest.raises(LoraError, match="only lora_A"):
        kohya_lora_from_peft({k: v for k, v in sd.items() if "lora_A" in k}, {}, alpha=1, rank=RANK, unet_naming="diffusers")
    with pytest.raises(LoraError, match="layout"):
        kohya_lora_from_peft(sd, {}, alpha=1, rank=RANK, unet_naming="ldm")
    with pytest.raises(LoraError, match="DoRA"):
        kohya_lora_from_peft({**sd, "x.lora_magnitude_vector": a}, {}, alpha=1, rank=RANK, unet_naming="diffusers")
    with pytest.raises(LoraError, match="text encoder"):
        kohya_lora_from_peft({}, {"clip_g": {}}, alpha=1, rank=RANK, unet_naming="diffusers")
    # peft state dicts of a PeftModel carry a base_model.model. prefix; it is not part of kohya names
    out = kohya_lora_from_peft({f"base_model.model.{k}": v for k, v in sd.items()}, {}, alpha=2, rank=RANK, unet_naming="diffusers")
    assert sorted(out) == [
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
    ]
