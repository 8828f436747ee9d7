"""`lorastudio` command line. Importing this module must not import torch: heavy engines are
imported inside the commands that need them, so `lorastudio --help` stays instant."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from lorastudio.core.errors import LorastudioError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train LoRA adapters and generate images, locally (SD 1.x, SDXL, FLUX.1).")

ModelsDir = typer.Option(None, "--models-dir", help="A1111/Forge `models` folder (default: ./models or $LORASTUDIO_MODELS_DIR)")


def _settings(models_dir: Optional[Path] = None, outdir: Optional[Path] = None, **extra):
    from lorastudio.core.settings import StudioSettings

    values = {"models_dir": models_dir or Path(os.environ.get("LORASTUDIO_MODELS_DIR", "models"))}
    if outdir is not None:
        values["outdir"] = outdir
    values.update({k: v for k, v in extra.items() if v is not None})
    return StudioSettings(**values)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def generate(
    prompt: str = typer.Argument("", help="Prompt, with A1111 syntax: (word:1.2), [word], BREAK, <lora:name:0.8>"),
    negative: str = typer.Option("", "--negative", "-n", help="Negative prompt"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint name, title, short hash or path"),
    models_dir: Optional[Path] = ModelsDir,
    steps: Optional[int] = typer.Option(None, help="Sampling steps [20]"),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="CFG scale [7]"),
    sampler: Optional[str] = typer.Option(None, help="A1111 sampler name, e.g. 'DPM++ 2M' or 'DPM++ 2M Karras'"),
    scheduler: Optional[str] = typer.Option(None, help="Schedule type: Automatic, Karras, Exponential, SGM Uniform"),
    seed: Optional[int] = typer.Option(None, help="Seed; -1 draws a random one [-1]"),
    width: Optional[int] = typer.Option(None, help="Width, a multiple of 8"),
    height: Optional[int] = typer.Option(None, help="Height, a multiple of 8"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch"),
    batch_count: Optional[int] = typer.Option(None, "--batch-count", help="Number of batches"),
    clip_skip: Optional[int] = typer.Option(None, "--clip-skip", help="CLIP skip (A1111 numbering: 1 = none)"),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="FLUX distilled guidance [3.5]"),
    vae: Optional[str] = typer.Option(None, "--vae", help="VAE from models/VAE"),
    outdir: Optional[Path] = typer.Option(None, "--outdir", help="Output root [outputs]"),
    from_png: Optional[Path] = typer.Option(None, "--from-png", help="Reproduce the image whose infotext this PNG holds"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | mps"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow .ckpt/.pt (loaded with weights_only=True)"),
    controlnet: Optional[list[str]] = typer.Option(None, "--controlnet", help="ControlNet model from models/ControlNet (repeatable)"),
    control_image: Optional[list[Path]] = typer.Option(None, "--control-image", help="Its control picture (one per --controlnet)"),
    control_module: Optional[list[str]] = typer.Option(None, "--control-module", help="Preprocessor: none, canny, invert, ... [none]"),
    control_weight: Optional[list[float]] = typer.Option(None, "--control-weight", help="ControlNet weight [1]"),
):
    """txt2img with the A1111 conventions; every PNG carries its `parameters` text."""
    try:
        from lorastudio.core.params import validate_params

        values: dict = {}
        if from_png is not None:
            values.update(_params_from_png(from_png))
        if prompt:
            values["prompt"] = prompt
        given = {"negative_prompt": negative or None, "model": model, "steps": steps, "cfg_scale": cfg,
                 "sampler": sampler, "scheduler": scheduler, "seed": seed, "width": width, "height": height,
                 "batch_size": batch_size, "batch_count": batch_count, "clip_skip": clip_skip,
                 "guidance": guidance, "vae": vae}
        values.update({k: v for k, v in given.items() if v is not None})
        params = validate_params(values)
        settings = _settings(models_dir, outdir, device=device, allow_pickle=allow_pickle or None)

        from lorastudio.generation.engine import GenerationEngine
        from lorastudio.interfaces.cli.progress import step_progress

        from lorastudio.interfaces.cli.controlnet_opts import controlnet_units

        units = controlnet_units(controlnet, control_image, control_module, control_weight, from_png)
        engine = GenerationEngine(settings)
        with step_progress(params.steps * params.batch_count) as advance:
            result = engine.txt2img(params, on_progress=advance, **({"controlnet": units} if units else {}))
    except LorastudioError as exc:
        _fail(exc)
    for im in result.images:
        typer.echo(f"{im.path}  seed={im.seed}")
    if result.interrupted:
        typer.echo("interrupted")


def _params_from_png(path: Path) -> dict:
    from lorastudio.core.errors import InvalidParameter
    from lorastudio.core.infotext_params import params_from_infotext
    from lorastudio.core.png_text import read_infotext

    text = read_infotext(path)
    if not text:
        raise InvalidParameter("--from-png", str(path), "the image has no A1111 parameters text")
    return params_from_infotext(text)


@app.command()
def info(image: Path = typer.Argument(..., help="A PNG (or JPEG/WebP) written by lorastudio, A1111, Forge…"),
         as_json: bool = typer.Option(False, "--json", help="Fields exactly as A1111's parser returns them")):
    """Print the generation parameters stored in an image."""
    from lorastudio.core.infotext import parse_infotext
    from lorastudio.core.png_text import read_infotext

    try:
        text = read_infotext(image)
    except (OSError, LorastudioError) as exc:
        _fail(exc)
    if not text:
        _fail(LorastudioError(f"{image}: no parameters text found"))
    if as_json:
        typer.echo(json.dumps(parse_infotext(text), ensure_ascii=False, indent=2))
    else:
        typer.echo(text)


@app.command()
def models(models_dir: Optional[Path] = ModelsDir,
           no_hash: bool = typer.Option(False, "--no-hash", help="Do not hash files that are not in the cache yet")):
    """List checkpoints (with A1111 titles), LoRAs, VAEs and embeddings."""
    from lorastudio.models.catalog import Catalog
    from lorastudio.models.formats.checkpoint_facts import listing_summary
    from lorastudio.core.paths import ModelsRoot

    settings = _settings(models_dir)
    cat = Catalog(ModelsRoot.at(settings.models_dir), include_bundled=settings.include_bundled)
    typer.echo(f"models root: {cat.root.root}")
    for head, entries in (("Checkpoints", cat.checkpoints()), ("LoRA", cat.loras()), ("VAE", cat.vaes()),
                          ("Embeddings", cat.embeddings())):
        typer.echo(f"{head}:")
        for e in entries:
            if head == "Checkpoints":
                # storage dtype (fp8 / fp16 / ...) and how the file is read, from its header alone
                typer.echo(f"  {cat.title(e, compute=not no_hash)}  ({listing_summary(e.path)})")
            else:
                typer.echo(f"  {e.name}")
        if not entries:
            typer.echo("  (none)")


@app.command()
def train(
    config_file: Optional[Path] = typer.Argument(None, help="A TOML file with the same settings (flags override it)"),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder or .zip of pictures (+ same-name .txt captions)"),
    trigger: Optional[str] = typer.Option(None, "--trigger", help="Trigger word, e.g. DeltamonStamp"),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: name, title, hash or path"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    repeats: Optional[int] = typer.Option(None, "--repeats"),
    resolution: Optional[list[int]] = typer.Option(None, "--resolution", help="One or several, e.g. --resolution 512 --resolution 768"),
    rank: Optional[int] = typer.Option(None, "--rank"),
    alpha: Optional[float] = typer.Option(None, "--alpha"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    te_lr: Optional[float] = typer.Option(None, "--te-lr", help="Text-encoder learning rate"),
    train_text_encoder: Optional[bool] = typer.Option(None, "--train-text-encoder/--no-train-text-encoder"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adamw | adamw8bit | lion | prodigy | adafactor"),
    lr_scheduler: Optional[str] = typer.Option(None, "--lr-scheduler", help="constant | cosine | linear | constant_with_warmup"),
    warmup: Optional[int] = typer.Option(None, "--warmup"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum"),
    save_every: Optional[int] = typer.Option(None, "--save-every"),
    sample_every: Optional[int] = typer.Option(None, "--sample-every"),
    sample_prompt: Optional[list[str]] = typer.Option(None, "--sample-prompt"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    project: Optional[str] = typer.Option(None, "--project"),
    version: Optional[str] = typer.Option(None, "--version"),
    projects_dir: Optional[Path] = typer.Option(None, "--projects-dir"),
    models_dir: Optional[Path] = ModelsDir,
    resume: bool = typer.Option(False, "--resume", help="Continue from the last complete checkpoint"),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="Leave out pictures with problems"),
    class_word: Optional[str] = typer.Option(None, "--class-word", help='Added after the trigger in default captions ("sticker")'),
    reg_images: Optional[Path] = typer.Option(None, "--reg-images",
                                              help="Regularisation pictures of the class (folder or zip; captions as written, no trigger)"),
    prior_loss_weight: Optional[float] = typer.Option(None, "--prior-loss-weight", help="Loss weight of regularisation pictures [1.0]"),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", help="Data-parallel processes (accelerate)"),
):
    """Train a LoRA from a folder or zip of pictures."""
    from lorastudio.training.config import load_toml, training_config

    try:
        data: dict = load_toml(config_file).model_dump(exclude_unset=True) if config_file else {}
        flags = {"images": images, "trigger": trigger, "base": base, "steps": steps, "epochs": epochs,
                 "repeats": repeats, "resolution": resolution or None, "rank": rank, "alpha": alpha, "lr": lr,
                 "te_lr": te_lr, "train_text_encoder": train_text_encoder, "optimizer": optimizer,
                 "lr_scheduler": lr_scheduler, "warmup": warmup, "batch_size": batch_size, "grad_accum": grad_accum,
                 "save_every": save_every, "sample_every": sample_every, "sample_prompts": sample_prompt or None,
                 "seed": seed, "project": project, "version": version, "projects_dir": projects_dir,
                 "models_dir": models_dir or (None if "models_dir" in data else
                                              Path(os.environ.get("LORASTUDIO_MODELS_DIR", "models"))),
                 "num_processes": num_processes, "class_word": class_word, "reg_images": reg_images,
                 "prior_loss_weight": prior_loss_weight}
        data.update({k: v for k, v in flags.items() if v is not None})
        if resume:
            data["resume"] = True
        if skip_bad_images:
            data["skip_bad_images"] = True
        config = training_config(data)
        if config.num_processes > 1 and "LOCAL_RANK" not in os.environ:
            _relaunch_with_accelerate(config)
            return
        from lorastudio.interfaces.cli.progress import TrainingProgress
        from lorastudio.training.api import train as run_training

        with TrainingProgress() as progress:
            result = run_training(config, on_event=progress)
    except LorastudioError as exc:
        _fail(exc)
    typer.echo(f"LoRA (A1111/Forge/ComfyUI): {result.lora_path}")
    typer.echo(f"LoRA (diffusers/PEFT):      {result.diffusers_lora_dir}")
    typer.echo(f"config:                     {result.config_path}")


def _relaunch_with_accelerate(config) -> None:
    """`--num-processes N`: one process per device under torch's launcher; accelerate reads its
    environment (NCCL on GPUs, gloo on CPUs), so there is no home-made distribution code."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        fh.write(config.model_dump_json())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(config.num_processes), "-m", "lorastudio.training.launch", fh.name]
    raise typer.Exit(subprocess.call(cmd))


