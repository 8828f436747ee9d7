"""Dynamic prompts (the sd-dynamic-prompts extension's syntax) through the `dynamicprompts` library.

`{a|b}`, `{2$$a|b|c}`, `{1-3$$a|b|c}` and `__wildcard__` files from the wildcards folder (the
extension's layout: `<name>.txt`, one choice per line, subfolders as `__folder/name__`).

- random: image i's prompt is drawn with image i's seed (the extension's default, "unlink seed
  from prompt" off), so a seed gives the same prompt and the same picture again;
- combinatorial: image i gets the i-th combination (cycling when there are fewer combinations
  than images).

Each image is generated on its own with its resolved prompt; its infotext holds that prompt, and
the extension's `Template` / `Negative Template` fields hold what was typed.
"""

from __future__ import annotations

from itertools import cycle, islice
from pathlib import Path

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.params import GenerationParams
from lorastudio.generation.noise import all_seeds, resolve_seed


def resolve_prompts(template: str, mode: str, seeds: list[int], wildcards_dir: Path | None) -> list[str]:
    """One prompt per seed."""
    from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator
    from dynamicprompts.wildcards import WildcardManager

    if not template.strip():
        return [template] * len(seeds)
    manager = WildcardManager(Path(wildcards_dir)) if wildcards_dir is not None else None
    try:
        if mode == "combinatorial":
            found = CombinatorialPromptGenerator(wildcard_manager=manager).generate(template, max_prompts=len(seeds))
            prompts = list(islice(cycle(found), len(seeds))) if found else [template] * len(seeds)
        else:
            prompts = RandomPromptGenerator(wildcard_manager=manager, seed=seeds[0]).generate(
                template, len(seeds), seeds=list(seeds))
    except Exception as exc:  # the library raises its own parse errors
        raise InvalidParameter("prompt", template[:80], f"is not a valid dynamic prompt ({exc})") from None
    return [str(p) for p in prompts]


def run_dynamic(engine, params: GenerationParams, *, save: bool, on_progress=None, outdir=None):
    """txt2img with dynamic prompts: one engine call per image, each with its resolved prompt."""
    from lorastudio.generation.txt2img import GenerationResult

    n = params.batch_size * params.batch_count
    seed = resolve_seed(params.seed)
    seeds = all_seeds(seed, n)
    subseed = resolve_seed(params.subseed)
    folder = engine.wildcards_dir()
    prompts = resolve_prompts(params.prompt, params.dynamic_prompts, seeds, folder)
    negatives = resolve_prompts(params.negative_prompt, params.dynamic_prompts, seeds, folder)
    result = GenerationResult(seed=seed, all_seeds=seeds, params=params)
    extra = {"Template": params.prompt, "Negative Template": params.negative_prompt or None}
    for i, (s, prompt, negative) in enumerate(zip(seeds, prompts, negatives)):
        one = params.model_copy(update={"prompt": prompt, "negative_prompt": negative, "seed": s, "batch_size": 1,
                                        "batch_count": 1, "dynamic_prompts": "off",
                                        "subseed": all_seeds(subseed, n)[i]})
        progress = None if on_progress is None else (lambda b, step, steps, i=i: on_progress(i, step, steps))
        r = engine.txt2img(one, save=save, on_progress=progress, outdir=outdir, infotext_extra=extra)
        result.images.extend(r.images)
        if r.interrupted:
            result.interrupted = True
            break
    return result
