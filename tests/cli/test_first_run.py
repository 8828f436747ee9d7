"""The first commands a new user types, run as they would: the real CLI in a subprocess, in an
empty folder, on the bundled base model. What reaches the terminal is asserted line by line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lorastudio
from lorastudio.interfaces.cli.app import app

SRC = Path(lorastudio.__file__).resolve().parents[1]
BAR = re.compile(r"^(sampling|training): 100%\|[#█]+\| (\d+)/\2 \[")
SAVED = re.compile(r"^outputs/txt2img-images/\d{4}-\d{2}-\d{2}/00000-(\d+)\.png  seed=\1$")


def run_cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("LORASTUDIO_MODELS_DIR", None)
    return subprocess.run([sys.executable, "-m", "lorastudio.interfaces.cli.app", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def lines(text: str) -> list[str]:
    # A progress bar redraws with carriage returns: each redraw counts as a line of its own.
    return [part for part in re.split(r"[\r\n]+", text) if part.strip()]


def test_first_generate_in_an_empty_folder_draws_the_native_size_quietly(tmp_path):
    from PIL import Image

    from lorastudio.core.infotext import parse_infotext
    from lorastudio.core.png_text import read_infotext

    started = time.monotonic()
    out = run_cli(tmp_path, "generate", "a red circle on a blue background")
    seconds = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    (saved,) = lines(out.stdout)
    assert SAVED.match(saved), out.stdout
    # stderr: our progress bar's last line, once; no library bars, advice or warnings.
    (bar,) = lines(out.stderr)
    assert BAR.match(bar) and "20/20" in bar, out.stderr
    path = tmp_path / saved.split("  ")[0]
    assert Image.open(path).size == (32, 32)  # the bundled base's native size, not A1111's 512
    fields = parse_infotext(read_infotext(path))
    assert (fields["Size-1"], fields["Size-2"], fields["Model"]) == ("32", "32", "lorastudio-shapes-v1")
    # At 512x512 the same command took 2.5 minutes of CPU; at 32x32 it is seconds plus imports.
    assert seconds < 120, f"first generate took {seconds:.0f} s"


def test_verbose_shows_the_libraries_logs(tmp_path):
    out = run_cli(tmp_path, "generate", "a red circle", "--steps", "1", "--verbose")
    assert out.returncode == 0, out.stderr
    assert "Loading pipeline components" in out.stderr and "[transformers]" in out.stderr


def test_generate_help_shows_the_emphasis_syntax_as_written():
    for command in ("generate", "img2img"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert "(word:1.2), [word], BREAK" in result.output, result.output


def test_an_error_leaves_no_stale_progress_bar(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["generate", "a red circle <lora:nosuch:1>", "--steps", "1"])
    assert result.exit_code == 2
    assert lines(result.output) == ["error: LoRA 'nosuch' not found"], result.output


def test_japanese_project_trains_installs_and_generates_with_its_tag(tmp_path, monkeypatch):
    """train -> kohya file -> models/Lora/自作LORA.safetensors -> <lora:自作LORA:1> draws, all quiet;
    a second version never overwrites the first (自作LORA-v2), and --no-install leaves Lora/ alone."""
    from lorastudio.core.infotext import parse_infotext
    from lorastudio.core.png_text import read_infotext
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    name = "自作LORA"
    draw_sticker_dataset(tmp_path / "写真", n=4, trigger=name, seed=0, size=64)
    common = ["--images", "写真", "--trigger", name, "--base", "lorastudio-shapes-v1", "--steps", "3",
              "--project", name, "--no-report"]  # the report has its own tests (tests/report)
    out = run_cli(tmp_path, "train", *common)
    assert out.returncode == 0, out.stderr
    installed = tmp_path / "models" / "Lora" / f"{name}.safetensors"
    trained = tmp_path / "projects" / name / "versions" / "v1" / f"{name}.safetensors"
    assert installed.read_bytes() == trained.read_bytes()
    assert f"installed as {installed}" in out.stdout and f"use it with: <lora:{name}:1>" in out.stdout
    (bar,) = lines(out.stderr)
    assert BAR.match(bar) and "3/3" in bar, out.stderr

    out = run_cli(tmp_path, "generate", f"{name} sticker <lora:{name}:1>", "--steps", "2", "--seed", "3")
    assert out.returncode == 0, out.stderr
    # The LoRA has no text-encoder part: diffusers' "No LoRA keys associated to CLIPTextModel" stays out.
    (bar,) = lines(out.stderr)
    assert BAR.match(bar), out.stderr
    fields = parse_infotext(read_infotext(tmp_path / lines(out.stdout)[0].split("  ")[0]))
    assert fields["Lora hashes"].startswith(f"{name}: ")

    # The next runs in-process: what they print is checked above; here, what they install.
    monkeypatch.chdir(tmp_path)
    first = installed.read_bytes()
    result = CliRunner().invoke(app, ["train", *common, "--version", "v2"])
    assert result.exit_code == 0, result.output
    second = installed.with_name(f"{name}-v2.safetensors")
    assert installed.read_bytes() == first  # never overwritten
    assert second.read_bytes() == (tmp_path / "projects" / name / "versions" / "v2" / f"{name}.safetensors").read_bytes()
    assert f"use it with: <lora:{name}-v2:1>" in result.output

    result = CliRunner().invoke(app, ["train", *common, "--version", "v3", "--no-install"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in installed.parent.iterdir()) == [f"{name}-v2.safetensors", f"{name}.safetensors"]
    assert "installed" not in result.output


NOISE = ("Loading pipeline components", "should be kept in float32", "No LoRA keys associated", "[transformers]",
         "torchvision", "steps_offset", "Warning", "warn(")


def test_serve_keeps_the_libraries_quiet_too(tmp_path):
    import signal
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lorastudio.interfaces.cli.app", "serve", "--port", str(port),
                                 "--device", "cpu"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", timeout=120,
                               json={"prompt": "a red circle", "steps": 2, "width": 32, "height": 32})
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert r.status_code == 200, r.text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    text = log.read_text(errors="replace")
    assert "POST /sdapi/v1/txt2img" in text  # the server's own access log is there...
    assert not [n for n in NOISE if n in text], text  # ...and nothing from the libraries underneath


def test_a_two_process_training_from_the_cli_installs_its_lora_too(tmp_path, monkeypatch):
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(SRC))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    draw_sticker_dataset(tmp_path / "data", n=4, trigger="zzduo", seed=0, size=64)
    result = CliRunner().invoke(app, ["train", "--images", "data", "--trigger", "zzduo", "--base",
                                      "lorastudio-shapes-v1", "--steps", "2", "--num-processes", "2",
                                      "--no-report"])
    assert result.exit_code == 0, result.output
    installed = tmp_path / "models" / "Lora" / "zzduo.safetensors"
    assert installed.read_bytes() == (tmp_path / "projects" / "zzduo" / "versions" / "v1" / "zzduo.safetensors").read_bytes()
    assert "use it with: <lora:zzduo:1>" in result.output
