"""Opening datasets: folders, safe zip extraction, kohya repeat folders, junk files."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from lorastudio.core.errors import DatasetError
from lorastudio.training.dataset.ingest import extract_zip, open_source


def png_bytes(colour=(255, 0, 0), size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, entries: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_folder_lists_images_by_content_and_ignores_junk(tmp_path):
    ds = tmp_path / "ds"
    (ds / "__MACOSX").mkdir(parents=True)
    (ds / "a.png").write_bytes(png_bytes())
    (ds / "a.txt").write_text("x, y")
    (ds / "noext").write_bytes(png_bytes())  # a picture without extension still counts
    (ds / "fake.jpg").write_text("not a picture")
    (ds / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (ds / "._a.png").write_bytes(b"\0\5\26\7")  # macOS resource fork
    (ds / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (ds / "__MACOSX" / "._a.png").write_bytes(b"\0")
    src = open_source(ds)
    assert [f.rel for f in src.files] == ["a.png", "a.txt", "fake.jpg", "noext"]
    assert [f.rel for f in src.images] == ["a.png", "noext"]
    assert {f.rel: f.image_format for f in src.files}["fake.jpg"] is None
    assert "__MACOSX/" in src.ignored and ".DS_Store" in src.ignored and "._a.png" in src.ignored
    assert not src.is_zip and src.display("a.png") == str(ds / "a.png")


def test_kohya_repeat_folders(tmp_path):
    ds = tmp_path / "5_outer"  # the dataset folder's own name does not count
    (ds / "10_deltamon" / "poses").mkdir(parents=True)
    (ds / "plain").mkdir()
    (ds / "0_zero").mkdir()
    (ds / "10_deltamon" / "a.png").write_bytes(png_bytes())
    (ds / "10_deltamon" / "poses" / "b.png").write_bytes(png_bytes())
    (ds / "plain" / "c.png").write_bytes(png_bytes())
    (ds / "0_zero" / "d.png").write_bytes(png_bytes())
    (ds / "e.png").write_bytes(png_bytes())
    reps = {f.rel: f.repeats for f in open_source(ds).images}
    assert reps == {"10_deltamon/a.png": 10, "10_deltamon/poses/b.png": 10, "plain/c.png": None,
                    "0_zero/d.png": None, "e.png": None}


def test_zip_is_extracted_and_cleaned_up_on_close(tmp_path):
    z = make_zip(tmp_path / "s.zip", {"stickers/3_dm/a.png": png_bytes(), "stickers/3_dm/a.txt": b"hi",
                                      "__MACOSX/stickers/._a.png": b"\0", "stickers/.hidden": b"x"})
    with open_source(z) as src:
        assert src.is_zip and [f.rel for f in src.files] == ["stickers/3_dm/a.png", "stickers/3_dm/a.txt"]
        assert src.images[0].repeats == 3
        assert src.display("stickers/3_dm/a.png") == f"{z}:stickers/3_dm/a.png"
        root = src.root
        assert (root / "stickers/3_dm/a.png").read_bytes() == png_bytes()
        assert not (root / "__MACOSX").exists()  # junk never reaches the disk
    assert not root.exists()


def test_zip_into_given_folder_via_staging(tmp_path):
    z = make_zip(tmp_path / "s.zip", {"a.png": png_bytes()})
    target = tmp_path / "proj" / "dataset"
    src = open_source(z, extract_to=target)
    assert src.root == target and (target / "a.png").is_file()
    assert leftovers(target.parent) == ["dataset"]  # no staging folder left
    src.close()
    assert target.exists()  # only temporary folders are removed by close()
    with pytest.raises(DatasetError, match="not empty"):
        open_source(z, extract_to=target)


@pytest.mark.parametrize("name,why", [
    ("../evil.png", "outside"),
    ("ok/../../evil.png", "outside"),
    ("/etc/evil.png", "absolute"),
    ("C:/evil.png", "absolute"),
    ("C:evil.png", "absolute"),
    ("dir/C:/evil.png", "drive letter"),
    ("..\\evil.png", "backslash"),
    ("sub\\a.png", "backslash"),
])
def test_unsafe_entry_names_refused_and_nothing_written(tmp_path, name, why):
    z = make_zip(tmp_path / "bad.zip", {"good.png": png_bytes(), name: png_bytes()})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DatasetError) as err:
        extract_zip(z, out / "dataset")
    assert why in str(err.value) and "bad.zip" in str(err.value)
    assert leftovers(out) == []
    assert not (tmp_path / "evil.png").exists()


def test_symlink_entry_refused(tmp_path):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.png", png_bytes())
        info = zipfile.ZipInfo("b.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetError, match="link.zip.*'b.png'.*symbolic link"):
        open_source(z)


def test_zip_bomb_ratio_refused(tmp_path):
    z = make_zip(tmp_path / "bomb.zip", {"a.png": png_bytes(), "zeros.bmp": b"\0" * (4 << 20)})
    with pytest.raises(DatasetError, match="zeros.bmp.*expands.*zip bomb"):
        open_source(z)
    # The same entry passes with a looser ratio: the check is the ratio, not the size.
    with open_source(z, max_ratio=100_000) as src:
        assert len(src.files) == 2


def test_total_unzipped_size_bounded(tmp_path):
    z = make_zip(tmp_path / "big.zip", {"a.png": png_bytes(), "b.png": png_bytes((0, 0, 255))},
                 compression=zipfile.ZIP_STORED)
    limit = len(png_bytes()) + 10
    with pytest.raises(DatasetError, match="big.zip.*max_unzipped_bytes"):
        open_source(z, max_unzipped_bytes=limit)
    with open_source(z, max_unzipped_bytes=limit * 2) as src:
        assert len(src.images) == 2


def test_forged_size_header_fails_cleanly(tmp_path):
    data = b"A" * 5000
    z = make_zip(tmp_path / "forged.zip", {"a.txt": data}, compression=zipfile.ZIP_STORED)
    raw = bytearray(z.read_bytes())
    # Rewrite the declared uncompressed size (local header and central directory) to 10 bytes.
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.index(sig)
        raw[at + offset: at + offset + 4] = (10).to_bytes(4, "little")
    z.write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DatasetError, match="forged.zip"):
        extract_zip(z, out / "ds")
    assert leftovers(out) == []


def test_duplicate_names_refused(tmp_path):
    z = tmp_path / "dup.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.png", png_bytes())
        zf.writestr("A.PNG", png_bytes((0, 255, 0)))
    with pytest.raises(DatasetError, match="dup.zip.*twice"):
        open_source(z)


def test_windows_cp932_entry_names_are_repaired(tmp_path):
    real = "スタンプ.png"
    raw = real.encode("cp932")
    placeholder = "x" * (len(raw) - 4) + ".png"
    z = make_zip(tmp_path / "ja.zip", {placeholder: png_bytes()})
    z.write_bytes(z.read_bytes().replace(placeholder.encode(), raw))  # no UTF-8 flag, as Windows writes it
    with open_source(z) as src:
        assert [f.rel for f in src.files] == [real]


def test_not_a_folder_or_zip(tmp_path):
    p = tmp_path / "pic.png"
    p.write_bytes(png_bytes())
    with pytest.raises(DatasetError, match="pic.png.*folder.*zip"):
        open_source(p)
    with pytest.raises(DatasetError, match="missing.*no such"):
        open_source(tmp_path / "missing")


def test_corrupt_zip_entry_leaves_nothing(tmp_path):
    z = make_zip(tmp_path / "crc.zip", {"a.txt": b"hello world" * 100}, compression=zipfile.ZIP_STORED)
    raw = bytearray(z.read_bytes())
    at = raw.index(b"hello world")
    raw[at] ^= 0xFF  # content no longer matches its CRC
    z.write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DatasetError, match="crc.zip.*a.txt"):
        extract_zip(z, out / "ds")
    assert leftovers(out) == []
