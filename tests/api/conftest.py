"""A tiny real SD 1.x checkpoint in a temporary A1111 models folder, and apps built on it."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LOCAL = "http://127.0.0.1:7860"  # TestClient base: a loopback Host header, as a local client sends


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    root = tmp_path_factory.mktemp("a1111") / "models"
    for sub in ("Stable-diffusion", "Lora", "VAE", "embeddings"):
        (root / sub).mkdir(parents=True)
    save_sd1_single_file(tiny_sd1_pipeline(0), root / "Stable-diffusion" / "tiny.safetensors")
    # Listing reads only the header: the tensors need not be a working LoRA.
    save_file({"lora_unet_x.lora_down.weight": np.zeros((2, 4), np.float32)},
              str(root / "Lora" / "mystyle.safetensors"),
              metadata={"ss_output_name": "MyStyle", "ss_tag_frequency": json.dumps({"img": {"cat": 3}})})
    save_file({"emb_params": np.zeros((3, 32), np.float32)}, str(root / "embeddings" / "bad-hands.safetensors"))
    return root


@pytest.fixture(autouse=True)
def _session_lora_folder_unchanged(models_root):
    """A finished training installs its LoRA into the models root's Lora/, which the whole session
    shares: what a test installed there is removed after it, so listings stay as the fixture made them."""
    lora_dir = models_root / "Lora"
    before = set(lora_dir.iterdir())
    yield
    for path in set(lora_dir.iterdir()) - before:
        path.unlink()


@pytest.fixture(scope="session")
def engine(models_root, tmp_path_factory):
    """One engine for the session: loading the model once keeps the suite fast."""
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    out = tmp_path_factory.mktemp("engine-out")
    return GenerationEngine(StudioSettings(models_dir=models_root, outdir=out / "outputs", projects_dir=out / "p",
                                           device="cpu", include_bundled=False))


@pytest.fixture
def settings(models_root, tmp_path):
    from lorastudio.core.settings import StudioSettings

    # The LoRA report after each training is tested in tests/report (on the tiny model it takes minutes).
    return StudioSettings(models_dir=models_root, outdir=tmp_path / "outputs", projects_dir=tmp_path / "projects",
                          device="cpu", include_bundled=False, report_after_training=False)


@pytest.fixture
def make_client(settings, engine):
    """make_client(**create_app options) -> a started TestClient; all are closed after the test."""
    from fastapi.testclient import TestClient

    from lorastudio.interfaces.api.server import create_app

    clients = []

    def make(base_url: str = LOCAL, **options):
        options.setdefault("engine", engine)
        options.setdefault("poll_interval_s", 0.05)
        client = TestClient(create_app(options.pop("settings", settings), **options), base_url=base_url)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


def png_b64(size=(16, 16), text: dict[str, str] | None = None, color=(200, 30, 30)) -> str:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def png_bomb_b64(width: int = 100_000, height: int = 100_000) -> str:
    """A 1x1 PNG whose header claims width x height: a few bytes that would decode to gigabytes."""
    import struct
    import zlib

    raw = base64.b64decode(png_b64((1, 1)))
    ihdr_at = raw.index(b"IHDR")
    data = bytearray(raw)
    data[ihdr_at + 4:ihdr_at + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_at:ihdr_at + 17])) & 0xFFFFFFFF
    data[ihdr_at + 17:ihdr_at + 21] = struct.pack(">I", crc)
    return base64.b64encode(bytes(data)).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m lorastudio.interfaces.api` on a free loopback port; always killed at the end."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "lorastudio.interfaces.api", "--host", "127.0.0.1", "--port", str(self.port),
               "--device", "cpu", *args]
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                                     stdout=out, stderr=subprocess.STDOUT)

    def wait_up(self, auth=None, timeout: float = 90.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            try:
                r = httpx.get(self.url + "/sdapi/v1/samplers", auth=auth, timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not up after {timeout}s: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""

    def kill(self, sig=None) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture
def imgs():
    """Image helpers (test modules cannot import conftest under --import-mode=importlib)."""
    return SimpleNamespace(png=png_b64, bomb=png_bomb_b64)


@pytest.fixture
def server_process(tmp_path):
    """server_process(args, env=None) -> a started ServerProcess; killed at the end of the test."""
    started = []

    def start(args, env=None):
        proc = ServerProcess(args, env=env, log=tmp_path / f"server-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
