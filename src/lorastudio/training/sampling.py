"""Preview images during training, through the same txt2img code users generate with."""

from __future__ import annotations

from pathlib import Path

from lorastudio.core.params import GenerationParams
from lorastudio.core.png_text import write_png_with_infotext
from lorastudio.core.prompt_syntax import escape_prompt_text
from lorastudio.training.project import VersionDir


def default_prompts(config) -> list[str]:
    trigger = escape_prompt_text(config.trigger)
    return [f"{trigger}, {config.class_word}" if config.class_word else trigger]


def make_sampler(model, config, vdir: VersionDir, pipe):
    """Return sample(step) -> [paths]; the pipeline's LoRA layers are live, so no tags are needed."""
    from lorastudio.generation.txt2img import run_txt2img

    prompts = list(config.sample_prompts) or default_prompts(config)
    size = config.sample_size or config.resolution[0]

    def sample(step: int) -> list[Path]:
        paths = []
        for i, prompt in enumerate(prompts):
            params = GenerationParams(prompt=prompt, steps=config.sample_steps, seed=config.sample_seed + i,
                                      width=size, height=size, cfg_scale=model.family.default_cfg,
                                      sampler=model.family.default_sampler)
            result = run_txt2img(model, params, activate_loras=lambda tags: [], model_hash=None, save_to=None,
                                 pipeline_override=pipe)
            for im in result.images:
                path = vdir.samples / f"step-{step:06d}-{i:02d}.png"
                write_png_with_infotext(im.image, path, im.infotext)
                paths.append(path)
        return paths

    return sample
