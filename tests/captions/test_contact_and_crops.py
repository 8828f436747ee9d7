"""Contact sheet and subject-centred crops."""

from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from lorastudio.interfaces.cli.app import app
from lorastudio.training.dataset.contact_sheet import PAD, THUMB, cell_size

runner = CliRunner()


def test_contact_sheet_shows_pictures_masks_and_captions(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (80, 80), (255, 0, 0)).save(data / "a.png")
    Image.new("L", (80, 80), 0).save(data / "a.mask.png")  # black mask: visible as a black square
    (data / "a.txt").write_text("red square, tag two", encoding="utf-8")
    Image.new("RGB", (80, 80), (0, 0, 255)).save(data / "b.png")
    res = runner.invoke(app, ["dataset", "contact", str(data), "--columns", "2"])
    assert res.exit_code == 0, res.output
    sheet_path = tmp_path / "data-contact.png"
    assert res.output.strip() == str(sheet_path) and not (data / "contact.png").exists()
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    cw, ch = cell_size()
    assert sheet.shape == (ch, 2 * cw, 3)
    centre = PAD + THUMB // 2
    assert tuple(sheet[centre, centre]) == (255, 0, 0)  # picture a
    assert tuple(sheet[centre, 2 * PAD + THUMB + THUMB // 2]) == (0, 0, 0)  # a's mask
    assert tuple(sheet[centre, cw + centre]) == (0, 0, 255)  # picture b, no mask: white there
    assert tuple(sheet[centre, cw + 2 * PAD + THUMB + THUMB // 2]) == (255, 255, 255)
    text_rows = sheet[THUMB + 2 * PAD:, :cw]
    assert (text_rows < 128).any()  # the caption is drawn


def test_crop_follows_the_subject(tmp_path):
    from lorastudio.training.dataset.buckets import assign_bucket, fit_to_bucket

    data = tmp_path / "data"
    data.mkdir()
    # 8:1, wider than the widest bucket (4:1): half the picture is cut away whatever happens.
    im = Image.new("RGB", (512, 64), (255, 255, 255))
    im.paste((0, 160, 0), (440, 8, 500, 56))  # the subject sits at the right end
    im.save(data / "wide.png")
    mask = Image.new("L", (512, 64), 0)
    mask.paste(255, (440, 8, 500, 56))
    mask.save(data / "wide.mask.png")
    (data / "wide.txt").write_text("zed", encoding="utf-8")
    res = runner.invoke(app, ["dataset", "crop", str(data), "--out", str(tmp_path / "out"), "--resolution", "64",
                              "--bucket-step", "8"])
    assert res.exit_code == 0, res.output
    bucket = assign_bucket((512, 64), 64, step=8)
    out = np.asarray(Image.open(tmp_path / "out" / "wide.png").convert("RGB"))
    assert out.shape[:2] == (bucket.height, bucket.width)

    def green(a):
        return ((a[..., 1] > 120) & (a[..., 0] < 80)).sum()

    centre = np.asarray(fit_to_bucket(im, bucket))
    assert green(centre) == 0  # what training's centre crop would keep: no subject at all
    scale = bucket.height / 64 if bucket.width / bucket.height < 8 else bucket.width / 512
    whole = 60 * 48 * scale * scale
    assert green(out) > 0.8 * whole  # the subject-centred crop keeps (nearly) all of it
    cmask = np.asarray(Image.open(tmp_path / "out" / "wide.mask.png"))
    assert cmask.shape == out.shape[:2] and ((cmask > 128) == (out[..., 1] > 120) & (out[..., 0] < 80)).mean() > 0.97
    assert (tmp_path / "out" / "wide.txt").read_text(encoding="utf-8") == "zed"


def test_crop_takes_a_zip_like_the_dataset_ingest(tmp_path):
    import zipfile

    buf = tmp_path / "set.zip"
    im = Image.new("RGB", (128, 64), (255, 255, 255))
    with zipfile.ZipFile(buf, "w") as z:
        with z.open("10_cat/a.png", "w") as f:
            im.save(f, format="PNG")
        z.writestr("10_cat/a.txt", "zed")
    res = runner.invoke(app, ["dataset", "crop", str(buf), "--out", str(tmp_path / "out"), "--resolution", "64",
                              "--bucket-step", "8"])
    assert res.exit_code == 0, res.output
    from lorastudio.training.dataset.buckets import assign_bucket

    bucket = assign_bucket((128, 64), 64, step=8)  # the bucket training gives this picture
    assert Image.open(tmp_path / "out" / "10_cat" / "a.png").size == (bucket.width, bucket.height)
    assert (tmp_path / "out" / "10_cat" / "a.txt").read_text(encoding="utf-8") == "zed"
