"""Checkpoints as users have them (issue 9 §3): old SD 1.x text-encoder names, EMA weights, a
`state_dict` wrapper, fp8 storage; and clear errors for formats that are not supported yet.

Every file here is the tiny SD 1.x model written in that layout; the reference is the same model
in the standard layout.
"""

from __future__ import annotations

import logging
import os
import struct

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorastudio.core.errors import UnknownModelFamily
from lorastudio.models.families.base import LoadOptions

SMALL = dict(prompt="a red circle", negative_prompt="blue", width=32, height=32, steps=3, sampler="Euler", seed=7)
TE = "cond_stage_model.transformer."


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(path, tensors, metadata) of the tiny SD 1.x checkpoint in today's A1111 layout."""
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    folder = tmp_path_factory.mktemp("ref")
    path = save_sd1_single_file(tiny_sd1_pipeline(seed=0), folder / "tiny-sd1.safetensors")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    return path, load_file(str(path)), metadata


def _write(path, tensors, metadata):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _load(path, tmp_path, **options):
    from lorastudio.models.loader import load_model

    return load_model(path, LoadOptions(cache_dir=tmp_path / "cache", **options))


def _state(model) -> dict[str, torch.Tensor]:
    pipe = model.pipe
    return {f"{name}.{k}": v for name in ("unet", "vae", "text_encoder")
            for k, v in getattr(pipe, name).state_dict().items()}


def _pixels(model):
    from lorastudio.core.params import validate_params
    from lorastudio.generation.txt2img import run_txt2img

    result = run_txt2img(model, validate_params(SMALL), activate_loras=lambda tags: [], model_hash=None,
                         save_to=None)
    return np.asarray(result.images[0].image, dtype=np.int16)


# --- old text-encoder names ------------------------------------------------------------------------


def test_old_sd1_text_encoder_names_load_and_draw_the_same_pixels(reference, tmp_path, caplog):
    path, tensors, metadata = reference
    old = {(TE + k[len(TE + "text_model."):] if k.startswith(TE + "text_model.") else k): v
           for k, v in tensors.items()}
    assert any(k.startswith(TE + "encoder.layers.") for k in old) and not any("text_model" in k for k in old)
    old_path = _write(tmp_path / "old-names.safetensors", old, metadata)

    with caplog.at_level(logging.INFO, logger="lorastudio.models.loader"):
        legacy = _load(old_path, tmp_path)
    standard = _load(path, tmp_path)
    a, b = _state(legacy), _state(standard)
    assert a.keys() == b.keys()
    # a pure rename: the tensors themselves must be bitwise the same
    assert all(torch.equal(a[k], b[k]) for k in a)
    # identical modules, inputs and process: the pipeline call is deterministic, so equal pixels
    assert np.array_equal(_pixels(legacy), _pixels(standard))
    assert "old names" in caplog.text and "old-names.safetensors" in caplog.text
    # the user's file is never modified; the renamed copy lives in the cache
    assert load_file(str(old_path)).keys() == old.keys()


def test_old_names_in_a_pickle_are_renamed_while_converting(reference, tmp_path, caplog):
    path, tensors, _ = reference
    old = {(TE + k[len(TE + "text_model."):] if k.startswith(TE + "text_model.") else k): v
           for k, v in tensors.items()}
    ckpt = tmp_path / "sd14-era.ckpt"
    torch.save({"state_dict": old, "global_step": 470000}, ckpt)
    with caplog.at_level(logging.INFO, logger="lorastudio.models.loader"):
        model = _load(ckpt, tmp_path, allow_pickle=True)
    te = model.pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(te, tensors[TE + "text_model.embeddings.token_embedding.weight"])
    assert "state_dict" in caplog.text and "old names" in caplog.text


# --- EMA weights and the state_dict wrapper ---------------------------------------------------------


