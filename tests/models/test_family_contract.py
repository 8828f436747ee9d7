"""Every registered family keeps the protocol callers rely on, checked on its tiny real pipeline.

Callers outside models/families/ ask the family for component names, latents, labels and
training pieces instead of knowing them; these tests hold each family to what it declares,
and compare its names with diffusers' own view of the pipeline (independent of our code).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lorastudio.core.samplers import SAMPLERS, SCHEDULE_TYPES, SamplerChoice, resolve_sampler
from lorastudio.models.families.registry import families, family_by_name
from lorastudio.testing.tiny_flux import tiny_flux_pipeline
from lorastudio.testing.tiny_sd import tiny_sd1_pipeline, tiny_sdxl_pipeline

BUILDERS = {"sd1": tiny_sd1_pipeline, "sdxl": tiny_sdxl_pipeline, "flux": tiny_flux_pipeline}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family_and_pipe(request):
    torch.set_num_threads(1)
    return family_by_name(request.param), BUILDERS[request.param]()


def test_every_registered_family_is_covered_here():
    assert {f.name for f in families()} == set(BUILDERS)


def test_component_names_match_the_pipeline(family_and_pipe):
    family, pipe = family_and_pipe
    components = pipe.components
    assert family.denoiser(pipe) is components[family.denoiser_name]
    assert isinstance(family.denoiser(pipe), torch.nn.Module)
    assert family.text_encoder_names and set(family.text_encoder_names) <= set(components)
    assert family.text_encoders(pipe) == [components[n] for n in family.text_encoder_names]
    # diffusers' LoRA loader names the same denoiser and a subset of our text encoders
    loadable = list(pipe._lora_loadable_modules)
    assert loadable[0] == family.denoiser_name
    assert set(loadable[1:]) <= set(family.text_encoder_names)


def test_trainable_modules_and_lora_targets_agree(family_and_pipe):
    family, pipe = family_and_pipe
    alone = family.trainable_modules(pipe, text_encoders=False)
    assert list(alone) == [family.denoiser_name] and alone[family.denoiser_name] is family.denoiser(pipe)
    both = family.trainable_modules(pipe, text_encoders=True)
    assert list(both)[0] == family.denoiser_name and set(list(both)[1:]) <= set(family.text_encoder_names)
    assert len(both) > 1
    assert set(both) <= set(family.lora_targets())


def test_encoded_images_have_the_shape_of_txt2img_noise(family_and_pipe):
    family, pipe = family_and_pipe
    side = 4 * pipe.vae_scale_factor * 2  # fits SD latents and FLUX's 2x2 packing
    with torch.no_grad():
        latents = family.encode_images(pipe, torch.zeros(1, 3, side, side))
    assert tuple(latents.shape) == (1, *family.latent_shape(pipe, side, side))


def test_training_defaults_use_the_checkpoints_own_size(family_and_pipe):
    family, pipe = family_and_pipe
    defaults = family.training_defaults(pipe)
    assert defaults["resolution"] == [family.native_resolution(pipe)]
    assert {"rank", "alpha", "lr", "te_lr", "steps", "train_text_encoder"} <= set(defaults)


def test_modelspec_fields(family_and_pipe):
    family, _ = family_and_pipe
    fields = family.modelspec_fields()
    assert fields["modelspec.architecture"] == f"{family.modelspec_architecture}/lora"
    assert fields["modelspec.implementation"] == family.modelspec_implementation
    assert ("modelspec.prediction_type" in fields) == (family.modelspec_prediction_type is not None)


def test_sampler_labels_read_back_as_a_sampler_the_family_runs(family_and_pipe):
    # An infotext's "Sampler" must resolve (core.samplers, as --from-png and the API read it) to a
    # sampler this family accepts; otherwise its own images could not be made again.
    family, _ = family_and_pipe
    supported = [SamplerChoice(spec, schedule) for spec in SAMPLERS for schedule in SCHEDULE_TYPES
                 if family.supports_sampler(SamplerChoice(spec, schedule))]
    assert supported
    for choice in supported:
        again = resolve_sampler(family.sampler_label(choice), choice.schedule)
        assert family.supports_sampler(again), (choice.sampler.name, family.sampler_label(choice))


def test_training_loss_does_not_follow_a_preview_scheduler(family_and_pipe):
    # Previews replace pipe.scheduler with a sampler; the loss must come from the schedule built
    # at the start of the run. Same computation twice: exactly equal.
    family, pipe = family_and_pipe
    schedule = family.noise_schedule(pipe)
    side = 4 * pipe.vae_scale_factor * 2
    with torch.no_grad():
        latents = family.encode_images(pipe, torch.zeros(2, 3, side, side))
        cond = family.encode_captions(pipe, ["a red circle", "a blue square"], clip_skip=1)
    config = SimpleNamespace(noise_offset=0.0, min_snr_gamma=None, timestep_sampling="shift",
                             discrete_flow_shift=3.0, guidance=1.0)
    modules = family.trainable_modules(pipe, text_encoders=False)

    def loss():
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        with torch.no_grad():
            return family.training_loss(pipe, modules, latents, cond, gens, config, schedule=schedule)

    before = loss()
    own = pipe.scheduler
    try:
        # what a preview leaves behind, with another noise schedule so that reading it would show
        changed = {k: v for k, v in {"beta_end": 0.5, "shift": 10.0}.items() if k in own.config}
        assert changed
        pipe.scheduler = type(own).from_config({**own.config, **changed})
        after = loss()
    finally:
        pipe.scheduler = own
    assert torch.isfinite(before)
    assert torch.equal(before, after)
