"""Errors users see. Each message names the file, field or value at fault."""

from __future__ import annotations


class LorastudioError(Exception):
    """Base class: a problem the user can fix, reported without a traceback by the CLI."""


class InvalidParameter(LorastudioError, ValueError):
    def __init__(self, field: str, value: object, why: str):
        self.field, self.value, self.why = field, value, why
        super().__init__(f"{field}={value!r}: {why}")


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


class DiskFullError(LorastudioError):
    """A write failed because the disk (or the user's quota) is full; `path` is where we were writing."""

    def __init__(self, path: object, what_to_free: str = "free some space on that disk and try again"):
        self.path, self.what_to_free = path, what_to_free
        super().__init__(f"no space left on {path}: {what_to_free}")


class NonFiniteResult(LorastudioError):
    """Generation produced NaN or infinity: reported, never saved as a black picture."""
