"""Dynamic prompts (sd-dynamic-prompts syntax) through the dynamicprompts library."""

import numpy as np
from dynamicprompts.generators import RandomPromptGenerator

from lorastudio.core.infotext import parse_infotext

SMALL = dict(width=32, height=32, steps=2, sampler="Euler", cfg_scale=5.0, seed=40)


def arr(img):
    return np.asarray(img.convert("RGB"))


def test_random_mode_draws_each_prompt_with_its_images_seed(engine):
    template = "a {red|green|blue|yellow} {circle|square} on {2$$wood|stone|sand}"
    r = engine.txt2img({**SMALL, "prompt": template, "dynamic_prompts": "random", "batch_size": 3}, save=False)
    # The library's own answer for these seeds (the extension passes the image seeds).
    want = RandomPromptGenerator(seed=40).generate(template, 3, seeds=[40, 41, 42])
    got = [parse_infotext(im.infotext)["Prompt"] for im in r.images]
    assert got == want and "{" not in got[0]
    assert [im.seed for im in r.images] == [40, 41, 42]
    assert parse_infotext(r.images[0].infotext)["Template"] == template
    # The resolved prompt alone gives the same picture: the seed decides the prompt, reproducibly.
    plain = engine.txt2img({**SMALL, "prompt": got[1], "seed": 41}, save=False).images[0]
    assert np.array_equal(arr(plain.image), arr(r.images[1].image))
    again = engine.txt2img({**SMALL, "prompt": template, "dynamic_prompts": "random", "seed": 41}, save=False)
    assert parse_infotext(again.images[0].infotext)["Prompt"] == got[1]


def test_combinatorial_mode_walks_the_combinations(engine):
    r = engine.txt2img({**SMALL, "prompt": "a {red|blue} {cat|dog}", "dynamic_prompts": "combinatorial",
                        "batch_size": 2, "batch_count": 2}, save=False)
    assert [parse_infotext(im.infotext)["Prompt"] for im in r.images] == ["a red cat", "a red dog", "a blue cat",
                                                                          "a blue dog"]


def test_wildcards_come_from_the_wildcards_folder(engine, with_settings, tmp_path):
    (tmp_path / "wild" / "animals").mkdir(parents=True)
    (tmp_path / "wild" / "colors.txt").write_text("crimson\n# a comment\nteal\n", encoding="utf-8")
    (tmp_path / "wild" / "animals" / "small.txt").write_text("mouse\n", encoding="utf-8")
    with with_settings(engine, wildcards_dir=tmp_path / "wild"):
        r = engine.txt2img({**SMALL, "prompt": "a __colors__ __animals/small__", "dynamic_prompts": "random",
                            "batch_size": 4}, save=False)
    prompts = {parse_infotext(im.infotext)["Prompt"] for im in r.images}
    assert prompts <= {"a crimson mouse", "a teal mouse"} and prompts


def test_off_keeps_braces_as_text(engine):
    r = engine.txt2img({**SMALL, "prompt": "a {red|blue} cat"}, save=False)
    assert r.images[0].infotext.startswith("a {red|blue} cat\n") and "Template" not in r.images[0].infotext
