"""`make demo`: the whole story on the bundled small model, on a CPU, in minutes.

1. a labelled grid of what the base model draws;
2. a dataset of 12 transparent "sticker" pictures of a character it has never seen, and
   regularisation pictures the base draws for its own prompts (prior preservation);
3. a LoRA trained on them, with progress;
4. an X/Y grid of prompts × LoRA weights 0, 0.5, 1 through `<lora:NAME:w>`;
5. where everything is, and the concept score with and without the LoRA;
6. the LoRA report (weight sweep) and its recommended weight;
7. a `--to-folder` preview of the Hugging Face repo `lorastudio publish` would upload.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lorastudio.core.atomic import atomic_path
from lorastudio.core.settings import StudioSettings

BASE_PROMPTS = ["a red circle on a blue background", "a yellow square on a green background",
                "a blue triangle on a white background", "a green diamond on a black background"]
TRIGGER = "DeltamonStamp"
LORA_PROMPTS = [TRIGGER, f"{TRIGGER}, waving", f"{TRIGGER}, sticker"]
WEIGHTS = (0.0, 0.5, 1.0)
REG_PICTURES = 48


@dataclass
class DemoResult:
    workspace: Path
    base_grid: Path
    dataset: Path
    lora: Path
    xy_grid: Path
    concept_without: float
    concept_with: float
    seconds: dict[str, float] = field(default_factory=dict)
    report: dict | None = None
    hub_preview: Path | None = None


def run_demo(workspace: Path, *, steps: int = 300, reg_pictures: int = REG_PICTURES,
             say: Callable[[str], None] = print, on_training_event=None) -> DemoResult:
    from lorastudio.evaluation.scores import concept_score
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.generation.grids import image_grid
    from lorastudio.services.class_images import write_class_images
    from lorastudio.testing.shapes import random_captions
    from lorastudio.training.api import train
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    workspace = Path(workspace).resolve()
    models = workspace / "models"
    (models / "Lora").mkdir(parents=True, exist_ok=True)
    settings = StudioSettings(models_dir=models, outdir=workspace / "outputs", projects_dir=workspace / "projects")
    engine = GenerationEngine(settings)
    base = engine.default_checkpoint()
    model = engine.load(base.name)
    size = model.family.native_resolution(model.pipe)
    say(f"base model: {engine.catalog.title(base)} ({model.family.title}, {size}x{size} px)")
    seconds: dict[str, float] = {}

    # 1. what the base model draws
    t = time.monotonic()
    common = dict(width=size, height=size, steps=20, cfg_scale=5.0, sampler="DPM++ 2M", seed=100)
    rows = [[im.image for im in engine.txt2img({**common, "prompt": p, "batch_size": 4}).images] for p in BASE_PROMPTS]
    base_grid = _save(image_grid(rows, row_labels=BASE_PROMPTS, col_labels=[f"seed {100 + i}" for i in range(4)],
                                 title="base model"), workspace / "base-grid.png")
    seconds["base_grid"] = time.monotonic() - t
    say(f"1. base model grid: {base_grid}")

    # 2. a character the base has never seen
    dataset = workspace / "dataset"
    if not dataset.exists():
        draw_sticker_dataset(dataset, n=12, trigger=TRIGGER, seed=0, size=128)
    say(f"2. sticker dataset (12 transparent PNGs + captions): {dataset}")
    t = time.monotonic()
    reg = workspace / "reg"
    write_class_images(engine, random_captions(reg_pictures, seed=77), reg, seed=5000,
                       **{k: v for k, v in common.items() if k != "seed"})
    seconds["reg"] = time.monotonic() - t
    say(f"   {reg_pictures} regularisation pictures drawn by the base for its own prompts "
        f"(they keep the LoRA from changing what the base draws without the trigger): {reg}")

    # 3. the LoRA
    t = time.monotonic()
    result = train(dict(images=dataset, trigger=TRIGGER, base=base.name, models_dir=models,
                        projects_dir=settings.projects_dir, project="deltamon", steps=steps, batch_size=4,
                        rank=8, alpha=8.0, lr=1e-3, resolution=[size], seed=0, save_every=max(1, steps // 2),
                        sample_every=max(1, steps // 2), sample_steps=20,
                        reg_images=reg if reg_pictures else None), on_event=on_training_event)
    seconds["training"] = time.monotonic() - t
    lora = models / "Lora" / "deltamon.safetensors"
    with atomic_path(lora) as tmp:
        tmp.write_bytes(result.lora_path.read_bytes())
    say(f"3. LoRA: {result.lora_path} (copied to {lora})")

    # 4. prompts × weights
    t = time.monotonic()
    grid_rows, by_weight = [], {w: [] for w in WEIGHTS}
    for p in LORA_PROMPTS:
        row = []
        for w in WEIGHTS:
            im = engine.txt2img({**common, "prompt": f"{p} <lora:deltamon:{w:g}>", "seed": 7}).images[0].image
            row.append(im)
            by_weight[w].append(im)
        grid_rows.append(row)
    xy_grid = _save(image_grid(grid_rows, row_labels=LORA_PROMPTS, col_labels=[f"<lora:deltamon:{w:g}>" for w in WEIGHTS],
                               title="X: LoRA weight, Y: prompt"), workspace / "lora-xy-grid.png")
    seconds["xy_grid"] = time.monotonic() - t
    say(f"4. X/Y grid: {xy_grid}")

    # 5. did it learn?
    refs = [Image.open(p) for p in sorted(dataset.glob("*.png"))]
    without, with_ = concept_score(by_weight[0.0], refs), concept_score(by_weight[1.0], refs)
    say(f"5. concept score (similarity to the training pictures, 0..1): without LoRA {without:.3f}, "
        f"with LoRA {with_:.3f}")
    say(f"   outputs: {settings.outdir}   project: {result.version_dir}")

    # 6. the report: at which weight to use it
    from lorastudio.services.publish.publish import publish
    from lorastudio.services.report import summary_line, write_report

    t = time.monotonic()
    report = write_report(result.version_dir, settings, {"seeds": 1, "base_prompts": BASE_PROMPTS[:2]})
    seconds["report"] = time.monotonic() - t
    say(f"6. LoRA report: {result.version_dir / 'report.json'} and report.png")
    say(f"   {summary_line(report)}")

    # 7. what `lorastudio publish` would upload, written locally (no network)
    preview = workspace / "hub-preview"
    published = publish(result.version_dir, {"repo": "your-name/deltamon", "to_folder": preview,
                                             "description": "DeltamonStamp stickers, trained with `make demo`."})
    say(f"7. Hugging Face repo preview ({len(published.files)} files, {published.total_bytes / 1e6:.1f} MB): {preview}")
    say(f"   publish it: lorastudio publish {result.version_dir} --repo YOUR-NAME/deltamon")
    return DemoResult(workspace, base_grid, dataset, result.lora_path, xy_grid, without, with_, seconds,
                      report=report, hub_preview=preview)


def _save(img: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
