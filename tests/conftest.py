import os

import pytest

# Nothing in the suite may reach for the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Two test workers share two cores: one thread each avoids oversubscription (10x slower here).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


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
