"""What of an error or a job log line a client may see.

Tracebacks and the server's own folders stay in the server log: a client gets the message, with
the server's roots shown by name (`<projects>/...`) and other absolute paths cut to their last
part. Paths inside the roots the client works with stay readable, so "no such file
<projects>/x/images" still says which file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterable

from lorastudio.core.limits import MAX_ECHO_CHARS

_TRACEBACK = "Traceback (most recent call last):"
# An absolute POSIX path of two parts or more, not part of a URL ("http://h/x") or a word.
_ABS_PATH = re.compile(r"(?<![\w.:/<>~-])/(?:[^\s/'\"<>:]+/)+[^\s/'\"<>:,;)\]]*")
_QUALIFIED = re.compile(r"^(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)(?=:|$)")
MAX_PUBLIC_CHARS = 2000
_SECRET_KEYS = ("token", "password", "secret", "auth")


def server_roots(state) -> list[tuple[Path, str]]:
    """The server's folders a message may name, with the label a client sees instead."""
    from lorastudio.models.catalog import BUNDLED_DIR

    roots = [(state.uploads_root, "<upload>"), (state.projects_root, "<projects>"),
             (state.outputs_root, "<outputs>"), (Path(state.settings.models_dir).resolve(), "<models>"),
             (BUNDLED_DIR, "<bundled>"), (Path(sys.prefix), "<python>"), (Path.home(), "~")]
    roots += [(Path(r), "<datasets>") for r in state.dataset_roots[1:]]
    return roots


def public_text(text: object, roots: Iterable[tuple[Path, str]] = (), limit: int = MAX_PUBLIC_CHARS) -> str:
    """`text` without a traceback and with server paths hidden, at most `limit` characters."""
    text = str(text)
    if _TRACEBACK in text:
        # Keep the exception line, the last non-indented line of the traceback.
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "\t"))]
        text = lines[-1] if lines and lines[-1] != _TRACEBACK else "internal error"
        text = _QUALIFIED.sub(r"\1", text)  # "lorastudio.core.errors.DatasetError: x" -> "DatasetError: x"
    for root, label in sorted(roots, key=lambda r: len(str(r[0])), reverse=True):
        root_text = str(root)
        if len(root_text) > 1:
            text = text.replace(root_text, label)
    text = _ABS_PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text):,} characters)"
    return text


def small(value: object) -> object:
    """A value echoed back in a 422: numbers as they are, text cut to MAX_ECHO_CHARS."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, dict):
        # A body echoed whole (a missing field) must not send a credential back into logs and pages.
        value = {k: "***" if any(s in str(k).lower() for s in _SECRET_KEYS) else v for k, v in value.items()}
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "..."
