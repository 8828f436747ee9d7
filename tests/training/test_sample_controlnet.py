"""Training previews that follow a ControlNet unit (a fixed pose for a pose LoRA)."""

import numpy as np
import pytest
from PIL import Image

BASE = dict(trigger="DeltamonStamp", base="tiny-x8", resolution=[64], rank=4, lr=5e-3, seed=11, steps=1,
            sample_steps=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lorastudio.testing.tiny_controlnet import save_controlnet_single_file, tiny_controlnet, tiny_sd1_x8_pipeline
    from lorastudio.testing.tiny_sd import save_sd1_single_file
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    root = tmp_path_factory.mktemp("cn-previews")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    (root / "models" / "ControlNet").mkdir()
    pipe = tiny_sd1_x8_pipeline(0)
    save_sd1_single_file(pipe, root / "models" / "Stable-diffusion" / "tiny-x8.safetensors")
    save_controlnet_single_file(tiny_controlnet(pipe.unet, seed=5), pipe.unet.config,
                                root / "models" / "ControlNet" / "control_tiny_pose.safetensors")
    draw_sticker_dataset(root / "data", n=2, size=64)
    Image.fromarray((np.random.RandomState(1).rand(64, 64, 3) * 255).astype(np.uint8)).save(root / "pose.png")
    return root


def cfg(world, **kw):
    return {**BASE, "images": world / "data", "models_dir": world / "models", "projects_dir": world / "projects", **kw}


def test_previews_follow_the_controlnet_unit(world):
    from lorastudio.core.errors import NotFound
    from lorastudio.core.png_text import read_infotext
    from lorastudio.training.api import export, prepare, run
    from lorastudio.training.config import training_config

    prepared = prepare(cfg(world, project="cn", sample_controlnet="control_tiny_pose",
                           sample_control_image=world / "pose.png"))
    result = export(prepared, run(prepared))
    (path,) = result.samples
    info = read_infotext(path)
    assert 'ControlNet 0: "Module: none, Model: control_tiny_pose [' in info
    # the same run without the unit (same seed, same LoRA): the same prompt, another picture
    plain = prepare(cfg(world, project="plain"))
    (plain_path,) = export(plain, run(plain)).samples
    assert "ControlNet" not in read_infotext(plain_path)
    diff = np.abs(np.asarray(Image.open(path), float) - np.asarray(Image.open(plain_path), float)).max()
    assert diff > 5

    with pytest.raises(ValueError) as e:  # one without the other
        training_config(cfg(world, sample_controlnet="control_tiny_pose"))
    assert "sample_control_image" in str(e.value)
    with pytest.raises(NotFound) as e:  # a wrong name stops the run before it trains
        prepare(cfg(world, project="cn-missing", sample_controlnet="control_tiny_pse",
                    sample_control_image=world / "pose.png"))
    assert "control_tiny_pose" in str(e.value)
