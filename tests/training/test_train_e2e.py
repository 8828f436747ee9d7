"""Train a LoRA on a tiny single-file SD 1.x model, then use it everywhere users would."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lorastudio.core.errors import DatasetError, InvalidParameter, LorastudioError, NotFound

BASE = dict(trigger="DeltamonStamp", base="tiny", steps=4, resolution=[64], rank=4, lr=5e-3, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    root = tmp_path_factory.mktemp("train")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    (root / "models" / "Lora").mkdir()
    save_sd1_single_file(tiny_sd1_pipeline(0), root / "models" / "Stable-diffusion" / "tiny.safetensors")
    draw_sticker_dataset(root / "data", n=4, size=64)
    return root


def cfg(world, **kw):
    return {**BASE, "images": world / "data", "models_dir": world / "models", "projects_dir": world / "projects", **kw}


@pytest.fixture(scope="module")
def trained(world):
    from lorastudio.training.api import train

    events = []
    result = train(cfg(world, save_every=2, sample_every=2, sample_steps=2, project="main"), on_event=events.append)
    return result, events


def test_run_layout_metadata_and_events(trained):
    from safetensors import safe_open

    from lorastudio.core.hashes import kohya_sshs_hashes

    result, events = trained
    v = result.version_dir
    assert v.parts[-3:] == ("main", "versions", "v1")
    assert result.lora_path == v / "main.safetensors" and result.lora_path.exists()
    assert (v / "diffusers" / "pytorch_lora_weights.safetensors").exists()
    config = json.loads((v / "config.json").read_text())
    assert config["rank"] == 4 and config["alpha"] == 8.0 and config["trigger"] == "DeltamonStamp"
    assert config["optimizer"] == "adamw" and config["steps"] == 4  # defaults resolved and recorded
    assert (v / "logs" / "loss.png").exists()
    rows = [json.loads(line) for line in (v / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
    assert [e.step for e in events if e.kind == "progress"] == [1, 2, 3, 4]
    assert any(e.kind == "checkpoint" for e in events) and any(e.kind == "sample" for e in events)
    assert sorted(p.name for p in (v / "samples").iterdir())[:1] == ["step-000002-00.png"]
    with safe_open(str(result.lora_path), "pt") as f:
        md = f.metadata()
        keys = list(f.keys())
        alphas = {k: f.get_tensor(k) for k in keys if k.endswith(".alpha")}
    assert md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "8.0"
    assert md["modelspec.trigger_phrase"] == "DeltamonStamp" and md["ss_base_model_version"] == "sd_v1"
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert all(k.startswith("lora_unet_") for k in keys)
    assert alphas and all(float(a) == 8.0 for a in alphas.values())
    # sshs hashes are kohya's: over the file serialized with the ss_* metadata only.
    from safetensors.torch import load_file, save

    tensors = load_file(str(result.lora_path))
    expect = kohya_sshs_hashes(save(tensors, {k: v for k, v in md.items() if k.startswith("ss_")}))
    assert (md["sshs_model_hash"], md["sshs_legacy_hash"]) == expect


def test_lora_loads_in_diffusers_and_changes_output(trained, world, caplog):
    import logging

    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline

    result, _ = trained
    caplog.set_level(logging.WARNING)

    def render(pipe):
        pipe.set_progress_bar_config(disable=True)
        return np.asarray(pipe("DeltamonStamp", num_inference_steps=2, width=64, height=64,
                               generator=torch.Generator().manual_seed(0), output_type="np").images[0])

    plain = render(tiny_sd1_pipeline(0))
    for source in (str(result.lora_path), str(result.diffusers_lora_dir)):
        pipe = tiny_sd1_pipeline(0)
        caplog.clear()
        pipe.load_lora_weights(source, adapter_name="t")
        leftovers = [r.getMessage() for r in caplog.records
                     if "unexpected key" in r.getMessage().lower() or "not used" in r.getMessage().lower()]
        assert leftovers == []  # no key of the file left over
        assert any("lora_A" in n for n, _ in pipe.unet.named_parameters())
        assert not np.allclose(render(pipe), plain, atol=1e-5)


def test_lora_tag_in_prompt_applies_it(trained, world, tmp_path):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    result, _ = trained
    shutil.copy(result.lora_path, world / "models" / "Lora" / "deltamon.safetensors")
    engine = GenerationEngine(StudioSettings(models_dir=world / "models", outdir=tmp_path, device="cpu",
                                             include_bundled=False))
    p = dict(width=64, height=64, steps=2, seed=1, sampler="Euler")
    none = engine.txt2img({**p, "prompt": "DeltamonStamp"}, save=False).images[0]
    zero = engine.txt2img({**p, "prompt": "DeltamonStamp <lora:deltamon:0>"}, save=False).images[0]
    one = engine.txt2img({**p, "prompt": "DeltamonStamp <lora:deltamon:1>"}, save=False).images[0]
    assert np.array_equal(np.asarray(none.image), np.asarray(zero.image))
    assert not np.array_equal(np.asarray(none.image), np.asarray(one.image))
    from lorastudio.core.infotext import parse_infotext

    assert parse_infotext(one.infotext)["Lora hashes"].startswith("deltamon: ")
    with pytest.raises(NotFound) as e:
        engine.txt2img({**p, "prompt": "x <lora:deltamn:1>"}, save=False)
    assert "deltamon" in str(e.value)


def test_interrupted_and_resumed_run_equals_uninterrupted(world):
    """On CPU with a fixed seed, stop + --resume ends with the same LoRA, bit for bit."""
    from safetensors.torch import load_file

    from lorastudio.training.api import train
    from lorastudio.training.events import TrainingStopped

    full = train(cfg(world, project="full", save_every=2))
    steps_seen = []

    def stop_after_two():
        return len(steps_seen) >= 2

    with pytest.raises(TrainingStopped):
        train(cfg(world, project="cut", save_every=100), on_event=lambda e: e.kind == "progress" and steps_seen.append(e.step),
              should_stop=stop_after_two)
    ckpts = list((world / "projects" / "cut" / "versions" / "v1" / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-000002"]  # no .partial left behind
    resumed = train(cfg(world, project="cut", resume=True, save_every=100))
    a, b = load_file(str(full.lora_path)), load_file(str(resumed.lora_path))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, field", [
    (dict(rank=0), "rank"), (dict(lr=float("nan")), "lr"), (dict(steps=-1), "steps"),
    (dict(rnak=4), "rnak"),
])
def test_bad_settings_are_refused_before_training(world, change, field):
    from lorastudio.training.api import train

    with pytest.raises(InvalidParameter) as e:
        train(cfg(world, **change))
    assert e.value.field == field


def test_missing_base_and_bad_datasets(world, tmp_path):
    from lorastudio.training.api import train

    with pytest.raises(NotFound):
        train(cfg(world, base="nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError):
        train(cfg(world, images=empty, project="empty"))
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("hello")
    with pytest.raises(DatasetError):
        train(cfg(world, images=texts, project="texts"))
    assert not (world / "projects" / "empty").exists() and not (world / "projects" / "texts").exists()


def test_trigger_with_prompt_syntax_is_stored_as_typed(world):
    from lorastudio.training.api import train

    r = train(cfg(world, trigger="Delta(mon):[x]", steps=1, project=None))
    config = json.loads(r.config_path.read_text())
    assert config["trigger"] == "Delta(mon):[x]"
    caption = next((r.version_dir / "dataset").glob("*.txt")).read_text()
    assert caption.startswith(r"Delta\(mon\):\[x\]")
    assert "/" not in r.version_dir.parent.parent.name
