"""Preview images during training, through the same txt2img code users generate with."""

from __future__ import annotations

from pathlib import Path

from lorastudio.core.params import GenerationParams
from lorastudio.core.paths import ModelsRoot
from lorastudio.core.png_text import write_png_with_infotext
from lorastudio.core.prompt_syntax import escape_prompt_text
from lorastudio.training.project import VersionDir


def default_prompts(config) -> list[str]:
    trigger = escape_prompt_text(config.trigger)
    return [f"{trigger}, {config.class_word}" if config.class_word else trigger]


def preview_control(model, config, pipe, size: int):
    """The ControlNet unit of the previews (config.sample_controlnet), or None. Loaded and checked here,
    before the first step, so a wrong name or picture stops the run before it trains."""
    if config.sample_controlnet is None:
        return None
    from PIL import Image, UnidentifiedImageError

    from lorastudio.core.errors import InvalidParameter
    from lorastudio.generation.controlnet_units import ControlNetUnit, controlnet_title, prepare_control
    from lorastudio.models.controlnet import find_controlnet, load_controlnet
    from lorastudio.models.load_options import load_options

    try:
        with Image.open(config.sample_control_image) as im:
            picture = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidParameter("sample_control_image", str(config.sample_control_image),
                               f"not a readable picture: {exc}") from None
    root = ModelsRoot.at(config.models_dir)
    entry = find_controlnet(root.root, config.sample_controlnet)
    dtype = str(model.family.denoiser(pipe).dtype).removeprefix("torch.")  # the ControlNet runs beside it
    controlnet = load_controlnet(entry.path, model.family, pipe, load_options(root, device=str(pipe.device),
                                                                               dtype=dtype))
    unit = ControlNetUnit(model=entry.name, module=config.sample_control_module, image=picture)
    return prepare_control([unit], width=size, height=size, cfg=model.family.default_cfg > 1,
                           load=lambda name: (controlnet, controlnet_title(entry.path)), models_root=root.root,
                           device=pipe.device)  # the detector runs where the previews are made


def make_sampler(model, config, vdir: VersionDir, pipe):
    """Return sample(step) -> [paths]; the pipeline's LoRA layers are live, so no tags are needed."""
    from lorastudio.generation.txt2img import run_txt2img

    prompts = list(config.sample_prompts) or default_prompts(config)
    size = config.sample_size or config.resolution[0]
    control = preview_control(model, config, pipe, size)

    def sample(step: int) -> list[Path]:
        paths = []
        for i, prompt in enumerate(prompts):
            params = GenerationParams(prompt=prompt, steps=config.sample_steps, seed=config.sample_seed + i,
                                      width=size, height=size, cfg_scale=model.family.default_cfg,
                                      sampler=model.family.default_sampler)
            result = run_txt2img(model, params, activate_loras=lambda tags: [], model_hash=None, save_to=None,
                                 pipeline_override=pipe, control=control)
            for im in result.images:
                path = vdir.samples / f"step-{step:06d}-{i:02d}.png"
                write_png_with_infotext(im.image, path, im.infotext)
                paths.append(path)
        return paths

    return sample
