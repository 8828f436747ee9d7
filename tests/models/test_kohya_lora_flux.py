"""kohya FLUX.1 LoRA export: fused q/k/v(/mlp) maths, alpha, and loading by diffusers."""

from __future__ import annotations

import logging
import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from lorastudio.core.errors import LoraError
from lorastudio.models.formats.flux_checkpoint import default_flux_configs, flux_linears
from lorastudio.models.formats.kohya_lora_flux import kohya_flux_lora_from_peft
from lorastudio.testing.tiny_flux import tiny_flux_pipeline

RANK, ALPHA = 4, 8.0
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
GEN = dict(prompt="a red square", num_inference_steps=2, height=32, width=32, guidance_scale=3.5, max_sequence_length=32)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _linears(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _peft(model, targets, seed=0):
    from peft import LoraConfig, get_peft_model_state_dict

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # init_lora_weights=False: B starts random too, so the LoRA changes the output
        model.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, init_lora_weights=False))
    return get_peft_model_state_dict(model)


def _deltas(peft_sd, scale):
    mods = {k.rsplit(".lora_", 1)[0] for k in peft_sd}
    return {m: scale * peft_sd[f"{m}.lora_B.weight"] @ peft_sd[f"{m}.lora_A.weight"] for m in mods}


def test_diffusers_loads_the_export_and_reproduces_the_output():
    """kohya's default FLUX targets (every linear of the double and single blocks) plus CLIP-L.

    diffusers' kohya reader splits single-block linear1 with FLUX.1's hardcoded width, so on the
    tiny model the single blocks' q/k/v/proj_mlp are left out here; the real-width test below
    covers them.
    """
    from diffusers.utils import logging as diffusers_logging
    from peft import get_peft_model_state_dict

    trained = tiny_flux_pipeline(0)
    targets = [
        n for n in _linears(trained.transformer)
        if n.startswith("transformer_blocks.") or n.endswith((".proj_out", ".norm.linear")) and n.startswith("single_")
    ]
    tsd = _peft(trained.transformer, targets)
    csd = _peft(trained.text_encoder, CLIP_TARGETS, seed=1)
    want = trained(**GEN, generator=torch.Generator().manual_seed(0), output_type="np").images

    kohya = kohya_flux_lora_from_peft(tsd, csd, alpha=ALPHA, rank=RANK)
    assert all(k.startswith(("lora_unet_", "lora_te1_")) for k in kohya)
    assert "lora_unet_double_blocks_1_txt_attn_qkv.lora_down.weight" in kohya
    assert "lora_te1_text_model_encoder_layers_1_self_attn_q_proj.alpha" in kohya

    fresh = tiny_flux_pipeline(0)
    base = fresh(**GEN, generator=torch.Generator().manual_seed(0), output_type="np").images
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    diffusers_logging.get_logger("diffusers").addHandler(handler)
    try:
        fresh.load_lora_weights(dict(kohya))
    finally:
        diffusers_logging.get_logger("diffusers").removeHandler(handler)
    complaints = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert not [c for c in complaints if "nsupported" in c or "ncompatible" in c or "not used" in c], complaints
    # every trained module received its LoRA (nothing dropped, nothing extra)
    loaded = get_peft_model_state_dict(fresh.transformer, adapter_name="default_0")
    assert {k.rsplit(".lora_", 1)[0] for k in loaded} == {k.rsplit(".lora_", 1)[0] for k in tsd}
    loaded_te = get_peft_model_state_dict(fresh.text_encoder, adapter_name="default_0")
    assert len(loaded_te) == len(csd)

    got = fresh(**GEN, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert abs(want - base).max() > 1e-2  # the LoRA matters...
    assert abs(got - want).max() <= 1e-4  # ...and loads as trained


def test_fused_updates_equal_the_separate_ones():
    """Every linear, single-block linear1 and partial q/k/v sets included, checked as weight updates."""
    pipe = tiny_flux_pipeline(0)
    names = _linears(pipe.transformer)
    # block 0 of each kind gets only some attention parts, so fused LoRAs with absent parts appear
    partial = {"transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.add_q_proj", "single_transformer_blocks.0.attn.to_q",
               "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.attn.to_k"}
    tsd = _peft(pipe.transformer, [n for n in names if n not in partial])
    kohya = kohya_flux_lora_from_peft(tsd, None, alpha=ALPHA, rank=RANK)
    separate = _deltas(tsd, ALPHA / RANK)
    cfg = pipe.transformer.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    rows = {"attn": inner, "proj_mlp": 4 * inner}
    seen = 0
    for lin in flux_linears(cfg.num_layers, cfg.num_single_layers, cfg.guidance_embeds):
        name = "lora_unet_" + lin.bfl.replace(".", "_")
        down, up = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"]
        alpha = kohya[f"{name}.alpha"]
        assert alpha.ndim == 0 and alpha.dtype == torch.float32
        fused = (alpha.item() / down.shape[0]) * up @ down
        parts = [
            separate.get(p, torch.zeros(rows["proj_mlp" if p.endswith("proj_mlp") else "attn"], fused.shape[1]))
            if len(lin.parts) > 1 else separate[p]
            for p in lin.parts
        ]
        expect = torch.cat(parts)
        if lin.swapped:
            expect = torch.cat(expect.chunk(2)[::-1])
        torch.testing.assert_close(fused, expect, rtol=1e-5, atol=1e-6)
        present = sum(p in separate for p in lin.parts)
        assert down.shape[0] == RANK * present
        if not lin.bfl.startswith("final_layer."):  # final_layer's scale is folded into the weights
            assert alpha.item() == ALPHA * present
        seen += 1
    assert seen * 3 == len(kohya)


@pytest.mark.pixels
def test_real_width_export_matches_diffusers_reader():
    """diffusers' kohya reader on FLUX.1-dev's real shapes (rank-2 LoRA on every linear): the LoRA
    it reconstructs per diffusers module must apply the same update as the peft original."""
    from accelerate import init_empty_weights
    from diffusers import FluxPipeline, FluxTransformer2DModel

    cfg = {k: v for k, v in default_flux_configs("dev")["transformer"].items() if not k.startswith("_")}
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(cfg)
    gen = torch.Generator().manual_seed(0)
    r, alpha = 2, 3.0
    peft_sd = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            peft_sd[f"{name}.lora_A.weight"] = torch.randn(r, mod.in_features, generator=gen)
            peft_sd[f"{name}.lora_B.weight"] = torch.randn(mod.out_features, r, generator=gen)
    kohya = kohya_flux_lora_from_peft(peft_sd, None, alpha=alpha, rank=r)
    theirs = FluxPipeline.lora_state_dict(dict(kohya))  # it pops entries, never writes into tensors
    theirs = {k.removeprefix("transformer."): v for k, v in theirs.items()}
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in peft_sd})
    assert sorted({k.rsplit(".lora_", 1)[0] for k in theirs}) == modules
    got, want = [], []
    for module in modules:  # compare the updates applied to a random probe, not the full matrices
        a, b = peft_sd[f"{module}.lora_A.weight"], peft_sd[f"{module}.lora_B.weight"]
        x = torch.randn(a.shape[1], 1, generator=gen, dtype=torch.float64)
        want.append((alpha / r) * (b.double() @ (a.double() @ x)))
        got.append(theirs[f"{module}.lora_B.weight"].double() @ (theirs[f"{module}.lora_A.weight"].double() @ x))
    # The probe runs in float64, so the kernels' summation order (3,072-long dot products) adds
    # ~1e-13; what is left is the float32 rounding of the rescaled/split weights the reader
    # returns (~1e-7 relative), measured against the size of the update, not element by element
    # (elements near 0 have no relative precision).
    got, want = torch.cat(got), torch.cat(want)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_refuses_what_kohya_files_cannot_hold():
    a, b = torch.zeros(RANK, 8), torch.zeros(8, RANK)
    ok = {"transformer_blocks.0.attn.to_out.0.lora_A.weight": a, "transformer_blocks.0.attn.to_out.0.lora_B.weight": b}
    assert set(kohya_flux_lora_from_peft(ok, None, alpha=ALPHA, rank=RANK)) == {
        f"lora_unet_double_blocks_0_img_attn_proj.{s}" for s in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    with pytest.raises(LoraError, match="rank 4, expected 2"):
        kohya_flux_lora_from_peft(ok, None, alpha=ALPHA, rank=2)
    with pytest.raises(LoraError, match="no FLUX.1"):
        kohya_flux_lora_from_peft({"pos_embed.foo.lora_A.weight": a, "pos_embed.foo.lora_B.weight": b}, None, alpha=ALPHA, rank=RANK)
    with pytest.raises(LoraError, match="lora_A only"):
        kohya_flux_lora_from_peft({"proj_out.lora_A.weight": a}, None, alpha=ALPHA, rank=RANK)
    with pytest.raises(LoraError, match="DoRA"):
        kohya_flux_lora_from_peft({**ok, "proj_out.lora_magnitude_vector": torch.ones(8)}, None, alpha=ALPHA, rank=RANK)
