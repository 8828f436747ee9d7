"""LoRA files in the formats users download, applied through `<lora:name:weight>` tags.

Formats are checked against each other: one random LoRA written as a kohya file (alpha/rank = 2)
and as a diffusers/PEFT file with the update pre-scaled by 2 must give the same picture.
"""

import numpy as np
import pytest

from lorastudio.core.errors import LoraError, NotFound, PickleRefused
from lorastudio.testing.pixels import MAX_LEVELS, max_level_difference

# Formats, fused vs unfused and kept vs reloaded adapters are different computations of one
# picture: they run again under the default kernel set in `make test`.
pytestmark = pytest.mark.pixels

SMALL = dict(width=32, height=32, steps=2, cfg_scale=5.0, seed=21, sampler="Euler")
RANK, ALPHA = 4, 8.0
SD_UNET = ("to_q", "to_k", "to_v", "to_out.0")
CLIP = ("q_proj", "k_proj", "v_proj", "out_proj")


def arr(img):
    return np.asarray(img.convert("RGB")).astype(int)


def run(engine, prompt, **kw):
    return engine.txt2img({**SMALL, "prompt": prompt, **kw}, save=False).images[0]


def pixels(engine, prompt, **kw):
    return arr(run(engine, prompt, **kw).image)


@pytest.fixture(scope="module")
def loras(family_root, tiny_pipes):
    """Writes the LoRA files into models/Lora; returns {name: path}."""
    import torch
    from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    from lorastudio.testing import tiny_lora as tl

    d = family_root / "Lora"
    out = {}
    sd1, sdxl, flux = tiny_pipes["sd1"], tiny_pipes["sdxl"], tiny_pipes["flux"]
    unet = tl.random_lora(sd1.unet, tl.linear_names(sd1.unet, endings=SD_UNET), seed=1)
    te = tl.random_lora(sd1.text_encoder, tl.linear_names(sd1.text_encoder, endings=CLIP), seed=2)
    out["sd1-kohya"] = tl.save_kohya_sd(d / "sd1-kohya.safetensors", unet, {"text_encoder": te}, alpha=ALPHA, rank=RANK)
    out["sd1-diffusers"] = tl.save_diffusers_lora(d / "sd1-diffusers.safetensors", StableDiffusionPipeline,
                                                  unet_lora_layers=tl.scaled(unet, ALPHA / RANK),
                                                  text_encoder_lora_layers=tl.scaled(te, ALPHA / RANK))
    other = tl.random_lora(sd1.unet, tl.linear_names(sd1.unet, endings=SD_UNET), seed=3)
    out["sd1-other"] = tl.save_diffusers_lora(d / "sd1-other.safetensors", StableDiffusionPipeline,
                                              unet_lora_layers=other)
    # kohya names lose the dots, so a module that is not in the model is still a well-formed key
    bad = tl.random_lora(sd1.unet, tl.linear_names(sd1.unet, endings=SD_UNET)[:2], seed=4)
    out["sd1-badkey"] = tl.save_kohya_sd(d / "sd1-badkey.safetensors", bad, {}, alpha=ALPHA, rank=RANK)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(out["sd1-badkey"]))
    sd.update({"lora_unet_mid_block_attentions_7_proj_in.lora_down.weight": torch.zeros(RANK, 64),
               "lora_unet_mid_block_attentions_7_proj_in.lora_up.weight": torch.zeros(64, RANK)})
    save_file(sd, str(out["sd1-badkey"]))
    # a text-encoder layer the model does not have (diffusers drops these without a word)
    te9 = "lora_te_text_model_encoder_layers_9_self_attn_q_proj"
    out["sd1-badte"] = d / "sd1-badte.safetensors"
    save_file({**load_file(str(out["sd1-kohya"])), f"{te9}.lora_down.weight": torch.zeros(RANK, 32),
               f"{te9}.lora_up.weight": torch.zeros(32, RANK), f"{te9}.alpha": torch.tensor(ALPHA)},
              str(out["sd1-badte"]))
    torch.save(load_file(str(out["sd1-kohya"])), d / "sd1-pickled.pt")

    xunet = tl.random_lora(sdxl.unet, tl.linear_names(sdxl.unet, endings=SD_UNET), seed=5)
    xte1 = tl.random_lora(sdxl.text_encoder, tl.linear_names(sdxl.text_encoder, endings=CLIP), seed=6)
    xte2 = tl.random_lora(sdxl.text_encoder_2, tl.linear_names(sdxl.text_encoder_2, endings=CLIP), seed=7)
    out["sdxl-kohya"] = tl.save_kohya_sd(d / "sdxl-kohya.safetensors", xunet,
                                         {"text_encoder": xte1, "text_encoder_2": xte2}, alpha=ALPHA, rank=RANK,
                                         unet_config=sdxl.unet.config)
    k = ALPHA / RANK
    out["sdxl-diffusers"] = tl.save_diffusers_lora(
        d / "sdxl-diffusers.safetensors", StableDiffusionXLPipeline, unet_lora_layers=tl.scaled(xunet, k),
        text_encoder_lora_layers=tl.scaled(xte1, k), text_encoder_2_lora_layers=tl.scaled(xte2, k))

    # every linear of the double blocks (kohya fuses q/k/v into BFL's qkv); single blocks' linear1 is
    # left out because diffusers' kohya reader splits it at FLUX.1's real width
    double = tl.linear_names(flux.transformer, under="transformer_blocks.")
    ft = tl.random_lora(flux.transformer, double, seed=8)
    out["flux-kohya"] = tl.save_kohya_flux(d / "flux-kohya.safetensors", ft, alpha=ALPHA, rank=RANK)
    out["flux-diffusers"] = tl.save_diffusers_lora(d / "flux-diffusers.safetensors", FluxPipeline,
                                                   transformer_lora_layers=tl.scaled(ft, k))
    single = tl.linear_names(flux.transformer, under="single_transformer_blocks.")
    ai = tl.random_lora(flux.transformer, single + double[:4], seed=9)
    out["flux-aitoolkit"] = tl.save_prefixed(d / "flux-aitoolkit.safetensors", "transformer.", ai,
                                             {"format": "pt", "software": '{"name": "ai-toolkit"}'})
    out["flux-aitoolkit-modules"] = len(single) + 4
    return out


