"""The engine picks a model's precision before reading its weights: one load per model.

No GPU here: the engine is told its device is "cuda" and every load is recorded, then done on
the CPU in the precision the engine asked for (tiny models run in fp16 / bf16 on a CPU too).
"""

import dataclasses

import pytest


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from lorastudio.testing.tiny_flux import save_flux_single_file, tiny_flux_pipeline
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    root = tmp_path_factory.mktemp("load-once") / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    save_flux_single_file(tiny_flux_pipeline(0), root / "Stable-diffusion" / "flux.safetensors", all_in_one=True)
    save_sd1_single_file(tiny_sd1_pipeline(0), root / "Stable-diffusion" / "sd1.safetensors")
    return root


def engine_with_recorded_loads(models, monkeypatch, **settings):
    import lorastudio.generation.engine as engine_mod
    from lorastudio.core.settings import StudioSettings

    real, loads = engine_mod.load_model, []

    def recording_load(path, options, **kw):
        loads.append((path.name, options.device, options.dtype))
        return real(path, dataclasses.replace(options, device="cpu"), **kw)

    monkeypatch.setattr(engine_mod, "load_model", recording_load)
    return engine_mod.GenerationEngine(StudioSettings(models_dir=models, include_bundled=False, **settings)), loads


@pytest.mark.parametrize("ref, dtype", [("flux", "bfloat16"), ("sd1", "float16")])
def test_a_gpu_loads_each_model_once_in_its_family_precision(models, monkeypatch, ref, dtype):
    import torch

    engine, loads = engine_with_recorded_loads(models, monkeypatch, device="cuda")
    model = engine.load(ref)
    # Before: FLUX was loaded in fp16, then loaded again in bf16 while the first copy was still held.
    assert loads == [(f"{ref}.safetensors", "cuda", dtype)]
    assert next(model.pipe.transformer.parameters() if ref == "flux" else model.pipe.unet.parameters()).dtype \
        == getattr(torch, dtype)
    engine.load(ref)
    assert len(loads) == 1  # the loaded model is reused


def test_cpu_and_an_explicit_dtype_are_taken_as_given(models, monkeypatch):
    engine, loads = engine_with_recorded_loads(models, monkeypatch, device="cpu")
    engine.load("flux")
    assert loads == [("flux.safetensors", "cpu", "float32")]
    engine, loads = engine_with_recorded_loads(models, monkeypatch, device="cuda", dtype="float16")
    engine.load("flux")
    assert loads == [("flux.safetensors", "cuda", "float16")]
