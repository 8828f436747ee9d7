"""The hashes A1111 and kohya write into infotexts and LoRA metadata, and a cache for them.

- Model hash (checkpoints, VAEs): sha256 of the whole file, first 10 hex digits
  (A1111 `CheckpointInfo.shorthash`).
- LoRA hash in `Lora hashes: "name: 0123456789ab"`: 12 hex digits, see
  `lora_hash_for_infotext`.
- addnet hash: sha256 of everything after the safetensors header, i.e. of the tensor data
  only, so editing metadata does not change it. kohya stores it as `sshs_model_hash`.
- legacy addnet hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits
  (`sshs_legacy_hash`); it covers header bytes, so it does depend on the metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable

from lorastudio.core.atomic import atomic_write_text
from lorastudio.core.errors import InvalidParameter, ModelFileError
from lorastudio.core.safetensors_header import parse_header, read_header

log = logging.getLogger(__name__)

BLOCK_SIZE = 1024 * 1024
_LEGACY_OFFSET = 0x100000
_LEGACY_LENGTH = 0x10000


def _sha256_stream(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(BLOCK_SIZE), b""):
        digest.update(block)
    return digest.hexdigest()


def _sha256_of_path(path: Path) -> str:
    with open(path, "rb") as fh:
        return _sha256_stream(fh)


def sha256_file(path: str | os.PathLike[str], cache: HashCache | None = None) -> str:
    """Full sha256 (64 lowercase hex digits) of a file, read in 1 MiB blocks."""
    if cache is None:
        return _sha256_of_path(Path(path))
    return cache.get_or_compute(path, "sha256", _sha256_of_path)


def a1111_short_hash(sha256: str) -> str:
    """A1111's "Model hash"/"VAE hash": the first 10 hex digits of the full sha256."""
    if len(sha256) < 10 or any(c not in "0123456789abcdefABCDEF" for c in sha256):
        raise InvalidParameter("sha256", sha256, "expected a hex digest of at least 10 digits")
    return sha256[:10]


def addnet_hash_safetensors(fileobj: BinaryIO, source: object = "safetensors data") -> str:
    """sha256 of every byte after the 8-byte length and the JSON header (the tensor data).

    Same value as A1111 `hashes.addnet_hash_safetensors` and kohya
    `train_util.addnet_hash_safetensors`; the header is located (and validated) by the one
    safetensors probe, so bytes the library would not read raise ModelFileError naming `source`.
    """
    return _sha256_from(fileobj, parse_header(fileobj, source).data_offset)


def _sha256_from(fileobj: BinaryIO, offset: int) -> str:
    fileobj.seek(offset)
    return _sha256_stream(fileobj)


def addnet_hash_legacy(fileobj: BinaryIO) -> str:
    """kohya `addnet_hash_legacy`: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits.

    A file shorter than 1 MiB hashes the empty string, as kohya's does.
    """
    fileobj.seek(_LEGACY_OFFSET)
    return hashlib.sha256(fileobj.read(_LEGACY_LENGTH)).hexdigest()[:8]


