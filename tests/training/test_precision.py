"""Training precision: what `auto` picks on this machine, and a bf16 run end to end (previews included)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.training.config import training_config


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (independent of torch's own probes)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("/proc/cpuinfo has no flags line")


def test_auto_precision_follows_the_cpu_flags_and_the_base_size():
    from lorastudio.training.api import _precision

    assert not torch.cuda.is_available()  # the suite's machines are CPU-only; CUDA's choice is not checked here
    auto = training_config(dict(images="x", trigger="T", base="b"))
    # A full-size SD 1.5 file (4 GB): bf16 where the kernel says the CPU multiplies bf16 natively.
    expected = "bf16" if cpu_flags() & {"avx512_bf16", "amx_tile"} else "no"
    assert _precision(auto, 4_265_096_420) == expected
    # The bundled 14 MB base trains faster in float32 on every CPU (casts cost more than they save).
    assert _precision(auto, 14_000_000) == "no"
    for explicit in ("no", "bf16", "fp16"):
        config = training_config(dict(images="x", trigger="T", base="b", mixed_precision=explicit))
        assert _precision(config, 14_000_000) == _precision(config, 4_265_096_420) == explicit


def test_runs_with_other_precisions_follow_each_other_in_one_process(world):
    """A server trains run after run in its process: accelerate's one-per-process state must not
    refuse the second precision."""
    from lorastudio.training.api import train

    for n, precision in enumerate(("bf16", "no", "bf16")):
        done = train(dict(images=world / "data", models_dir=world / "models", projects_dir=world / "projects",
                          trigger="DeltamonStamp", base="tiny", resolution=[64], rank=4, lr=5e-3, seed=3, steps=1,
                          mixed_precision=precision, samples=False, project=f"seq{n}"))
        assert done.lora_path.is_file()


@pytest.fixture(scope="module")
def world(tmp_path_factory, training_world):
    return training_world(tmp_path_factory.mktemp("precision"), images=2, size=64)


def test_bf16_run_trains_and_draws_its_preview(world):
    """The frozen base in bf16, the LoRA in float32, the preview drawn through the same pipeline
    (it used to stop at the VAE: float32 latents against bf16 weights)."""
    from safetensors.torch import load_file

    from lorastudio.training.api import train

    done = train(dict(images=world / "data", models_dir=world / "models", projects_dir=world / "projects",
                      trigger="DeltamonStamp", base="tiny", resolution=[64], rank=4, lr=5e-3, seed=3, steps=3,
                      mixed_precision="bf16", sample_steps=2))
    lora = load_file(str(done.lora_path))
    ups = [v for k, v in lora.items() if k.endswith("lora_up.weight")]
    assert ups and all(v.dtype != torch.bfloat16 for v in lora.values())  # saved in the usual precision
    assert any(float(v.abs().max()) > 0 for v in ups)  # trained: lora_up starts at zero
    assert len(done.samples) == 1
    with Image.open(done.samples[0]) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert pixels.shape == (64, 64, 3) and pixels.std() > 1.0  # a picture, not a flat fill
