"""What the training tests share: the folder a training run reads, written once per module."""

import pytest


@pytest.fixture(scope="session")
def training_world():
    """`write(root, images=, size=)`: the tiny SD 1.x single file as models/Stable-diffusion/tiny.safetensors
    (the base "tiny"), an empty models/Lora, and `images` RGBA sticker pictures of `size` px in data/."""
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    def write(root, *, images: int, size: int):
        (root / "models" / "Stable-diffusion").mkdir(parents=True)
        (root / "models" / "Lora").mkdir()
        save_sd1_single_file(tiny_sd1_pipeline(0), root / "models" / "Stable-diffusion" / "tiny.safetensors")
        draw_sticker_dataset(root / "data", n=images, size=size)
        return root

    return write
