"""Infotext writing/parsing against AUTOMATIC1111 v1.10.1.

data/infotext_a1111_golden.json holds infotexts (hand-written in the layouts A1111 1.10,
Forge, SD.Next and ComfyUI savers produce, plus fuzzed edge cases) together with the dict
A1111's own `parse_generation_parameters` returned for each, run outside this repository
with gradio/shared stubbed and stock settings. Key order is compared too, because the CLI
prints the dict as JSON and users diff it against A1111's PNG Info output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.infotext import format_infotext, parse_infotext, quote, unquote

GOLDEN = json.loads((Path(__file__).parent / "data" / "infotext_a1111_golden.json").read_text("utf-8"))
CASES = {case["name"]: case for case in GOLDEN["cases"]}


@pytest.mark.parametrize("name", list(CASES))
def test_parse_matches_a1111(name):
    case = CASES[name]
    got = parse_infotext(case["text"])
    assert got == case["expected"]
    assert list(got) == list(case["expected"]), "key order differs from A1111"
    # JSON keeps int/bool apart from str, so this also pins A1111's value types.
    assert json.dumps(got, ensure_ascii=False) == json.dumps(case["expected"], ensure_ascii=False)


def test_golden_file_covers_the_required_kinds_of_infotext():
    texts = " ".join(case["text"] for case in GOLDEN["cases"])
    for needle in ("Lora hashes: \"", "TI hashes: \"", "Hires prompt: \"", "BREAK", "(solo:1.2)", "桜",
                   "Version: v1.10.1", "Version: f2.0.1v1.10.1", "App: SD.Next", "Version: ComfyUI"):
        assert needle in texts, needle
    assert sum(name.startswith("fuzz_") for name in CASES) >= 50


def test_real_a1111_infotext_fields():
    parsed = parse_infotext(CASES["a1111_1.10_hires_lora_ti_break"]["text"])
    assert parsed["Prompt"].startswith("masterpiece, best quality, 1girl, (solo:1.2)")
    assert parsed["Prompt"].endswith("BREAK\nblue sky, cherry blossoms, ((detailed eyes))")
    assert parsed["Negative prompt"] == "(worst quality, low quality:1.4), easynegative, badhandv4"
    assert parsed["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert parsed["TI hashes"] == "easynegative: c74b4e810b03, badhandv4: 5e40d722fc3d"
    assert parsed["Hires prompt"] == "masterpiece, best quality, 1girl, (solo:1.2), detailed eyes"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")
    assert parsed["Clip skip"] == "2" and parsed["Steps"] == "28" and parsed["Seed"] == "3452342098"
    assert "Size" not in parsed


def test_prompt_containing_params_like_text_stays_prompt():
    parsed = parse_infotext(CASES["a1111_prompt_contains_steps"]["text"])
    assert parsed["Prompt"] == 'Steps: 20, Sampler: Euler a, CFG scale: 7, a poster that says "Steps: 20"'
    assert parsed["Steps"] == "30" and parsed["Sampler"] == "DPM++ 2M"


def test_last_line_with_fewer_than_three_params_is_prompt():
    parsed = parse_infotext("a dog\nSteps: 20, Sampler: Euler")
    assert parsed["Prompt"] == "a dog\nSteps: 20, Sampler: Euler"
    assert "Steps" not in parsed


def test_japanese_and_quoted_lora_hashes():
    parsed = parse_infotext(CASES["a1111_1.10_japanese"]["text"])
    assert parsed["Prompt"] == "1人の少女, 桜の木の下, 着物, (笑顔:1.1)"
    assert parsed["Negative prompt"] == "低品質, ぼやけた"
    assert parsed["Lora hashes"] == "着物スタイル: 0123456789ab, 桜: ba9876543210"
    assert parsed["Model"] == "日本語モデル"


def test_defaults_and_version_backcompat():
    old = parse_infotext(CASES["a1111_1.5_ddim_old_timelines"]["text"])
    assert old["Old prompt editing timelines"] is True and old["Pad conds v0"] is True
    assert old["Downcast alphas_cumprod"] is True
    new = parse_infotext(CASES["a1111_1.10_sdxl_img2img_multiline"]["text"])
    assert "Downcast alphas_cumprod" not in new
    assert new["Clip skip"] == "1" and new["Schedule type"] == "Exponential"
    assert new["Hires resize-1"] == 0 and new["Masked area padding"] == 32
    forge = parse_infotext(CASES["forge_flux_nf4"]["text"])
    # Forge's version string is not PEP 440, so A1111 applies no backcompat flags.
    assert "Downcast alphas_cumprod" not in forge


def test_hires_prompt_equal_to_prompt_reads_as_empty_only_for_new_versions():
    assert parse_infotext(CASES["a1111_1.10_hires_prompt_same_as_prompt"]["text"])["Hires prompt"] == ""
    kept = parse_infotext(CASES["a1111_1.7_hires_prompt_kept_for_old_version"]["text"])
    assert kept["Hires prompt"] == "a photo of a corgi, studio lighting"


def test_emphasis_flag_follows_a1111_attention_weights():
    base = "\nSteps: 1, Sampler: Euler, CFG scale: 7"
    assert parse_infotext("a (cat)" + base)["Emphasis"] == "Original"
    assert parse_infotext("a [cat]" + base)["Emphasis"] == "Original"
    assert parse_infotext("a (cat : 0.5 )" + base)["Emphasis"] == "Original"
    for plain in ("a cat BREAK dog", "a \\(cat\\)", "[(cat)]", "(dog:1.0)", "a:b"):
        assert "Emphasis" not in parse_infotext(plain + base), plain
    # A1111 raises on an unparseable weight; we read it as text, so the bracket stays open
    # and (as for any unclosed bracket) weights what follows.
    assert parse_infotext("(cat:1.2.3)" + base)["Emphasis"] == "Original"
    assert parse_infotext("[cat:1.2.3)]" + base)["Emphasis"] == "Original"
    assert "Emphasis" not in parse_infotext("cat:.)" + base)


def test_old_hires_fix_with_zero_size_does_not_crash():
    # A1111 divides by zero here; the values are left as written.
    parsed = parse_infotext("x\nSteps: 1, Sampler: Euler, Size: 0x0, First pass size: 0x0")
    assert (parsed["Size-1"], parsed["First pass size-1"], parsed["Hires resize-1"]) == ("0", "0", 0)


def test_empty_value_is_dropped_like_a1111():
    parsed = parse_infotext("x\nSteps: 1, Sampler: , CFG scale: 7, Seed: 3")
    assert "Sampler" not in parsed and parsed["CFG scale"] == "7"


def _a1111_110_params():
    return {
        "Steps": 28, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7, "Seed": 3452342098,
        "Size": "512x768", "Model hash": "7f96a1a9ca", "Model": "anything-v5", "VAE hash": "735e4c3a44",
        "VAE": "vae-ft-mse-840000-ema-pruned.safetensors", "Denoising strength": 0.45, "Clip skip": 2,
        "Hires prompt": "masterpiece, best quality, 1girl, (solo:1.2), detailed eyes", "Hires upscale": 2,
        "Hires steps": 15, "Hires upscaler": "R-ESRGAN 4x+ Anime6B",
        "Lora hashes": "add_detail: 7c6bad76eb54", "TI hashes": "easynegative: c74b4e810b03, badhandv4: 5e40d722fc3d",
        "Emphasis": "Original", "Version": "v1.10.1",
    }


def test_format_reproduces_a1111_text_exactly():
    text = CASES["a1111_1.10_hires_lora_ti_break"]["text"]
    prompt, rest = text.split("\nNegative prompt: ")
    negative = rest.split("\n")[0]
    assert format_infotext(prompt, negative, _a1111_110_params()) == text


def test_format_layout_rules():
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": None, "Size": "512x512",
              "Tiling": "Tiling", "Lora hashes": "b: 0123456789ab", "Note": "桜, 着物", "Flag": True}
    text = format_infotext("a cat", "", params)
    assert text == ('a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, Size: 512x512, Tiling, '
                    'Lora hashes: "b: 0123456789ab", Note: "桜, 着物", Flag: True')
    assert format_infotext("", "", {"Steps": 1, "Sampler": "Euler", "Seed": 5}) == "Steps: 1, Sampler: Euler, Seed: 5"
    assert format_infotext("p", "n", {}) == "p\nNegative prompt: n"
    multi = format_infotext("a\nb", "c\nd", {"Template": "x\ny", "Steps": 2, "Seed": 3})
    assert multi == 'a\nb\nNegative prompt: c\nd\nTemplate: "x\\ny", Steps: 2, Seed: 3'


@pytest.mark.parametrize("key", ["S", "Bad,key", "Key: x", " leading", "-dash", "new\nline", 5])
def test_format_rejects_keys_a1111_cannot_read(key):
    with pytest.raises(InvalidParameter):
        format_infotext("p", "", {key: "v", "Steps": 1})


def test_quote_unquote():
    assert quote("plain") == "plain" and quote(7) == 7
    assert quote('a, "b"') == '"a, \\"b\\""'
    assert quote("桜: x") == '"桜: x"'  # ensure_ascii=False keeps non-ASCII readable
    assert unquote('"a, \\"b\\""') == 'a, "b"'
    assert unquote('"not json\\q"') == '"not json\\q"'
    assert unquote("plain") == "plain" and unquote("") == ""


# ---- property: what format writes, parse reads back ------------------------------------

# Keys the parser rewrites or derives (they are tested above, not round-tripped).
_DERIVED_KEYS = {
    "Prompt", "Negative prompt", "Hires prompt", "Hires negative prompt", "Hypernet", "Hypernet strength",
    "Version", "Size-1", "Size-2", "Hires resize-1", "Hires resize-2", "First pass size-1",
    "First pass size-2", "Old prompt editing timelines", "Pad conds v0", "Downcast alphas_cumprod",
    "Refiner switch by sampling steps",
}
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _a1111_keeps(key: str, value: str) -> bool:
    """Whether A1111's own format+parse preserves this value (the layout is lossy otherwise).

    Quoted values (containing `,` `:` or a newline) always survive, except a WxH followed by
    a newline. Bare values lose leading whitespace, and trailing whitespace when last; a
    bare value starting with a double quote is read as the start of a JSON string (which
    can swallow the following parameters up to the next quote); an empty value is
    dropped; a value equal to its key is written as the bare key; a WxH value becomes
    key-1/key-2.
    """
    if value == "" or value == key or _IMAGE_SIZE.match(value):
        return False
    if any(c in value for c in ",:\n"):
        return True
    return value == value.strip() and value[0] != '"'


def _keeps_prompt(text: str) -> bool:
    """Prompt lines are stripped, a leading empty line vanishes, and a line starting with
    "Negative prompt:" starts the negative prompt."""
    lines = text.split("\n")
    return (text == "" or lines[0] != "") and all(
        line == line.strip() and not line.startswith("Negative prompt:") for line in lines
    )


_tricky = st.text(alphabet=st.sampled_from(list(',:\n"\\ {}[]()ab桜\u3000\t')), max_size=12)
# Arbitrary text, steered into the two shapes A1111 keeps: bare (stripped, no `,:\n`) or
# quoted (anything containing one of `,:\n`), so the filter below rarely rejects.
_bare = st.text(alphabet=st.characters(blacklist_characters=",:\n"), min_size=1, max_size=20).map(str.strip)
_needs_quotes = st.tuples(st.text(max_size=15), st.sampled_from([",", ":", "\n", ", ", ": "]), st.text(max_size=8)
                          ).map("".join)
_values = st.one_of(_bare, _needs_quotes, _tricky, st.integers().map(str)).filter(lambda v: _a1111_keeps("", v))
_keys = st.tuples(st.sampled_from("ABHSVxz桜é_0"), st.text(alphabet="abeXYZ09桜é _/-", min_size=1, max_size=11)
                  ).map("".join).filter(lambda k: k not in _DERIVED_KEYS)
_prompts = st.lists(st.one_of(st.text(max_size=15), _tricky), max_size=4).map(
    lambda lines: "\n".join(line.strip() for line in lines).lstrip("\n")).filter(_keeps_prompt)


@settings(max_examples=120, deadline=None)
@given(prompt=_prompts, negative=_prompts,
       params=st.dictionaries(_keys, _values, min_size=3, max_size=6)
       .filter(lambda d: all(_a1111_keeps(k, v) for k, v in d.items())))
def test_format_then_parse_round_trips(prompt, negative, params):
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    for key, value in params.items():
        assert parsed[key] == value, key


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1).map(lambda s: s + ",").filter(lambda s: not _IMAGE_SIZE.match(s)))
def test_any_text_needing_quotes_round_trips(value):
    params = {"Steps": 1, "Sampler": "Euler", "Text": value, "Seed": 2}
    assert parse_infotext(format_infotext("p", "", params))["Text"] == value


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parse_never_raises_and_always_has_prompts(text):
    parsed = parse_infotext(text)
    assert isinstance(parsed["Prompt"], str) and isinstance(parsed["Negative prompt"], str)
    assert parsed["Clip skip"] is not None
