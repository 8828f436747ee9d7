"""Caption files: encodings, normalisation, trigger word, per-step augmentation, file names."""

from __future__ import annotations

import random

import pytest

from lorastudio.core.errors import DatasetError
from lorastudio.core.prompt_syntax import parse_prompt_attention
from lorastudio.training.dataset.captions import (
    augment_caption,
    decode_caption_bytes,
    default_caption,
    ensure_trigger,
    normalize_caption,
    read_caption_file,
    safe_filename,
    split_tags,
)

JA = "デルタモン、手を振る, 笑顔"


@pytest.mark.parametrize("encoded", [
    JA.encode("utf-8"),
    b"\xef\xbb\xbf" + JA.encode("utf-8"),
    JA.encode("cp932"),
    JA.encode("utf-16"),  # with BOM
    b"\xfe\xff" + JA.encode("utf-16-be"),
    JA.encode("utf-32"),
], ids=["utf8", "utf8-bom", "shift-jis", "utf16-le-bom", "utf16-be-bom", "utf32-bom"])
def test_encodings_are_detected(tmp_path, encoded):
    p = tmp_path / "a.txt"
    p.write_bytes(encoded)
    assert read_caption_file(p) == JA


def test_cp932_only_characters():
    # "①" and "髙" exist in CP932 but not in plain Shift-JIS; Windows users type them.
    text = "①髙橋スタンプ"
    assert decode_caption_bytes(text.encode("cp932")) == text


def test_undecodable_caption_is_named(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"\xff\xfe\x41\x00\x00")  # UTF-16 BOM, then an odd number of bytes
    with pytest.raises(DatasetError, match="bad.txt.*UTF-16"):
        read_caption_file(p)
    p.write_bytes(b"\x80\xff\x80")
    with pytest.raises(DatasetError, match="bad.txt.*neither UTF-8 nor Shift-JIS"):
        read_caption_file(p)


def test_utf16_without_bom_is_refused_not_misread(tmp_path):
    p = tmp_path / "w.txt"
    p.write_bytes("smile".encode("utf-16-le"))
    with pytest.raises(DatasetError, match="w.txt.*NUL"):
        read_caption_file(p)


def test_whitespace_and_lines_normalised():
    raw = "  DeltamonStamp,\r\n  waving   hand\n\n\tsmile ,,  \u3000blue\u3000sky  \n"
    assert normalize_caption(raw) == "DeltamonStamp, waving hand, smile, blue sky"


def test_decomposed_unicode_is_composed():
    # macOS file names and some editors give "ポ" as "ホ" + combining mark.
    assert normalize_caption("ホ\u309a") == "ポ"


def test_split_tags_respects_brackets_and_escapes():
    # An escaped comma is text, not a separator.
    assert split_tags("a, (b, c:1.2), [d, e], f\\, g") == ["a", "(b, c:1.2)", "[d, e]", "f\\, g"]
    assert split_tags("x \\(y, z\\), w") == ["x \\(y", "z\\)", "w"]


def test_trigger_prepended_when_missing():
    assert ensure_trigger("waving, smile", "DeltamonStamp") == "DeltamonStamp, waving, smile"


def test_trigger_is_whole_word_and_case_sensitive():
    assert ensure_trigger("DeltamonStamps, smile", "DeltamonStamp").startswith("DeltamonStamp, DeltamonStamps")
    assert ensure_trigger("deltamonstamp, smile", "DeltamonStamp") == "DeltamonStamp, deltamonstamp, smile"
    # Used as a word inside a sentence-like tag: left alone.
    assert ensure_trigger("a DeltamonStamp waving", "DeltamonStamp") == "a DeltamonStamp waving"


def test_trigger_tag_moved_to_front_once():
    assert ensure_trigger("smile, DeltamonStamp, blue", "DeltamonStamp") == "DeltamonStamp, smile, blue"


