"""Installing a finished LoRA into models/Lora: never over another file, never a partial file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorastudio.services.lora_install import install_lora


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_first_install_keeps_the_name_and_later_ones_are_numbered(tmp_path):
    lora_dir = tmp_path / "models" / "Lora"  # created when missing
    got = install_lora(_file(tmp_path / "run1" / "cat.safetensors", b"one"), lora_dir)
    assert (got.path, got.name, got.tag) == (lora_dir / "cat.safetensors", "cat", "<lora:cat:1>")
    two = install_lora(_file(tmp_path / "run2" / "cat.safetensors", b"two"), lora_dir)
    three = install_lora(_file(tmp_path / "run3" / "cat.safetensors", b"three"), lora_dir)
    assert (two.name, two.tag, three.name) == ("cat-v2", "<lora:cat-v2:1>", "cat-v3")
    assert [(lora_dir / f).read_bytes() for f in ("cat.safetensors", "cat-v2.safetensors", "cat-v3.safetensors")] \
        == [b"one", b"two", b"three"]
    assert sorted(os.listdir(lora_dir)) == ["cat-v2.safetensors", "cat-v3.safetensors", "cat.safetensors"]


def test_a_users_own_file_is_never_overwritten(tmp_path):
    lora_dir = tmp_path / "Lora"
    _file(lora_dir / "自作LORA.safetensors", b"the user's own LoRA")
    (lora_dir / "自作LORA-v2.safetensors").mkdir()  # even a folder by that name is left alone
    got = install_lora(_file(tmp_path / "run" / "自作LORA.safetensors", b"trained"), lora_dir)
    assert got.name == "自作LORA-v3" and got.path.read_bytes() == b"trained"
    assert (lora_dir / "自作LORA.safetensors").read_bytes() == b"the user's own LoRA"


def test_the_same_bytes_installed_again_reuse_their_name(tmp_path):
    lora_dir = tmp_path / "Lora"
    src = _file(tmp_path / "run" / "cat.safetensors", b"same")
    first = install_lora(src, lora_dir)
    again = install_lora(src, lora_dir)
    assert again.path == first.path and again.already_there and os.listdir(lora_dir) == ["cat.safetensors"]


def test_a_failed_copy_leaves_no_file_under_any_name(tmp_path):
    lora_dir = tmp_path / "Lora"
    missing = tmp_path / "run" / "gone.safetensors"
    with pytest.raises(FileNotFoundError):
        install_lora(missing, lora_dir)
    assert list(lora_dir.iterdir()) == []
