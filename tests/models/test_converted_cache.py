"""The second load of a single file reads its cached converted layout: the same weights, no conversion."""

import os

import pytest
import torch


def test_second_load_reuses_the_converted_layout_with_identical_weights(tmp_path, monkeypatch):
    from lorastudio.core.paths import ModelsRoot
    from lorastudio.models.converted_cache import cached_layout, converted_dir
    from lorastudio.models.families.sd1 import SD1Family
    from lorastudio.models.load_options import load_options
    from lorastudio.models.loader import load_model
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    ckpt = save_sd1_single_file(tiny_sd1_pipeline(0), tmp_path / "models" / "Stable-diffusion" / "tiny.safetensors")
    options = load_options(ModelsRoot.at(tmp_path / "models"), device="cpu", dtype="float32")
    family = SD1Family()
    assert cached_layout(ckpt, family, options) is None

    said: list[str] = []
    first = load_model(ckpt, options, say=said.append)
    assert len(said) == 1 and said[0].startswith("converting tiny.safetensors")  # the first load says what it does
    folder = cached_layout(ckpt, family, options)
    assert folder is not None and (folder / "model_index.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".partial")]  # no half-written folder left

    def no_conversion(*a, **k):
        raise AssertionError("the second load converted the file again")

    monkeypatch.setattr(SD1Family, "load_checkpoint", no_conversion)
    said.clear()
    second = load_model(ckpt, options, say=said.append)
    assert len(said) == 1 and "converted layout" in said[0]
    assert type(second.pipe) is type(first.pipe)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(first.pipe, name).state_dict(), getattr(second.pipe, name).state_dict()
        assert a.keys() == b.keys(), name
        for k in a:  # the same tensors, written and read back: bit for bit
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (name, k)
    # diffusers' bookkeeping keys ("_use_default_values": which values were defaults) aside, the same schedule
    def public(config):
        return {k: v for k, v in dict(config).items() if not k.startswith("_")}

    assert public(first.pipe.scheduler.config) == public(second.pipe.scheduler.config)
    assert public(first.pipe.unet.config) == public(second.pipe.unet.config)
    assert first.pipe.tokenizer("a cat").input_ids == second.pipe.tokenizer("a cat").input_ids

    # A file changed in place gets a new key (size and mtime): the old conversion is not used for it.
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert converted_dir(ckpt, family, options) != folder and cached_layout(ckpt, family, options) is None
    with pytest.raises(AssertionError, match="converted the file again"):
        load_model(ckpt, options)
