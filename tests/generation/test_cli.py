"""The `lorastudio` command line, in-process through typer's CliRunner (the model loads in this process)."""

import datetime as dt
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from lorastudio.interfaces.cli.app import app

runner = CliRunner()
ARGS = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "5", "--device", "cpu"]


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output + (getattr(result, "stderr", "") or "")


def pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def first_image(sd1_models_root, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("cli-out")
    code, text = cli("generate", "a red circle", "--models-dir", sd1_models_root, *ARGS, "--outdir", outdir)
    assert code == 0, text
    return _only_image(outdir), text


def _only_image(outdir):
    # outputs/txt2img-images/YYYY-MM-DD/00000-SEED.png (globbed: a run may cross midnight)
    (path,) = outdir.glob("txt2img-images/*/*.png")
    dt.date.fromisoformat(path.parent.name)
    return path


def test_generate_writes_the_a1111_path(first_image):
    path, text = first_image
    assert path.name == "00000-5.png" and str(path) in text


def test_info_prints_the_parameters_and_a1111_json(first_image):
    path, _ = first_image
    code, text = cli("info", path)
    assert code == 0 and text.startswith("a red circle\nSteps: 2, Sampler: ")
    code, text = cli("info", path, "--json")
    fields = json.loads(text)
    assert code == 0
    assert fields["Prompt"] == "a red circle" and fields["Negative prompt"] == ""
    assert (fields["Steps"], fields["Seed"], fields["Size-1"], fields["Size-2"]) == ("2", "5", "64", "64")
    assert fields["Sampler"] and fields["Model"] == "tiny-sd1"


def test_from_png_reproduces_the_pixels(first_image, sd1_models_root, tmp_path):
    path, _ = first_image
    code, text = cli("generate", "--from-png", path, "--models-dir", sd1_models_root, "--device", "cpu",
                     "--outdir", tmp_path)
    assert code == 0, text
    again = _only_image(tmp_path)
    assert again.name == "00000-5.png" and np.array_equal(pixels(again), pixels(path))


def test_models_lists_a1111_titles(sd1_models_root):
    path = sd1_models_root / "Stable-diffusion" / "tiny-sd1.safetensors"
    short = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    code, text = cli("models", "--models-dir", sd1_models_root)
    assert code == 0 and f"  tiny-sd1.safetensors [{short}]  (float32)\n" in text


@pytest.mark.parametrize("bad, named", [
    ({"--width": "513"}, "width"),
    ({"--steps": "0"}, "steps"),
    ({"--sampler": "Eulr"}, "sampler"),
    ({"--model": "no-such-model"}, "no-such-model"),
    ({"--model": "{ckpt}"}, "model.ckpt"),
])
def test_bad_input_exits_non_zero_naming_it_and_writes_nothing(sd1_models_root, tmp_path, bad, named):
    import torch

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, ckpt)
    options = {"--steps": "2", "--width": "64", "--height": "64", "--seed": "5", "--device": "cpu",
               "--models-dir": sd1_models_root, "--outdir": tmp_path / "out"}
    options.update({k: str(ckpt) if v == "{ckpt}" else v for k, v in bad.items()})
    code, text = cli("generate", "x", *[x for pair in options.items() for x in pair])
    assert code != 0
    assert named in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from lorastudio.interfaces.cli.app import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0 and 'generate' in r.output, r.output; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_lora_weight_past_the_limit_is_a_usage_error_and_nothing_is_written(sd1_models_root, tmp_path):
    code, text = cli("generate", "a red circle <lora:anything:1e39>", "--models-dir", sd1_models_root, *ARGS,
                     "--outdir", tmp_path)
    assert code == 2, text
    assert "<lora:anything:1e39>" in text and "outside ±10" in text
    assert not list(tmp_path.iterdir())
