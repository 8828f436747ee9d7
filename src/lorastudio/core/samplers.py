"""A1111 sampler and schedule-type names, as data.

A1111 (since 1.9) writes `Sampler: DPM++ 2M, Schedule type: Karras`; older versions and many
clients send the combined name `DPM++ 2M Karras`. Both are accepted. Each sampler maps to one
diffusers scheduler class plus constructor arguments; the model family decides which of these
it supports (FLUX only has flow-matching Euler).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from lorastudio.core.errors import InvalidParameter


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    scheduler_class: str
    kwargs: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    # Samplers that consume fresh noise every step: they need a generator per image.
    stochastic: bool = False
    # A1111 runs these through k-diffusion: the levels are spaced over t = 999..0 whatever
    # spacing the checkpoint's scheduler config names, and "Automatic" is the sampler's own
    # schedule (A1111 v1.10 modules/sd_samplers_kdiffusion.py, option 'scheduler').
    kdiffusion: bool = False
    default_schedule: str = "Uniform"
    # A1111's 'discard_next_to_last_sigma': levels for steps + 1, the next-to-last dropped.
    discard_next_to_last_sigma: bool = False


SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
                ("k_dpmpp_2m",), kdiffusion=True, default_schedule="Karras"),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", {}, ("k_dpmpp_sde",), stochastic=True, kdiffusion=True,
                default_schedule="Karras"),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                ("k_dpmpp_2m_sde",), stochastic=True, kdiffusion=True, default_schedule="Exponential"),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, ("k_euler_a", "k_euler_ancestral", "Euler Ancestral"),
                stochastic=True, kdiffusion=True),
    SamplerSpec("Euler", "EulerDiscreteScheduler", {}, ("k_euler",), kdiffusion=True),
    SamplerSpec("LMS", "LMSDiscreteScheduler", {}, ("k_lms",), kdiffusion=True),
    SamplerSpec("Heun", "HeunDiscreteScheduler", {}, ("k_heun",), kdiffusion=True),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", {}, ("k_dpm_2",), kdiffusion=True, default_schedule="Karras",
                discard_next_to_last_sigma=True),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("k_dpm_2_a",), stochastic=True, kdiffusion=True,
                default_schedule="Karras", discard_next_to_last_sigma=True),
    # Not k-diffusion in A1111 (sd_samplers_timesteps.py): "Automatic" keeps the model's timesteps.
    SamplerSpec("DDIM", "DDIMScheduler", {}, ("ddim",)),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {}, ("unipc",)),
    # FLUX (and other rectified-flow models) sample with flow-matching Euler; Forge writes it as "Euler".
    SamplerSpec("Euler (flow)", "FlowMatchEulerDiscreteScheduler", {}, ("flow_euler",)),
)

# Schedule type -> scheduler constructor arguments. "Automatic" keeps the model's own schedule.
SCHEDULE_TYPES: dict[str, dict] = {
    "Automatic": {},
    "Uniform": {"timestep_spacing": "linspace"},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {},
}

_BY_NAME = {s.name.lower(): s for s in SAMPLERS}
_BY_NAME.update({a.lower(): s for s in SAMPLERS for a in s.aliases})
_SCHEDULES = {k.lower(): k for k in SCHEDULE_TYPES}


@dataclass(frozen=True)
class SamplerChoice:
    sampler: SamplerSpec
    schedule: str

    @property
    def effective_schedule(self) -> str:
        """The schedule type that runs: A1111's "Automatic" is a k-diffusion sampler's own default."""
        if self.schedule == "Automatic" and self.sampler.kdiffusion:
            return self.sampler.default_schedule
        return self.schedule

    @property
    def schedule_kwargs(self) -> dict:
        sched = SCHEDULE_TYPES[self.effective_schedule]
        if self.sampler.kdiffusion and "timestep_spacing" not in sched:
            # k-diffusion's levels span t = 999..0: SDXL's "leading" spacing would start at t < 999.
            sched = {"timestep_spacing": "linspace", **sched}
        return sched

    @property
    def scheduler_kwargs(self) -> dict:
        return {**self.sampler.kwargs, **self.schedule_kwargs}


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def resolve_sampler(name: str, schedule: str | None = None) -> SamplerChoice:
    """Accept `DPM++ 2M` + `Karras`, or the legacy combined `DPM++ 2M Karras`."""
    raw = (name or "").strip()
    sched = (schedule or "").strip() or "Automatic"
    spec = _BY_NAME.get(raw.lower())
    if spec is None:
        for key in sorted(_SCHEDULES, key=len, reverse=True):
            if raw.lower().endswith(" " + key):
                spec = _BY_NAME.get(raw[: -len(key) - 1].strip().lower())
                if spec is not None:
                    if sched.lower() not in ("automatic", key):
                        raise InvalidParameter("scheduler", schedule, f"conflicts with the schedule in sampler name {raw!r}")
                    sched = _SCHEDULES[key]
                break
    if spec is None:
        close = difflib.get_close_matches(raw, sampler_names(), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sampler_names())}"
        raise InvalidParameter("sampler", name, "unknown sampler" + hint)
    canonical = _SCHEDULES.get(sched.lower())
    if canonical is None:
        raise InvalidParameter("scheduler", schedule, f"unknown schedule type; known: {', '.join(SCHEDULE_TYPES)}")
    return SamplerChoice(spec, canonical)
