from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sd1_models_root(tmp_path_factory) -> Path:
    """A models root with a tiny SD 1.x checkpoint in the A1111 single-file layout."""
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion").mkdir()
    (root / "Lora").mkdir()
    (root / "VAE").mkdir()
    save_sd1_single_file(tiny_sd1_pipeline(seed=0), root / "Stable-diffusion" / "tiny-sd1.safetensors")
    return root


@pytest.fixture(scope="session")
def session_engine(sd1_models_root, tmp_path_factory):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    settings = StudioSettings(models_dir=sd1_models_root, outdir=tmp_path_factory.mktemp("outputs"), device="cpu",
                              include_bundled=False)
    return GenerationEngine(settings)


@pytest.fixture()
def engine(session_engine, tmp_path):
    """The loaded model is shared (loading is the slow part); outputs go to this test's folder."""
    session_engine.settings = session_engine.settings.model_copy(update={"outdir": tmp_path / "outputs"})
    return session_engine


# --- every family, in the layouts users keep ------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_pipes():
    """The in-memory originals of the files in `family_root` (same weights)."""
    from lorastudio.testing.tiny_flux import tiny_flux_pipeline
    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline, tiny_sdxl_pipeline

    return {"sd1": tiny_sd1_pipeline(seed=0), "sdxl": tiny_sdxl_pipeline(seed=0), "flux": tiny_flux_pipeline(seed=0)}


@pytest.fixture(scope="session")
def family_root(tmp_path_factory, tiny_pipes, sd1_models_root) -> Path:
    """A1111/Forge models root: SD 1.x and SDXL single files, FLUX.1 all-in-one and transformer-only
    (ae in VAE/, clip_l + t5xxl in text_encoder/, as Forge keeps them), and diffusers folders."""
    import shutil

    from lorastudio.testing.tiny_flux import save_flux_component_files, save_flux_single_file
    from lorastudio.testing.tiny_sd import save_sdxl_single_file

    root = tmp_path_factory.mktemp("family-models")
    ckpt = root / "Stable-diffusion"
    for d in ("Stable-diffusion", "Lora", "VAE", "text_encoder", "embeddings"):
        (root / d).mkdir()
    shutil.copy(sd1_models_root / "Stable-diffusion" / "tiny-sd1.safetensors", ckpt / "tiny-sd1.safetensors")
    save_sdxl_single_file(tiny_pipes["sdxl"], ckpt / "tiny-sdxl.safetensors")
    tiny_pipes["sdxl"].save_pretrained(ckpt / "tiny-sdxl-diffusers")
    flux = tiny_pipes["flux"]
    save_flux_single_file(flux, ckpt / "tiny-flux-aio.safetensors", all_in_one=True)
    save_flux_single_file(flux, ckpt / "flux1-tiny.safetensors")
    parts = save_flux_component_files(flux, tmp_path_factory.mktemp("flux-parts"))
    shutil.move(parts["vae"], root / "VAE" / "ae.safetensors")
    shutil.move(parts["text_encoder"], root / "text_encoder" / "clip_l.safetensors")
    shutil.move(parts["text_encoder_2"], root / "text_encoder" / "t5xxl.safetensors")
    flux.save_pretrained(ckpt / "tiny-flux-diffusers")
    return root


@pytest.fixture(scope="session")
def family_engine(family_root, tmp_path_factory, refuse_network):
    """family_engine("tiny-sdxl.safetensors") -> an engine with that model loaded (once per session,
    with the network refused while it loads)."""
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    engines: dict = {}

    def get(model: str) -> GenerationEngine:
        if model not in engines:
            settings = StudioSettings(models_dir=family_root, outdir=tmp_path_factory.mktemp("outputs"),
                                      device="cpu", include_bundled=False)
            engine = GenerationEngine(settings)
            with refuse_network():
                engine.load(model)
            engines[model] = engine
        return engines[model]

    return get


@pytest.fixture()
def with_settings():
    """with with_settings(engine, lora_mode="unfused"): ... -- engines are shared, so changes are undone."""
    import contextlib

    @contextlib.contextmanager
    def apply(engine, **updates):
        saved = engine.settings
        engine.settings = saved.model_copy(update=updates)
        try:
            yield engine
        finally:
            engine.settings = saved

    return apply
