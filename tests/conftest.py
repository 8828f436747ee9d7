"""Settings and fixtures every test module shares (test modules cannot import each other under
--import-mode=importlib, so shared helpers are fixtures here)."""

import os

import pytest

# Nothing in the suite may reach for the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Two test workers share two cores: one thread each avoids oversubscription (10x slower here).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


class NetworkUsed(AssertionError):
    pass


class NoNetwork:
    """Refuses and records every socket connection while active (loading must work offline)."""

    def __init__(self):
        self.attempts: list = []

    def __enter__(self):
        import socket

        self._saved = socket.socket.connect, socket.socket.connect_ex

        def refuse(sock, address, *args):
            self.attempts.append(address)
            raise NetworkUsed(f"network connection attempted to {address!r}")

        # socket.create_connection and every client library end in one of these two.
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        return self

    def __exit__(self, *exc):
        import socket

        socket.socket.connect, socket.socket.connect_ex = self._saved
        return False


@pytest.fixture
def studio_client(tmp_path):
    """studio_client(models_root, allow_pickle=False) -> a TestClient (enter it with `with`) on a fresh app
    over that models folder, the bundled base left out, on the CPU; outputs and projects in tmp_path."""
    def make(models_root, allow_pickle: bool = False):
        from fastapi.testclient import TestClient

        from lorastudio.core.settings import StudioSettings
        from lorastudio.interfaces.api.server import create_app

        settings = StudioSettings(models_dir=models_root, outdir=tmp_path / "out", projects_dir=tmp_path / "p",
                                  device="cpu", include_bundled=False, allow_pickle=allow_pickle)
        return TestClient(create_app(settings, poll_interval_s=0.05), base_url="http://127.0.0.1:7860")

    return make


@pytest.fixture(scope="session")
def refuse_network():
    """`with refuse_network() as guard:` -- for session fixtures that load models offline."""
    return NoNetwork


@pytest.fixture()
def no_network():
    with NoNetwork() as guard:
        yield guard


@pytest.fixture()
def one_torch_thread():
    # tiny ops on a shared 2-core box: a second OpenMP thread mostly spins (measured 10-30x slower)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for this test session (one per xdist worker).

    No skip when the binaries are missing: the error names the package to install.
    Its folder is outside pytest's basetemp on purpose: other pytest runs on the same
    machine prune old basetemps, which would delete a running server's data.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from lorastudio.testing.postgres_server import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="lorastudio-pg-"))
    server = PostgresServer(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(scope="session")
def spandrel_importable():
    """Makes `import spandrel` work in a test process that has no torchvision.

    spandrel imports `torchvision.transforms.functional` for two architectures only (LaMa
    inpainting: rotate, InterpolationMode; RestoreFormer: normalize), and PyPI offers no
    torchvision that imports beside the CPU torch installed here. When torchvision is absent,
    and only then, a stand-in module with those three names is put in sys.modules; each of its
    functions raises if called, so a test that ever reached LaMa or RestoreFormer would fail
    loudly. The upscalers the tests load (ESRGAN, compact, SwinIR) never touch it.
    """
    import enum
    import importlib.util
    import sys
    import types

    added = []
    if importlib.util.find_spec("torchvision") is None:
        def refuse(*args, **kwargs):
            raise RuntimeError("torchvision stand-in (tests/conftest.py): the real torchvision is not installed")

        functional = types.ModuleType("torchvision.transforms.functional")
        functional.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")
        functional.rotate = functional.normalize = refuse
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = functional
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = transforms
        for name, module in (("torchvision", torchvision), ("torchvision.transforms", transforms),
                             ("torchvision.transforms.functional", functional)):
            sys.modules[name] = module
            added.append(name)
    try:
        import spandrel
    finally:
        # Only spandrel's import sees the stand-in: its two modules keep the names they bound, and
        # other libraries (transformers, diffusers) keep finding no torchvision afterwards.
        for name in added:
            sys.modules.pop(name, None)
    return spandrel
