"""A1111's styles.csv and its merge rule (modules/styles.py), with expected strings worked out by hand."""

import pytest

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.styles import apply_styles, load_styles

CSV = '''name,prompt,negative_prompt
"Cinematic","cinematic still of {prompt}, film grain","cartoon, drawing"
Sharp,"sharp focus, 8k",
"Old text column",,
'''


def test_load_and_apply_like_a1111(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text("\ufeff" + CSV, encoding="utf-8")  # A1111 reads with utf-8-sig
    styles = load_styles(path)
    assert list(styles) == ["Cinematic", "Sharp", "Old text column"]
    # {prompt} is replaced; a style without it is appended after ", "; empty parts are dropped.
    assert apply_styles("a cat", "", ["Cinematic"], styles) == ("cinematic still of a cat, film grain",
                                                              "cartoon, drawing")
    assert apply_styles(" a cat ", "blurry", ["Sharp"], styles) == ("a cat, sharp focus, 8k", "blurry")
    assert apply_styles("a cat", "blurry", ["Cinematic", "Sharp"], styles) == (
        "cinematic still of a cat, film grain, sharp focus, 8k", "blurry, cartoon, drawing")
    assert apply_styles("", "", ["Sharp"], styles) == ("sharp focus, 8k", "")


def test_unknown_style_is_an_error_naming_it(tmp_path):
    with pytest.raises(InvalidParameter) as e:
        apply_styles("a", "", ["Nope"], load_styles(tmp_path / "missing.csv"))
    assert e.value.field == "styles" and "Nope" in str(e.value)
