"""Prompt editing and alternation against A1111's own examples.

The expected schedules are the doctests of A1111's `modules/prompt_parser.py`
(`get_learned_conditioning_prompt_schedules([p], 10)` and, for the hires pass, `(..., 10, 10)`),
copied as data; A1111 1.10's "new" scheduling gives the same for these.
"""

import pytest

from lorastudio.core.prompt_schedule import prompt_schedule, text_at

A1111_DOCTESTS_10_STEPS = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
]


@pytest.mark.parametrize("prompt,want", A1111_DOCTESTS_10_STEPS)
def test_a1111_doctests(prompt, want):
    assert prompt_schedule(prompt, 10) == want


@pytest.mark.parametrize("prompt,want", [
    ("a [b:.5] c", [(10, "a b c")]),
    ("a [b:1.5] c", [(5, "a  c"), (10, "a b c")]),
])
def test_a1111_hires_pass_doctests(prompt, want):
    assert prompt_schedule(prompt, 10, hires_steps=10) == want


def test_when_0_and_1_are_the_plain_prompts():
    assert prompt_schedule("a [cat:dog:0] sits", 20) == [(20, "a dog sits")]
    assert prompt_schedule("a [cat:dog:1.0] sits", 20) == [(20, "a cat sits")]
    # Without a ".", 1 is step 1 (A1111 >= 1.6 "new" scheduling), not the whole run.
    assert prompt_schedule("a [cat:dog:1] sits", 20) == [(1, "a cat sits"), (20, "a dog sits")]


def test_text_is_kept_when_nothing_is_scheduled():
    for text in ("(masterpiece:1.2), [blurry], \\[literal\\]", "a|b outside brackets", "[a:b]", "x (y:1.1"):
        assert prompt_schedule(text, 20) == [(20, text)]


def test_step_lookup_is_a1111s_reconstruct_cond_batch():
    sched = prompt_schedule("[cat:dog:0.5]", 4)  # [(2, "cat"), (4, "dog")]
    # Denoiser call k (0-based) uses the first entry with k <= end: calls 0, 1, 2 see "cat".
    assert [text_at(sched, k) for k in range(4)] == ["cat", "cat", "cat", "dog"]
    assert text_at(sched, 7) == "cat"  # past the end A1111 falls back to the first entry


def test_brackets_nested_thousands_deep_are_text():
    deep = "[" * 5000 + "a:b:2" + "]" * 5000
    assert prompt_schedule(deep, 4) == [(4, deep)]
