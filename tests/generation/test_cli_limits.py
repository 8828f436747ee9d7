"""The CLI refuses what the API refuses (core/limits.py), as a usage error naming the field, and
says "no space left on <folder>" when the disk is full, never with a traceback."""

from __future__ import annotations

import errno
import os
import time

import pytest
from typer.testing import CliRunner

from lorastudio.interfaces.cli.app import app

runner = CliRunner()
CJK_258 = "日" * 86  # 86 characters, 258 bytes in UTF-8


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    out = result.output + (getattr(result, "stderr", "") or "")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, out


def test_from_png_with_a_megabyte_prompt_is_refused_before_any_model_loads(tmp_path, sd1_models_root):
    from PIL import Image

    from lorastudio.core.png_text import write_png_with_infotext

    png = tmp_path / "huge.png"
    write_png_with_infotext(Image.new("RGB", (8, 8)), png, "x" * 1_000_000 + "\nSteps: 2, Seed: 1, Size: 32x32")
    start = time.monotonic()
    code, out = cli("generate", "--from-png", png, "--models-dir", sd1_models_root, "--device", "cpu",
                    "--outdir", tmp_path / "o")
    assert code == 2 and "prompt=" in out and "at most 100000 characters" in out, out
    assert len(out) < 2000 and time.monotonic() - start < 10
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, field", [
    (["--model", CJK_258], "model"),
    (["--vae", "a" * 300], "vae"),
    (["--negative", "n" * 100_001], "negative_prompt"),
    (["--outdir", "/tmp/" + "o" * 300], "outdir"),
    (["--models-dir", "/tmp/" + CJK_258], "models_dir"),
])
def test_generate_refuses_names_and_texts_past_the_limits(tmp_path, args, field):
    code, out = cli("generate", "a cat", "--device", "cpu", *args)
    assert code == 2 and out.startswith(f"error: {field}="), out
    assert "Traceback" not in out and len(out) < 2000


def test_from_png_that_is_not_an_image_is_a_usage_error(tmp_path):
    code, out = cli("generate", "--from-png", tmp_path / "missing.png")
    assert code == 2 and out.startswith("error: --from-png=") and "cannot read the image" in out, out
    (tmp_path / "text.png").write_text("not a png")
    code, out = cli("generate", "--from-png", tmp_path / "text.png")
    assert code == 2 and "cannot read the image" in out, out


@pytest.mark.parametrize("args, field", [
    (["--project", "日" * 80], "project"),
    (["--trigger", "t" * 100_001], "trigger"),
    (["--base", "b" * 300], "base"),
])
def test_train_refuses_names_and_texts_past_the_limits(tmp_path, args, field):
    base = {"--images": tmp_path, "--trigger": "zz", "--base": "tiny"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    flat = [str(x) for kv in base.items() for x in kv]
    code, out = cli("train", *flat, "--projects-dir", tmp_path / "p")
    assert code == 2 and out.startswith(f"error: {field}="), out
    assert not (tmp_path / "p").exists()


def test_train_toml_gets_the_same_limits(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(f'images = "."\ntrigger = "zz"\nbase = "tiny"\nsample_prompts = ["{"s" * 100_001}"]\n',
                    encoding="utf-8")
    code, out = cli("train", toml)
    assert code == 2 and out.startswith("error: sample_prompts.0="), out


def test_generate_on_a_full_disk_names_the_folder(tmp_path, sd1_models_root, monkeypatch):
    real_fsync = os.fsync

    out_dir = str(tmp_path / "out")

    def full(fd):
        real_fsync(fd)
        # Only the output folder's disk is full (the hash cache beside the models is written too).
        if os.readlink(f"/proc/self/fd/{fd}").startswith(out_dir):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # where atomic writes meet the disk
    code, out = cli("generate", "a red circle", "--models-dir", sd1_models_root, "--steps", "1", "--width", "32",
                    "--height", "32", "--seed", "3", "--device", "cpu", "--outdir", tmp_path / "out")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert code == 2, out
    assert f"error: no space left on {tmp_path / 'out' / 'txt2img-images'}" in out and "free space" in out, out
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("args, field", [
    (["dataset", "check", "/tmp/" + "a" * 300], "source"),
    (["demo", "--workspace", "/tmp/" + CJK_258], "--workspace"),
    (["info", "/tmp/" + "a" * 300], "image"),
])
def test_path_arguments_past_255_bytes_are_usage_errors(args, field):
    code, out = cli(*args)  # before: OSError(36, 'File name too long') with a traceback, exit 1
    assert code == 2 and out.startswith(f"error: {field}=") and "255" in out, out
