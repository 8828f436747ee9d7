"""Pure-Python safetensors header reader: valid files match the safetensors package, and every
kind of damage is a ModelFileError naming the file and the problem."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from lorastudio.core.errors import ModelFileError
from lorastudio.core.safetensors_header import MAX_HEADER_BYTES, read_header

TENSORS = {
    "lora_unet_down.lora_down.weight": np.arange(24, dtype=np.float32).reshape(4, 6),
    "lora_unet_down.lora_up.weight": np.ones((6, 4), dtype=np.float16),
    "lora_unet_down.alpha": np.array(4.0, dtype=np.float32),
    "counts": np.arange(5, dtype=np.int64),
    "mask": np.array([True, False, True]),
}
METADATA = {"ss_network_dim": "4", "ss_output_name": "猫", "modelspec.title": "cat"}


@pytest.fixture
def valid(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file(TENSORS, str(path), metadata=METADATA)
    return path


def _raw(header: dict, data: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def _expect_error(path, *words):
    with pytest.raises(ModelFileError) as info:
        read_header(path)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    return message


def test_valid_file_matches_safetensors_package(valid):
    header = read_header(valid)
    raw = valid.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert header.data_offset == 8 + length
    assert header.file_size == len(raw)
    assert header.metadata == METADATA
    assert set(header.tensors) == set(TENSORS)
    dtype_names = {np.float32: "F32", np.float16: "F16", np.int64: "I64", np.bool_: "BOOL"}
    with safe_open(str(valid), framework="numpy") as f:
        for name, array in TENSORS.items():
            info = header.tensors[name]
            assert info.dtype == dtype_names[array.dtype.type]
            assert info.shape == tuple(f.get_slice(name).get_shape()) == array.shape
            start, end = info.data_offsets
            stored = raw[header.data_offset + start:header.data_offset + end]
            assert stored == f.get_tensor(name).tobytes() == array.tobytes()
    dtype, shape, offsets = header.tensors["counts"]  # still a plain tuple for callers that unpack
    assert (dtype, shape, offsets[1] - offsets[0]) == ("I64", (5,), 40)


def test_no_metadata_is_empty_dict(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(path))
    assert read_header(path).metadata == {}


@pytest.mark.parametrize("size", [0, 1, 7])
def test_shorter_than_length_prefix(tmp_path, size):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01" * size)
    _expect_error(path, f"only {size} bytes", "8-byte")


def test_absurd_header_length(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    _expect_error(path, str(2**63), "not a safetensors file")
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    _expect_error(path, "limit")


def test_header_longer_than_file(valid):
    data = valid.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    valid.write_bytes(data[:8 + length - 10])
    _expect_error(valid, f"says {length} bytes", "truncated")


def test_pickle_or_other_file_is_not_safetensors(tmp_path):
    path = tmp_path / "model.ckpt.safetensors"
    # A zip (torch.save) file: its first 8 bytes read as a huge length.
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    _expect_error(path, "not a safetensors file")


@pytest.mark.parametrize("payload, words", [
    (b"{not json}", ("not valid JSON",)),
    (b"\xff\xfe{}", ("not UTF-8",)),
    (b"[1, 2]", ("expected an object",)),
])
def test_header_not_json_object(tmp_path, payload, words):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(payload)) + payload)
    _expect_error(path, *words)


def test_truncated_data_names_the_tensor(valid):
    data = valid.read_bytes()
    valid.write_bytes(data[:-1])
    header_len = struct.unpack("<Q", data[:8])[0]
    last = max(json.loads(data[8:8 + header_len]).items(),
               key=lambda kv: kv[1]["data_offsets"][1] if kv[0] != "__metadata__" else -1)[0]
    _expect_error(valid, repr(last), "truncated")


def test_every_truncation_is_a_model_file_error(valid):
    # Cutting shorter and shorter in place is cheaper than rewriting the file each time.
    for cut in range(valid.stat().st_size - 1, -1, -1):
        os.truncate(valid, cut)
        with pytest.raises(ModelFileError):
            read_header(valid)


def test_overlapping_ranges(tmp_path):
    path = tmp_path / "overlap.safetensors"
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    path.write_bytes(_raw(header, b"\x00" * 16))
    _expect_error(path, "'a'", "'b'", "overlap")


def test_adjacent_and_empty_tensors_are_fine(tmp_path):
    path = tmp_path / "ok.safetensors"
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]},
              "b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]},
              "__metadata__": {"format": "pt"}}
    path.write_bytes(_raw(header, b"\x00" * 16))
    header_read = read_header(path)
    assert header_read.tensors["b"].data_offsets == (8, 16)
    assert header_read.tensors["empty"].shape == (0, 3)
    assert header_read.metadata == {"format": "pt"}


@pytest.mark.parametrize("entry, words", [
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, ("needs 12 bytes", "span 8")),
    ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, ("data_offsets",)),
    ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, ("shape",)),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, True]}, ("data_offsets",)),
    ({"dtype": 5, "shape": [2], "data_offsets": [0, 8]}, ("dtype",)),
    ({"shape": [2], "data_offsets": [0, 8]}, ("dtype",)),
    ("F32", ("expected an object",)),
])
def test_malformed_tensor_entries(tmp_path, entry, words):
    path = tmp_path / "entry.safetensors"
    path.write_bytes(_raw({"w": entry}, b"\x00" * 16))
    _expect_error(path, "'w'", *words)


def test_metadata_values_must_be_strings(tmp_path):
    path = tmp_path / "meta.safetensors"
    path.write_bytes(_raw({"__metadata__": {"ss_network_dim": 4}}))
    _expect_error(path, "ss_network_dim", "strings")
    path.write_bytes(_raw({"__metadata__": ["x"]}))
    _expect_error(path, "__metadata__")


def test_unknown_dtype_is_accepted_without_size_check(tmp_path):
    path = tmp_path / "future.safetensors"
    path.write_bytes(_raw({"w": {"dtype": "F3_FUTURE", "shape": [7], "data_offsets": [0, 3]}}, b"\x00" * 3))
    assert read_header(path).tensors["w"].dtype == "F3_FUTURE"


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "absent.safetensors", "cannot read")
