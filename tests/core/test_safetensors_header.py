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


def test_unknown_dtype_is_refused_as_the_library_refuses_it(tmp_path):
    path = tmp_path / "future.safetensors"
    path.write_bytes(_raw({"w": {"dtype": "F3_FUTURE", "shape": [7], "data_offsets": [0, 3]}}, b"\x00" * 3))
    _expect_error(path, "'w'", "F3_FUTURE", "not a safetensors dtype")


def _f32(n, offsets):
    return {"dtype": "F32", "shape": [n], "data_offsets": offsets}


def _text(header_text: str, data: bytes = b"") -> bytes:
    encoded = header_text.encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


# Files the probe used to accept while the safetensors library refuses them, and look-alikes
# the library accepts; the expected verdict of each is asked of the library itself below.
CROSS_CHECK = {
    "gap_between_tensors": _raw({"a": _f32(1, [0, 4]), "b": _f32(1, [8, 12])}, b"\0" * 12),
    "trailing_bytes": _raw({"a": _f32(1, [0, 4])}, b"\0" * 8),
    "data_not_from_zero": _raw({"a": _f32(1, [4, 8])}, b"\0" * 8),
    "no_tensors_but_data": _raw({}, b"\0" * 4),
    "unknown_dtype": _raw({"a": {"dtype": "F3X", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "lowercase_dtype": _raw({"a": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "nan_in_shape": _text('{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', b"\0" * 4),
    "offset_past_u64": _text('{"a": {"dtype": "U8", "shape": [0], "data_offsets": [%d, %d]}}' % (2**64, 2**64)),
    "dim_past_u64_of_empty": _text('{"a": {"dtype": "U8", "shape": [0, %d], "data_offsets": [0, 0]}}' % 2**64),
    "subbyte_not_whole_bytes": _raw({"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, b"\0" * 2),
    "nul_after_json": _text('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}\0', b"\0" * 4),
    "same_range_twice": _raw({"a": _f32(1, [0, 4]), "b": _f32(1, [0, 4])}, b"\0" * 4),
    # accepted by both
    "spaces_around_json": _text('  {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}   ', b"\0" * 4),
    "empty_tensor_at_a_shared_offset": _raw({"e": _f32(0, [0, 0]), "b": _f32(1, [0, 4])}, b"\0" * 4),
    "tensors_listed_out_of_order": _raw({"b": _f32(1, [4, 8]), "a": _f32(1, [0, 4])}, b"\0" * 8),
    "subbyte_whole_bytes": _raw({"a": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}, b"\0" * 2),
    "fp8_and_scalar": _raw({"a": {"dtype": "F8_E4M3", "shape": [], "data_offsets": [0, 1]},
                            "b": {"dtype": "F8_E5M2", "shape": [3], "data_offsets": [1, 4]}}, b"\0" * 4),
    "null_metadata": _raw({"__metadata__": None}),
    "extra_field_in_entry": _raw({"a": {**_f32(1, [0, 4]), "x": 1}}, b"\0" * 4),
}


@pytest.mark.parametrize("name", sorted(CROSS_CHECK))
def test_probe_is_exactly_as_strict_as_the_safetensors_library(tmp_path, name):
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(CROSS_CHECK[name])
    try:
        with safe_open(str(path), framework="numpy") as f:
            library_keys = set(f.keys())
    except Exception:  # the library raises SafetensorError, or OverflowError / ValueError from its bindings
        library_keys = None
    if library_keys is None:
        _expect_error(path)
    else:
        assert set(read_header(path).tensors) == library_keys


def test_cross_check_covers_both_verdicts(tmp_path):
    # the table above must hold files of both kinds, or the cross-check proves nothing
    verdicts = set()
    for name, data in CROSS_CHECK.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        try:
            with safe_open(str(path), framework="numpy"):
                verdicts.add("accepted")
        except Exception:
            verdicts.add("refused")
    assert verdicts == {"accepted", "refused"}


def test_gaps_and_trailing_bytes_are_named(tmp_path):
    path = tmp_path / "gap.safetensors"
    path.write_bytes(CROSS_CHECK["gap_between_tensors"])
    _expect_error(path, "'b'", "4 unaccounted bytes")
    path.write_bytes(CROSS_CHECK["trailing_bytes"])
    _expect_error(path, "4 trailing bytes")


def test_lora_hash_reads_the_header_through_the_same_probe(tmp_path):
    from lorastudio.core.hashes import addnet_hash_safetensors, lora_hash_for_infotext

    path = tmp_path / "lora.safetensors"
    path.write_bytes(CROSS_CHECK["trailing_bytes"])
    with pytest.raises(ModelFileError, match="trailing bytes"):
        lora_hash_for_infotext(path)
    with open(path, "rb") as fh, pytest.raises(ModelFileError, match="trailing bytes"):
        addnet_hash_safetensors(fh, path)


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "absent.safetensors", "cannot read")
