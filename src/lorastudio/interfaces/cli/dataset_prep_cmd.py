"""`lorastudio dataset caption | mask | contact`: prepare a dataset with local models, offline.

Registered by app.py (`dataset_prep_cmd.register(dataset_app)`); importing this module imports
no torch and no onnxruntime: the commands import what they need when they run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from lorastudio.core.settings import default_models_dir


def _models_dir(models_dir: Optional[Path]) -> Path:
    return models_dir or default_models_dir(os.environ)


def register(dataset_app: typer.Typer) -> None:
    _register_caption(dataset_app)
    _register_mask(dataset_app)
    _register_sheet_and_crop(dataset_app)


def _register_caption(dataset_app: typer.Typer) -> None:
    @dataset_app.command("caption")
    def caption(
        source: Path = typer.Argument(..., help="Folder or .zip of pictures"),
        tagger: Optional[str] = typer.Option(None, "--tagger", help="WD14 tagger folder, or a name under models/interrogators/"),
        captioner: Optional[str] = typer.Option(None, "--captioner", help="BLIP / Florence-2 folder, or a name under models/interrogators/"),
        mode: Optional[str] = typer.Option(None, "--mode", help="tags | caption | both [what the given models allow]"),
        trigger: Optional[str] = typer.Option(None, "--trigger", help="Trigger word, put first in every caption"),
        prefix: Optional[str] = typer.Option(None, "--prefix", help="Text put first, as written [the trigger word]"),
        suffix: Optional[str] = typer.Option(None, "--suffix", help="Text put last, as written"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace caption files that already exist"),
        dry_run: bool = typer.Option(False, "--dry-run", help="Show the captions, write nothing"),
        general_threshold: float = typer.Option(0.35, "--general-threshold"),
        character_threshold: float = typer.Option(0.85, "--character-threshold"),
        keep_rating: bool = typer.Option(False, "--keep-rating", help="Keep the most likely rating tag"),
        max_tags: Optional[int] = typer.Option(None, "--max-tags"),
        blacklist: Optional[list[str]] = typer.Option(None, "--blacklist", help="A tag never written (repeatable)"),
        whitelist: Optional[list[str]] = typer.Option(None, "--whitelist", help="Only these tags are written (repeatable)"),
        task_prompt: Optional[str] = typer.Option(None, "--task-prompt", help="Captioner prompt (Florence-2 task, BLIP prefix)"),
        max_length: int = typer.Option(40, "--max-length", help="Most tokens the captioner writes"),
        out: Optional[Path] = typer.Option(None, "--out", help="For a zip: the folder it is extracted to and captioned in"),
        models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="models folder (default: ./models or $LORASTUDIO_MODELS_DIR)"),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object"),
    ):
        """Write `<image>.txt` captions from a local WD14 tagger and/or BLIP / Florence-2 captioner."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.core.params import build_model
        from lorastudio.interfaces.cli.app import _fail
        from lorastudio.services.captioning import caption_dataset
        from lorastudio.training.dataset.caption_options import CaptionOptions

        try:
            options = build_model(CaptionOptions, {
                "tagger": tagger, "captioner": captioner, "mode": mode, "prefix": prefix, "suffix": suffix,
                "overwrite": overwrite, "task_prompt": task_prompt, "max_length": max_length,
                "wd14": {"general_threshold": general_threshold, "character_threshold": character_threshold,
                         "keep_rating": keep_rating, "max_tags": max_tags, "blacklist": tuple(blacklist or ()),
                         "whitelist": tuple(whitelist or ())}})
            run = caption_dataset(source, options, models_dir=_models_dir(models_dir), trigger=trigger,
                                  out_dir=out, dry_run=dry_run)
        except LorastudioError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps(run.summary(), ensure_ascii=False))
        else:
            typer.echo(run.preview())
            typer.echo("")
            typer.echo(run.frequency_text())
            verb = "would write" if dry_run else "wrote"
            typer.echo(f"{verb} {len(run.plan.to_write)} caption(s) in {run.root}; "
                       f"kept {sum(e.action == 'keep' for e in run.plan.entries)} existing")
        for msg in run.plan.failures:
            typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        if run.plan.failures:
            raise typer.Exit(1)


def _register_mask(dataset_app: typer.Typer) -> None:
    @dataset_app.command("mask")
    def mask(
        folder: Path = typer.Argument(..., help="Folder or .zip of pictures"),
        model: Optional[str] = typer.Option(None, "--model", help="u2net-family .onnx file, or a name in models/rembg/ "
                                                                 "or ~/.u2net (u2net, u2netp, isnet-anime...)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace masks that already exist"),
        out: Optional[Path] = typer.Option(None, "--out", help="For a zip: the folder it is extracted to and masked in"),
        models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="models folder (default: ./models or $LORASTUDIO_MODELS_DIR)"),
    ):
        """Write `<image>.mask.png` subject masks (alpha when the picture has it) for --masked-loss."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.interfaces.cli.app import _fail
        from lorastudio.services.masking import mask_dataset

        try:
            run = mask_dataset(folder, model=model, models_dir=_models_dir(models_dir), overwrite=overwrite,
                               u2net_home=os.environ.get("U2NET_HOME"), out_dir=out)
        except LorastudioError as exc:
            _fail(exc)
        for r in run.results:
            typer.echo(f"{r.mask}  ({r.source})")
        for msg in run.failures:
            typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        if run.failures:
            raise typer.Exit(1)


def _register_sheet_and_crop(dataset_app: typer.Typer) -> None:
    @dataset_app.command("contact")
    def contact(
        folder: Path = typer.Argument(..., help="Folder of pictures (+ captions, masks)"),
        out: Optional[Path] = typer.Option(None, "--out", help="PNG to write [FOLDER-contact.png beside the folder]"),
        columns: int = typer.Option(4, "--columns", min=1, max=64),
    ):
        """A contact sheet of pictures, masks and captions (written beside the folder, so it is never trained on)."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.interfaces.cli.app import _fail
        from lorastudio.training.dataset.contact_sheet import write_contact_sheet

        target = out or folder.resolve().with_name(folder.resolve().name + "-contact.png")
        try:
            write_contact_sheet(folder, target, columns=columns)
        except LorastudioError as exc:
            _fail(exc)
        typer.echo(str(target))

    @dataset_app.command("crop")
    def crop(
        folder: Path = typer.Argument(..., help="Folder or .zip of pictures"),
        out: Path = typer.Option(..., "--out", help="Folder the cropped pictures (+ captions, masks) go to"),
        resolution: int = typer.Option(512, "--resolution", help="Base resolution of the buckets"),
        step: int = typer.Option(64, "--bucket-step"),
    ):
        """Crop each picture to its training bucket, centred on the subject (mask or alpha)."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.interfaces.cli.app import _fail
        from lorastudio.training.dataset.crops import crop_folder

        try:
            results = crop_folder(folder, out, resolution=resolution, step=step)
        except LorastudioError as exc:
            _fail(exc)
        for r in results:
            typer.echo(f"{r.target}  {r.bucket.label}")
