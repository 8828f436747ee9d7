"""Loading a single file says what it is doing (the first thing a user waits for)."""


def test_single_file_load_names_the_file_its_family_and_the_conversion(tmp_path):
    from lorastudio.core.paths import ModelsRoot
    from lorastudio.models.load_options import load_options
    from lorastudio.models.loader import load_model
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    ckpt = save_sd1_single_file(tiny_sd1_pipeline(0), tmp_path / "models" / "Stable-diffusion" / "tiny.safetensors")
    said: list[str] = []
    model = load_model(ckpt, load_options(ModelsRoot.at(tmp_path / "models"), device="cpu", dtype="float32"),
                       say=said.append)
    assert model.pipe.unet is not None
    assert len(said) == 1
    assert said[0].startswith("loading tiny.safetensors (SD 1.x, ") and "converting it to diffusers' layout" in said[0]
