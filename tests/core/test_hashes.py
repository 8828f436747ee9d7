"""A1111/kohya hashes (recomputed independently with hashlib) and the on-disk hash cache."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import struct
import time

import numpy as np
import pytest
from safetensors.numpy import save, save_file

from lorastudio.core.errors import InvalidParameter, ModelFileError
from lorastudio.core.hashes import (
    HashCache,
    a1111_short_hash,
    addnet_hash_legacy,
    addnet_hash_safetensors,
    kohya_sshs_hashes,
    lora_hash_for_infotext,
    sha256_file,
)

HOUR_NS = 3600 * 10**9
SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _age(path, ns_ago=HOUR_NS):
    """Backdate mtime so the cache's just-modified guard does not apply."""
    t = time.time_ns() - ns_ago
    os.utime(path, ns=(t, t))


def _rewrite_keeping_stat(path, data: bytes):
    """Replace the content without changing size or mtime: only a real read can notice."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _tensor_data_sha256(data: bytes) -> str:
    (header_len,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + header_len:]).hexdigest()


def _lora_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {"lora_unet_x.lora_down.weight": rng.standard_normal((8, 32)).astype(np.float32),
            "lora_unet_x.lora_up.weight": rng.standard_normal((32, 8)).astype(np.float32),
            "lora_unet_x.alpha": np.array(8.0, dtype=np.float32)}


def test_sha256_file_streams_large_files(tmp_path):
    data = os.urandom(2 * 1024 * 1024 + 12345)  # spans several 1 MiB blocks
    path = tmp_path / "model.ckpt"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == SHA256_EMPTY


def test_a1111_short_hash():
    assert a1111_short_hash(SHA256_ABC) == "ba7816bf8f"
    for bad in ("ba7816bf8", "not-a-hash-at-all"):
        with pytest.raises(InvalidParameter):
            a1111_short_hash(bad)


def test_addnet_hash_known_answer():
    header = b'{"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}  '
    data = struct.pack("<Q", len(header)) + header + b"abc"
    assert addnet_hash_safetensors(io.BytesIO(data)) == SHA256_ABC


def test_addnet_hash_covers_tensor_data_only(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file(_lora_tensors(), str(path), metadata={"ss_network_dim": "8"})
    data = path.read_bytes()
    with open(path, "rb") as fh:
        first = addnet_hash_safetensors(fh)
    assert first == _tensor_data_sha256(data)
    assert first != hashlib.sha256(data).hexdigest()
    other_meta = save(_lora_tensors(), metadata={"ss_network_dim": "8", "ss_output_name": "renamed"})
    assert addnet_hash_safetensors(io.BytesIO(other_meta)) == first
    other_weights = save(_lora_tensors(seed=1), metadata={"ss_network_dim": "8"})
    assert addnet_hash_safetensors(io.BytesIO(other_weights)) != first


def test_addnet_legacy_hash():
    big = os.urandom(0x100000 + 0x10000 + 100)
    assert addnet_hash_legacy(io.BytesIO(big)) == hashlib.sha256(big[0x100000:0x110000]).hexdigest()[:8]
    partial = os.urandom(0x100000 + 10)
    assert addnet_hash_legacy(io.BytesIO(partial)) == hashlib.sha256(partial[0x100000:]).hexdigest()[:8]
    assert addnet_hash_legacy(io.BytesIO(b"short")) == SHA256_EMPTY[:8]


def test_kohya_sshs_hashes():
    rng = np.random.default_rng(3)
    # Large enough (> 1 MiB + 64 KiB) that the legacy hash reads real tensor bytes.
    tensors = {"w": rng.standard_normal((600, 512)).astype(np.float32)}
    data = save(tensors, metadata={"ss_network_dim": "4", "ss_training_comment": "cat"})
    model_hash, legacy_hash = kohya_sshs_hashes(data)
    assert model_hash == _tensor_data_sha256(data)
    assert legacy_hash == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    # The legacy hash sees header bytes (offsets shift), so metadata matters there only.
    more_meta = save(tensors, metadata={"ss_network_dim": "4", "ss_training_comment": "cat" * 50})
    assert kohya_sshs_hashes(more_meta)[0] == model_hash
    assert kohya_sshs_hashes(more_meta)[1] != legacy_hash


def test_lora_hash_prefers_sshs_model_hash_metadata(tmp_path):
    path = tmp_path / "cat.safetensors"
    # A1111 trusts the metadata even when it does not match the tensors.
    save_file(_lora_tensors(), str(path), metadata={"sshs_model_hash": "ABCDEF0123456789" + "0" * 48})
    assert lora_hash_for_infotext(path) == "ABCDEF012345"


def test_lora_hash_falls_back_to_addnet_hash(tmp_path):
    path = tmp_path / "Cat.SAFETENSORS"
    save_file(_lora_tensors(), str(path), metadata={"sshs_model_hash": "", "ss_output_name": "cat"})
    expected = _tensor_data_sha256(path.read_bytes())[:12]
    assert lora_hash_for_infotext(path) == expected
    assert len(expected) == 12


def test_lora_hash_of_non_safetensors_is_whole_file_sha256(tmp_path):
    path = tmp_path / "old_lora.pt"
    path.write_bytes(b"PK\x03\x04" + os.urandom(500))
    assert lora_hash_for_infotext(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_lora_hash_of_corrupt_safetensors_raises(tmp_path):
    path = tmp_path / "broken.safetensors"
    save_file(_lora_tensors(), str(path))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ModelFileError, match="broken.safetensors"):
        lora_hash_for_infotext(path)


def test_cache_never_rereads_an_unchanged_file(tmp_path):
    path = tmp_path / "models" / "model.safetensors"
    path.parent.mkdir()
    original = os.urandom(1500)
    path.write_bytes(original)
    _age(path)
    cache_file = tmp_path / "models" / HashCache.FILENAME
    cache = HashCache(cache_file)
    first = sha256_file(path, cache)
    assert first == hashlib.sha256(original).hexdigest()

    changed = os.urandom(1500)
    _rewrite_keeping_stat(path, changed)
    assert sha256_file(path, cache) == first, "file was read again"
    assert sha256_file(path, HashCache(cache_file)) == first, "cache not persisted"
    assert sha256_file(path) == hashlib.sha256(changed).hexdigest()

    _age(path, HOUR_NS // 2)  # a new mtime invalidates the entry
    assert sha256_file(path, cache) == hashlib.sha256(changed).hexdigest()
    stored = json.loads(cache_file.read_text())["files"][os.path.realpath(path)]
    assert stored["size"] == 1500 and stored["mtime_ns"] == path.stat().st_mtime_ns


def test_cache_size_change_invalidates(tmp_path):
    path = tmp_path / "v.bin"
    path.write_bytes(b"a" * 10)
    _age(path)
    cache = HashCache.in_folder(tmp_path)
    sha256_file(path, cache)
    st = path.stat()
    path.write_bytes(b"a" * 11)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sha256_file(path, cache) == hashlib.sha256(b"a" * 11).hexdigest()


def test_just_modified_file_is_not_cached(tmp_path):
    # Within the timestamp granularity a same-size rewrite keeps (size, mtime): do not trust it.
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"x" * 64)
    cache = HashCache(tmp_path / "cache.json")
    sha256_file(path, cache)
    _rewrite_keeping_stat(path, b"y" * 64)
    assert sha256_file(path, cache) == hashlib.sha256(b"y" * 64).hexdigest()


def test_lora_hash_cache_skips_header_read(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file(_lora_tensors(), str(path), metadata={"sshs_model_hash": "1" * 64})
    _age(path)
    cache = HashCache(tmp_path / "cache.json")
    assert lora_hash_for_infotext(path, cache) == "1" * 12
    rewritten = save(_lora_tensors(), metadata={"sshs_model_hash": "2" * 64})
    _rewrite_keeping_stat(path, rewritten)
    assert lora_hash_for_infotext(path, cache) == "1" * 12
    assert lora_hash_for_infotext(path) == "2" * 12


def test_lora_addnet_hash_is_cached_under_its_own_kind(tmp_path):
    path = tmp_path / "nometa.safetensors"
    save_file(_lora_tensors(), str(path))
    _age(path)
    cache = HashCache(tmp_path / "cache.json")
    short = lora_hash_for_infotext(path, cache)
    full = cache.lookup(path, "addnet")
    assert full == _tensor_data_sha256(path.read_bytes()) and full[:12] == short
    assert cache.lookup(path, "sha256") is None


def test_corrupt_cache_file_is_ignored_and_replaced(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"model")
    _age(path)
    cache_file = tmp_path / "cache.json"
    cache_file.write_text('{"format": 1, "files": {"/x": ')
    assert sha256_file(path, HashCache(cache_file)) == hashlib.sha256(b"model").hexdigest()
    data = json.loads(cache_file.read_text())
    assert data["files"][os.path.realpath(path)]["hashes"]["sha256"] == hashlib.sha256(b"model").hexdigest()


def test_unwritable_cache_location_still_hashes(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"model")
    _age(path)
    blocker = tmp_path / "not_a_dir"
    blocker.write_bytes(b"")
    cache = HashCache(blocker / "cache.json")
    assert sha256_file(path, cache) == hashlib.sha256(b"model").hexdigest()
    # Remembered in memory for the life of the process even though it cannot be saved.
    _rewrite_keeping_stat(path, b"MODEL")
    assert sha256_file(path, cache) == hashlib.sha256(b"model").hexdigest()
    assert not (blocker / "cache.json").exists()


def _hash_many(cache_file: str, paths: list[str]) -> None:
    cache = HashCache(cache_file)
    for p in paths:
        sha256_file(p, cache)


def test_two_processes_writing_never_corrupt_the_cache(tmp_path):
    files = []
    for i in range(24):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(os.urandom(64 + i))
        _age(p)
        files.append(str(p))
    cache_file = tmp_path / "shared.json"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_hash_many, args=(str(cache_file), files[i::2])) for i in range(2)]
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        if cache_file.exists():
            json.loads(cache_file.read_text())  # never a half-written file
    for w in workers:
        w.join()
        assert w.exitcode == 0
    entries = json.loads(cache_file.read_text())["files"]
    assert entries, "nothing was cached"
    for key, entry in entries.items():
        assert entry["hashes"]["sha256"] == hashlib.sha256(open(key, "rb").read()).hexdigest()
    # Entries lost to the race (last writer wins) are simply computed again.
    fresh = HashCache(cache_file)
    for p in files:
        assert sha256_file(p, fresh) == hashlib.sha256(open(p, "rb").read()).hexdigest()
    assert len(json.loads(cache_file.read_text())["files"]) == len(files)


def test_missing_lora_file_is_a_model_file_error(tmp_path):
    cache = HashCache(tmp_path / "cache.json")
    for c in (None, cache):
        with pytest.raises(ModelFileError, match="gone.safetensors"):
            lora_hash_for_infotext(tmp_path / "gone.safetensors", c)
