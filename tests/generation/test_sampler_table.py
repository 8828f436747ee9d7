"""Every A1111 sampler name and schedule type against a table written here from A1111 and k-diffusion.

The expected values do not come from lorastudio: the scheduler class per name is A1111's
`modules/sd_samplers_kdiffusion.py` list (v1.10) read against diffusers' "A1111/k-diffusion"
mapping table, and the noise levels are k-diffusion's formulas (Karras et al. 2022 rho=7,
exponential, A1111's sgm_uniform), evaluated below in float64 on the SD 1.x beta schedule. The
scheduler checked is the one a real txt2img call leaves on the pipeline, so a mapping error in
any layer (names, kwargs, family, build) shows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

STEPS = 4

# A1111 label -> (k-diffusion function A1111 calls, A1111's aliases, diffusers class, config values,
#                 A1111's default schedule for "Automatic", discard_next_to_last_sigma)
A1111_SAMPLERS = {
    "DPM++ 2M": ("sample_dpmpp_2m", ["k_dpmpp_2m"], "DPMSolverMultistepScheduler",
                 {"algorithm_type": "dpmsolver++", "solver_order": 2}, "karras", False),
    # diffusers' DPMSolverSDEScheduler is the port of k-diffusion's sample_dpmpp_sde (Brownian tree).
    "DPM++ SDE": ("sample_dpmpp_sde", ["k_dpmpp_sde"], "DPMSolverSDEScheduler", {}, "karras", False),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", ["k_dpmpp_2m_sde"], "DPMSolverMultistepScheduler",
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, "exponential", False),
    "Euler a": ("sample_euler_ancestral", ["k_euler_a", "k_euler_ancestral"], "EulerAncestralDiscreteScheduler",
                {}, "uniform", False),
    "Euler": ("sample_euler", ["k_euler"], "EulerDiscreteScheduler", {}, "uniform", False),
    "LMS": ("sample_lms", ["k_lms"], "LMSDiscreteScheduler", {}, "uniform", False),
    "Heun": ("sample_heun", ["k_heun"], "HeunDiscreteScheduler", {}, "uniform", False),
    # A1111 v1.10 gives both {'scheduler': 'karras', 'discard_next_to_last_sigma': True}.
    "DPM2": ("sample_dpm_2", ["k_dpm_2"], "KDPM2DiscreteScheduler", {}, "karras", True),
    "DPM2 a": ("sample_dpm_2_ancestral", ["k_dpm_2_a"], "KDPM2AncestralDiscreteScheduler", {}, "karras", True),
    # Not k-diffusion in A1111 (sd_samplers_timesteps.py): DDIM and UniPC have their own steppers.
    "DDIM": (None, ["ddim"], "DDIMScheduler", {}, None, False),
    "UniPC": (None, ["unipc"], "UniPCMultistepScheduler", {}, None, False),
}
SCHEDULE_LABELS = {"Karras": "karras", "Exponential": "exponential", "SGM Uniform": "sgm_uniform"}
# diffusers lacks these schedules on these classes; lorastudio must refuse them with a clear error.
UNAVAILABLE = {("Euler a", "Karras"), ("Euler a", "Exponential"), ("DDIM", "Karras"), ("DDIM", "Exponential")}


def _sd1_discrete_sigmas() -> np.ndarray:
    # SD 1.x: scaled_linear betas 0.00085 .. 0.012 over 1000 steps (the v1-inference.yaml values).
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def _t_to_sigma(t: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    # k-diffusion DiscreteSchedule.t_to_sigma: linear interpolation of log sigma between timesteps.
    return np.exp(np.interp(t, np.arange(len(sigmas)), np.log(sigmas)))


def expected_sigmas(schedule: str, n: int, discard: bool = False) -> np.ndarray:
    table = _sd1_discrete_sigmas()
    smin, smax = table[0], table[-1]
    if discard:  # A1111: compute n+1 levels, then drop the next-to-last
        full = expected_sigmas(schedule, n + 1)
        return np.concatenate([full[:-2], full[-1:]])
    if schedule == "karras":
        rho = 7.0
        ramp = np.linspace(0, 1, n)
        s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    elif schedule == "exponential":
        s = np.exp(np.linspace(math.log(smax), math.log(smin), n))
    elif schedule == "sgm_uniform":
        s = _t_to_sigma(np.linspace(len(table) - 1, 0, n + 1)[:-1], table)
    elif schedule == "uniform":  # k-diffusion get_sigmas(n): t evenly from 999 to 0
        s = _t_to_sigma(np.linspace(len(table) - 1, 0, n), table)
    else:
        raise AssertionError(schedule)
    return np.append(s, 0.0)


def _distinct(sigmas) -> np.ndarray:
    """The noise levels in order, once each: second-order schedulers list each level twice."""
    s = np.asarray(sigmas, dtype=np.float64)
    keep = np.concatenate([[True], np.abs(np.diff(s)) > 1e-9])
    return s[keep]


def _used_scheduler(engine, sampler: str, schedule: str):
    engine.txt2img(dict(prompt="a red circle", width=32, height=32, steps=STEPS, cfg_scale=5.0, seed=3,
                        sampler=sampler, scheduler=schedule), save=False)
    return engine.model.pipe.scheduler


@pytest.mark.parametrize("name", list(A1111_SAMPLERS))
def test_each_name_and_alias_builds_the_matching_diffusers_scheduler(engine, name):
    _, aliases, cls, config, _, _ = A1111_SAMPLERS[name]
    for label in [name, *aliases]:
        sched = _used_scheduler(engine, label, "Automatic")
        # DPM2's scheduler is a subclass (A1111's discarded level); the class it runs is diffusers'.
        assert cls in [c.__name__ for c in type(sched).__mro__], label
        assert {k: sched.config[k] for k in config} == config, label
        # The model's own training schedule is kept (SD 1.x betas), whatever the class.
        assert (sched.config.beta_schedule, sched.config.beta_start, sched.config.beta_end) == \
            ("scaled_linear", 0.00085, 0.012)


KDIFF = [n for n, row in A1111_SAMPLERS.items() if row[0] is not None]


@pytest.mark.parametrize("name,schedule", [
    (n, s) for n in KDIFF for s in SCHEDULE_LABELS if (n, s) not in UNAVAILABLE])
def test_schedule_types_give_k_diffusion_noise_levels(engine, name, schedule):
    sched = _used_scheduler(engine, name, schedule)
    got = _distinct(sched.sigmas)
    want = expected_sigmas(SCHEDULE_LABELS[schedule], STEPS, discard=A1111_SAMPLERS[name][5])
    assert got.shape == want.shape, (got, want)
    if schedule == "SGM Uniform":
        # A1111 places the n levels at t = linspace(999, 0, n+1)[:-1] (fractional timesteps,
        # log-sigma interpolated); diffusers' "trailing" spacing puts them on the integer timesteps
        # below (999, 749, 499, 249 for 4 steps): up to one timestep apart, which moves sigma by
        # 0.3 % at the 4 steps used here (measured: 1.1 % at 20 steps, 2.1 % at 30, at the lowest
        # levels). The first level is sigma_max exactly in both.
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-6)
        assert got[0] == pytest.approx(want[0], rel=1e-6)
    else:
        # float32 scheduler sigmas against float64 formulas.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", KDIFF)
def test_automatic_schedule_is_a1111s_default_for_the_sampler(engine, name):
    sched = _used_scheduler(engine, name, "Automatic")
    want = expected_sigmas(A1111_SAMPLERS[name][4], STEPS, discard=A1111_SAMPLERS[name][5])
    np.testing.assert_allclose(_distinct(sched.sigmas), want, rtol=1e-5, atol=1e-6)


def test_sdxl_euler_starts_from_sigma_max_as_a1111(family_engine):
    engine = family_engine("tiny-sdxl.safetensors")
    engine.txt2img(dict(prompt="a red circle", width=32, height=32, steps=STEPS, cfg_scale=5.0, seed=3,
                        sampler="Euler"), save=False)
    # SDXL trains on the same betas as SD 1.x, so A1111's Euler levels are the same numbers.
    np.testing.assert_allclose(_distinct(engine.model.pipe.scheduler.sigmas), expected_sigmas("uniform", STEPS),
                               rtol=1e-5, atol=1e-6)


def test_ddim_uses_a1111s_uniform_timesteps(engine):
    # A1111 (ldm ddim_discretize="uniform"): every 1000 // n-th step, offset by one, descending.
    sched = _used_scheduler(engine, "DDIM", "Automatic")
    c = 1000 // STEPS
    assert sched.timesteps.tolist() == [t + 1 for t in range(0, 1000, c)][::-1]


@pytest.mark.parametrize("name,schedule", sorted(UNAVAILABLE))
def test_schedules_diffusers_lacks_are_refused_by_name(engine, name, schedule):
    from lorastudio.core.errors import InvalidParameter

    with pytest.raises(InvalidParameter) as e:
        _used_scheduler(engine, name, schedule)
    assert schedule in str(e.value) and name in str(e.value)


def test_the_karras_formula_here_matches_a1111s_published_sd15_range():
    # Sanity of the reference itself: A1111 shows sigma_max 14.6146, sigma_min 0.0292 for SD 1.x.
    s = _sd1_discrete_sigmas()
    assert round(s[-1], 4) == 14.6146 and round(s[0], 4) == 0.0292
    k = expected_sigmas("karras", 10)
    assert k[0] == pytest.approx(s[-1]) and k[-2] == pytest.approx(s[0]) and k[-1] == 0