def _with_ema(tensors):
    # LitEma stores its copies under model_ema.<name without dots>, with a decay and a counter
    ema = dict(tensors)
    for k, v in tensors.items():
        if k.startswith("model.diffusion_model."):
            ema["model_ema." + k[len("model."):].replace(".", "")] = v + 0.5
    ema["model_ema.decay"] = torch.tensor(0.9999)
    ema["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return ema


def test_ema_weights_are_ignored_and_the_user_is_told(reference, tmp_path, caplog):
    from lorastudio.models.formats.checkpoint_facts import listing_summary

    path, tensors, metadata = reference
    ema_path = _write(tmp_path / "with-ema.safetensors", _with_ema(tensors), metadata)
    with caplog.at_level(logging.INFO, logger="lorastudio.models.loader"):
        model = _load(ema_path, tmp_path)
    standard = _state(_load(path, tmp_path))
    loaded = _state(model)
    assert all(torch.equal(loaded[k], standard[k]) for k in standard)  # the regular weights, not EMA + 0.5
    assert "EMA" in caplog.text and "regular weights are used" in caplog.text
    assert "EMA" in listing_summary(ema_path) and "EMA" not in listing_summary(path)


def test_state_dict_wrapped_pickle_with_ema_uses_the_regular_weights(reference, tmp_path, caplog):
    path, tensors, _ = reference
    ckpt = tmp_path / "lightning.ckpt"
    # a nested wrapper too: A1111 drops a "state_dict" entry found inside the state dict
    torch.save({"state_dict": {"state_dict": _with_ema(tensors)}, "epoch": 3}, ckpt)
    with caplog.at_level(logging.INFO, logger="lorastudio.models.loader"):
        model = _load(ckpt, tmp_path, allow_pickle=True)
    standard = _state(_load(path, tmp_path))
    loaded = _state(model)
    assert all(torch.equal(loaded[k], standard[k]) for k in standard)
    assert "'state_dict' key" in caplog.text and "EMA" in caplog.text
    converted = next((tmp_path / "cache" / "converted").glob("lightning-*.safetensors"))
    with safe_open(str(converted), "pt") as f:
        assert not any(k.startswith("model_ema.") for k in f.keys())  # EMA copies are not cached
    # the converted copy in the cache does not let the pickle in without the user's consent
    from lorastudio.core.errors import PickleRefused

    with pytest.raises(PickleRefused):
        _load(ckpt, tmp_path)


# --- fp8 storage --------------------------------------------------------------------------------


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_checkpoint_loads_upcast_and_is_listed_by_storage_dtype(reference, tmp_path, fp8, caplog):
    from lorastudio.models.formats.checkpoint_facts import listing_summary

    path, tensors, metadata = reference
    # as fp8 downloads do: matrices and convolutions in fp8, norms and biases kept in 16/32 bits
    stored = {k: v.to(fp8) if v.is_floating_point() and v.ndim >= 2 else v for k, v in tensors.items()}
    fp8_path = _write(tmp_path / "model-fp8.safetensors", stored, metadata)
    with caplog.at_level(logging.INFO, logger="lorastudio.models.loader"):
        model = _load(fp8_path, tmp_path)
    w = model.pipe.unet.conv_in.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, stored["model.diffusion_model.input_blocks.0.0.weight"].to(torch.float32))
    assert torch.isfinite(torch.from_numpy(_pixels(model)).float()).all()
    name = str(fp8).removeprefix("torch.")
    assert listing_summary(fp8_path).startswith(f"{name}+float32")
    assert f"stored as {name}+float32; upcast to float32" in caplog.text


def test_models_command_names_the_storage_dtype(reference, tmp_path):
    from typer.testing import CliRunner

    from lorastudio.interfaces.cli.app import app

    _, tensors, metadata = reference
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    _write(folder / "a-fp8.safetensors",
           {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v for k, v in tensors.items()}, metadata)
    _write(folder / "b-fp16.safetensors", {k: v.half() for k, v in tensors.items()}, metadata)
    result = CliRunner().invoke(app, ["models", "--models-dir", str(tmp_path / "models"), "--no-hash"])
    assert result.exit_code == 0, result.output
    assert "  a-fp8.safetensors  (float8_e4m3fn)\n" in result.output
    assert "  b-fp16.safetensors  (float16)\n" in result.output