@pytest.fixture(scope="module")
def sd1(family_engine, loras):
    return family_engine("tiny-sd1.safetensors")


def close(a, b):
    # two correct paths to one picture round differently (lorastudio.testing.pixels)
    return max_level_difference(a, b) <= MAX_LEVELS


def test_sd1_kohya_and_diffusers_formats_apply_the_same_update(sd1, loras):
    base = pixels(sd1, "a red circle")
    kohya = run(sd1, "a red circle <lora:sd1-kohya:1>")
    assert np.abs(arr(kohya.image) - base).max() > 8
    assert close(arr(kohya.image), pixels(sd1, "a red circle <lora:sd1-diffusers:1>"))
    from lorastudio.core.hashes import lora_hash_for_infotext

    assert f'Lora hashes: "sd1-kohya: {lora_hash_for_infotext(loras["sd1-kohya"])}"' in kohya.infotext
    # the prompt without the tag is the bare model again, bit for bit: the fused weights are
    # restored from their backup, and the call is the same as the first
    assert np.array_equal(pixels(sd1, "a red circle"), base)


def test_weights_add_and_zero_is_no_lora(sd1, loras):
    base = pixels(sd1, "a red circle")
    # weight 0 merges an update of exact zeros: the same weights, the same call
    assert np.array_equal(pixels(sd1, "a red circle <lora:sd1-kohya:0>"), base)
    a = pixels(sd1, "a red circle <lora:sd1-kohya:1>")
    b = pixels(sd1, "a red circle <lora:sd1-other:1>")
    both = run(sd1, "a red circle <lora:sd1-kohya:0.5> <lora:sd1-other:0.5>")
    for single in (a, b, base):
        assert np.abs(arr(both.image) - single).max() > 4
    assert "sd1-kohya: " in both.infotext and "sd1-other: " in both.infotext
    # the same file twice is one LoRA with the summed weight
    assert close(pixels(sd1, "a red circle <lora:sd1-kohya:0.5><lora:sd1-kohya:0.5>"), a)


def test_fused_and_unfused_give_the_same_pixels(sd1, family_engine, with_settings, loras):
    flux = family_engine("flux1-tiny.safetensors")
    for engine, prompt in [(sd1, "a red circle <lora:sd1-kohya:0.7> <lora:sd1-other:0.4>"),
                           (flux, "a red circle <lora:flux-kohya:0.8> <lora:flux-aitoolkit:0.5>")]:
        fused = pixels(engine, prompt)
        with with_settings(engine, lora_mode="unfused"):
            unfused = pixels(engine, prompt)
        assert close(fused, unfused)
        assert np.abs(fused - pixels(engine, "a red circle")).max() > 4


