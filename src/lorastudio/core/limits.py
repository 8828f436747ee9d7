"""Every bound on user input, in one place.

The pydantic models in `core.params` (generation), `training.config` (training runs) and the
HTTP request models all read their bounds from here, so the CLI flags, `--from-png`, a TOML
file, the HTTP API and the job queue refuse the same inputs with the same message.
"""

from __future__ import annotations

import os
from pathlib import PurePath
from typing import Annotated, Any

from pydantic import AfterValidator, Field

# --- generation -----------------------------------------------------------------------------
MAX_SIDE = 4096  # pixels, width or height
MAX_BATCH_SIZE = 64
MAX_BATCH_COUNT = 1000
MAX_STEPS = 1000
SEED_MAX = 2**32 - 1
# width × height × batch_size: a batch of 8 at 4096² already needs tens of GB.
MAX_PIXELS_PER_BATCH = 64 * 1024 * 1024
# Characters in one prompt or negative prompt. A1111 has no cap; 100,000 characters is ~25,000
# CLIP tokens (over 300 chunks of 75), far past any real prompt, and still encodes in seconds.
MAX_PROMPT_CHARS = 100_000
MAX_SAMPLE_PROMPTS = 64  # training preview prompts

# --- training ---------------------------------------------------------------------------------
MAX_TRAINING_STEPS = 1_000_000
# The bundled demo base trains at 32 px; nothing smaller has a latent to learn from.
MIN_TRAINING_SIDE = 32
MAX_LABEL_CHARS = 200  # sampler, scheduler, upscaler and other names picked from a list

# --- names that become files or folders ---------------------------------------------------------
# Linux (ext4, btrfs, xfs), macOS (APFS) and Windows (NTFS, in UTF-16 units) cap one path
# component at 255; Linux counts bytes, so UTF-8 bytes are what is checked, not characters.
MAX_NAME_BYTES = 255
# Linux's PATH_MAX; a longer path fails in every system call that takes it.
MAX_PATH_BYTES = 4096
# A project, version or LoRA output name becomes `NAME.safetensors`, `NAME-v12.safetensors`,
# `NAME_diffusers`...: room is left under MAX_NAME_BYTES for what is appended to it.
MAX_OUTPUT_NAME_BYTES = MAX_NAME_BYTES - 32

# --- echoing input back -------------------------------------------------------------------------
# Error messages and logs show at most this much of a value a user sent (a field can be 100 MB).
MAX_ECHO_CHARS = 200


def shorten(value: Any, limit: int = MAX_ECHO_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters with the full length said, for messages and logs."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def check_name(value: str, *, suffix: str = "") -> str:
    """A name that becomes one file or folder (with `suffix` appended, e.g. ".safetensors")."""
    size = len((value + suffix).encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise ValueError(f"is {size} bytes in UTF-8{' with ' + suffix if suffix else ''}; "
                         f"file and folder names hold at most {MAX_NAME_BYTES}")
    return value


def check_path(value: str | os.PathLike[str]) -> Any:
    """A path whose parts must each fit a file name, and the whole PATH_MAX."""
    text = os.fspath(value)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        raise ValueError(f"is {size:,} bytes in UTF-8; paths hold at most {MAX_PATH_BYTES}")
    if "\x00" in text:
        raise ValueError("contains a NUL byte")
    for part in PurePath(text).parts:
        n = len(part.encode("utf-8", "surrogatepass"))
        if n > MAX_NAME_BYTES:
            raise ValueError(f"has a part of {n} bytes in UTF-8 ({shorten(part, 40)}); "
                             f"file and folder names hold at most {MAX_NAME_BYTES}")
    return value


def _check_ref(value: str | None) -> str | None:
    # A model reference is a name, a title, a hash or a path: each part must fit the filesystem.
    return None if value is None else check_path(value)


def _check_name(value: str | None) -> str | None:
    return None if value is None else check_name(value)


Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
Label = Annotated[str, Field(max_length=MAX_LABEL_CHARS)]
# A checkpoint / VAE / LoRA reference (name, title, short hash or path).
ModelRef = Annotated[str, Field(max_length=MAX_PATH_BYTES), AfterValidator(_check_ref)]
# A name that becomes one file or folder (project, version, LoRA file stem).
FileName = Annotated[str, Field(max_length=MAX_NAME_BYTES), AfterValidator(_check_name)]