def test_fp8_sdxl_checkpoint_loads_upcast(tmp_path):
    from lorastudio.testing.tiny_sd import save_sdxl_single_file, tiny_sdxl_pipeline

    path = save_sdxl_single_file(tiny_sdxl_pipeline(0), tmp_path / "sdxl.safetensors")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() and v.ndim >= 2 else v
           for k, v in load_file(str(path)).items()}
    model = _load(_write(tmp_path / "sdxl-fp8.safetensors", fp8, metadata), tmp_path)
    assert model.family.name == "sdxl"
    te2 = model.pipe.text_encoder_2.get_input_embeddings().weight
    assert te2.dtype == torch.float32
    assert torch.equal(te2, fp8["conditioner.embedders.1.model.token_embedding.weight"].to(torch.float32))
    assert torch.equal(model.pipe.unet.conv_in.weight, fp8["model.diffusion_model.input_blocks.0.0.weight"].float())


def test_fp8_flux_transformer_loads_upcast(tmp_path):
    from lorastudio.testing.tiny_flux import save_flux_single_file, tiny_flux_pipeline

    path = save_flux_single_file(tiny_flux_pipeline(0), tmp_path / "flux-full.safetensors", all_in_one=True)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() and v.ndim >= 2 else v for k, v in tensors.items()}
    fp8_path = _write(tmp_path / "flux1-dev-fp8.safetensors", fp8, metadata)
    model = _load(fp8_path, tmp_path)
    params = list(model.pipe.transformer.parameters())
    assert {p.dtype for p in params} == {torch.float32}
    key = next(k for k in fp8 if k.endswith("img_in.weight"))
    assert torch.equal(model.pipe.transformer.x_embedder.weight, fp8[key].to(torch.float32))


# --- formats that are not supported yet ----------------------------------------------------------


def _gguf(path):
    # GGUF v3 header: magic, version, tensor count, metadata count
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    return path


def _nf4(path, tensors, metadata):
    out = {k: v for k, v in tensors.items() if not k.startswith("model.diffusion_model.")}
    w = "model.diffusion_model.input_blocks.0.0.weight"
    out[w] = torch.zeros(8, dtype=torch.uint8)
    out[w + ".absmax"] = torch.ones(1)
    out[w + ".quant_map"] = torch.ones(16)
    out[w + ".quant_state.bitsandbytes__nf4"] = torch.zeros(4, dtype=torch.uint8)
    return _write(path, out, metadata)


def _sd2(path, tensors, metadata):
    out = {k: v for k, v in tensors.items() if not k.startswith(TE)}
    out["cond_stage_model.model.token_embedding.weight"] = torch.zeros(16, 8)
    out["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(24, 8)
    return _write(path, out, metadata)


def _sd3(path, tensors, metadata):
    out = {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(6, 2),
           "model.diffusion_model.x_embedder.proj.weight": torch.zeros(4, 16, 2, 2),
           "first_stage_model.decoder.conv_in.weight": torch.zeros(4, 16, 3, 3)}
    return _write(path, out, metadata)


def _fp8_scaled(path, tensors, metadata):
    out = {k: v.to(torch.float8_e4m3fn) if v.ndim >= 2 else v for k, v in tensors.items()}
    out["model.diffusion_model.input_blocks.0.0.scale_weight"] = torch.ones(1)
    out["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    return _write(path, out, metadata)


@pytest.mark.parametrize("maker, name, words", [
    (_gguf, "flux1-dev-Q4_K_S.gguf", ("GGUF", "not supported yet")),
    (_nf4, "flux1-dev-bnb-nf4.safetensors", ("bitsandbytes NF4", "not supported yet")),
    (_sd2, "v2-1_768-ema-pruned.safetensors", ("Stable Diffusion 2.x", "not supported yet")),
    (_sd3, "sd3.5_medium.safetensors", ("Stable Diffusion 3", "not supported yet")),
    (_fp8_scaled, "model_fp8_scaled.safetensors", ("fp8_scaled", "not supported yet")),
])
def test_unsupported_formats_are_named(reference, tmp_path, maker, name, words):
    from lorastudio.models.formats.checkpoint_facts import listing_summary
    from lorastudio.models.loader import load_model

    _, tensors, metadata = reference
    path = tmp_path / name
    path = maker(path) if maker is _gguf else maker(path, tensors, metadata)
    with pytest.raises(UnknownModelFamily) as info:
        load_model(path, LoadOptions(cache_dir=tmp_path / "cache"))
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    assert "not loadable" in listing_summary(path) and words[0] in listing_summary(path)
