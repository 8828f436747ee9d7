"""A copy of a safetensors file with some tensors renamed, without loading any tensor.

Renaming only changes the JSON header: every tensor keeps its bytes and its offsets in the
data section, so the data is streamed across unchanged and the copy's tensors are bitwise the
original's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from lorastudio.core.atomic import atomic_path
from lorastudio.core.safetensors_header import SafetensorsHeader

_COPY_BLOCK = 16 * 1024 * 1024


def write_renamed_copy(src: Path, header: SafetensorsHeader, renames: Mapping[str, str], dst: Path,
                       *, extra_metadata: Mapping[str, str] | None = None) -> Path:
    entries: dict[str, object] = {}
    metadata = {**header.metadata, **(extra_metadata or {})}
    if metadata:
        entries["__metadata__"] = metadata
    for name, info in header.tensors.items():
        entries[renames.get(name, name)] = {"dtype": info.dtype, "shape": list(info.shape),
                                            "data_offsets": list(info.data_offsets)}
    encoded = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    # The safetensors writer pads the header with spaces to a multiple of 8 (aligned tensor data).
    encoded += b" " * (-len(encoded) % 8)
    with atomic_path(dst) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        fout.write(len(encoded).to_bytes(8, "little"))
        fout.write(encoded)
        fin.seek(header.data_offset)
        shutil.copyfileobj(fin, fout, _COPY_BLOCK)
    return dst
