"""Errors users see. Each message names the file, field or value at fault."""

from __future__ import annotations

import errno
import os

from lorastudio.core.limits import shorten


class LorastudioError(Exception):
    """Base class: a problem the user can fix, reported without a traceback by the CLI."""


class InvalidParameter(LorastudioError, ValueError):
    def __init__(self, field: str, value: object, why: str):
        self.field, self.value, self.why = field, value, why
        # A field can be 100 MB: the message (printed, logged, sent back) shows its start only.
        super().__init__(f"{field}={shorten(repr(value))}: {why}")


class ModelFileError(LorastudioError):
    def __init__(self, path: object, why: str):
        self.path, self.why = path, why
        super().__init__(f"{path}: {why}")


class UnknownModelFamily(ModelFileError):
    pass


class PickleRefused(ModelFileError):
    pass


class LoraError(LorastudioError):
    pass


class NotFound(LorastudioError, LookupError):
    def __init__(self, kind: str, name: str, candidates: list[str] | None = None):
        self.kind, self.name, self.candidates = kind, name, candidates or []
        msg = f"{kind} {name!r} not found"
        if self.candidates:
            msg += "; closest: " + ", ".join(self.candidates)
        super().__init__(msg)


class DatasetError(LorastudioError):
    pass


# errno values that mean "the disk (or the user's quota) is full".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", None)} - {None})  # no EDQUOT on Windows


class DiskFullError(LorastudioError):
    """No space left where we were writing. `path` is the folder to free space in; `what_to_free` says
    what can go (the training side names its caches and checkpoints), `what` what was being written."""

    def __init__(self, path: object, what_to_free: str = "", *, what: str = ""):
        self.path, self.what, self.what_to_free = path, what, what_to_free
        hint = what_to_free or "free some space there (or point the output folder elsewhere) and try again"
        doing = f" while writing {what}" if what else ""
        super().__init__(f"no space left on {path}{doing}: {hint}")

    @staticmethod
    def is_disk_full(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def raise_if_disk_full(exc: BaseException, path: str | os.PathLike[str], what: str = "",
                       free_hint: str = "") -> None:
    """Turn an ENOSPC / EDQUOT OSError into DiskFullError naming `path`; leave other errors alone."""
    if DiskFullError.is_disk_full(exc) and not isinstance(exc, DiskFullError):
        raise DiskFullError(path, free_hint, what=what) from exc


class NonFiniteResult(LorastudioError):
    """Generation produced NaN or infinity: reported, never saved as a black picture."""