def test_sdxl_kohya_and_diffusers_formats_apply_the_same_update(family_engine, loras):
    engine = family_engine("tiny-sdxl.safetensors")
    base = pixels(engine, "a red circle")
    kohya = pixels(engine, "a red circle <lora:sdxl-kohya:1>")
    assert np.abs(kohya - base).max() > 8
    assert close(kohya, pixels(engine, "a red circle <lora:sdxl-diffusers:1>"))


def test_flux_kohya_diffusers_and_aitoolkit_files(family_engine, loras):
    engine = family_engine("flux1-tiny.safetensors")
    base = pixels(engine, "a red circle")
    kohya = pixels(engine, "a red circle <lora:flux-kohya:1>")
    assert np.abs(kohya - base).max() > 4
    assert close(kohya, pixels(engine, "a red circle <lora:flux-diffusers:1>"))
    assert np.abs(pixels(engine, "a red circle <lora:flux-aitoolkit:1>") - base).max() > 4
    # every module the ai-toolkit file names received its LoRA
    transformer = engine.model.pipe.transformer
    names = [n for n, m in transformer.named_modules() if any("flux_aitoolkit" in a for a in getattr(m, "lora_A", {}))]
    assert len(names) == loras["flux-aitoolkit-modules"]


@pytest.mark.parametrize("model, lora, made_for", [
    ("tiny-sd1.safetensors", "sdxl-kohya", "SDXL"),
    ("tiny-sdxl.safetensors", "sd1-kohya", "SD 1.x"),
    ("tiny-sd1.safetensors", "flux-kohya", "FLUX.1"),
])
def test_lora_for_another_family_is_refused_naming_the_file(family_engine, loras, tmp_path, model, lora, made_for):
    engine = family_engine(model)
    with pytest.raises(LoraError) as e:
        engine.txt2img({**SMALL, "prompt": f"x <lora:{lora}:1>"}, outdir=tmp_path / "out")
    assert str(loras[lora]) in str(e.value) and f"made for {made_for}" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("lora, key", [("sd1-badkey", "'lora_unet_mid_block_attentions_7_proj_in.lora_down.weight'"),
                                       ("sd1-badte", "'lora_te_text_model_encoder_layers_9_self_attn_q_proj.lora_")])
def test_key_that_maps_to_no_module_is_named(sd1, loras, tmp_path, lora, key):
    with pytest.raises(LoraError) as e:
        sd1.txt2img({**SMALL, "prompt": f"x <lora:{lora}:1>"}, outdir=tmp_path / "out")
    assert key in str(e.value) and str(loras[lora]) in str(e.value)
    assert not (tmp_path / "out").exists()
    # nothing of the refused file stays behind
    assert np.array_equal(pixels(sd1, "a red circle <lora:sd1-kohya:0>"), pixels(sd1, "a red circle"))


def test_unknown_lora_lists_the_closest_names(sd1, tmp_path):
    with pytest.raises(NotFound) as e:
        sd1.txt2img({**SMALL, "prompt": "x <lora:sd1-kohia:1>"}, outdir=tmp_path / "out")
    assert "sd1-kohya" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_pickled_lora_needs_the_opt_in(sd1, loras, with_settings):
    with pytest.raises(PickleRefused) as e:
        run(sd1, "a red circle <lora:sd1-pickled:1>")
    assert "sd1-pickled.pt" in str(e.value) and "safetensors" in str(e.value)
    with with_settings(sd1, allow_pickle=True):
        assert close(pixels(sd1, "a red circle <lora:sd1-pickled:1>"), pixels(sd1, "a red circle <lora:sd1-kohya:1>"))


# --- a server that has used any LoRAs at any weights draws exactly what it drew before ------------

def _fresh(family_root, tmp_path, **settings):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    engine = GenerationEngine(StudioSettings(models_dir=family_root, outdir=tmp_path / "out", device="cpu",
                                             include_bundled=False, **settings))
    engine.load("tiny-sd1.safetensors")
    return engine


def _base_weights(pipe) -> dict:
    """Every base weight of the LoRA-able components, by its name without peft's wrapping."""
    out = {}
    for comp in ("unet", "text_encoder"):
        for k, v in getattr(pipe, comp).state_dict().items():
            if "lora_" not in k:
                out[f"{comp}.{k.replace('.base_layer', '')}"] = v.clone()
    return out


