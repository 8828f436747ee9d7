"""Whole-dataset checks: every problem found up front, skip_bad, training items, report text."""

from __future__ import annotations

import hashlib
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorastudio.core.errors import DatasetError
from lorastudio.training.dataset import DatasetConfig, build_dataset, check_dataset, open_source
from lorastudio.training.dataset.fixtures import draw_sticker_dataset

CFG = DatasetConfig(trigger_word="DeltamonStamp", class_word="sticker")


def noise_png(path: Path, size=(96, 96), seed=0, mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return path


def bomb_png(path: Path, w: int, h: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


def codes(report) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in report.problems:
        out.setdefault(Path(p.file).name, set()).add(p.code)
    return out


def check(folder: Path, config: DatasetConfig = CFG):
    return check_dataset(open_source(folder), config)


def test_clean_sticker_dataset_passes(tmp_path):
    draw_sticker_dataset(tmp_path / "ds", n=6, size=96)
    report = check(tmp_path / "ds")
    assert report.ok and report.problems == []
    assert len(report.items) == 6 and report.skipped_if_allowed == []
    assert all(i.caption.startswith("DeltamonStamp, ") for i in report.items)
    assert all(i.bucket.label == "64x64" for i in report.items)  # 96 px, never upscaled
    assert all(not i.mask_available for i in report.items)  # use_alpha_mask is off by default
    assert report.counts["transparent"] == 6


def test_every_problem_found_in_one_pass(tmp_path):
    ds = tmp_path / "ds"
    noise_png(ds / "good.png", seed=1)
    (ds / "good.txt").write_text("DeltamonStamp, smile")
    noise_png(ds / "copy.png", seed=1)  # same bytes as good.png
    Image.open(ds / "good.png").save(ds / "copy2.bmp")  # same pixels, other format
    noise_png(ds / "nocap.png", seed=2)
    noise_png(ds / "tiny.png", size=(1, 1), seed=3)
    bomb_png(ds / "bomb.png", 100_000, 100_000)
    cut = noise_png(ds / "cut.png", size=(128, 128), seed=4)
    cut.write_bytes(cut.read_bytes()[:600])
    noise_png(ds / "twin.png", seed=5)
    noise_png(ds / "twin.jpg", seed=6)
    (ds / "lonely.txt").write_text("DeltamonStamp, lonely")
    (ds / "notes.md").write_text("# notes")
    Image.new("P", (64, 64)).save(ds / "anim.gif")
    (ds / "fake.webp").write_text("not a picture")
    report = check(ds)
    found = codes(report)
    assert found == {
        "copy.png": {"duplicate"},
        "copy2.bmp": {"duplicate"},
        "nocap.png": {"missing_caption"},
        "tiny.png": {"too_small"},
        "bomb.png": {"too_large"},
        "cut.png": {"corrupt"},
        "twin.png": {"shared_stem"},  # "twin.jpg" sorts first and is kept
        "twin.jpg": {"missing_caption"},
        "lonely.txt": {"orphan_caption"},
        "notes.md": {"unsupported_file"},
        "anim.gif": {"unsupported_image"},
        "fake.webp": {"not_an_image"},
    }, report.render()
    assert not report.ok
    skipped = {Path(s).name for s in report.skipped_if_allowed}
    assert skipped == {"copy.png", "copy2.bmp", "tiny.png", "bomb.png", "cut.png", "twin.png", "anim.gif",
                       "fake.webp"}
    by_code = {p.code: p for p in report.problems}
    assert "good.png" in by_code["duplicate"].message
    assert "100000x100000" in by_code["too_large"].message or "enormous" in by_code["too_large"].message
    assert by_code["missing_caption"].severity == "warning"
    assert by_code["orphan_caption"].severity == "warning"
    assert all(p.message.startswith(p.file) for p in report.problems)

    with pytest.raises(DatasetError) as err:
        build_dataset(open_source(ds), CFG)
    msg = str(err.value)
    for name in ("copy.png", "copy2.bmp", "tiny.png", "bomb.png", "cut.png", "twin.png", "anim.gif", "fake.webp"):
        assert name in msg
    assert "missing_caption" not in msg  # warnings never block
    assert "copy.png: is an identical copy of good.png" in msg  # the captioned copy is kept

    items = build_dataset(open_source(ds), CFG, skip_bad=True)
    by_name = {i.image_path.name: i for i in items}
    assert set(by_name) == {"good.png", "nocap.png", "twin.jpg"}
    assert by_name["good.png"].caption == "DeltamonStamp, smile"
    assert by_name["nocap.png"].caption == "DeltamonStamp, sticker"


def test_too_small_and_corrupt_both_reported(tmp_path):
    ds = tmp_path / "ds"
    p = noise_png(ds / "small_cut.png", size=(40, 300), seed=9)
    p.write_bytes(p.read_bytes()[:900])
    noise_png(ds / "ok.png")
    assert codes(check(ds))["small_cut.png"] == {"too_small", "corrupt"}


def test_empty_folder(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / ".DS_Store").write_bytes(b"x")
    report = check(tmp_path / "ds")
    assert [p.code for p in report.problems] == ["empty"]
    assert "empty" in report.render() and "1 hidden" in report.problems[0].message
    with pytest.raises(DatasetError, match="empty"):
        build_dataset(open_source(tmp_path / "ds"), CFG, skip_bad=True)


def test_folder_of_text_files_has_no_images(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    for i in range(3):
        (ds / f"{i}.txt").write_text("DeltamonStamp")
    report = check(ds)
    assert {p.code for p in report.errors} == {"no_images"}
    assert "no images found" in report.errors[0].message and "3 caption files" in report.errors[0].message
    with pytest.raises(DatasetError, match="no images found"):
        build_dataset(open_source(ds), CFG, skip_bad=True)


def test_all_bad_cannot_be_skipped_into_an_empty_run(tmp_path):
    ds = tmp_path / "ds"
    noise_png(ds / "tiny.png", size=(8, 8))
    with pytest.raises(DatasetError, match="no usable pictures"):
        build_dataset(open_source(ds), CFG, skip_bad=True)


def test_captions_without_any_caption_files_get_default_and_no_warning(tmp_path):
    ds = tmp_path / "ds"
    noise_png(ds / "a.png", seed=1)
    noise_png(ds / "b.png", seed=2)
    report = check(ds, DatasetConfig(trigger_word="Delta(mon)", class_word="sticker"))
    assert report.ok and report.warnings == []
    assert {i.caption for i in report.items} == {"Delta\\(mon\\), sticker"}


def test_caption_encodings_and_trigger_insertion_through_check(tmp_path):
    ds = tmp_path / "ds"
    noise_png(ds / "a.png", seed=1)
    (ds / "a.txt").write_bytes("笑顔、手を振る\r\n".encode("cp932"))
    noise_png(ds / "b.png", seed=2)
    (ds / "b.caption").write_bytes(b"\xef\xbb\xbfsmile, DeltamonStamp")
    noise_png(ds / "c.png", seed=3)
    (ds / "c.txt").write_text("   \n")
    noise_png(ds / "d.png", seed=4)
    (ds / "d.txt").write_text("from txt")
    (ds / "d.caption").write_text("from caption")
    report = check(ds)
    caps = {i.image_path.name: i.caption for i in report.items}
    assert caps == {"a.png": "DeltamonStamp, 笑顔、手を振る", "b.png": "DeltamonStamp, smile",
                    "c.png": "DeltamonStamp, sticker", "d.png": "DeltamonStamp, from txt"}
    found = codes(report)
    assert found == {"c.txt": {"empty_caption"}, "d.txt": {"several_captions"}}
    # caption_extensions order decides the winner.
    report2 = check(ds, DatasetConfig(trigger_word="DeltamonStamp", class_word="sticker",
                                      caption_extensions=["caption", ".TXT"]))
    assert {i.image_path.name: i.caption for i in report2.items}["d.png"] == "DeltamonStamp, from caption"


def test_unreadable_caption_is_an_error_for_its_picture(tmp_path):
    ds = tmp_path / "ds"
    noise_png(ds / "a.png")
    (ds / "a.txt").write_bytes(b"\x80\xff\x80\xfe")
    report = check(ds)
    assert codes(report) == {"a.png": {"caption_unreadable"}}
    assert "a.txt" in report.problems[0].message


def test_repeats_resolutions_and_masks_in_items(tmp_path):
    ds = tmp_path / "ds"
    noise_png(ds / "10_dm" / "big.png", size=(1024, 768), seed=1)
    noise_png(ds / "small.png", size=(128, 128), seed=2)
    rgba = np.zeros((800, 800, 4), dtype=np.uint8)
    rgba[100:700, 100:700] = (255, 200, 0, 255)
    (ds / "2_x").mkdir()
    Image.fromarray(rgba, "RGBA").save(ds / "2_x" / "alpha.png")
    cfg = DatasetConfig(trigger_word="T", resolutions=[768, 512], use_alpha_mask=True, repeats=3)
    items = build_dataset(open_source(ds), cfg)
    got = sorted((i.image_path.name, i.bucket.resolution, i.bucket.label, i.repeats, i.mask_available)
                 for i in items)
    assert got == [
        ("alpha.png", 512, "512x512", 2, True),
        ("alpha.png", 768, "768x768", 2, True),
        ("big.png", 512, "576x448", 10, False),
        ("big.png", 768, "896x640", 10, False),
        ("small.png", 512, "128x128", 3, False),  # once: the same bucket at both resolutions
    ]
    report = check_dataset(open_source(ds), cfg)
    assert report.plan.total_samples == 2 + 2 + 10 + 10 + 3


def test_extreme_aspect_warns_about_cropping(tmp_path):
    ds = tmp_path / "ds"
    noise_png(ds / "strip.png", size=(1200, 100))
    report = check(ds)
    assert report.ok and codes(report) == {"strip.png": {"cropped"}}


def test_blank_picture_warns(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(ds / "clear.png")
    noise_png(ds / "ok.png")
    assert codes(check(ds)) == {"clear.png": {"blank"}}


def test_check_accepts_a_zip_path_and_names_entries_inside_it(tmp_path):
    ds = tmp_path / "src"
    draw_sticker_dataset(ds, n=3, size=96)
    noise_png(ds / "tiny.png", size=(10, 10))
    z = tmp_path / "stickers.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(ds.iterdir()):
            zf.write(p, f"set/{p.name}")
    report = check_dataset(z, CFG)
    assert [p.file for p in report.errors] == [f"{z}:set/tiny.png"]
    assert f"{z}:set/tiny.png: is 10x10" in report.render()


def test_render_lists_problems_buckets_and_verdict(tmp_path):
    ds = tmp_path / "ds"
    draw_sticker_dataset(ds, n=4, size=128)
    noise_png(ds / "tiny.png", size=(10, 10))
    text = check(ds).render()
    assert text.startswith(f"Dataset: {ds}")
    assert "5 pictures, 4 caption files" in text
    assert "too_small" in text and "tiny.png" in text
    assert "128x128" in text and "Buckets:" in text
    assert "NOT READY" in text and "--skip-bad" in text
    ok_text = check_dataset(open_source(ds), DatasetConfig(trigger_word="T", min_size=8, bucket_step=8)).render()
    assert "Result: OK, 5 pictures" in ok_text


def test_fixture_is_deterministic(tmp_path):
    a = draw_sticker_dataset(tmp_path / "a", n=4, seed=3, size=64)
    b = draw_sticker_dataset(tmp_path / "b", n=4, seed=3, size=64)
    c = draw_sticker_dataset(tmp_path / "c", n=4, seed=4, size=64)

    def digest(paths):
        return [hashlib.sha256(p.read_bytes() + p.with_suffix(".txt").read_bytes()).hexdigest() for p in paths]

    assert digest(a) == digest(b) and digest(a) != digest(c)
    im = Image.open(a[0])
    assert im.mode == "RGBA" and im.size == (64, 64)
    alpha = np.asarray(im.getchannel("A"))
    assert alpha[0, 0] == 0 and alpha[32, 32] == 255  # transparent corner, opaque character
    body = np.asarray(im.convert("RGB"))[32, 32]
    assert body[0] > 200 and body[1] > 150 and body[2] < 120  # yellow
    captions = [p.with_suffix(".txt").read_text() for p in draw_sticker_dataset(tmp_path / "d", n=8, size=32)]
    assert len(set(captions)) == 8 and all(c.startswith("DeltamonStamp, ") for c in captions)
