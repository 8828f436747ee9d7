"""Write files so that a final name only ever holds a complete file."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator, BinaryIO

from lorastudio.core.errors import DiskFullError

# "No space left on device" and "disk quota exceeded": to the user, the same problem.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_space_checked(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a write's ENOSPC / EDQUOT into a DiskFullError naming `folder`; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise DiskFullError(folder) from exc
        raise


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync and rename it into place.

    On any exception the temporary file is removed and `final` is untouched; a full disk is
    reported as DiskFullError.
    """
    final = Path(final)
    with disk_space_checked(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, final)
            _fsync_dir(final.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
            raise


@contextlib.contextmanager
def atomic_open(final: str | os.PathLike[str], mode: str = "wb") -> Iterator[BinaryIO]:
    with atomic_path(final) as tmp:
        with open(tmp, mode) as fh:
            yield fh


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(final, "wb") as fh:
        write_all(fh, data)


def write_all(fh: BinaryIO, data: bytes) -> None:
    """The one place file contents are written, so a full disk surfaces as the OSError it is
    (libraries that write themselves report it as their own exception types)."""
    fh.write(data)


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
