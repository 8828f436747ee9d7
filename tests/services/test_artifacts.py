"""Artifact stores: a shared folder and an S3 bucket (moto's real S3 server on 127.0.0.1), same assertions."""

from __future__ import annotations

import time

import pytest

from lorastudio.core.errors import InvalidParameter, NotFound
from lorastudio.services.artifacts import DirectoryArtifactStore, open_artifact_store


@pytest.fixture(params=["directory", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "directory":
        return open_artifact_store(tmp_path / "shared")
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    bucket = f"b{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return open_artifact_store(f"s3://{bucket}/farm", endpoint_url=endpoint)


def test_files_round_trip_and_list(store, tmp_path):
    src = tmp_path / "src"
    (src / "checkpoints" / "step-000002").mkdir(parents=True)
    (src / "checkpoints" / "step-000002" / "lora.safetensors").write_bytes(b"\x00\x01weights" * 100)
    (src / "config.json").write_text('{"rank": 4}')
    keys = store.put_dir(src, "proj/versions/v1")
    assert keys == ["proj/versions/v1/checkpoints/step-000002/lora.safetensors", "proj/versions/v1/config.json"]
    assert store.list("proj") == keys and store.list("proj/versions/v1/config.json") == keys[1:]
    assert store.exists(keys[0]) and not store.exists("proj/versions/v2/config.json")
    # What an API node serves a download from: the size, then the bytes as a stream.
    assert store.size(keys[0]) == 900
    with store.open_read(keys[0]) as reader:
        assert reader.read() == b"\x00\x01weights" * 100
    # Another machine: a fresh local folder gets the same bytes back.
    got = store.get_dir("proj/versions/v1", tmp_path / "elsewhere")
    assert sorted(p.relative_to(tmp_path / "elsewhere").as_posix() for p in got) == [
        "checkpoints/step-000002/lora.safetensors", "config.json"]
    assert (tmp_path / "elsewhere" / "checkpoints" / "step-000002" / "lora.safetensors").read_bytes() == \
        b"\x00\x01weights" * 100
    store.put_file(src / "config.json", "proj/versions/v1/checkpoints/step-000002/lora.safetensors")  # replace
    store.get_file("proj/versions/v1/checkpoints/step-000002/lora.safetensors", tmp_path / "again.bin")
    assert (tmp_path / "again.bin").read_text() == '{"rank": 4}'
    assert store.delete("proj/versions/v1/checkpoints") == 1
    assert store.list("proj") == ["proj/versions/v1/config.json"]


def test_missing_keys_and_escaping_keys_are_refused(store, tmp_path):
    with pytest.raises(NotFound):
        store.get_file("nope/config.json", tmp_path / "x")
    for read in (store.size, store.open_read):
        with pytest.raises(NotFound, match="nope/config.json"):
            read("nope/config.json")
    assert not (tmp_path / "x").exists()  # nothing half-written under the final name
    assert store.list("nope") == []
    (tmp_path / "f").write_text("x")
    for bad in ("../outside", "/abs/path", "a/../../b", "a\\b", ""):
        with pytest.raises(InvalidParameter, match="key"):
            store.put_file(tmp_path / "f", bad)


def test_directory_store_writes_nothing_outside_its_root(tmp_path):
    store = DirectoryArtifactStore(tmp_path / "root")
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidParameter):
        store.put_file(tmp_path / "f", "../escaped")
    assert not (tmp_path / "escaped").exists()
    # Nor serves one through a symlink planted inside it.
    (tmp_path / "root" / "run").mkdir()
    (tmp_path / "root" / "run" / "lora.safetensors").symlink_to(tmp_path / "f")
    for read in (store.size, store.open_read, store.local_path):
        with pytest.raises(NotFound):
            read("run/lora.safetensors")
