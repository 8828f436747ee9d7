"""Read and validate a .safetensors header without torch, numpy or the safetensors package.

Layout: 8 bytes little-endian header length N, N bytes of JSON, then the tensor data.
The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [start, end]}
(offsets relative to the end of the header) plus an optional "__metadata__" of
string -> string.

Every problem is reported as `ModelFileError(path, why)`, so a truncated download or a
file that is not safetensors at all is named to the user before any loader touches it.
The probe is exactly as strict as the `safetensors` library (0.8) it stands in for: a file
accepted here opens with `safe_open`, and a file `safe_open` refuses is refused here, with
a message that says what is wrong. That means: the header length fits the file, the header
is one UTF-8 JSON object, every dtype is one the library knows, every size is an unsigned
64-bit integer, each range matches dtype x shape, and the ranges, sorted, tile the data
section exactly (no gap, no overlap, no trailing bytes).

Anything that needs the header (the loaders, the LoRA hashes of `core/hashes.py`) reads it
through this one probe.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from lorastudio.core.errors import ModelFileError

# The safetensors library refuses larger headers; a bigger length means "not safetensors".
MAX_HEADER_BYTES = 100_000_000

# Bits per element of every dtype the safetensors library (0.8) accepts; any other is refused,
# as the library refuses it.
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
# The library reads sizes and offsets as u64 (usize).
_U64_LIMIT = 2**64


class TensorInfo(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]  # relative to SafetensorsHeader.data_offset

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_offset: int  # absolute file offset of the first data byte (8 + header length)
    file_size: int


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate the header of a safetensors file; raise ModelFileError if unusable."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return parse_header(fh, path)
    except OSError as exc:
        raise ModelFileError(path, f"cannot read: {exc.strerror or exc}") from exc


def parse_header(fh: BinaryIO, source: object) -> SafetensorsHeader:
    """The validated header of the safetensors bytes in a seekable binary file object.

    `source` names the file in errors. The object is left positioned anywhere.
    """
    fh.seek(0, os.SEEK_END)
    file_size = fh.tell()
    fh.seek(0)
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise ModelFileError(
            source,
            f"only {file_size} bytes long; a safetensors file starts with an 8-byte "
            f"header length (truncated, or not a safetensors file)",
        )
    header_len = int.from_bytes(prefix, "little")
    if header_len > MAX_HEADER_BYTES:
        raise ModelFileError(
            source,
            f"header length field says {header_len} bytes, more than the "
            f"{MAX_HEADER_BYTES}-byte limit: not a safetensors file",
        )
    if 8 + header_len > file_size:
        raise ModelFileError(
            source,
            f"header length field says {header_len} bytes but the file has only "
            f"{file_size - 8} bytes after it (truncated, or not a safetensors file)",
        )
    raw = fh.read(header_len)
    header = _decode_json(source, raw)
    data_offset = 8 + header_len
    metadata = _metadata(source, header.pop("__metadata__", None))
    tensors = {name: _tensor_info(source, name, entry) for name, entry in header.items()}
    _check_ranges(source, tensors, file_size - data_offset)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_offset=data_offset,
                             file_size=file_size)


def _reject_constant(name: str):
    # Python's json reads NaN / Infinity; JSON (and the library's parser) does not.
    raise ValueError(f"{name} is not JSON")


def _decode_json(path: object, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ModelFileError(path, f"header is not UTF-8 text (byte {exc.start}): not a safetensors file") from exc
    except ValueError as exc:
        raise ModelFileError(path, f"header is not valid JSON ({exc}): not a safetensors file") from exc
    if not isinstance(header, dict):
        raise ModelFileError(path, f"header is JSON {type(header).__name__}, expected an object")
    return header


def _metadata(path: object, raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ModelFileError(path, f"__metadata__ is {type(raw).__name__}, expected an object")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise ModelFileError(
                path, f"__metadata__[{key!r}] is {type(value).__name__}; safetensors metadata values are strings"
            )
    return dict(raw)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64_LIMIT


def _tensor_info(path: object, name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict):
        raise ModelFileError(path, f"tensor {name!r}: header entry is {type(entry).__name__}, expected an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise ModelFileError(path, f"tensor {name!r}: dtype {dtype!r} is not a string")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ModelFileError(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise ModelFileError(path, f"tensor {name!r}: data_offsets {offsets!r} is not [start, end] with start <= end")
    info = TensorInfo(dtype, tuple(shape), (offsets[0], offsets[1]))
    bits = _DTYPE_BITS.get(dtype)
    if bits is None:
        raise ModelFileError(path, f"tensor {name!r}: dtype {dtype!r} is not a safetensors dtype "
                                   f"(one of {', '.join(_DTYPE_BITS)})")
    if math.prod(info.shape) * bits >= _U64_LIMIT * 8:
        raise ModelFileError(path, f"tensor {name!r}: shape {list(info.shape)} is too large to address")
    if math.prod(info.shape) * bits != info.nbytes * 8:
        raise ModelFileError(
            path,
            f"tensor {name!r}: {dtype} {list(info.shape)} needs {math.prod(info.shape) * bits / 8:g} bytes "
            f"but its data_offsets span {info.nbytes}",
        )
    return info


def _check_ranges(path: object, tensors: dict[str, TensorInfo], data_size: int) -> None:
    for name, info in tensors.items():
        if info.data_offsets[1] > data_size:
            raise ModelFileError(
                path,
                f"tensor {name!r} ends at byte {info.data_offsets[1]} of the data section but only "
                f"{data_size} bytes follow the header: the file is truncated",
            )
    # Sorted by (start, end), the ranges must follow each other without gap or overlap.
    end, prev_name = 0, None
    for name, info in sorted(tensors.items(), key=lambda item: item[1].data_offsets):
        start = info.data_offsets[0]
        if start < end:
            raise ModelFileError(
                path, f"tensors {prev_name!r} and {name!r} {list(info.data_offsets)} overlap: the header is corrupt")
        if start > end:
            after = f"after tensor {prev_name!r}" if prev_name else "at the start of the data section"
            raise ModelFileError(
                path, f"tensor {name!r} starts at byte {start} but the data {after} ends at {end}: "
                      f"{start - end} unaccounted bytes, the header is corrupt")
        end, prev_name = info.data_offsets[1], name
    if end != data_size:
        raise ModelFileError(
            path, f"the tensors cover {end} bytes but {data_size} follow the header: {data_size - end} "
                  f"trailing bytes no tensor accounts for (not a file the safetensors library reads)")
