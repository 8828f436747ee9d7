"""Turning an A1111 sampler choice into a diffusers scheduler for a given pipeline."""

from __future__ import annotations

import inspect

import diffusers

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.samplers import SCHEDULE_TYPES, SamplerChoice
from lorastudio.models.sigma_discard import discarding_class


def build_scheduler(base_config, choice: SamplerChoice):
    cls = getattr(diffusers, choice.sampler.scheduler_class)
    accepted = set(inspect.signature(cls.__init__).parameters)
    wanted = choice.scheduler_kwargs
    for key in SCHEDULE_TYPES[choice.effective_schedule]:
        if key not in accepted:
            raise InvalidParameter(
                "scheduler", choice.schedule, f"schedule type is not available with sampler {choice.sampler.name!r}")
    # Keys the checkpoint's config never set were filled with the *old* class's defaults (PNDM's
    # "leading" spacing, say); leave them out so each sampler keeps its own defaults.
    unset = set(dict(base_config).get("_use_default_values", []))
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_") and k not in unset}
    # Schedules chosen by the user replace the model's own; drop conflicting sigma flags.
    if any(k.startswith("use_") and k.endswith("_sigmas") for k in wanted):
        for k in list(config):
            if k.startswith("use_") and k.endswith("_sigmas"):
                config.pop(k)
    config.update({k: v for k, v in wanted.items() if k in accepted})
    if choice.sampler.discard_next_to_last_sigma:
        cls = discarding_class(cls)
    return cls.from_config(config)
