"""`lorastudio dataset caption`: captions written beside the pictures, never over the user's own."""

from __future__ import annotations

import json
import struct
import zipfile
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

from lorastudio.interfaces.cli.app import app
from lorastudio.testing.tiny_interrogators import write_tiny_wd14

runner = CliRunner()


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    write_tiny_wd14(root / "interrogators" / "wd-tiny", size=4)
    return root


def _pictures(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        # Pure red: the "px_*_r" tags fire (R is element 2 of each BGR pixel), G and B do not.
        im = Image.new("RGB", (64, 64), (255, 0, 0) if i != 1 else (0, 0, 255))
        path = folder / f"pic{i}.png"
        im.save(path)
        paths.append(path)
    return paths


def _caption(args, models):
    return runner.invoke(app, ["dataset", "caption", *args, "--models-dir", str(models)])


def test_bare_name_is_found_under_interrogators_and_trigger_goes_first(tmp_path, models):
    pics = _pictures(tmp_path / "data")
    res = _caption([str(tmp_path / "data"), "--tagger", "wd-tiny", "--trigger", "Delta(mon)", "--max-tags", "3",
                    "--general-threshold", "0.9"], models)
    assert res.exit_code == 0, res.output
    red = pics[0].with_suffix(".txt").read_text(encoding="utf-8")
    assert red.endswith("\n")
    tags = [t.strip() for t in red.split(",")]
    assert tags[0] == r"Delta\(mon\)"
    # Element 5 (pixel 0,1, red) is a character row in the tiny CSV: characters come first.
    assert tags[1] == r"character 5 \(series\)"
    assert len(tags) == 4 and all(t.startswith("px ") and t.endswith(" r") for t in tags[2:])
    blue = [t.strip() for t in pics[1].with_suffix(".txt").read_text(encoding="utf-8").split(",")]
    assert blue[1] == r"character 6 \(series\)"  # element 6: pixel 0,2, blue
    assert all(t.endswith(" b") for t in blue[2:])
    assert "tag frequency" in res.output and r"Delta\(mon\)" in res.output


def test_existing_captions_are_kept_unless_overwrite(tmp_path, models):
    pics = _pictures(tmp_path / "data")
    mine = pics[0].with_suffix(".txt")
    mine.write_bytes(b"my own words\r\n")
    res = _caption([str(tmp_path / "data"), "--tagger", "wd-tiny"], models)
    assert res.exit_code == 0, res.output
    assert mine.read_bytes() == b"my own words\r\n"
    assert pics[2].with_suffix(".txt").exists()
    res = _caption([str(tmp_path / "data"), "--tagger", "wd-tiny", "--overwrite", "--prefix", "pfx",
                    "--suffix", "sfx"], models)
    assert res.exit_code == 0, res.output
    text = mine.read_text(encoding="utf-8").strip()
    assert text.startswith(r"pfx, character 5 \(series\), px ") and text.endswith(", sfx")


def test_dry_run_writes_nothing_and_shows_the_table(tmp_path, models):
    _pictures(tmp_path / "data")
    res = _caption([str(tmp_path / "data"), "--tagger", "wd-tiny", "--trigger", "zed", "--dry-run"], models)
    assert res.exit_code == 0, res.output
    assert not list((tmp_path / "data").glob("*.txt"))
    assert "pic0.png" in res.output and "new" in res.output and "would write 3 caption(s)" in res.output


def test_json_summary_has_the_tag_frequency(tmp_path, models):
    _pictures(tmp_path / "data")
    res = _caption([str(tmp_path / "data"), "--tagger", "wd-tiny", "--trigger", "zed", "--json",
                    "--whitelist", "px_1_0_r", "--whitelist", "px_1_0_b"], models)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    # Two red pictures have px_1_0_r, the blue one px_1_0_b; every caption starts with the trigger.
    assert summary["tag_frequency"] == {"zed": 3, "px 1 0 r": 2, "px 1 0 b": 1}


def test_zip_is_extracted_to_out_and_captioned_there(tmp_path, models):
    pics = _pictures(tmp_path / "data", n=2)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in pics:
            zf.write(p, p.name)
    res = _caption([str(archive), "--tagger", "wd-tiny"], models)
    assert res.exit_code == 2 and "--out" in res.output
    res = _caption([str(archive), "--tagger", "wd-tiny", "--out", str(tmp_path / "out")], models)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.txt")) == ["pic0.txt", "pic1.txt"]


def test_unknown_name_lists_what_is_there(tmp_path, models):
    _pictures(tmp_path / "data", n=1)
    res = _caption([str(tmp_path / "data"), "--tagger", "wd-huge"], models)
    assert res.exit_code == 2
    assert "wd-huge" in res.output and "available: wd-tiny" in res.output
    assert not list((tmp_path / "data").glob("*.txt"))


@pytest.mark.parametrize("damage", ["no_model", "no_csv", "wrong_shape"])
def test_broken_model_folder_fails_before_any_caption(tmp_path, models, damage):
    _pictures(tmp_path / "data", n=2)
    folder = models / "interrogators" / "broken"
    if damage == "no_model":
        folder.mkdir(parents=True)
        (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n")
        expected = "no model.onnx"
    elif damage == "no_csv":
        write_tiny_wd14(folder, with_csv=False)
        expected = "selected_tags.csv: missing"
    else:
        write_tiny_wd14(folder, input_shape=[1, 3, 4, 4])
        expected = "model.onnx: takes input [1, 3, 4, 4]"
    res = _caption([str(tmp_path / "data"), "--tagger", "broken"], models)
    assert res.exit_code == 2
    assert expected in res.output and str(folder) in res.output
    assert not list((tmp_path / "data").glob("*.txt"))


def _png_header_only(path, width, height):
    """A PNG that declares width x height (8-bit grey) with almost no data: a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def test_enormous_picture_is_named_and_gets_no_caption(tmp_path, models):
    _pictures(tmp_path / "data", n=1)
    bomb = tmp_path / "data" / "huge.png"
    _png_header_only(bomb, 30000, 30000)
    res = _caption([str(tmp_path / "data"), "--tagger", "wd-tiny"], models)
    assert res.exit_code == 1
    assert f"{bomb}: declares an enormous size" in res.output
    assert not bomb.with_suffix(".txt").exists()
    assert (tmp_path / "data" / "pic0.txt").exists()  # the good picture is still captioned


def test_two_pictures_sharing_a_caption_name_and_kohya_caption_files(tmp_path, models):
    data = tmp_path / "data"
    _pictures(data, n=1)  # pic0.png
    Image.new("RGB", (64, 64), (0, 0, 255)).save(data / "pic0.jpg")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(data / "other.png")
    (data / "other.caption").write_text("kohya style caption", encoding="utf-8")
    res = _caption([str(data), "--tagger", "wd-tiny"], models)
    assert res.exit_code == 1
    assert f"{data / 'pic0.png'}: shares the caption file pic0.txt with {data / 'pic0.jpg'}" in res.output
    assert (data / "pic0.txt").exists()  # written once, for the first picture only
    assert not (data / "other.txt").exists()  # its .caption file is the user's caption


def test_a_model_that_fails_mid_run_leaves_no_caption(tmp_path, models):
    # The graph loads and declares WD14's signature, but onnxruntime fails when it runs.
    import onnx
    from onnx import TensorProto, helper

    folder = models / "interrogators" / "fails"
    write_tiny_wd14(folder)
    model = onnx.load(str(folder / "model.onnx"))
    # Reshape to [2, 24] while the output is declared [batch, 48].
    model.graph.node[0].attribute[0].t.CopyFrom(helper.make_tensor("flat_shape_v", TensorProto.INT64, [2], [2, 24]))
    onnx.save(model, str(folder / "model.onnx"))
    _pictures(tmp_path / "data", n=2)
    res = _caption([str(tmp_path / "data"), "--tagger", "fails"], models)
    assert res.exit_code == 2
    assert f"{tmp_path / 'data' / 'pic0.png'}: the model failed on this picture" in res.output
    assert not list((tmp_path / "data").glob("*.txt"))
