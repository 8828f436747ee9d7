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


