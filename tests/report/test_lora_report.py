"""The LoRA report on the bundled base: a trained LoRA gets a recommended weight, a zero LoRA
"no effect"; a CLIP vision model in models/clip_vision/ is used when present.

One short training (the demo's recipe, small: 150 steps at 32 px with 16 regularisation
pictures) serves every test here."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lorastudio.models.catalog import BUNDLED_DIR
from lorastudio.testing.job_context import RecordingJobContext

BUNDLED = BUNDLED_DIR / "lorastudio-shapes-v1.safetensors"
FAST = {"seeds": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.services.class_images import write_class_images
    from lorastudio.testing.shapes import random_captions
    from lorastudio.training.api import train
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    ws = tmp_path_factory.mktemp("report")
    models = ws / "models"
    settings = StudioSettings(models_dir=models, outdir=ws / "out", device="cpu")
    draw_sticker_dataset(ws / "data", n=12, trigger="DeltamonStamp", seed=0, size=128)
    write_class_images(GenerationEngine(settings), random_captions(16, seed=77), ws / "reg", seed=5000, width=32,
                       height=32, steps=20, cfg_scale=5.0, sampler="DPM++ 2M")
    result = train(dict(images=ws / "data", trigger="DeltamonStamp", base=BUNDLED.name, models_dir=models,
                        projects_dir=ws / "p", steps=150, batch_size=4, rank=8, alpha=8.0, lr=2e-3, resolution=[32],
                        seed=0, sample_every=75, sample_steps=20, reg_images=ws / "reg"))
    return settings, result.version_dir


def test_a_trained_lora_gets_a_recommended_weight_and_a_rising_concept_score(trained):
    from lorastudio.core.png_text import read_infotext
    from lorastudio.services.report import write_report

    settings, vdir = trained
    report = write_report(vdir, settings, FAST)
    on_disk = json.loads((vdir / "report.json").read_text())
    assert on_disk["recommended_weight"] == report["recommended_weight"]
    rec = report["recommended_weight"]
    assert rec is not None and 0.25 <= rec <= 1.25, report["recommendation"]
    c = {float(w): v for w, v in report["concept_score"]["by_weight"].items()}
    # rises from the base to the recommended weight (0.25 barely moves, so 0 -> 0.5 -> ... -> rec)
    rising = [w for w in (0.0, 0.5, 0.75, 1.0, 1.25) if w <= rec]
    assert all(c[a] < c[b] for a, b in zip(rising, rising[1:])), c
    assert c[rec] - c[0.0] >= 0.15, c
    assert report["concept_score"]["scorer"] == "pixel" and "histogram" in report["concept_score"]["method"]
    assert report["base_preservation"]["by_weight"]["0"] == 1.0  # weight 0 against itself
    # the pictures: 6 weights x 5 prompts x 1 seed, each with its infotext
    assert len(report["pictures"]) == 30 and Image.open(vdir / "report.png").size[0] > 6 * 64
    one = read_infotext(vdir / "report" / "w1.00-p0-s0.png")
    assert "DeltamonStamp" in one and "Lora hashes" in one
    # the step previews were scored
    assert set(report["steps"]["steps"]) == {"75", "150"} and report["steps"]["last_step"] == 150


def test_a_zero_lora_has_no_effect(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    from lorastudio.core.safetensors_header import read_header
    from lorastudio.services.report import write_report

    settings, vdir = trained
    zero = tmp_path / "v-zero"
    shutil.copytree(vdir, zero, ignore=shutil.ignore_patterns("report*", "cache", "checkpoints"))
    lora = zero / "DeltamonStamp.safetensors"
    sd = load_file(str(lora))
    metadata = read_header(lora).metadata
    ups = [k for k in sd if "lora_up" in k]
    assert ups
    save_file({k: (v * 0 if "lora_up" in k else v) for k, v in sd.items()}, str(lora), metadata=metadata)
    report = write_report(zero, settings, FAST)
    assert report["recommendation"]["verdict"] == "no effect" and report["recommended_weight"] is None
    assert "no effect" in report["recommendation"]["reason"] or "does not visibly" in report["recommendation"]["reason"]


def _tiny_clip_vision(folder):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    import torch

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))


def test_a_clip_vision_model_in_models_clip_vision_is_used(trained, tmp_path):
    from lorastudio.evaluation.clip_vision import clip_scorer, find_clip_vision
    from lorastudio.services.report import write_report

    settings, vdir = trained
    models = tmp_path / "models"
    assert find_clip_vision(models) is None
    _tiny_clip_vision(models / "clip_vision" / "tiny-clip")
    assert find_clip_vision(models) == models / "clip_vision" / "tiny-clip"

    refs = [Image.open(p) for p in sorted((vdir / "dataset").glob("*.png"))][:4]
    scorer = clip_scorer(find_clip_vision(models))
    # an image's best match among pictures that include it is itself: cosine 1 (float32 rounding)
    assert np.allclose(scorer.best_match(refs, refs), 1.0, atol=1e-5)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert scorer.best_match([noise], refs)[0] < 0.999

    copy = tmp_path / "v-clip"
    shutil.copytree(vdir, copy, ignore=shutil.ignore_patterns("report*", "cache", "checkpoints"))
    # the base still comes from the run's models folder; the CLIP model from the one given
    shutil.copytree(settings.models_dir, models, dirs_exist_ok=True)
    report = write_report(copy, settings, {"seeds": 1, "weights": (0.0, 1.0)}, models_dir=models)
    assert report["concept_score"]["scorer"] == "clip" and "tiny-clip" in report["concept_score"]["method"]
    assert set(report["concept_score"]["by_weight"]) == {"0", "1"}




def test_the_job_worker_writes_the_report_after_a_training(trained, tmp_path):
    from types import SimpleNamespace

    from lorastudio.interfaces.api.training_jobs import make_training_handler
    from lorastudio.training.events import TrainingResult

    settings, vdir = trained
    projects = tmp_path / "projects"
    copy = projects / "DeltamonStamp" / "versions" / "v1"
    shutil.copytree(vdir, copy, ignore=shutil.ignore_patterns("report*", "cache", "checkpoints"))
    lora = copy / "DeltamonStamp.safetensors"

    def train(config, on_event=None, **_):  # the run already happened: hand back its folder
        return TrainingResult(copy, lora, copy / "diffusers", copy / "config.json", [], 150, 0.1)

    job = SimpleNamespace(id="j1", attempts=0, progress={}, payload={"config": {
        "images": str(tmp_path), "trigger": "DeltamonStamp", "base": BUNDLED.name, "version": "v1"}})
    on = settings.model_copy(update={"projects_dir": projects})
    ctx = RecordingJobContext()
    result = make_training_handler(on, train_fn=train)(job, ctx)
    assert result["report"] == "report.json" and result["report_grid"] == "report.png"
    assert (copy / "report.json").is_file() and any("recommended weight" in m for _, m in ctx.logs)

    # turned off: no report; a broken LoRA: the job still succeeds and the log says why
    (copy / "report.json").unlink()
    off = make_training_handler(on.model_copy(update={"report_after_training": False}), train_fn=train)(job, RecordingJobContext())
    assert off["report"] is None and not (copy / "report.json").exists()
    lora.write_bytes(b"not a safetensors file")
    ctx = RecordingJobContext()
    broken = make_training_handler(on, train_fn=train)(job, ctx)
    assert broken["report"] is None and any(level == "WARNING" and "report not written" in m for level, m in ctx.logs)
