"""The artifact-store interface and its default implementation, a directory.

Keys are relative POSIX paths ("proj/versions/v1/checkpoints/step-000002/lora.safetensors").
A key never escapes the store's root: absolute keys, '..' parts and backslashes are refused.
A file appears under its final key only once complete (atomic rename on a directory; S3 makes
an object visible only once its upload finished), so a reader on another machine never sees
half a checkpoint.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from lorastudio.core.atomic import atomic_path
from lorastudio.core.errors import InvalidParameter, NotFound


def check_key(key: str) -> str:
    """The normalised key, or InvalidParameter naming it."""
    if not isinstance(key, str) or not key.strip("/"):
        raise InvalidParameter("key", key, "an artifact key is a non-empty relative path")
    if "\\" in key or "\x00" in key or key.startswith("/"):
        raise InvalidParameter("key", key, "an artifact key is a relative POSIX path")
    parts = PurePosixPath(key).parts
    if any(p in ("..", ".") for p in parts):
        raise InvalidParameter("key", key, "'.' and '..' are not allowed in an artifact key")
    return "/".join(parts)


class ArtifactStore(ABC):
    """Where every node of a farm reads and writes run files."""

    @abstractmethod
    def put_file(self, local: str | os.PathLike[str], key: str) -> None:
        """Copy a local file to `key`, replacing what was there."""

    @abstractmethod
    def get_file(self, key: str, local: str | os.PathLike[str]) -> Path:
        """Copy `key` to a local path (written atomically); NotFound if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int:
        """Bytes in `key`; NotFound if absent."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A binary reader of `key` (the caller closes it); NotFound if absent."""

    def local_path(self, key: str) -> Path | None:
        """The file itself where the store is a folder on this machine (served without a copy)."""
        return None

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys of the files under `prefix`, sorted."""

    @abstractmethod
    def delete(self, prefix: str) -> int:
        """Remove the file `prefix` or every file under it; returns how many."""

    def put_dir(self, local_dir: str | os.PathLike[str], prefix: str) -> list[str]:
        """Upload every file under local_dir to prefix/<relative path>; returns the keys."""
        root = Path(local_dir)
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = f"{check_key(prefix)}/{path.relative_to(root).as_posix()}"
            self.put_file(path, key)
            keys.append(key)
        return keys

    def get_dir(self, prefix: str, local_dir: str | os.PathLike[str]) -> list[Path]:
        """Download every file under prefix into local_dir, keeping relative paths."""
        prefix = check_key(prefix)
        out = []
        for key in self.list(prefix):
            out.append(self.get_file(key, Path(local_dir) / key[len(prefix) + 1:]))
        return out


class DirectoryArtifactStore(ArtifactStore):
    """A folder every node mounts (NFS, a shared volume)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, local, key):
        with atomic_path(self._path(key)) as tmp:
            shutil.copyfile(local, tmp)

    def get_file(self, key, local):
        src = self._path(key)
        if not src.is_file():
            raise NotFound("artifact", key)
        with atomic_path(local) as tmp:
            shutil.copyfile(src, tmp)
        return Path(local)

    def exists(self, key):
        return self._path(key).is_file()

    def size(self, key):
        return self._existing(key).stat().st_size

    def open_read(self, key):
        return open(self._existing(key), "rb")

    def local_path(self, key):
        return self._existing(key)

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        # resolve(): a symlink inside the folder must not serve a file outside it.
        if not path.is_file() or not path.resolve().is_relative_to(self.root):
            raise NotFound("artifact", key)
        return path

    def list(self, prefix=""):
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [check_key(prefix)]
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.endswith(".partial"))

    def delete(self, prefix):
        keys = self.list(prefix)
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        return len(keys)


def open_artifact_store(url: str | os.PathLike[str], **options: Any) -> ArtifactStore:
    """`s3://bucket/prefix` (options: endpoint_url, key, secret, ...) or a folder path."""
    text = str(url)
    if "://" in text and not text.startswith("file://"):
        from lorastudio.services.artifacts.fsspec_store import FsspecArtifactStore

        return FsspecArtifactStore(text, **options)
    return DirectoryArtifactStore(text.removeprefix("file://"))
