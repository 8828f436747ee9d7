"""The ControlNet extension's reference units (reference_only, reference_adain, reference_adain+attn): no
ControlNet model, the picture steers the UNet's self-attention / block statistics for one call.

With random tiny weights a reference picture has no meaning to the model (the tiny VAE even encodes every
picture to nearly the same latent), and no pull of the picture's colour or pattern towards the reference
shows (measured: mean colours within 0.5 levels either way; with opposite pattern latents as references,
the results' difference correlates 0.002 with the references' difference). So the checks hold the
mechanism where it is defined: every self-attention of the main pass attends to the reference pass's
features (the result equals an independent re-implementation of diffusers' community
StableDiffusionReferencePipeline logic), and reference_adain gives a block's output the mean and variance
of the reference pass's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.core.errors import InvalidParameter
from lorastudio.testing.pixels import assert_same_picture, max_level_difference

P = dict(prompt="a red circle", negative_prompt="blur", seed=5, width=32, height=32, steps=4, cfg_scale=5.0,
         sampler="Euler", scheduler="Automatic")


def picture(seed: int, size=(32, 32)) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8))


def ref_unit(**kw):
    return {"module": "reference_only", "model": "None", "image": picture(1), **kw}


def same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_reference_only_acts_repeats_and_leaves_nothing_behind(family_engine, tmp_path):
    from lorastudio.interfaces.cli.controlnet_opts import controlnet_units

    engine = family_engine("tiny-sd1.safetensors")
    unet = engine.model.pipe.unet
    processors = dict(unet.attn_processors)
    plain = engine.txt2img(P, save=False).images[0].image
    first = engine.txt2img(P, save=True, outdir=tmp_path, controlnet=[ref_unit()]).images[0]
    again = engine.txt2img(P, save=False, controlnet=[ref_unit()]).images[0]
    after = engine.txt2img(P, save=False).images[0].image
    # it acts: the tiny VAE encodes any picture to about the same latent, so the change is small (measured:
    # 2 levels); the same call repeats bit for bit (below), so any difference is the unit's
    assert max_level_difference(plain, first.image) > 0
    assert same(first.image, again.image)  # its noise comes from the seed
    assert same(plain, after)  # nothing left installed
    assert all(unet.attn_processors[k] is v for k, v in processors.items())
    assert not unet._forward_pre_hooks and not unet.mid_block._forward_hooks
    for change in (dict(weight=0.0), dict(guidance_end=0.0)):  # a unit that never acts is no unit, bit for bit
        assert same(plain, engine.txt2img(P, save=False, controlnet=[ref_unit(**change)]).images[0].image)
    assert ('ControlNet 0: "Module: reference_only, Model: None, Weight: 1.0, Resize Mode: Crop and Resize, '
            'Low Vram: False, Threshold A: 0.5, Guidance Start: 0.0') in first.infotext
    # --from-png: the unit read back from the PNG (its picture given again) makes the same picture
    picture(1).save(tmp_path / "ref.png")
    units = controlnet_units(None, [tmp_path / "ref.png"], None, None, from_png=first.path)
    assert [(u.module, u.model, u.threshold_a) for u in units] == [("reference_only", "None", 0.5)]
    assert same(first.image, engine.txt2img(P, save=False, controlnet=units).images[0].image)
    # the CLI's flags: --controlnet None --control-module reference_only --control-image ref.png
    flags = controlnet_units(["None"], [tmp_path / "ref.png"], ["reference_only"], None)
    assert same(first.image, engine.txt2img(P, save=False, controlnet=flags).images[0].image)


class _CommunityReference:
    """diffusers' community StableDiffusionReferencePipeline (reference_attn) re-implemented over a plain
    StableDiffusionPipeline: each BasicTransformerBlock's forward is replaced; the UNet call runs the
    reference latent (noised with Euler's sigma, scaled as the sampler scales its input) in a write pass
    first. Differences from the community file, both lorastudio's choices: the reference latent is the VAE
    mean, and the step noise comes from a CPU generator seeded with the seed."""

    def __init__(self, pipe, ref_latent, seed: int, style_fidelity: float):
        from diffusers.models.attention import BasicTransformerBlock

        self.pipe, self.ref, self.fidelity = pipe, ref_latent, style_fidelity
        self.gen = torch.Generator("cpu").manual_seed(seed)
        self.mode = "read"
        self.blocks = [m for m in pipe.unet.modules() if isinstance(m, BasicTransformerBlock)]

    def block_forward(self, block):
        def forward(hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                    timestep=None, cross_attention_kwargs=None, class_labels=None, added_cond_kwargs=None):
            norm = block.norm1(hidden_states)
            if self.mode == "write":
                block.bank.append(norm.clone())
                out = block.attn1(norm)
            elif block.bank:
                with_ref = block.attn1(norm, encoder_hidden_states=torch.cat([norm] + block.bank, dim=1))
                uc = norm.shape[0] // 2  # diffusers' batch: [unconditional, conditional]
                kept = with_ref.clone()
                kept[:uc] = block.attn1(norm[:uc])
                out = self.fidelity * kept + (1 - self.fidelity) * with_ref
                block.bank = []
            else:
                out = block.attn1(norm)
            h = out + hidden_states
            h = block.attn2(block.norm2(h), encoder_hidden_states=encoder_hidden_states) + h
            return block.ff(block.norm3(h)) + h
        return forward

    def unet_forward(self, original):
        def forward(sample, timestep, encoder_hidden_states=None, **kw):
            sched = self.pipe.scheduler
            sigma = sched.sigmas[sched.step_index]
            noise = torch.randn(sample.shape, generator=self.gen)
            ref_xt = (self.ref.expand_as(sample) + sigma * noise) / (sigma ** 2 + 1) ** 0.5
            self.mode = "write"
            original(ref_xt, timestep, encoder_hidden_states=encoder_hidden_states)
            self.mode = "read"
            return original(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kw)
        return forward

    def __enter__(self):
        for b in self.blocks:
            b.bank = []
            b.forward = self.block_forward(b)
        self.pipe.unet.forward = self.unet_forward(self.pipe.unet.forward)
        return self

    def __exit__(self, *exc):
        for b in self.blocks:
            del b.forward, b.bank
        del self.pipe.unet.forward


def _euler_pipe(engine):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    p = engine.model.pipe
    pipe = StableDiffusionPipeline(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
                                   scheduler=EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085,
                                                                    beta_end=0.012, beta_schedule="scaled_linear"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pattern_latent(engine, sign: float):
    # The tiny VAE encodes every picture to nearly the same latent (~0.04), so the latent-level checks give
    # the reference as a latent: +-1.5 with the top half's sign flipped, a pattern the model can follow.
    r = torch.full((1, *engine.model.family.latent_shape(engine.model.pipe, 32, 32)), 1.5 * sign)
    r[:, :, : r.shape[2] // 2] *= -1
    return r


@pytest.mark.pixels
@pytest.mark.parametrize("mode, fidelity", [("Balanced", 0.5), ("My prompt is more important", 0.0)])
def test_reference_only_equals_the_community_pipeline_logic(family_engine, mode, fidelity):
    from lorastudio.generation.reference_attention import ReferenceUnit, installed

    engine = family_engine("tiny-sd1.safetensors")
    pipe = _euler_pipe(engine)
    call = dict(prompt=P["prompt"], negative_prompt=P["negative_prompt"], width=32, height=32, num_inference_steps=4,
                guidance_scale=5.0)

    def latents():
        return pipe(**call, output_type="latent", generator=torch.Generator().manual_seed(P["seed"])).images

    # 1. the mechanism, at the latents, with a reference the model sees (4 steps: Euler's timesteps are the
    # integers 999, 666, 333, 0, where the extension's rounded-timestep q_sample equals the sampler's noising)
    ref = _pattern_latent(engine, 1.0)
    with torch.no_grad():
        plain = latents()
        with installed(pipe, pipe.unet, [ReferenceUnit("reference_only", ref, 1.0, 0.0, 1.0, fidelity)],
                       seed=P["seed"], cfg=True):
            ours = latents()
        with _CommunityReference(pipe, ref, P["seed"], fidelity):
            theirs = latents()
    change = (ours - plain).abs().max().item()
    assert change > 0.05  # measured ~0.2 on latents of magnitude ~15
    torch.testing.assert_close(ours, theirs, atol=change * 1e-3, rtol=0)  # float rounding of two noisings only
    # 2. the engine's unit (picture encoded by the VAE, control mode -> fidelity) against the same logic
    pic = engine.txt2img(P, save=False, controlnet=[ref_unit(control_mode=mode)]).images[0].image
    pixels = torch.from_numpy(np.asarray(picture(1), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        vae = pipe.vae
        encoded = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        with _CommunityReference(pipe, encoded, P["seed"], fidelity):
            theirs_pic = pipe(**call, generator=torch.Generator().manual_seed(P["seed"])).images[0]
    assert_same_picture(theirs_pic, pic)


def test_adain_matches_the_reference_statistics(family_engine):
    """reference_adain: the middle block's output in the main pass has, per channel, the mean and variance
    of the write pass's (the conditional half; the unconditional half keeps half its own: fidelity 0.5)."""
    from lorastudio.generation.reference_attention import ReferenceUnit, installed

    engine = family_engine("tiny-sd1.safetensors")
    pipe = _euler_pipe(engine)
    ref = torch.randn((1, *engine.model.family.latent_shape(pipe, 32, 32)), generator=torch.Generator().manual_seed(2))
    seen = []
    unit = ReferenceUnit("reference_adain", ref, 1.0, 0.0, 1.0, 0.5)
    with torch.no_grad(), installed(pipe, pipe.unet, [unit], seed=1, cfg=True):
        handle = pipe.unet.mid_block.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
        pipe("x", width=32, height=32, num_inference_steps=2, guidance_scale=5.0)
        handle.remove()
    assert len(seen) == 4  # write, read for each step
    for write, read in (seen[0:2], seen[2:4]):
        var_w, mean_w = torch.var_mean(write[1:], dim=(2, 3), correction=0)
        var_r, mean_r = torch.var_mean(read[1:], dim=(2, 3), correction=0)
        torch.testing.assert_close(mean_r, mean_w, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(var_r, var_w, atol=1e-4, rtol=1e-3)
        assert (torch.var_mean(read[:1], dim=(2, 3), correction=0)[1] - mean_w).abs().max() > 1e-3
    plain = engine.txt2img(P, save=False).images[0].image
    both = engine.txt2img(P, save=False, controlnet=[ref_unit(module="reference_adain+attn")]).images[0].image
    assert max_level_difference(plain, both) > 2


def test_img2img_and_hires(family_engine):
    engine = family_engine("tiny-sd1.safetensors")
    i2i = dict(P, denoising_strength=0.6)
    plain = engine.img2img(i2i, [picture(4)], save=False).images[0].image
    ref = engine.img2img(i2i, [picture(4)], save=False, controlnet=[ref_unit(image=None)]).images[0]  # the init picture
    assert max_level_difference(plain, ref.image) > 0 and "Module: reference_only, Model: None" in ref.infotext
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    plain_inpaint = engine.img2img(i2i, [picture(4)], mask=mask, save=False).images[0].image
    inpaint = engine.img2img(i2i, [picture(4)], mask=mask, save=False, controlnet=[ref_unit()]).images[0].image
    assert max_level_difference(plain_inpaint, inpaint) > 0
    # "only masked": the reference picture goes through ControlPlan.for_masked_region as a ControlNet unit's
    # does (cropped like the init image, as the extension does; held in test_controlnet.py); pasted back
    opts = {"mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": True, "inpaint_full_res_padding": 0}
    big = picture(6, (64, 64))
    big_mask = Image.new("L", (64, 64), 0)
    big_mask.paste(255, (32, 16, 48, 32))
    region = engine.img2img(i2i, [big], big_mask, options=opts, save=False,
                            controlnet=[ref_unit(image=picture(7, (64, 64)))]).images[0]
    outside = np.ones((64, 64), bool)
    outside[16:32, 32:48] = False
    assert region.image.size == (64, 64) and np.array_equal(np.asarray(region.image)[outside], np.asarray(big)[outside])
    hires = dict(P, enable_hr=True, hr_upscaler="Lanczos", hr_scale=1.5, denoising_strength=0.5)
    plain_hr = engine.txt2img(hires, save=False).images[0].image
    ref_hr = engine.txt2img(hires, save=False, controlnet=[ref_unit()]).images[0].image
    assert ref_hr.size == (48, 48) and max_level_difference(plain_hr, ref_hr) > 0


def test_with_a_controlnet_unit_alongside(family_engine):
    # the tiny ControlNet's hint encoder shrinks 8x: the SD 1.x model with the 8x VAE, same UNet
    from lorastudio.testing.tiny_controlnet import save_controlnet_single_file, tiny_controlnet, tiny_sd1_x8_pipeline
    from lorastudio.testing.tiny_sd import save_sd1_single_file

    root = family_engine("tiny-sd1.safetensors").root.root
    if not (root / "Stable-diffusion" / "tiny-sd1-x8-ref.safetensors").exists():
        pipe = tiny_sd1_x8_pipeline(seed=0)
        save_sd1_single_file(pipe, root / "Stable-diffusion" / "tiny-sd1-x8-ref.safetensors")
        (root / "ControlNet").mkdir(exist_ok=True)
        save_controlnet_single_file(tiny_controlnet(pipe.unet, seed=5), pipe.unet.config,
                                    root / "ControlNet" / "control_tiny_for_reference.safetensors")
    engine = family_engine("tiny-sd1-x8-ref.safetensors")
    q = dict(P, width=64, height=64)
    cn = {"module": "none", "model": "control_tiny_for_reference", "image": picture(2, (64, 64))}
    plain = engine.txt2img(q, save=False).images[0].image
    alone = engine.txt2img(q, save=False, controlnet=[cn]).images[0].image
    together = engine.txt2img(q, save=False, controlnet=[cn, ref_unit(image=picture(1, (64, 64)))]).images[0]
    assert max_level_difference(alone, together.image) > 0 and max_level_difference(plain, alone) > 0
    assert 'ControlNet 0: "Module: none, Model: control_tiny_for_reference [' in together.infotext
    assert 'ControlNet 1: "Module: reference_only, Model: None' in together.infotext


def test_sdxl_reduces_fidelity_and_flux_refuses_by_name(family_engine):
    sdxl = family_engine("tiny-sdxl.safetensors")
    assert sdxl.model.family.reference_style_fidelity("reference_only", 0.5) == 0.125  # the extension's 0.5 ** 3
    plain = sdxl.txt2img(P, save=False).images[0].image
    ref = sdxl.txt2img(P, save=False, controlnet=[ref_unit()]).images[0].image
    zero = sdxl.txt2img(P, save=False, controlnet=[ref_unit(weight=0.0)]).images[0].image
    assert max_level_difference(plain, ref) > 0 and same(plain, zero)
    flux = family_engine("flux1-tiny.safetensors")
    with pytest.raises(InvalidParameter) as e:
        flux.txt2img(dict(prompt="x", width=32, height=32, steps=2, seed=1, sampler="Euler (flow)"), save=False,
                     controlnet=[ref_unit()])
    assert "reference_only" in str(e.value) and "FLUX.1" in str(e.value)