def test_trigger_with_prompt_syntax_is_escaped():
    trig = "Delta(mon)[v2]"
    cap = ensure_trigger("smile", trig)
    assert cap == "Delta\\(mon\\)\\[v2\\], smile"
    # A1111's parser reads the escaped trigger back literally, at weight 1.
    assert [tuple(run) for run in parse_prompt_attention(cap.split(", ")[0])] == [(trig, 1.0)]
    # A caption typed with the raw trigger is not given a second copy.
    assert ensure_trigger("Delta(mon)[v2], smile", trig) == cap
    assert ensure_trigger(cap, trig) == cap


def test_default_caption():
    assert default_caption("DeltamonStamp", "sticker") == "DeltamonStamp, sticker"
    assert default_caption("DeltamonStamp") == "DeltamonStamp"
    assert default_caption("a\\b") == "a\\\\b"


def test_augment_is_deterministic_and_keeps_first_tags():
    cap = "DeltamonStamp, a, b, c, d, e, f, g"
    runs = [[augment_caption(cap, rng, shuffle=True, keep_tokens=1) for _ in range(20)]
            for rng in (random.Random(7), random.Random(7))]
    assert runs[0] == runs[1]
    assert all(r.startswith("DeltamonStamp, ") for r in runs[0])
    assert all(sorted(split_tags(r)) == sorted(split_tags(cap)) for r in runs[0])
    assert len(set(runs[0])) > 5  # really shuffled
    other = [augment_caption(cap, random.Random(8), shuffle=True) for _ in range(3)]
    assert other != runs[0][:3]


def test_keep_tokens_two_and_zero():
    cap = "T, class, a, b, c, d"
    rng = random.Random(1)
    outs = [augment_caption(cap, rng, shuffle=True, keep_tokens=2) for _ in range(30)]
    assert all(o.startswith("T, class, ") for o in outs)
    rng = random.Random(1)
    firsts = {split_tags(augment_caption(cap, rng, shuffle=True, keep_tokens=0))[0] for _ in range(60)}
    assert len(firsts) > 2


def test_shuffle_never_breaks_emphasis_groups():
    cap = "T, (red hat, blue scarf:1.2), x, y"
    rng = random.Random(3)
    for _ in range(20):
        assert "(red hat, blue scarf:1.2)" in augment_caption(cap, rng, shuffle=True)


def test_dropout_rate():
    rng = random.Random(0)
    outs = [augment_caption("T, a", rng, dropout=0.25) for _ in range(4000)]
    share = outs.count("") / len(outs)
    assert 0.22 < share < 0.28
    assert set(outs) == {"", "T, a"}
    assert augment_caption("T, a", random.Random(0), dropout=1.0) == ""
    assert augment_caption("T, a", random.Random(0), dropout=0.0) == "T, a"
    with pytest.raises(ValueError, match="dropout"):
        augment_caption("T", random.Random(0), dropout=1.5)


def test_rng_consumption_independent_of_caption():
    # The loop shares one generator across items; each call must advance it the same way.
    a, b = random.Random(5), random.Random(5)
    augment_caption("T, x, y, z", a, shuffle=True)
    augment_caption("T", b, shuffle=False, dropout=0.5)
    assert a.random() == b.random()


@pytest.mark.parametrize("word,expected", [
    ("DeltamonStamp", "DeltamonStamp"),
    ("デルタモン", "デルタモン"),
    ("a/b\\c:d*e?f\"g<h>i|j", "abcdefghij"),
    ("my trigger", "my_trigger"),
    ("..hidden..", "hidden"),
    ("CON", "CON_"),
    ("nul.txt", "nul.txt_"),
    ("///", "lora"),
    ("", "lora"),
    ("Delta(mon)", "Delta(mon)"),
])
def test_safe_filename(word, expected):
    assert safe_filename(word) == expected


def test_safe_filename_length_cut_on_character_boundary():
    name = safe_filename("あ" * 100)
    assert len(name.encode("utf-8")) <= 120 and name == "あ" * 40
