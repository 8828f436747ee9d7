"""VAE overrides from models/VAE and textual-inversion embeddings from models/embeddings."""

import hashlib

import numpy as np
import pytest
import torch

from lorastudio.core.errors import ModelFileError, PickleRefused
from lorastudio.core.infotext import parse_infotext
from lorastudio.core.infotext_params import params_from_infotext

SMALL = dict(width=32, height=32, steps=2, cfg_scale=5.0, seed=4, sampler="Euler")


def arr(img):
    return np.asarray(img.convert("RGB")).astype(int)


def run(engine, prompt="a red circle", **kw):
    return engine.txt2img({**SMALL, "prompt": prompt, **kw}, save=False).images[0]


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _perturbed(module, seed):
    import copy

    out = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name.startswith("decoder."):  # a "fine-tuned decoder" VAE, as vae-ft-mse is
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return out


@pytest.fixture(scope="module")
def vaes(family_root, tiny_pipes, tmp_path_factory):
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from lorastudio.models.formats.sd_checkpoint import vae_to_ldm
    from lorastudio.testing.tiny_flux import save_flux_component_files

    sd_vae = family_root / "VAE" / "sd-ft.safetensors"
    save_file({k: v.contiguous() for k, v in vae_to_ldm(_perturbed(tiny_pipes["sd1"].vae, 1).state_dict()).items()},
              str(sd_vae))
    flux = tiny_pipes["flux"]
    parts = save_flux_component_files(SimpleNamespace(vae=_perturbed(flux.vae, 2), text_encoder=flux.text_encoder,
                                                      text_encoder_2=flux.text_encoder_2),
                                      tmp_path_factory.mktemp("ae2"))
    flux_vae = family_root / "VAE" / "ae-ft.safetensors"
    parts["vae"].replace(flux_vae)
    return {"sd": sd_vae, "flux": flux_vae}


@pytest.mark.parametrize("model, which", [("tiny-sd1.safetensors", "sd"), ("flux1-tiny.safetensors", "flux")])
def test_vae_override_changes_output_and_automatic_restores_it(family_engine, vaes, model, which):
    engine = family_engine(model)
    base = run(engine)
    path = vaes[which]
    other = run(engine, vae=path.name)
    assert np.abs(arr(other.image) - arr(base.image)).max() > 4
    fields = parse_infotext(other.infotext)
    assert fields["VAE hash"] == sha(path)[:10] and fields["VAE"] == path.stem
    # the infotext names the VAE, so reading it back gives the same picture
    assert np.array_equal(arr(engine.txt2img(params_from_infotext(other.infotext), save=False).images[0].image),
                          arr(other.image))
    back = run(engine, vae="Automatic")
    assert np.array_equal(arr(back.image), arr(base.image))
    assert "VAE" not in parse_infotext(back.infotext)


def test_vae_that_does_not_fit_is_named_and_nothing_is_written(family_engine, vaes, tmp_path):
    engine = family_engine("tiny-sd1.safetensors")
    base = run(engine)
    with pytest.raises(ModelFileError) as e:  # FLUX's 16-channel autoencoder on SD 1.x
        engine.txt2img({**SMALL, "prompt": "a red circle", "vae": "ae.safetensors"}, outdir=tmp_path / "out")
    assert "ae.safetensors" in str(e.value)
    assert not (tmp_path / "out").exists()
    assert np.array_equal(arr(run(engine).image), arr(base.image))


def _rows(text_encoder, tokenizer, words):
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    return text_encoder.get_input_embeddings().weight[ids].detach().clone()


@pytest.fixture(scope="module")
def embeddings(family_root, tiny_pipes):
    """Embeddings whose vectors are the model's own rows for "red circle": using one must equal the words."""
    from safetensors.torch import save_file

    d = family_root / "embeddings"
    sd1, sdxl = tiny_pipes["sd1"], tiny_pipes["sdxl"]
    vec = _rows(sd1.text_encoder, sd1.tokenizer, "red circle")
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "RedCircle", "step": 100},
               d / "RedCircle.pt")
    # torch < 1.12 A1111 files: the vectors in a ParameterDict
    old = {"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vec)}), "name": "old", "step": 5}
    torch.save(old, d / "redcircle-old.pt")
    save_file({"emb_params": vec}, str(d / "red-circle-st.safetensors"))
    save_file({"clip_l": _rows(sdxl.text_encoder, sdxl.tokenizer, "red circle"),
               "clip_g": _rows(sdxl.text_encoder_2, sdxl.tokenizer_2, "red circle")}, str(d / "redcircle-xl.safetensors"))
    (d / "broken.safetensors").write_bytes(b"not a safetensors file")  # never read unless named
    return d


# The embedding's vectors are the words' own rows: the text encoder gets equal tensors of the same
# shape, so the pictures are bit-identical; rerun under the default kernel set in `make test`.
@pytest.mark.pixels
def test_sd1_embeddings_stand_for_their_vectors(family_engine, embeddings, with_settings):
    engine = family_engine("tiny-sd1.safetensors")
    words = arr(run(engine, "a red circle, sky").image)
    used = run(engine, "a red-circle-st, sky")
    assert np.array_equal(arr(used.image), words)
    name_hash = sha(embeddings / "red-circle-st.safetensors")[:12]
    assert parse_infotext(used.infotext)["TI hashes"] == f"red-circle-st: {name_hash}"
    assert 'TI hashes: "red-circle-st: ' in used.infotext
    # A1111's .pt format: a pickle, so only with the opt-in (and then through weights_only)
    with pytest.raises(PickleRefused) as e:
        run(engine, "a redcircle, sky")
    assert "RedCircle.pt" in str(e.value)
    with with_settings(engine, allow_pickle=True):
        pt = run(engine, "a (REDCIRCLE), sky", negative_prompt="red-circle-st")
        assert np.array_equal(arr(pt.image), arr(run(engine, "a (red circle), sky", negative_prompt="red circle").image))
        assert np.array_equal(arr(run(engine, "a redcircle-old, sky").image), words)
    assert set(parse_infotext(pt.infotext)["TI hashes"].split(", ")) == {
        f"RedCircle: {sha(embeddings / 'RedCircle.pt')[:12]}", f"red-circle-st: {name_hash}"}
    # an embedding for another model (SDXL's clip_l/clip_g) leaves its name as plain text
    assert "TI hashes" not in run(engine, "a redcircle-xl").infotext
    assert "TI hashes" not in run(engine, "a red circle").infotext
    # a file is read only once its name is used; then a bad one is named
    with pytest.raises(ModelFileError) as e:
        run(engine, "a broken circle")
    assert "broken.safetensors" in str(e.value)


@pytest.mark.pixels
def test_sdxl_embeddings_use_clip_l_and_clip_g(family_engine, embeddings):
    engine = family_engine("tiny-sdxl.safetensors")
    used = run(engine, "a redcircle-xl, sky")
    assert np.array_equal(arr(used.image), arr(run(engine, "a red circle, sky").image))
    assert f"redcircle-xl: {sha(embeddings / 'redcircle-xl.safetensors')[:12]}" in used.infotext
    assert "TI hashes" not in run(engine, "a red-circle-st").infotext  # SD 1.x vectors do not fit SDXL
