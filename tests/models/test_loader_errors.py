"""Opening checkpoints: pickles refused unless opted in (and then weights-only), clear errors that
name the file, and no output file when generation fails."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from lorastudio.core.errors import ModelFileError, PickleRefused, UnknownModelFamily
from lorastudio.models.families.base import LoadOptions

SMALL = dict(prompt="x", width=32, height=32, steps=2, sampler="Euler")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion").mkdir()
    save_sd1_single_file(tiny_sd1_pipeline(seed=0), root / "Stable-diffusion" / "tiny-sd1.safetensors")
    return root


@pytest.fixture(scope="module")
def sd1_tensors(root):
    from safetensors.torch import load_file

    return load_file(str(root / "Stable-diffusion" / "tiny-sd1.safetensors"))


def _engine(root, out, **settings):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    return GenerationEngine(StudioSettings(models_dir=root, outdir=out, device="cpu", include_bundled=False, **settings))


def _fails(root, tmp_path, model, error, **settings):
    out = tmp_path / "outputs"
    with pytest.raises(error) as e:
        _engine(root, out, **settings).txt2img({**SMALL, "model": str(model)})
    assert str(model) in str(e.value) or model.name in str(e.value)
    assert not out.exists()
    return e.value


def test_ckpt_is_refused_by_default_saying_why_and_how_to_convert(root, sd1_tensors, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd1_tensors, "global_step": 10}, path)
    err = _fails(root, tmp_path, path, PickleRefused)
    text = str(err)
    assert "arbitrary code" in text and ".safetensors" in text and "allow-pickle" in text


def test_allow_pickle_loads_the_tensors_weights_only(root, sd1_tensors, tmp_path):
    from lorastudio.models.loader import load_model, probe_checkpoint

    path = tmp_path / "model.pt"
    torch.save({"state_dict": sd1_tensors, "global_step": 10, "epoch": "final"}, path)
    opts = LoadOptions(allow_pickle=True, cache_dir=tmp_path / "cache")
    converted, shapes, _ = probe_checkpoint(path, opts)
    from safetensors.torch import load_file

    back = load_file(str(converted))
    assert back.keys() == sd1_tensors.keys() and all(torch.equal(back[k], sd1_tensors[k]) for k in back)
    model = load_model(path, opts)
    assert model.family.name == "sd1"
    te = model.pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(te, sd1_tensors["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"])


class _RunsCode:
    """Unpickling this opens (creates) a file: what a hostile checkpoint would do, harmlessly."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_an_object_is_refused_even_when_allowed(root, sd1_tensors, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": sd1_tensors, "payload": _RunsCode(marker)}, path)
    err = _fails(root, tmp_path, path, ModelFileError, allow_pickle=True)
    assert "weights_only" in str(err)
    assert not marker.exists()


def test_unknown_family_names_the_file(root, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "random.safetensors"
    save_file({"foo.weight": torch.randn(4, 4), "bar.bias": torch.randn(4)}, str(path))
    err = _fails(root, tmp_path, path, UnknownModelFamily)
    assert "not a SD 1.x, SDXL or FLUX.1 checkpoint" in str(err)


def test_truncated_file_names_the_file(root, tmp_path):
    src = root / "Stable-diffusion" / "tiny-sd1.safetensors"
    path = tmp_path / "cut.safetensors"
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _fails(root, tmp_path, path, ModelFileError)


def test_missing_flux_components_are_named(tmp_path):
    from lorastudio.testing.tiny_flux import save_flux_single_file, tiny_flux_pipeline

    alone = tmp_path / "models"
    (alone / "Stable-diffusion").mkdir(parents=True)
    path = save_flux_single_file(tiny_flux_pipeline(0), alone / "Stable-diffusion" / "flux1-x.safetensors")
    err = _fails(alone, tmp_path, path, ModelFileError)
    assert "ae.safetensors" in str(err)


def test_safe_checkpoints_in_a_copy_of_the_root_still_load(root, tmp_path):
    # the refusals above are about the files, not a broken engine: the good model still generates
    copy = tmp_path / "models"
    shutil.copytree(root, copy)
    r = _engine(copy, tmp_path / "out").txt2img(dict(SMALL, seed=1))
    assert r.images[0].path.name == "00000-1.png"
