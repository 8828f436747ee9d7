"""A1111's composable prompts split (`prompt_parser.get_multicond_prompt_list`), pure Python."""

import pytest

from lorastudio.core.composable_prompts import split_composable


@pytest.mark.parametrize("prompt, texts, parts", [
    # Expected values written from A1111's two regexes by hand: \bAND\b splits, a trailing
    # ":number" (spaces allowed) is the weight, the text keeps leading and loses trailing spaces.
    ("a cat", ("a cat",), ((0, 1.0),)),
    ("a cat AND a dog:0.5", ("a cat", " a dog"), ((0, 1.0), (1, 0.5))),
    ("a cat:1.5", ("a cat",), ((0, 1.5),)),  # A1111 weighs a lone prompt too
    ("(cat:1.2) AND dog : -0.3 ", ("(cat:1.2)", " dog"), ((0, 1.0), (1, -0.3))),
    ("cat AND cat AND dog", ("cat", " cat", " dog"), ((0, 1.0), (1, 1.0), (2, 1.0))),
    ("x AND x:2 AND x", ("x", " x"), ((0, 1.0), (1, 2.0), (1, 1.0))),  # equal texts share an entry
    ("ANDROID and ANDes", ("ANDROID and ANDes",), ((0, 1.0),)),  # a whole word, upper case only
    ("[cat:dog:0.5] AND x:.5", ("[cat:dog:0.5]", " x"), ((0, 1.0), (1, 0.5))),
    ("cat:2.", ("cat",), ((0, 2.0),)),
    ("", ("",), ((0, 1.0),)),
])
def test_split_is_a1111s(prompt, texts, parts):
    got = split_composable(prompt)
    assert (got.texts, got.parts) == (texts, parts)


def test_plain_and_weights_per_text():
    assert split_composable("a cat").is_plain and split_composable("a cat:1").is_plain
    assert not split_composable("a cat:0.5").is_plain and not split_composable("a AND b").is_plain
    assert split_composable("x AND x:2 AND x").weights_per_text() == [1.0, 3.0]
