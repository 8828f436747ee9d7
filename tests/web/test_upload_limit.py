"""Dataset zips over the 64 MiB body limit: the dataset upload route has the upload limit.

A real uvicorn server on 127.0.0.1 (Starlette's TestClient builds the whole body in memory) and
httpx streaming the zip from disk; the padding inside the zip comes from a sparse file."""

from __future__ import annotations

import socket
import threading
import time
import zipfile

import httpx
import pytest

MiB = 1024**2
LIMIT = 72 * MiB  # above the 64 MiB JSON body limit, so only the upload limit can let 70 MiB through


@pytest.fixture
def live(web_models, tmp_path):
    import uvicorn

    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.server import create_app
    from lorastudio.interfaces.api.state import ApiLimits

    settings = StudioSettings(models_dir=web_models, outdir=tmp_path / "outputs", projects_dir=tmp_path / "projects",
                              device="cpu", include_bundled=False)
    app = create_app(settings, limits=ApiLimits(max_upload_bytes=LIMIT), run_worker=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        server.should_exit = True
        thread.join(30)


def _sparse(path, size: int):
    with open(path, "wb") as f:
        f.truncate(size)  # a hole: no 70 MiB in memory, next to nothing on disk
    return path


def test_a_zip_over_64_mib_is_accepted_up_to_the_upload_limit_and_refused_above(live, helpers):
    url, tmp = live
    archive = tmp / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("cat.png", helpers.png((64, 64), (200, 30, 30), pattern=40))
        z.write(_sparse(tmp / "padding.bin", 70 * MiB), "padding.bin")  # stored: the zip is > 70 MiB
    assert 70 * MiB < archive.stat().st_size < LIMIT

    with httpx.Client(base_url=url, timeout=120) as c:
        ds = c.post("/v1/datasets").json()["dataset_id"]
        with open(archive, "rb") as f:
            r = c.post(f"/v1/datasets/{ds}/files?resolution=64", files=[("files", ("big.zip", f, "application/zip"))])
        assert r.status_code == 200, r.text[:500]
        assert [x["name"] for x in r.json()["files"]] == ["cat.png"]
        folder = tmp / "projects" / "datasets" / ds
        assert (folder / "padding.bin").stat().st_size == 70 * MiB

        # Above the limit: refused from the Content-Length, before the body is read, with a message
        # that says what to do; nothing reaches the dataset.
        with open(_sparse(tmp / "huge.zip", LIMIT + MiB), "rb") as f:
            r = c.post(f"/v1/datasets/{ds}/files", files=[("files", ("huge.zip", f, "application/zip"))])
        assert r.status_code == 413
        detail = r.json()["detail"]
        assert "upload over the server's limit of 72 MiB" in detail and "several parts" in detail
        # Streamed without a Content-Length: counted as it arrives, same answer.
        def chunks():
            yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"huge.zip\"\r\n\r\n"
            for _ in range(LIMIT // MiB + 2):
                yield bytes(MiB)
        r = c.post(f"/v1/datasets/{ds}/files", content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and "upload over the server's limit" in r.json()["detail"]
        assert sorted(p.name for p in folder.iterdir()) == ["cat.png", "padding.bin"]
