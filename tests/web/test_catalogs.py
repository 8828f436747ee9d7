"""Every UI string comes from en.json / ja.json: a key used by the page and missing from either
catalog fails here (no browser needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "src" / "lorastudio" / "interfaces" / "web"
STATIC = WEB / "static"


def _load(lang: str) -> dict[str, str]:
    return json.loads((STATIC / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))


def _used_keys() -> set[str]:
    keys = set()
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    keys |= set(re.findall(r'data-i18n(?:-placeholder|-title)?="([^"]+)"', html))
    for js in (STATIC / "js").glob("*.js"):
        text = js.read_text(encoding="utf-8")
        keys |= set(re.findall(r'\bt\("([a-z_][\w.]*)"', text))
        keys |= set(re.findall(r'i18n: "([\w.]+)"', text))
        keys |= set(re.findall(r'\bsetText\([^,]+, "([a-z_][\w.]*)"', text))
    return keys


def _doctor_codes() -> set[str]:
    # The checker lists its codes in its docstring; every one gets a label.
    from lorastudio.training.dataset import checks

    doc = checks.__doc__.split("Codes (severity):", 1)[1]
    return set(re.findall(r"\b([a-z]+(?:_[a-z]+)*)\b(?=[,;( ]|\s*\()", doc)) - {"error", "warning", "cannot", "be",
                                                                             "skipped", "the", "picture", "is",
                                                                             "left", "out", "with", "skip_bad"}


def test_every_key_the_page_uses_is_in_both_catalogs():
    en, ja = _load("en"), _load("ja")
    used = _used_keys()
    assert len(used) > 100  # the scan itself works
    for lang, catalog in (("en", en), ("ja", ja)):
        missing = sorted(k for k in used if k not in catalog)
        assert not missing, f"{lang}.json lacks {missing}"


def test_catalogs_have_the_same_keys_and_no_empty_text():
    en, ja = _load("en"), _load("ja")
    assert set(en) == set(ja), f"only in en: {sorted(set(en) - set(ja))}; only in ja: {sorted(set(ja) - set(en))}"
    assert not [k for k, v in {**en, **ja}.items() if not v.strip()]
    # The same {placeholders} in both languages, or a value would be lost in translation.
    for key in en:
        assert set(re.findall(r"\{(\w+)\}", en[key])) == set(re.findall(r"\{(\w+)\}", ja[key])), key


def test_ja_is_a_translation():
    en, ja = _load("en"), _load("ja")
    # Words that stay as they are in Japanese UIs too (A1111 terms, symbols); everything else differs.
    same = {k for k in en if en[k] == ja[k]}
    assert same <= {"gen.mode.txt2img", "gen.mode.img2img", "gen.vae", "gen.clip_skip", "gen.seed.random_icon",
                    "gen.seed.reuse_icon", "verdict.ok", "gen.cn"}, sorted(same)


def test_every_dynamic_key_family_is_complete():
    from lorastudio.interfaces.web.training_aids import SERVER_FIELDS
    from lorastudio.services.jobs.models import JobStatus
    from lorastudio.training.config import TrainingConfig

    en, ja = _load("en"), _load("ja")
    codes = _doctor_codes()
    assert {"corrupt", "too_small", "duplicate", "missing_caption", "not_an_image"} <= codes  # the parse works
    needed = {f"doctor.{c}" for c in codes} | {"doctor.transparent"}
    needed |= {f"status.{s.value}" for s in JobStatus}
    needed |= {f"verdict.{v}" for v in ("ok", "warning", "error")}
    # The Advanced form labels every TrainingConfig field the schema endpoint exposes.
    needed |= {f"field.{name}" for name in TrainingConfig.model_fields if name not in SERVER_FIELDS}
    for lang, catalog in (("en", en), ("ja", ja)):
        missing = sorted(k for k in needed if k not in catalog)
        assert not missing, f"{lang}.json lacks {missing}"