dataset_app = typer.Typer(help="Inspect a training dataset.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("check")
def dataset_check(
    source: Path = typer.Argument(..., help="Folder or .zip of pictures"),
    trigger: str = typer.Option("sks", "--trigger", help="Trigger word (decides default captions)"),
    resolution: list[int] = typer.Option([512], "--resolution"),
):
    """Report every problem in a dataset (per file) and the bucket plan, without training."""
    from lorastudio.training.dataset.checks import check_dataset
    from lorastudio.training.dataset.config import dataset_config
    from lorastudio.training.dataset.ingest import open_source

    try:
        cfg = dataset_config({"trigger_word": trigger, "resolutions": resolution})
        with open_source(source) as src:
            report = check_dataset(src, cfg)
    except LorastudioError as exc:
        _fail(exc)
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def demo(workspace: Path = typer.Option(Path("demo"), "--workspace", help="Where the demo writes everything"),
         steps: int = typer.Option(300, "--steps", help="LoRA training steps")):
    """Run the whole story on the bundled small model: generate, train a LoRA, compare."""
    from lorastudio.interfaces.cli.progress import TrainingProgress
    from lorastudio.services.demo import run_demo

    try:
        with TrainingProgress() as progress:
            run_demo(workspace, steps=steps, say=typer.echo, on_training_event=progress)
    except LorastudioError as exc:
        _fail(exc)


def _register_optional_commands() -> None:
    from lorastudio.interfaces.cli import img2img_cmd, serve_cmd, upscale_cmd

    img2img_cmd.register(app)
    serve_cmd.register(app)
    upscale_cmd.register(app)


_register_optional_commands()


def main() -> None:
    try:
        app()
    except LorastudioError as exc:  # pragma: no cover - safety net for commands that forget
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