def _same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _write_variant(loras, name: str, scale: float):
    """A copy of the sd1-other file with its update scaled: a distinct LoRA (its own hash)."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(loras["sd1-other"]))
    path = loras["sd1-other"].with_name(f"{name}.safetensors")
    save_file({k: v * scale if "lora_B" in k or "lora.up" in k else v for k, v in sd.items()}, str(path))
    return path


def test_loras_used_then_dropped_leave_the_base_weights_bit_exact(family_root, loras, tmp_path):
    """A1111 restores fused weights from a backup; subtracting the update again leaves rounding behind."""
    from lorastudio.lora.activation import ActiveLora, activate

    engine = _fresh(family_root, tmp_path)
    before = _base_weights(engine.model.pipe)
    base = pixels(engine, "a red circle")
    for prompt in ["<lora:sd1-kohya:1>", "<lora:sd1-kohya:0.3> <lora:sd1-other:-2>", "<lora:sd1-diffusers:10>",
                   "<lora:sd1-other:-10> <lora:sd1-kohya:7.5>"]:
        assert np.abs(pixels(engine, "a red circle " + prompt) - base).max() > 0
    # a weight no tag may carry (refused at the prompt), straight through the activation layer
    pipe, family = engine.model.pipe, engine.model.family
    huge = [ActiveLora("sd1-kohya", loras["sd1-kohya"], "0" * 12, 1e39, 1e39)]
    activate(pipe, family, huge, engine._lora, fuse=True)
    assert not _same_weights(_base_weights(pipe), before)
    pixels(engine, "a red circle")  # the bare model again
    assert _same_weights(_base_weights(pipe), before)
    assert np.array_equal(pixels(engine, "a red circle"), base)  # same process, same call


def test_adapters_are_bounded_and_unused_ones_unloaded(family_root, loras, tmp_path):
    engine = _fresh(family_root, tmp_path, lora_cache_size=2)
    base = pixels(engine, "a red circle")
    names = [_write_variant(loras, f"sd1-lru-{k}", 1 + k / 4).stem for k in range(5)]
    for name in names:
        pixels(engine, f"a red circle <lora:{name}:1>")
    unet = engine.model.pipe.unet
    adapters = {a for m in unet.modules() for a in getattr(m, "lora_A", {})}
    # the LoRA in use plus the two most recently used ones; the rest deleted with their parameters
    assert len(adapters) == 3 and all(any(n.replace("-", "_") in a for a in adapters) for n in names[-3:])
    per_adapter = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n) // 3
    assert per_adapter > 0
    assert np.array_equal(pixels(engine, "a red circle"), base)
    adapters = {a for m in unet.modules() for a in getattr(m, "lora_A", {})}
    assert len(adapters) == 2  # nothing in use: only the two kept
    # a kept LoRA comes back with the same pixels as when it was first loaded
    again = _fresh(family_root, tmp_path / "b", lora_cache_size=2)
    assert np.array_equal(pixels(engine, f"a red circle <lora:{names[-1]}:1>"),
                          pixels(again, f"a red circle <lora:{names[-1]}:1>"))


@pytest.mark.parametrize("prompt, shown", [
    ("x <lora:sd1-kohya:1e39>", "<lora:sd1-kohya:1e39>"),
    ("x <lora:sd1-kohya:-11>", "<lora:sd1-kohya:-11>"),
    ("x <lora:sd1-kohya:0:12>", "<lora:sd1-kohya:0:12>"),
    ("x <lora:sd1-kohya:6> <lora:sd1-kohya:6>", "<lora:sd1-kohya>"),  # the sum is what is applied
])
def test_lora_weights_past_the_limit_are_refused_naming_the_tag(sd1, loras, tmp_path, prompt, shown):
    from lorastudio.core.errors import InvalidParameter

    with pytest.raises(InvalidParameter) as e:
        sd1.txt2img({**SMALL, "prompt": prompt}, outdir=tmp_path / "out")
    assert e.value.field == "prompt" and shown in str(e.value) and "10" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_an_overflowing_lora_is_an_error_not_a_black_png_and_the_base_survives(family_root, loras, tmp_path):
    """A file whose update overflows float32 at weight 1: NaN latents are reported, nothing is saved."""
    from safetensors.torch import load_file, save_file

    from lorastudio.core.errors import NonFiniteResult

    sd = load_file(str(loras["sd1-kohya"]))
    save_file({k: v * 1e36 if k.endswith("lora_up.weight") else v for k, v in sd.items()},
              str(loras["sd1-kohya"].with_name("sd1-overflow.safetensors")))
    engine = _fresh(family_root, tmp_path)
    before = _base_weights(engine.model.pipe)
    base = pixels(engine, "a red circle")
    for mode in ("fused", "unfused"):
        engine.settings = engine.settings.model_copy(update={"lora_mode": mode})
        with pytest.raises(NonFiniteResult) as e:
            engine.txt2img({**SMALL, "prompt": "a red circle <lora:sd1-overflow:1>"}, outdir=tmp_path / "out")
        assert "NaN or infinite" in str(e.value)
        assert not (tmp_path / "out").exists()
    from PIL import Image

    with pytest.raises(NonFiniteResult):
        engine.img2img({**SMALL, "prompt": "a red circle <lora:sd1-overflow:1>", "denoising_strength": 0.5},
                       [Image.new("RGB", (32, 32), (200, 30, 30))], outdir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert np.array_equal(pixels(engine, "a red circle"), base)
    assert _same_weights(_base_weights(engine.model.pipe), before)


def test_emphasis_that_would_overflow_is_clamped_and_draws_a_picture(sd1):
    base = pixels(sd1, "a red circle")
    for prompt in ["(" * 10_000 + "a red circle" + ")" * 10_000, "(a red circle:" + "9" * 400 + ")"]:
        img = run(sd1, prompt).image
        got = arr(img)
        assert got.std() > 10 and np.abs(got - base).max() > 4  # a picture, changed by the emphasis


def test_switching_a_to_b_to_none_without_reloading_is_bit_exact_against_fresh_models(family_root, loras, tmp_path):
    """A LoRA switch restores the merged weights from the backup before merging the next: B after A
    holds the weights of B on a fresh model, and none after B those of the fresh model, bit for bit."""
    switched = _fresh(family_root, tmp_path / "switched")
    fresh = _base_weights(switched.model.pipe)
    pixels(switched, "a red circle <lora:sd1-kohya:1>")
    pixels(switched, "a red circle <lora:sd1-other:0.7>")
    with_b = _base_weights(switched.model.pipe)
    only_b = _fresh(family_root, tmp_path / "only-b")
    pixels(only_b, "a red circle <lora:sd1-other:0.7>")
    assert not _same_weights(with_b, fresh)
    assert _same_weights(with_b, _base_weights(only_b.model.pipe))
    pixels(switched, "a red circle")
    assert _same_weights(_base_weights(switched.model.pipe), fresh)


def test_fast_mode_follows_the_lora_set(sd1):
    """The fast copy of the denoiser is remade when the LoRAs change: each fast picture is the exact
    picture of the same LoRA set, give or take bf16 rounding, and far from that of another set.

    The bound is not the 2/255 of test_fast_mode.py: these random LoRAs at weight 1 (alpha/rank 2)
    push the tiny model's activations where bf16 rounding moves the picture by ~4.5/255 on average
    (measured; 0.6/255 without a LoRA), against ~29/255 between the LoRA sets."""
    from lorastudio.testing.pixels import as_levels

    def mean_levels(a, b):
        return float(np.abs(as_levels(a) - as_levels(b)).mean())

    exact = {p: pixels(sd1, p) for p in ["a red circle <lora:sd1-kohya:1>", "a red circle <lora:sd1-other:1>",
                                         "a red circle"]}
    for prompt, picture in exact.items():
        fast = pixels(sd1, prompt, fast=True)
        own = mean_levels(fast, picture)
        assert own <= 6.0, prompt
        assert all(mean_levels(fast, other) > 3 * own for p, other in exact.items() if p != prompt), prompt
        fused_qkv = sd1.fast_mode().copy.fused_qkv
        assert fused_qkv == sd1.fast_mode().levers.fuse_qkv  # merged LoRAs are in the weights QKV fusion joins


def test_fast_mode_with_unfused_adapters_keeps_them(sd1, with_settings):
    """An adapter beside the weights: the copy keeps q, k, v apart (a fused projection would skip it)."""
    from lorastudio.testing.pixels import as_levels

    prompt = "a red circle <lora:sd1-other:1>"
    with with_settings(sd1, lora_mode="unfused"):
        exact, fast = pixels(sd1, prompt), pixels(sd1, prompt, fast=True)
        assert not sd1.fast_mode().copy.fused_qkv
        without = pixels(sd1, "a red circle")
    own = float(np.abs(as_levels(fast) - as_levels(exact)).mean())
    assert own <= 6.0 and float(np.abs(as_levels(fast) - as_levels(without)).mean()) > 3 * own
