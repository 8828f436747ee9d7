"""A real `lorastudio serve` on 127.0.0.1 with tiny models, and Chromium driven by Playwright.

No browser can be downloaded here: Debian's `chromium` package is launched through Playwright's
`executable_path`. When it is missing the tests FAIL with the command to run (`make test`
installs it when it can); they never skip.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
AUTH = ("webuser", "s3cret-pass")
CATALOGS = REPO / "src" / "lorastudio" / "interfaces" / "web" / "static" / "i18n"
XSS = '<img src=x onerror="window.__xss=1">'
INSTALL_HINT = "install it with: apt-get install -y chromium (or `make ensure-chromium`, as root)"


def chromium_path() -> str:
    for candidate in (os.environ.get("LORASTUDIO_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail(f"Chromium is needed for the web UI tests and was not found; {INSTALL_HINT}", pytrace=False)


def screenshot_dir() -> Path:
    folder = Path(os.environ.get("LORASTUDIO_UI_SCREENSHOTS", REPO / "build" / "ui-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def png_bytes(size=(64, 64), color=(200, 30, 30), text: dict[str, str] | None = None, mode: str = "RGB",
              pattern: int = 0) -> bytes:
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    im = Image.new(mode, size, color)
    if pattern:
        draw = ImageDraw.Draw(im)
        draw.ellipse((size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4),
                     fill=(255 - color[0], pattern, 255 - color[2]) + ((255,) if mode == "RGBA" else ()))
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@pytest.fixture(scope="session")
def web_models(tmp_path_factory) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    root = tmp_path_factory.mktemp("webui") / "models"
    for sub in ("Stable-diffusion", "Lora", "VAE"):
        (root / sub).mkdir(parents=True)
    save_sd1_single_file(tiny_sd1_pipeline(0), root / "Stable-diffusion" / "tiny.safetensors")
    from lorastudio.testing.tiny_interrogators import write_tiny_wd14

    # A WD14-layout tagger for "Caption all": its tags name the pixels it saw (px_<y>_<x>_<bgr>).
    write_tiny_wd14(root / "interrogators" / "wd14-tiny", size=2)
    # A downloaded LoRA whose metadata tries to inject HTML: it must show as text.
    save_file({"lora_unet_x.lora_down.weight": np.zeros((2, 4), np.float32)}, str(root / "Lora" / "evil.safetensors"),
              metadata={"ss_output_name": XSS, "ss_base_model_version": "sd_v1", "ss_network_dim": "4",
                        "ss_tag_frequency": json.dumps({"img": {XSS: 5, "plain tag": 2}})})
    return root


class Server:
    def __init__(self, models: Path, work: Path, env: dict[str, str | None] | None = None):
        """env: variables to set (None: to remove) for this server on top of the suite's."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.work = work
        self.projects = work / "projects"
        self.log = work / "server.log"
        cmd = [sys.executable, "-m", "lorastudio.interfaces.cli.app", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--device", "cpu", "--models-dir", str(models),
               "--outdir", str(work / "outputs"), "--projects-dir", str(self.projects),
               # the LoRA report (a weight sweep, minutes on the tiny model) has its own tests
               "--no-report"]
        environ = {**os.environ, "HF_HUB_OFFLINE": "1", "LORASTUDIO_API_AUTH": f"{AUTH[0]}:{AUTH[1]}",
                   "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        self.proc = subprocess.Popen(cmd, env=environ, cwd=work, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def wait_up(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(self.url + "/sdapi/v1/samplers", auth=AUTH, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not up after {timeout}s: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def api(self, method: str, path: str, **kw):
        import httpx

        return httpx.request(method, self.url + path, auth=AUTH, timeout=60, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


@pytest.fixture(scope="session")
def server(web_models, tmp_path_factory):
    srv = Server(web_models, tmp_path_factory.mktemp("webui-server"))
    try:
        srv.wait_up()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is needed for the web UI tests: pip install -e '.[dev]'", pytrace=False)
    path = chromium_path()
    with sync_playwright() as pw:
        # --no-sandbox: the tests often run as root in containers, where Chromium's sandbox cannot start.
        b = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


class Guards:
    """Fails the test on any request to another host, any console error, any page error, any dialog."""

    def __init__(self, origin: str):
        self.origin = origin
        self.problems: list[str] = []
        self.allowed: dict[int, int] = {}  # HTTP status -> how many error responses the test provokes on purpose

    def allow(self, status: int, count: int = 1) -> None:
        self.allowed[status] = self.allowed.get(status, 0) + count

    def _console(self, message) -> None:
        if message.type != "error":
            return
        # Chromium logs every 4xx answer to fetch() as a console error; only those a test
        # provoked on purpose (a 422 it checks the page shows) are let through, one each.
        found = re.search(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
        if found and self.allowed.get(int(found.group(1)), 0) > 0:
            self.allowed[int(found.group(1))] -= 1
            return
        self.problems.append(f"console error: {message.text}")

    def attach(self, context) -> None:
        def route(r):
            url = r.request.url
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob") or f"{parts.scheme}://{parts.netloc}" == self.origin:
                return r.continue_()
            self.problems.append(f"request to another host: {url}")
            return r.abort()

        context.route("**/*", route)

    def watch(self, page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))

        def dialog(d):
            self.problems.append(f"dialog opened: {d.message}")
            d.dismiss()

        page.on("dialog", dialog)


@pytest.fixture
def open_page(browser, server):
    """open_page(locale="en-US", path="/") -> a page on the server, logged in, with the guards on."""
    made = []

    def make(locale: str = "en-US", path: str = "/", storage: dict | None = None, viewport=(1280, 900)):
        context = browser.new_context(locale=locale, http_credentials={"username": AUTH[0], "password": AUTH[1]},
                                      viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True)
        guards = Guards(server.url)
        guards.attach(context)
        page = context.new_page()
        guards.watch(page)
        made.append((context, guards))
        page.goto(server.url + path)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        pages[page] = guards
        return page

    pages = {}
    # open_page.allow(page, 422): the next 422 answer's console line is expected by the test.
    make.allow = lambda page, status, count=1: pages[page].allow(status, count)
    make.guards = lambda page: pages[page]
    yield make
    problems = [p for _, g in made for p in g.problems]
    for context, _ in made:
        context.close()
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="session")
def catalogs() -> dict[str, dict[str, str]]:
    return {lang: json.loads((CATALOGS / f"{lang}.json").read_text(encoding="utf-8")) for lang in ("en", "ja")}


@pytest.fixture
def shots():
    return screenshot_dir()


def fill(template: str, values: dict) -> str:
    """A catalog text with its {placeholders} filled, as the page's t() does."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="session")
def helpers():
    from types import SimpleNamespace

    return SimpleNamespace(png=png_bytes, b64=b64, fill=fill, Server=Server, XSS=XSS, AUTH=AUTH, catalogs_dir=CATALOGS,
                           repo=REPO)
