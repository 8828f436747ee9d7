"""`lorastudio report VERSION_DIR`: the weight sweep behind report.json / report.png.

Weights 0, 0.25 … 1.25 × prompts (the trigger alone, the sample prompts or two defaults with
the trigger, two prompts without it), the same seeds in every cell. Every picture is kept in
`report/` with its infotext; the measures are those of `lorastudio.evaluation.report`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from pydantic import BaseModel, ConfigDict, Field

from lorastudio.core.atomic import atomic_path, atomic_write_text
from lorastudio.core.errors import InvalidParameter
from lorastudio.core.settings import StudioSettings

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
DEFAULT_BASE_PROMPTS = ("a red circle on a blue background", "a yellow square on a green background")


class ReportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: tuple[float, ...] = Field(WEIGHTS, description="LoRA weights swept; 0 is the base")
    seeds: int = Field(2, ge=1, le=16, description="Seeds per prompt, the same in every cell")
    seed: int = Field(1000, ge=0)
    steps: int = Field(20, ge=1, le=200)
    base_prompts: tuple[str, ...] = Field(DEFAULT_BASE_PROMPTS, description="Prompts without the trigger")
    scorer: str = Field("auto", pattern="^(auto|clip|pixel)$",
                        description="auto: CLIP vision from models/clip_vision/ when present, else pixel")


def report_options(data: dict | ReportOptions | None) -> ReportOptions:
    from lorastudio.core.params import build_model

    return data if isinstance(data, ReportOptions) else build_model(ReportOptions, data or {})


def read_version(version_dir: Path) -> tuple[dict, Path]:
    """The run's config.json and its kohya LoRA, or InvalidParameter naming what is missing."""
    version_dir = Path(version_dir)
    cfg_path = version_dir / "config.json"
    if not cfg_path.is_file():
        raise InvalidParameter("version_dir", str(version_dir), "no config.json: not a training version folder")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidParameter("config.json", str(cfg_path), f"unreadable: {exc}") from None
    name = config.get("output_name") or config.get("project") or version_dir.parent.parent.name
    lora = version_dir / f"{name}.safetensors"
    if not lora.is_file():
        raise InvalidParameter("version_dir", str(version_dir), f"no LoRA file {lora.name}")
    return config, lora


def trigger_prompts(config: dict) -> list[str]:
    from lorastudio.core.prompt_syntax import escape_prompt_text

    trigger = escape_prompt_text(config["trigger"])
    samples = [p for p in config.get("sample_prompts") or [] if p.strip()]
    return [trigger] + (samples or [f"{trigger}, simple background", f"{trigger}, full body"])


