"""Prompt editing and alternation in generation (the schedules themselves: tests/core/test_prompt_schedule.py)."""

import numpy as np
import pytest
import torch

from lorastudio.core.errors import InvalidParameter
from lorastudio.testing.pixels import assert_same_picture

SMALL = dict(width=32, height=32, steps=4, sampler="Euler", cfg_scale=5.0, seed=5, negative_prompt="blurry")
A, B = "a red circle", "a blue square"


def arr(img):
    return np.asarray(img.convert("RGB"))


def gen(engine, prompt, **kw):
    return engine.txt2img({**SMALL, "prompt": prompt, **kw}, save=False).images[0]


@pytest.mark.pixels
def test_when_0_and_1_are_the_plain_prompts(engine):
    plain_a, plain_b = gen(engine, A), gen(engine, B)
    # One text for the whole run: the same encoding, the same calls -> equal pixels.
    assert np.array_equal(arr(gen(engine, f"[{A}:{B}:0]").image), arr(plain_b.image))
    assert np.array_equal(arr(gen(engine, f"[{A}:{B}:1.0]").image), arr(plain_a.image))
    assert np.array_equal(arr(gen(engine, f"[{A}|{A}]").image), arr(plain_a.image))


@pytest.mark.pixels
def test_mid_run_edit_matches_a_plain_diffusers_loop_that_swaps_the_prompt(engine):
    from diffusers import EulerDiscreteScheduler

    ours = gen(engine, f"[{A}:{B}:0.25]")
    pipe = engine.model.pipe
    pipe.scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                            beta_schedule="scaled_linear")
    with torch.no_grad():
        embeds = {t: torch.cat(pipe.encode_prompt(t, "cpu", 1, True, "blurry")[::-1]) for t in (A, B)}

    # A1111: 0.25 of 4 steps is step 1; denoiser calls 0, 1 use A, calls 2, 3 use B.
    def swap(p, i, t, kw):
        kw["prompt_embeds"] = embeds[A if i + 1 <= 1 else B]
        return kw

    ref = pipe(prompt_embeds=embeds[A][1:], negative_prompt_embeds=embeds[A][:1], width=32, height=32,
               num_inference_steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(5),
               callback_on_step_end=swap, callback_on_step_end_tensor_inputs=["prompt_embeds"]).images[0]
    assert_same_picture(ref, ours.image)
    assert not np.array_equal(arr(ours.image), arr(gen(engine, A).image))
    assert not np.array_equal(arr(ours.image), arr(gen(engine, B).image))
    # The infotext keeps the prompt as written (A1111 does too).
    assert ours.infotext.startswith(f"[{A}:{B}:0.25]\n")


def test_sdxl_swaps_pooled_embeddings_too(family_engine):
    engine = family_engine("tiny-sdxl.safetensors")
    edited = gen(engine, f"[{A}|{B}]")
    again = gen(engine, f"[{A}|{B}]")
    assert np.array_equal(arr(edited.image), arr(again.image))
    assert not np.array_equal(arr(edited.image), arr(gen(engine, A).image))


def test_flux_refuses_scheduled_prompts_by_name(family_engine):
    engine = family_engine("flux1-tiny.safetensors")
    with pytest.raises(InvalidParameter) as e:
        engine.txt2img({**SMALL, "sampler": "Euler (flow)", "prompt": f"[{A}|{B}]"}, save=False)
    assert e.value.field == "prompt" and "FLUX" in str(e.value)
    # A schedule of one text is that text, for every family.
    out = engine.txt2img({**SMALL, "sampler": "Euler (flow)", "prompt": f"[{A}:{B}:0]"}, save=False).images[0]
    plain = engine.txt2img({**SMALL, "sampler": "Euler (flow)", "prompt": B}, save=False).images[0]
    assert np.array_equal(arr(out.image), arr(plain.image))