def kohya_sshs_hashes(tensor_bytes_file: bytes) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as kohya's `precalculate_safetensors_hashes`.

    The caller must pass the bytes of the safetensors file serialized with ONLY the
    `ss_*` metadata keys (kohya drops every other key, sshs_* and modelspec.* included,
    before hashing). The model hash ignores the header anyway, but the legacy hash reads
    raw bytes at a fixed offset, so any other metadata would shift it.
    """
    buffer = io.BytesIO(tensor_bytes_file)
    return addnet_hash_safetensors(buffer, "LoRA being saved"), addnet_hash_legacy(buffer)


def lora_hash_for_infotext(path: str | os.PathLike[str], cache: HashCache | None = None) -> str:
    """The 12 hex digits A1111 writes for this LoRA in `Lora hashes`.

    A1111 (extensions-builtin/Lora/network.py, `NetworkOnDisk`) takes
    `metadata["sshs_model_hash"]` when the .safetensors file has a non-empty one, even if
    the tensors were edited since; otherwise it hashes the file with `use_addnet_hash`
    true for .safetensors (tensor data only) and false for other extensions (whole file).
    The result is cut to 12 characters, not lowercased.

    Unlike A1111, which hashes a .safetensors file whose header it cannot read, a corrupt
    header raises ModelFileError here: such a file cannot have been applied.
    """
    path = Path(path)
    try:
        if cache is None:
            return _lora_hash(path)
        return cache.get_or_compute(path, "lora_infotext", lambda p: _lora_hash(p, cache))
    except OSError as exc:
        raise ModelFileError(path, f"cannot read: {exc.strerror or exc}") from exc


def _lora_hash(path: Path, cache: HashCache | None = None) -> str:
    if path.suffix.lower() != ".safetensors":
        return sha256_file(path, cache)[:12]
    header = read_header(path)  # parsed once: metadata and the start of the tensor data
    from_metadata = header.metadata.get("sshs_model_hash")
    if from_metadata:
        return from_metadata[:12]

    def data_hash(p: Path) -> str:
        with open(p, "rb") as fh:
            return _sha256_from(fh, header.data_offset)

    if cache is None:
        return data_hash(path)[:12]
    return cache.get_or_compute(path, "addnet", data_hash)[:12]


class HashCache:
    """Hashes of files, kept in one JSON file and trusted while size and mtime_ns match.

    Entries are keyed by the file's real absolute path. Writers re-read the cache file,
    merge their entry and replace the file by atomic rename, so two processes never leave
    a corrupt file; when they race, the last writer wins and the other's new entry is
    simply computed again next time. A cache file that is not valid JSON is ignored.

    A file modified less than `racy_window_ns` ago is hashed but not cached: a rewrite of
    the same size within the file system's timestamp granularity would otherwise keep
    the same (size, mtime_ns) and the stale hash would be served forever.
    """

    FILENAME = ".lorastudio-hashes.json"
    racy_window_ns = 2_000_000_000
    _FORMAT = 1

    def __init__(self, cache_file: str | os.PathLike[str]):
        self.cache_file = Path(cache_file)
        self._entries: dict[str, dict] = {}
        self._loaded_signature: tuple | None = None
        # One instance is shared by the API's worker threads.
        self._lock = threading.Lock()

    @classmethod
    def in_folder(cls, folder: str | os.PathLike[str]) -> HashCache:
        """The cache that lives at the top of a models root."""
        return cls(Path(folder) / cls.FILENAME)

    def lookup(self, path: str | os.PathLike[str], kind: str) -> str | None:
        key = os.path.realpath(path)
        try:
            st = os.stat(key)
        except OSError:
            return None
        return self._lookup(key, kind, st)

    def get_or_compute(self, path: str | os.PathLike[str], kind: str, compute: Callable[[Path], str]) -> str:
        """Return the cached `kind` hash of `path`, or compute, store and return it."""
        key = os.path.realpath(path)
        before = os.stat(key)
        cached = self._lookup(key, kind, before)
        if cached is not None:
            return cached
        value = compute(Path(key))
        after = os.stat(key)
        unchanged = _signature(before) == _signature(after)
        # abs(): a file stamped in the future (clock skew) is as settled as an old one.
        settled = abs(time.time_ns() - after.st_mtime_ns) >= self.racy_window_ns
        if unchanged and settled:
            self._store(key, kind, value, after)
        return value

    def _lookup(self, key: str, kind: str, st: os.stat_result) -> str | None:
        with self._lock:
            self._reload_if_changed()
            entry = self._entries.get(key)
            if entry is None or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
                return None
            value = entry.get("hashes", {}).get(kind)
            return value if isinstance(value, str) else None

    def _store(self, key: str, kind: str, value: str, st: os.stat_result) -> None:
        with self._lock:
            self._store_locked(key, kind, value, st)

    def _store_locked(self, key: str, kind: str, value: str, st: os.stat_result) -> None:
        # Re-read first so entries another process wrote since our last load survive.
        self._loaded_signature = None
        self._reload_if_changed()
        entry = self._entries.get(key)
        if entry is None or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hashes": {}}
            self._entries[key] = entry
        entry["hashes"][kind] = value
        text = json.dumps({"format": self._FORMAT, "files": self._entries}, indent=1, sort_keys=True)
        try:
            atomic_write_text(self.cache_file, text + "\n")
        except OSError as exc:
            # A read-only models folder still works, just without remembering hashes.
            log.warning("cannot write hash cache %s: %s", self.cache_file, exc)
            return
        with contextlib.suppress(OSError):
            self._loaded_signature = _signature(os.stat(self.cache_file))

    def _reload_if_changed(self) -> None:
        try:
            st = os.stat(self.cache_file)
        except OSError:
            # No file (deleted, or never writable): what we hashed in memory is still valid.
            self._loaded_signature = None
            return
        signature = _signature(st)
        if signature == self._loaded_signature:
            return
        self._entries = self._read_entries()
        self._loaded_signature = signature

    def _read_entries(self) -> dict[str, dict]:
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable hash cache %s: %s", self.cache_file, exc)
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("format") == self._FORMAT else None
        if not isinstance(files, dict):
            log.warning("ignoring hash cache %s: unknown layout", self.cache_file)
            return {}
        return {k: v for k, v in files.items() if isinstance(v, dict) and isinstance(v.get("hashes"), dict)}


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
