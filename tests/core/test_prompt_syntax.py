"""A1111 prompt syntax: emphasis parser, <lora:...> tags, 75-token chunking, escaping.

The golden tables were produced by running A1111's own ``parse_prompt_attention``,
``extra_networks.parse_prompt`` + the LoRA loader's weight rules and ``tokenize_line`` +
``process_tokens`` (stable-diffusion-webui master, the version that allows "(x: 1.2 )") on
these inputs; they are data here so the tests do not need an A1111 checkout.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.prompt_syntax import (
    LoraTag,
    PromptChunk,
    chunk_prompt,
    escape_prompt_text,
    extract_lora_tags,
    parse_prompt_attention,
)

FAST = settings(max_examples=100, deadline=None)

# Text built from the characters the grammar cares about finds parser edge cases far faster
# than uniform unicode, which rarely produces brackets next to numbers.
SYNTAX_PIECES = st.sampled_from(
    list("()[]\\:., 0123456789+-abé\n") + ["BREAK", " BREAK ", ":1.2)", ": 0.5 )", "\\(", "1" * 400]
)
syntax_text = st.lists(SYNTAX_PIECES, max_size=30).map("".join)
any_text = st.one_of(st.text(max_size=60), syntax_text)

# --------------------------------------------------------------------------- emphasis parser

A1111_PARSE_GOLDEN = [
    ("masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile",
     [("masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile", 1.0)]),
    ("(masterpiece, best quality:1.2), 1girl, (red dress:1.3), [blurry], outdoors",
     [("masterpiece, best quality", 1.2), (", 1girl, ", 1.0), ("red dress", 1.3), (", ", 1.0),
      ("blurry", 0.9090909090909091), (", outdoors", 1.0)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
      ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("(worst quality, low quality:1.4), (bad anatomy), [[extra fingers]], watermark, text",
     [("worst quality, low quality", 1.4), (", ", 1.0), ("bad anatomy", 1.1), (", ", 1.0),
      ("extra fingers", 0.8264462809917354), (", watermark, text", 1.0)]),
    ("portrait of a woman BREAK city street at night, neon lights BREAK rain",
     [("portrait of a woman", 1.0), ("BREAK", -1.0), ("city street at night, neon lights", 1.0),
      ("BREAK", -1.0), ("rain", 1.0)]),
    ("(photorealistic:1.4), 8k uhd, dslr, soft lighting, high quality, film grain, Fujifilm XT3",
     [("photorealistic", 1.4),
      (", 8k uhd, dslr, soft lighting, high quality, film grain, Fujifilm XT3", 1.0)]),
    ("1boy, ((detailed face)), (beard:0.8), [[[background]]], cinematic lighting",
     [("1boy, ", 1.0), ("detailed face", 1.2100000000000002), (", ", 1.0), ("beard", 0.8),
      (", ", 1.0), ("background", 0.7513148009015777), (", cinematic lighting", 1.0)]),
    ("score_9, score_8_up, score_7_up, (anime style:0.9), 1girl, \\(artist\\), smile",
     [("score_9, score_8_up, score_7_up, ", 1.0), ("anime style", 0.9),
      (", 1girl, (artist), smile", 1.0)]),
    ("cute cat wearing a hat (unbalanced paren, sitting on a sofa",
     [("cute cat wearing a hat ", 1.0), ("unbalanced paren, sitting on a sofa", 1.1)]),
    ("a photo of sks dog] in a bucket)", [("a photo of sks dog] in a bucket)", 1.0)]),
    ("(((masterpiece))), (((best quality))), ((ultra-detailed)), (illustration), (dynamic angle)",
     [("masterpiece", 1.3310000000000004), (", ", 1.0), ("best quality", 1.3310000000000004),
      (", ", 1.0), ("ultra-detailed", 1.2100000000000002), (", ", 1.0), ("illustration", 1.1),
      (", ", 1.0), ("dynamic angle", 1.1)]),
    ("landscape, mountains, (lake: 1.2 ), [fog:0.5], sunset",
     [("landscape, mountains, ", 1.0), ("lake", 1.2), (", ", 1.0),
      ("fog:0.5", 0.9090909090909091), (", sunset", 1.0)]),
    ("Delta\\(mon\\) character, \\[official art\\], \\\\ backslash",
     [("Delta(mon) character, [official art], \\ backslash", 1.0)]),
    ("(cyberpunk city:1.1) BREAK (flying cars:0.9), (holograms:1.25) BREAK night",
     [("cyberpunk city", 1.1), ("", 1.0), ("BREAK", -1.0), ("", 1.0), ("flying cars", 0.9),
      (", ", 1.0), ("holograms", 1.25), ("", 1.0), ("BREAK", -1.0), ("night", 1.0)]),
    ("(close-up:1.3) of an (old man:1.1), wrinkles, (highly detailed skin:1.2), (depth of field:0.7)",
     [("close-up", 1.3), (" of an ", 1.0), ("old man", 1.1), (", wrinkles, ", 1.0),
      ("highly detailed skin", 1.2), (", ", 1.0), ("depth of field", 0.7)]),
    ("(a (nested (deeply (emphasis))))",
     [("a ", 1.1), ("nested ", 1.2100000000000002), ("deeply ", 1.3310000000000004),
      ("emphasis", 1.4641000000000006)]),
    ("[[a [nested [deep [de-emphasis]]]]]",
     [("a ", 0.8264462809917354), ("nested ", 0.7513148009015777), ("deep ", 0.6830134553650705),
      ("de-emphasis", 0.620921323059155)]),
    ("woman, (smile:-0.5), (frown:0), eyes",
     [("woman, ", 1.0), ("smile", -0.5), (", ", 1.0), ("frown", 0.0), (", eyes", 1.0)]),
    ("BREAK leading break and trailing BREAK",
     [("", 1.0), ("BREAK", -1.0), ("leading break and trailing", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("(Emphasized BREAK inside parens) after",
     [("Emphasized", 1.1), ("BREAK", -1.1), ("inside parens", 1.1), (" after", 1.0)]),
    ("text with a colon: not a weight, time 10:30",
     [("text with a colon: not a weight, time 10:30", 1.0)]),
    ("isometric (room:1.2), ([furniture]:1.1), ((plants:1.3):0.9)",
     [("isometric ", 1.0), ("room", 1.2), (", furniture, ", 1.0), ("plants", 1.1700000000000002)]),
    ("(masterpiece:1.2), (best quality:1.2), (ultra detailed:1.2), (8k:1.2), 1girl, (kimono:1.1), "
     "[smile], cherry blossoms, \n(depth of field:1.1)",
     [("masterpiece", 1.2), (", ", 1.0), ("best quality", 1.2), (", ", 1.0), ("ultra detailed", 1.2),
      (", ", 1.0), ("8k", 1.2), (", 1girl, ", 1.0), ("kimono", 1.1), (", ", 1.0),
      ("smile", 0.9090909090909091), (", cherry blossoms, \n", 1.0), ("depth of field", 1.1)]),
    ("line one\nBREAK\nline two", [("line one", 1.0), ("BREAK", -1.0), ("line two", 1.0)]),
    ("", [("", 1.0)]),
    ("(x:+1.5) [y] (z:.7) (w:2.)",
     [("x", 1.5), (" ", 1.0), ("y", 0.9090909090909091), (" ", 1.0), ("z", 0.7), (" ", 1.0),
      ("w", 2.0)]),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_PARSE_GOLDEN)
def test_parse_matches_a1111_golden(prompt, expected):
    # Exact float equality: the weights must be bit-identical to A1111's to give the same image.
    assert parse_prompt_attention(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("(x)", [("x", 1.1)]),
        ("[x]", [("x", 1 / 1.1)]),
        ("(x:1.4)", [("x", 1.4)]),
        ("((x))", [("x", 1.1 * 1.1)]),
        ("[(x)]", [("x", 1.1 / 1.1)]),
        ("((x:2))", [("x", 2 * 1.1)]),
        ("(x:0.5)(y:0.5)", [("xy", 0.5)]),
    ],
)
def test_brackets_multiply(prompt, expected):
    assert parse_prompt_attention(prompt) == expected


def test_escapes_are_literal_and_other_backslashes_are_dropped():
    assert parse_prompt_attention(r"\(a\) \[b\] \\") == [("(a) [b] \\", 1.0)]
    # A backslash that escapes nothing disappears in A1111 (C:\path reads as "C:path").
    assert parse_prompt_attention(r"C:\path") == [("C:path", 1.0)]
    # ...but still leaves an empty run, which keeps a differently weighted trailer separate.
    assert parse_prompt_attention("(a)\\") == [("a", 1.1), ("", 1.0)]
    # ":" is not escapable, so the weight still applies after a dropped backslash.
    assert parse_prompt_attention("(a\\:1.2)") == [("a", 1.2)]


def test_unmatched_closers_are_text_and_unclosed_openers_apply_to_the_rest():
    assert parse_prompt_attention("a) b] c") == [("a) b] c", 1.0)]
    assert parse_prompt_attention("a (b [c") == [("a ", 1.0), ("b ", 1.1), ("c", 1.1 / 1.1)]
    # A weight with no "(" open is plain text, colon and all.
    assert parse_prompt_attention("x:1.5) y") == [("x:1.5) y", 1.0)]


def test_float_order_of_multiplications_is_a1111s():
    # Unclosed "(" scale before unclosed "[": the other order gives 1.3000000000000003.
    assert parse_prompt_attention("[((x:1.3)") == [("x", 1.3)]
    assert parse_prompt_attention("[((x:0.7) y") == [("x", 0.7), (" y", 1.0)]
    # Merging needs exact equality: 1.1**3 computed stepwise is not the literal 1.331.
    assert parse_prompt_attention("(((a)))(b:1.331)") == [("a", 1.3310000000000004), ("b", 1.331)]


def test_break_only_as_an_uppercase_word():
    assert parse_prompt_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_prompt_attention("a break b, BREAKfast, xBREAK") == [
        ("a break b, BREAKfast, xBREAK", 1.0)
    ]
    assert parse_prompt_attention("a,BREAK,b") == [("a,", 1.0), ("BREAK", -1.0), (",b", 1.0)]


def test_bracketed_break_is_scaled_like_a1111():
    # A1111 multiplies the marker too, so inside brackets it stops being a chunk separator.
    result = parse_prompt_attention("(a BREAK b:2)")
    assert result == [("a", 2.0), ("BREAK", -2.0), ("b", 2.0)]


def test_malformed_weight_falls_back_to_text_instead_of_raising():
    # A1111 raises ValueError on these; reading ":" as text keeps every prompt usable.
    assert parse_prompt_attention("(a:1.2.3) b") == [("a:1.2.3", 1.1), (" b", 1.0)]
    assert parse_prompt_attention("(a:.)") == [("a:.", 1.1)]


def test_whitespace_around_weight_and_signed_weights():
    assert parse_prompt_attention("(a: 1.5 )") == [("a", 1.5)]
    assert parse_prompt_attention("(a:-1)") == [("a", -1.0)]


def test_result_is_tuples_of_str_and_float():
    for text, weight in parse_prompt_attention("a (b) BREAK [c]"):
        assert isinstance(text, str) and type(weight) is float


@FAST
@given(any_text)
def test_parser_never_fails_and_merges_equal_neighbours(text):
    result = parse_prompt_attention(text)
    assert result, "at least one run, even for empty text"
    for a, b in zip(result, result[1:]):
        assert not (a[1] == b[1]), f"unmerged neighbours {a!r} {b!r}"


@FAST
@given(st.text(alphabet=st.characters(blacklist_characters="()[]\\"), max_size=60))
def test_text_without_syntax_is_one_run(text):
    assume(not re.search(r"\bBREAK\b", text))
    assert parse_prompt_attention(text) == [(text, 1.0)]


# --------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("Delta(mon)", "Delta\\(mon\\)"),
        ("[sks]", "\\[sks\\]"),
        ("a\\b", "a\\\\b"),
        ("BREAK", "BREA\\K"),
        ("BREAKfast", "BREAKfast"),
        ("plain text", "plain text"),
    ],
)
def test_escape_examples(raw, escaped):
    assert escape_prompt_text(raw) == escaped


@FAST
@given(any_text)
def test_escape_round_trips(text):
    assert parse_prompt_attention(escape_prompt_text(text)) == [(text, 1.0)]


@FAST
@given(any_text.filter(bool), st.sampled_from(["0.5", "1.3", "2"]))
def test_escaped_text_takes_the_weight_of_surrounding_brackets(text, weight):
    parsed = parse_prompt_attention(f"({escape_prompt_text(text)}:{weight})")
    assert parsed == [(text, float(weight))]


# --------------------------------------------------------------------------- <lora:...> tags

# (prompt, text left, tags as (name, te, unet)). Text left is A1111's, except that A1111 also
# removes <hypernet:...>, which this function leaves for the hypernetwork handling.
A1111_LORA_GOLDEN = [
    ("masterpiece, 1girl, <lora:add_detail:0.8>, smile", "masterpiece, 1girl, , smile",
     [("add_detail", 0.8, 0.8)]),
    ("<lora:epiNoiseoffset_v2:1> photo of a man, <lora:more_details:0.5:0.3>", " photo of a man, ",
     [("epiNoiseoffset_v2", 1.0, 1.0), ("more_details", 0.5, 0.3)]),
    ("portrait <lora:my style v1.5:-0.4> BREAK night", "portrait  BREAK night",
     [("my style v1.5", -0.4, -0.4)]),
    ("<lora:Ünïcödé-名前:1.2>,<lora:char.name-v2:te=0.6:unet=0.9>", ",",
     [("Ünïcödé-名前", 1.2, 1.2), ("char.name-v2", 0.6, 0.9)]),
    ("a cat <hypernet:anime:0.5> <lora:cat_ears>", "a cat <hypernet:anime:0.5> ",
     [("cat_ears", 1.0, 1.0)]),
    ("<lyco:old_lycoris:0.7>, cozy room", ", cozy room", [("old_lycoris", 0.7, 0.7)]),
    ("<lora:x:0.8:unet=0.2>  double  space", "  double  space", [("x", 0.8, 0.2)]),
    ("(<lora:in_parens:1>:1.2) (tag)", "(:1.2) (tag)", [("in_parens", 1.0, 1.0)]),
]


@pytest.mark.parametrize(("prompt", "text", "tags"), A1111_LORA_GOLDEN)
def test_lora_tags_match_a1111_golden(prompt, text, tags):
    left, found = extract_lora_tags(prompt)
    assert left == text
    assert found == [LoraTag(*t) for t in tags]


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("<lora:n>", LoraTag("n", 1.0, 1.0)),
        ("<lora:n:0.8>", LoraTag("n", 0.8, 0.8)),
        ("<lora:n:0.8:0.5>", LoraTag("n", 0.8, 0.5)),
        ("<lora:n:te=0.3>", LoraTag("n", 0.3, 0.3)),  # unet follows te when not given
        ("<lora:n:unet=0.3>", LoraTag("n", 1.0, 0.3)),
        ("<lora:n:0.8:te=0.2>", LoraTag("n", 0.2, 0.2)),  # named overrides positional
        ("<lora:n:0.8:0.5:unet=-1>", LoraTag("n", 0.8, -1.0)),
        ("<lora:n:1:1:8>", LoraTag("n", 1.0, 1.0)),  # A1111's dyn dim: accepted, ignored
        ("<lora: padded name :0.5>", LoraTag("padded name", 0.5, 0.5)),
        ("<lora:n: te=0.4>", LoraTag("n", 0.4, 0.4)),
    ],
)
def test_lora_tag_forms(tag, expected):
    assert extract_lora_tags(f"a {tag} b") == ("a  b", [expected])


def test_other_tags_and_lookalikes_stay_in_text():
    for prompt in ["<hypernet:h:1>", "<LORA:x:1>", "<lora>", "<lora:>", "a < b > c", "<embedding>"]:
        assert extract_lora_tags(prompt) == (prompt, [])
    # A1111 reads the hypernet tag up to its first ">", so the lora inside is part of it.
    assert extract_lora_tags("<hypernet:a<lora:b>") == ("<hypernet:a<lora:b>", [])


@pytest.mark.parametrize(
    ("tag", "why"),
    [
        ("<lora:x:abc>", "'abc' is not a number"),
        ("<lora:x:0.5:zz>", "'zz' is not a number"),
        ("<lora:x:te=oops>", "'oops' is not a number"),
        # A1111 splits on "=" at most twice, so this is a positional weight, not te=.
        ("<lora:x:te=1=2>", "'te=1=2' is not a number"),
        ("<lora:x:>", "'' is not a number"),
        ("<lora:x:inf>", "not finite"),
        ("<lora:x:nan>", "not finite"),
        ("<lora: :1>", "no name"),
        ("<lora:te=1>", "no name"),
    ],
)
def test_malformed_lora_tag_raises_naming_the_tag(tag, why):
    with pytest.raises(InvalidParameter) as info:
        extract_lora_tags(f"photo, {tag}, smile")
    assert tag in str(info.value)
    assert why in str(info.value)
    assert info.value.value == tag


@FAST
@given(any_text.map(lambda t: t.replace("<", "")))
def test_text_without_tags_is_untouched(text):
    assert extract_lora_tags(text) == (text, [])


lora_names = st.text(
    alphabet=st.characters(blacklist_characters="<>:=", blacklist_categories=("Cs",)), min_size=1,
    max_size=20,
).filter(lambda s: s.strip() == s and s)
weights = st.floats(min_value=-4, max_value=4, allow_nan=False).map(lambda w: round(w, 3))


@FAST
@given(st.lists(st.tuples(lora_names, weights, weights, st.text(alphabet="ab ,()", max_size=6)),
                max_size=4))
def test_lora_tags_round_trip(specs):
    prompt = "".join(f"{filler}<lora:{n}:{te}:{unet}>" for n, te, unet, filler in specs)
    left, tags = extract_lora_tags(prompt)
    assert left == "".join(filler for *_, filler in specs)
    assert tags == [LoraTag(n, te, unet) for n, te, unet, _ in specs]


@FAST
@given(st.lists(st.sampled_from(["<lora:", "<lyco:", "<hypernet:", "n", " ", ":", "0.5", "te=",
                                 "unet=1", "x", ">", "<", "="]), max_size=16).map("".join))
def test_lora_extractor_never_fails_except_with_invalid_parameter(prompt):
    try:
        left, tags = extract_lora_tags(prompt)
    except InvalidParameter as exc:
        assert exc.value in prompt
        return
    assert len(left) <= len(prompt)
    assert all(math.isfinite(t.te_weight) and math.isfinite(t.unet_weight) for t in tags)


# --------------------------------------------------------------------------- chunking

SPECIAL = {"<s>": 1, "</s>": 2, "<pad>": 0, ",": 3}


class WordTokenizer:
    """Whitespace/comma tokenizer with stable ids; records its calls."""

    def __init__(self):
        self.vocab = dict(SPECIAL)
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return [
            [self.vocab.setdefault(w, 100 + len(self.vocab)) for w in re.findall(r"[^\s,]+|,", t)]
            for t in texts
        ]

    def words(self, ids):
        reverse = {v: k for k, v in self.vocab.items()}
        return " ".join(reverse[i] for i in ids)


def chunks_for(prompt, *, pad="</s>", comma=",", tokenizer=None, **kw):
    tok = tokenizer or WordTokenizer()
    chunks = chunk_prompt(parse_prompt_attention(prompt), tok, bos=1, eos=2, pad=SPECIAL[pad],
                          comma=SPECIAL[comma] if comma else None, **kw)
    return [(tok.words(c.tokens), c.weights) for c in chunks]


# (prompt, chunk_length, comma_backtrack, pad, [(tokens as words, weights)]) from A1111.
A1111_CHUNK_GOLDEN = [
    ("a b c", 5, 20, "</s>", [("<s> a b c </s> </s> </s>", [1.0] * 7)]),
    ("", 4, 20, "</s>", [("<s> </s> </s> </s> </s> </s>", [1.0] * 6)]),
    ("a b c d e f g", 3, 20, "</s>",
     [("<s> a b c </s>", [1.0] * 5), ("<s> d e f </s>", [1.0] * 5), ("<s> g </s> </s> </s>", [1.0] * 5)]),
    ("a b, c d e f", 5, 20, "</s>",
     [("<s> a b , </s> </s> </s>", [1.0] * 7), ("<s> c d e f </s> </s>", [1.0] * 7)]),
    ("a b, c d e f", 5, 2, "</s>",
     [("<s> a b , c d </s>", [1.0] * 7), ("<s> e f </s> </s> </s> </s>", [1.0] * 7)]),
    # Comma exactly `comma_backtrack` tokens back still counts.
    ("a b, c d e f", 5, 3, "</s>",
     [("<s> a b , </s> </s> </s>", [1.0] * 7), ("<s> c d e f </s> </s>", [1.0] * 7)]),
    ("a b, c d e f", 5, 0, "</s>",
     [("<s> a b , c d </s>", [1.0] * 7), ("<s> e f </s> </s> </s> </s>", [1.0] * 7)]),
    ("a, b c d, e f g h", 4, 20, "<pad>",
     [("<s> a , </s> <pad> <pad>", [1.0] * 6), ("<s> b c d , </s>", [1.0] * 6),
      ("<s> e f g h </s>", [1.0] * 6)]),
    ("a BREAK b c BREAK d", 3, 20, "</s>",
     [("<s> a </s> </s> </s>", [1.0] * 5), ("<s> b c </s> </s>", [1.0] * 5),
      ("<s> d </s> </s> </s>", [1.0] * 5)]),
    ("BREAK a", 2, 20, "<pad>", [("<s> </s> <pad> <pad>", [1.0] * 4), ("<s> a </s> <pad>", [1.0] * 4)]),
    ("(a b:1.5) [c] d, (e f)", 3, 20, "</s>",
     [("<s> a b c </s>", [1.0, 1.5, 1.5, 0.9090909090909091, 1.0]), ("<s> d , </s> </s>", [1.0] * 5),
      ("<s> e f </s> </s>", [1.0, 1.1, 1.1, 1.0, 1.0])]),
    ("a b c d, e", 4, 20, "</s>", [("<s> a b c d </s>", [1.0] * 6), ("<s> , e </s> </s> </s>", [1.0] * 6)]),
    ("a, b, c d e", 5, 20, "</s>",
     [("<s> a , b , </s> </s>", [1.0] * 7), ("<s> c d e </s> </s> </s>", [1.0] * 7)]),
    # The comma that caused a backtrack is forgotten, so the next full chunk is cut plainly.
    ("a b, c d e f g h i j", 5, 4, "</s>",
     [("<s> a b , </s> </s> </s>", [1.0] * 7), ("<s> c d e f g </s>", [1.0] * 7),
      ("<s> h i j </s> </s> </s>", [1.0] * 7)]),
    ("a b c, d e f g h i", 4, 20, "</s>",
     [("<s> a b c , </s>", [1.0] * 6), ("<s> d e f g </s>", [1.0] * 6), ("<s> h i </s> </s> </s>", [1.0] * 6)]),
]


@pytest.mark.parametrize(("prompt", "length", "backtrack", "pad", "expected"), A1111_CHUNK_GOLDEN)
def test_chunks_match_a1111_golden(prompt, length, backtrack, pad, expected):
    assert chunks_for(prompt, pad=pad, chunk_length=length, comma_backtrack=backtrack) == expected


def test_short_prompt_is_one_77_token_chunk():
    [(words, weights)] = chunks_for("(cat:1.5) on a mat")
    ids = words.split()
    assert len(ids) == 77 and ids[:6] == ["<s>", "cat", "on", "a", "mat", "</s>"]
    assert set(ids[5:]) == {"</s>"}
    assert weights == [1.0, 1.5] + [1.0] * 75


def test_empty_prompt_gives_exactly_one_chunk():
    assert chunks_for("") == [("<s> " + " ".join(["</s>"] * 76), [1.0] * 77)]


@pytest.mark.parametrize(("count", "n_chunks"), [(74, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
def test_long_prompts_split_every_75_tokens_without_truncation(count, n_chunks):
    words = [f"w{i}" for i in range(count)]
    chunks = chunks_for(" ".join(words))
    assert len(chunks) == n_chunks
    bodies = [w for text, _ in chunks for w in text.split() if w not in ("<s>", "</s>")]
    assert bodies == words
    assert all(len(text.split()) == 77 for text, _ in chunks)


def test_comma_backtrack_moves_the_words_after_the_last_comma():
    words = [f"w{i}" for i in range(70)] + [","] + [f"x{i}" for i in range(10)]
    first, second = chunks_for(" ".join(words))
    assert first[0].split()[1:72] == words[:71] and first[0].split()[72:] == ["</s>"] * 5
    assert second[0].split()[1:11] == words[71:]


def test_comma_further_back_than_the_limit_is_ignored():
    words = [f"w{i}" for i in range(50)] + [","] + [f"x{i}" for i in range(30)]
    first, second = chunks_for(" ".join(words))
    assert first[0].split()[1:76] == words[:75]
    assert second[0].split()[1:7] == words[75:]
    # The same prompt with a larger limit backtracks to the comma.
    first, _ = chunks_for(" ".join(words), comma_backtrack=30)
    assert first[0].split()[51] == ","


def test_no_comma_token_disables_backtrack():
    words = [f"w{i}" for i in range(70)] + [","] + [f"x{i}" for i in range(10)]
    first, _ = chunks_for(" ".join(words), comma=None)
    assert first[0].split()[1:76] == words[:75]


def test_break_forces_a_new_chunk_and_bracketed_break_does_not():
    assert len(chunks_for("a BREAK b")) == 2
    # As in A1111 the bracketed marker is scaled to -1.1 and tokenized as the word itself.
    [(words, weights)] = chunks_for("(a BREAK b)")
    assert words.split()[:5] == ["<s>", "a", "BREAK", "b", "</s>"]
    assert weights[:4] == [1.0, 1.1, -1.1, 1.1]


def test_pad_differs_from_eos_pads_after_the_first_eos():
    [(words, _)] = chunks_for("a b", pad="<pad>")
    assert words.split() == ["<s>", "a", "b", "</s>"] + ["<pad>"] * 73
    # A full chunk keeps its final eos: there is nothing after it to pad.
    full = chunks_for(" ".join(f"w{i}" for i in range(75)), pad="<pad>")
    assert full[0][0].split()[-1] == "</s>"


def test_tokenizer_is_called_once_with_every_run():
    tok = WordTokenizer()
    chunks_for("a (b) BREAK [c]", tokenizer=tok)
    # The marker is tokenized too (as in A1111) but never reaches a chunk.
    assert tok.calls == [["a ", "b", "", "BREAK", "", "c"]]


def test_tokenizer_returning_wrong_count_is_rejected():
    with pytest.raises(ValueError, match="2 texts"):
        chunk_prompt([("a", 1.0), ("b", 1.1)], lambda texts: [[5]], bos=1, eos=2, pad=2, comma=3)


def test_chunk_is_a_plain_dataclass():
    [chunk] = chunk_prompt([("", 1.0)], lambda texts: [[] for _ in texts], bos=1, eos=2, pad=0,
                           comma=None, chunk_length=2)
    assert chunk == PromptChunk(tokens=[1, 2, 0, 0], weights=[1.0] * 4)


@FAST
@given(
    st.lists(st.tuples(st.lists(st.sampled_from(["w", "v", ","]), max_size=20),
                       st.sampled_from([1.0, 1.1, 0.5, -1.0])), max_size=6),
    st.integers(1, 12),
    st.integers(0, 12),
)
def test_chunking_keeps_every_token_in_order(runs, length, backtrack):
    parsed = [(" ".join(words), weight) for words, weight in runs] or [("", 1.0)]
    tok = WordTokenizer()
    chunks = chunk_prompt(parsed, tok, bos=1, eos=2, pad=2, comma=3, chunk_length=length,
                          comma_backtrack=backtrack)
    expected = [(t, w) for ids, (_, w) in zip(tok([t for t, _ in parsed]), parsed) for t in ids]
    got = []
    for c in chunks:
        assert len(c.tokens) == len(c.weights) == length + 2
        assert c.tokens[0] == 1 and c.tokens[-1] == 2
        got += [(t, w) for t, w in zip(c.tokens[1:-1], c.weights[1:-1]) if t != 2]
    assert got == expected


# --------------------------------------------------------------------------- limits

def test_emphasis_is_clamped_to_a_finite_weight():
    from lorastudio.core.prompt_syntax import MAX_EMPHASIS_WEIGHT

    assert parse_prompt_attention("(" * 10_000 + "x" + ")" * 10_000) == [("x", MAX_EMPHASIS_WEIGHT)]
    assert parse_prompt_attention("(x:" + "9" * 400 + ")") == [("x", MAX_EMPHASIS_WEIGHT)]
    assert 0.0 <= parse_prompt_attention("[" * 10_000 + "x")[0][1] < 1e-300  # underflows to 0, still finite
    # an infinite factor times 0 would be NaN in A1111
    assert parse_prompt_attention("((x:0):" + "9" * 400 + ")") == [("x", 0.0)]
    assert parse_prompt_attention("(x:-" + "9" * 400 + ")") == [("x", -MAX_EMPHASIS_WEIGHT)]
    # up to the limit, A1111's products bit for bit: 1.1 ** 48 < 100
    assert parse_prompt_attention("(" * 48 + "x" + ")" * 48)[0][1] == math.prod([1.1] * 48)


@FAST
@given(any_text)
def test_emphasis_weights_are_always_finite_and_bounded(text):
    assert all(math.isfinite(w) and abs(w) <= 100 for _, w in parse_prompt_attention(text))


@pytest.mark.parametrize("tag", ["<lora:x:10.5>", "<lora:x:-11>", "<lora:x:1e39>", "<lora:x:1:unet=20>"])
def test_lora_weight_past_the_limit_is_refused_naming_the_tag(tag):
    with pytest.raises(InvalidParameter) as info:
        extract_lora_tags(f"photo, {tag}")
    assert info.value.value == tag and "outside ±10" in str(info.value)


def test_lora_weight_at_the_limit_is_accepted():
    assert extract_lora_tags("<lora:x:10:-10>")[1] == [LoraTag("x", 10.0, -10.0)]
