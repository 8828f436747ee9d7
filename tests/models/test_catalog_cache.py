"""The LoRA scan is cached and still sees files added, removed and renamed (bench/lora_lookup.py times it)."""

import pytest

from lorastudio.core.errors import NotFound
from lorastudio.core.paths import ModelsRoot
from lorastudio.models.catalog import Catalog


def test_lora_lookup_sees_changes_in_any_subfolder(tmp_path):
    lora = tmp_path / "models" / "Lora"
    (lora / "chars" / "deep").mkdir(parents=True)
    (lora / "top.safetensors").write_bytes(b"x")
    (lora / "chars" / "deep" / "alice.safetensors").write_bytes(b"x")
    cat = Catalog(ModelsRoot.at(tmp_path / "models"), include_bundled=False)
    assert cat.find_lora("alice").path == lora / "chars" / "deep" / "alice.safetensors"
    (lora / "chars" / "deep" / "bob.safetensors").write_bytes(b"x")
    assert cat.find_lora("bob").name == "chars/deep/bob.safetensors"
    (lora / "chars" / "deep" / "alice.safetensors").rename(lora / "chars" / "deep" / "carol.safetensors")
    assert cat.find_lora("carol").name == "chars/deep/carol.safetensors"
    with pytest.raises(NotFound):
        cat.find_lora("alice")
    (lora / "new").mkdir()
    (lora / "new" / "dave.safetensors").write_bytes(b"x")
    assert cat.find_lora("dave").name == "new/dave.safetensors"
    assert [e.name for e in cat.loras()] == ["chars/deep/bob.safetensors", "chars/deep/carol.safetensors",
                                             "new/dave.safetensors", "top.safetensors"]