def write_report(version_dir: Path, settings: StudioSettings, options: ReportOptions | dict | None = None, *,
                 say: Callable[[str], None] = lambda s: None, models_dir: Path | None = None) -> dict:
    """Run the sweep, write report.json, report.png and report/*.png; return the report.
    The base is looked up in `models_dir`, else the models folder the run trained with."""
    from PIL import Image

    from lorastudio.core.hashes import lora_hash_for_infotext
    from lorastudio.core.params import GenerationParams
    from lorastudio.core.png_text import write_png_with_infotext
    from lorastudio.core.safetensors_header import read_header
    from lorastudio.evaluation.report import concept_by_weight, recommend
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.generation.grids import image_grid
    from lorastudio.generation.txt2img import run_txt2img
    from lorastudio.lora.activation import LoraState, activate, tags_to_active

    opts = report_options(options)
    started = time.monotonic()
    version_dir = Path(version_dir).resolve()
    config, lora_path = read_version(version_dir)
    read_header(lora_path)  # a broken file fails here, before a model loads
    refs = [Image.open(p) for p in sorted((version_dir / "dataset").glob("*.png"))]
    if not refs:
        raise InvalidParameter("version_dir", str(version_dir), "no training pictures in dataset/")
    models_dir = Path(models_dir or config.get("models_dir") or settings.models_dir)
    engine = GenerationEngine(settings.model_copy(update={"models_dir": models_dir}))
    model = engine.load(config["base"])
    scorer = _scorer(opts.scorer, engine.root.root, engine.device)
    size = int((config.get("resolution") or [512])[0])

    name = re.sub(r"[^\w.-]", "_", lora_path.stem)
    short = lora_hash_for_infotext(lora_path)
    state = LoraState()

    def activate_loras(tags):
        # every <lora:…> tag of the sweep names this version's file, not one from models/Lora
        active = tags_to_active(tags, lambda _name: SimpleNamespace(path=lora_path), lambda _path: short)
        activate(model.pipe, model.family, active, state, fuse=settings.lora_mode == "fused",
                 allow_pickle=settings.allow_pickle)
        return active

    with_trigger = trigger_prompts(config)
    prompts = [(p, True) for p in with_trigger] + [(p, False) for p in opts.base_prompts]
    pictures = version_dir / "report"
    pictures.mkdir(exist_ok=True)
    images: dict[tuple[float, int], list] = {}
    files: list[str] = []
    for w in opts.weights:
        for i, (prompt, _) in enumerate(prompts):
            params = GenerationParams(prompt=f"{prompt} <lora:{name}:{w:g}>", steps=opts.steps, seed=opts.seed + 10 * i,
                                      width=size, height=size, cfg_scale=model.family.default_cfg,
                                      sampler=model.family.default_sampler, batch_size=opts.seeds)
            result = run_txt2img(model, params, activate_loras=activate_loras, model_hash=None, save_to=None)
            images[(w, i)] = [im.image for im in result.images]
            for k, im in enumerate(result.images):
                path = pictures / f"w{w:.2f}-p{i}-s{k}.png"
                write_png_with_infotext(im.image, path, im.infotext)
                files.append(path.relative_to(version_dir).as_posix())
    activate(model.pipe, model.family, [], state, fuse=settings.lora_mode == "fused")
    say(f"report: {len(files)} pictures drawn")

    trig = [i for i, (_, t) in enumerate(prompts) if t]
    plain = [i for i, (_, t) in enumerate(prompts) if not t]
    per_image = {w: scorer.best_match([im for i in trig for im in images[(w, i)]], refs) for w in opts.weights}
    concept = concept_by_weight(per_image)
    base_imgs = [im for i in plain for im in images[(0.0, i)]]
    preservation = {w: sum(s := scorer.pairwise([im for i in plain for im in images[(w, i)]], base_imgs)) / len(s)
                    for w in opts.weights}
    recommendation = recommend(concept, preservation)
    steps = _step_scores(version_dir / "samples", refs, scorer)

    grid = image_grid([[images[(w, i)][0] for w in opts.weights] for i in range(len(prompts))],
                      row_labels=[p for p, _ in prompts],
                      col_labels=[f"w {w:g}: c {concept[w]:.2f}" for w in opts.weights],
                      title=f"{lora_path.name}: LoRA weight (concept score) x prompt, seed {opts.seed}+")
    with atomic_path(version_dir / "report.png") as tmp:
        grid.save(tmp, format="PNG")
    report = {
        "lora": lora_path.name,
        "base": config["base"],
        "trigger": config["trigger"],
        "weights": list(opts.weights),
        "prompts": {"with_trigger": with_trigger, "without_trigger": list(opts.base_prompts)},
        "seeds": [opts.seed + 10 * i + k for i in range(len(prompts)) for k in range(opts.seeds)],
        "generation": {"steps": opts.steps, "size": size, "sampler": model.family.default_sampler,
                       "cfg_scale": model.family.default_cfg},
        "concept_score": {"method": scorer.describe, "scorer": scorer.name,
                          "by_weight": {f"{w:g}": round(v, 4) for w, v in concept.items()}},
        "base_preservation": {"method": f"{scorer.name} similarity of each trigger-free image at weight w to the same "
                                        f"prompt and seed at weight 0 (1 = unchanged), mean over images",
                              "by_weight": {f"{w:g}": round(v, 4) for w, v in preservation.items()}},
        "recommendation": recommendation,
        "recommended_weight": recommendation["recommended_weight"],
        "steps": steps,
        "pictures": files,
        "grid": "report.png",
        "seconds": round(time.monotonic() - started, 1),
    }
    atomic_write_text(version_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    say(f"report: {version_dir / 'report.json'} ({_summary(report)})")
    return report


def _summary(report: dict) -> str:
    rec = report["recommendation"]
    if rec["recommended_weight"] is not None:
        return f"recommended weight {rec['recommended_weight']:g}"
    return rec["verdict"]


def summary_line(report: dict) -> str:
    """One line for people: the recommended weight, or why there is none."""
    rec = report["recommendation"]
    name = Path(report["lora"]).stem
    if rec["recommended_weight"] is not None:
        return f"recommended weight: {rec['recommended_weight']:g}  (<lora:{name}:{rec['recommended_weight']:g}>; {rec['reason']})"
    return f"no recommended weight: {rec['verdict']} ({rec['reason']})"


def _scorer(kind: str, models_dir: Path, device: str):
    from lorastudio.evaluation.clip_vision import clip_scorer, find_clip_vision
    from lorastudio.evaluation.report import pixel_scorer

    if kind == "pixel":
        return pixel_scorer()
    folder = find_clip_vision(models_dir)
    if folder is None:
        if kind == "clip":
            raise InvalidParameter("scorer", "clip", f"no CLIP vision model folder in {models_dir / 'clip_vision'}")
        return pixel_scorer()
    return clip_scorer(folder, device)


def _step_scores(samples: Path, refs, scorer) -> dict:
    from PIL import Image

    from lorastudio.evaluation.report import step_progress

    by_step: dict[int, list] = {}
    for p in sorted(samples.glob("step-*.png")) if samples.is_dir() else []:
        m = re.match(r"step-(\d+)-", p.name)
        if m:
            by_step.setdefault(int(m.group(1)), []).append(Image.open(p))
    scores = {s: sum(v := scorer.best_match(ims, refs)) / len(v) for s, ims in by_step.items()}
    return step_progress(scores)
