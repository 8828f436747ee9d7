"""The model card (README.md) of a published LoRA, written with huggingface_hub's ModelCard /
ModelCardData so that the YAML is exactly what the Hub parses."""

from __future__ import annotations

import re
from pathlib import Path

from lorastudio.services.publish.known_bases import BY_HUB_ID, BY_SHA256, KnownBase, architecture_tag
from lorastudio.services.publish.options import PublishOptions
from lorastudio.services.publish.repo_files import RepoFiles

TABLE_KEYS = ("base", "steps", "epochs", "batch_size", "grad_accum", "resolution", "rank", "alpha", "lr", "te_lr",
              "train_text_encoder", "optimizer", "lr_scheduler", "warmup", "min_snr_gamma", "noise_offset",
              "mixed_precision", "seed", "class_word", "reg_images", "prior_loss_weight")


def base_model(metadata: dict[str, str], options: PublishOptions) -> tuple[str | None, KnownBase | None, str]:
    """(Hub id or None, the known base or None, how it was found)."""
    sha = (metadata.get("ss_new_sd_model_hash") or "").lower()
    known = BY_SHA256.get(sha)
    if known is not None:
        return known.hub_id, known, f"recognised by the SHA-256 of the base file ({sha[:10]}…)"
    if options.base_model_id:
        return options.base_model_id, BY_HUB_ID.get(options.base_model_id.lower()), "given with --base-model-id"
    return None, None, ("not stated: the base file is not one of the known published ones "
                        "(SD 1.5, SDXL 1.0 base, FLUX.1 dev / schnell); pass --base-model-id")


def build_card(*, name: str, config: dict, report: dict | None, metadata: dict[str, str], files: RepoFiles,
               options: PublishOptions) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    from lorastudio.core.infotext import parse_infotext
    from lorastudio.core.png_text import read_infotext

    trigger = config["trigger"]
    hub_id, known, how = base_model(metadata, options)
    license_id = options.license or (known.license if known else None)
    extra: dict = {}
    if license_id == "other" and known is not None and known.license_name:
        extra = {"license_name": known.license_name, "license_link": known.license_link}
    arch = metadata.get("modelspec.architecture", "")
    tags = ["text-to-image", "lora", "diffusers", "template:sd-lora"]
    if (t := architecture_tag(arch)) is not None:
        tags.append(t)

    widgets = []
    for path in sorted(p for p in files.files if p.startswith("images/samples/") or p.startswith("images/report/w")):
        if path.startswith("images/report/") and not _gallery_report_picture(path, report):
            continue
        src = files.files[path]
        text = read_infotext(src) if isinstance(src, Path) else None
        prompt = str(parse_infotext(text).get("Prompt", "")) if text else ""
        prompt = re.sub(r"\s*<(lora|lyco):[^>]*>", "", prompt).strip()
        widgets.append({"text": prompt or trigger, "output": {"url": path}})

    weight = (report or {}).get("recommended_weight")
    shown_weight = weight if weight is not None else 1.0
    data = ModelCardData(base_model=hub_id, license=license_id, instance_prompt=trigger, tags=tags,
                         widget=widgets or None, **extra)
    lines = []
    if options.description.strip():
        lines += [options.description.strip(), ""]
    lines += [f"# {name}", "", f"A LoRA trained with lorastudio. Trigger word: `{trigger}`.", ""]
    lines += ["## Base model", "", f"`{hub_id}` ({how})." if hub_id else f"Base model {how}.",
              f"The file it was trained on: `{config.get('base', '?')}`.", ""]
    if license_id is None:
        lines += ["Licence: not stated (the base model is unknown; pass --license).", ""]
    lines += ["## Trigger words", "", f"Use `{trigger}` in the prompt.", ""]
    lines += ["## Recommended weight", ""]
    if weight is not None:
        lines += [f"**{weight:g}** — {report['recommendation']['reason']}.", ""]
    elif report is not None:
        lines += [f"None: {report['recommendation']['verdict']} ({report['recommendation']['reason']}).", ""]
    else:
        lines += ["No report was made for this LoRA; 1.0 is the usual starting point.", ""]
    lines += ["## Use it", "", "**A1111 / Forge**: put `" + f"{name}.safetensors` in `models/Lora` and add this to the prompt:", "",
              f"```\n{trigger} <lora:{name}:{shown_weight:g}>\n```", "",
              f"**ComfyUI**: put `{name}.safetensors` in `models/loras` and load it with a *LoraLoader* node "
              f"(strength_model {shown_weight:g}).", "",
              "**diffusers**:", "", "```python", "import torch", "from diffusers import AutoPipelineForText2Image", "",
              f"pipe = AutoPipelineForText2Image.from_pretrained(\"{hub_id or 'BASE_MODEL_ID'}\", torch_dtype=torch.float16)",
              f"pipe.load_lora_weights(\"{options.repo}\")",
              f"pipe.fuse_lora(lora_scale={shown_weight:g})",
              f"image = pipe(\"{trigger}\").images[0]", "```", ""]
    lines += ["## Training settings", "", "| setting | value |", "|---|---|"]
    for key in TABLE_KEYS:
        if config.get(key) is not None:
            lines.append(f"| {key} | {_cell(config[key])} |")
    lines.append("")
    if report is not None:
        lines += ["## Weight sweep", "", "![weight sweep](images/report.png)", "",
                  "| weight | concept score | base preservation |", "|---|---|---|"]
        by_c, by_p = report["concept_score"]["by_weight"], report["base_preservation"]["by_weight"]
        lines += [f"| {w} | {by_c[w]} | {by_p.get(w, '')} |" for w in by_c]
        lines += ["", f"Concept score: {report['concept_score']['method']}.", "",
                  f"Base preservation: {report['base_preservation']['method']}.", ""]
        note = (report.get("steps") or {}).get("note")
        if note:
            lines += [f"Over the training steps: {note}.", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return str(ModelCard(content))


def _gallery_report_picture(path: str, report: dict | None) -> bool:
    """Report pictures in the gallery: the trigger prompts, first seed, at the recommended weight."""
    if not report or report.get("recommended_weight") is None:
        return False
    n_trigger = len(report["prompts"]["with_trigger"])
    stem = Path(path).stem  # w1.00-p0-s0
    want = f"w{report['recommended_weight']:.2f}-"
    return stem.startswith(want) and stem.endswith("-s0") and int(stem.split("-p")[1].split("-")[0]) < n_trigger


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")
