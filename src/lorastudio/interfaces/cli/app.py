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
from lorastudio.interfaces.cli.memory import GENERATE_HINT, TRAIN_HINT, out_of_memory_message
from lorastudio.interfaces.cli.options_from_model import GroupedCommand, with_model_options
from lorastudio.interfaces.cli.quiet import library_output, verbose_option

# rich_markup_mode=None: help texts are plain text, so A1111 syntax such as `[word]` is shown as
# written instead of being taken for a rich style tag and dropped.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Train LoRA adapters and generate images, locally (SD 1.x, SDXL, FLUX.1).")

ModelsDir = typer.Option(None, "--models-dir", help="A1111/Forge `models` folder (default: ./models or $LORASTUDIO_MODELS_DIR)")


def _settings(models_dir: Optional[Path] = None, outdir: Optional[Path] = None, **extra):
    from lorastudio.core.params import build_model
    from lorastudio.core.settings import StudioSettings, default_models_dir

    values = {"models_dir": models_dir or default_models_dir(os.environ)}
    if outdir is not None:
        values["outdir"] = outdir
    values.update({k: v for k, v in extra.items() if v is not None})
    return build_model(StudioSettings, values)  # a bad value is a usage error naming the flag


def _check_path_arg(field: str, path: Path) -> None:
    """A path argument whose parts fit the filesystem (255 bytes each), as a usage error."""
    from lorastudio.core.errors import InvalidParameter
    from lorastudio.core.limits import check_path

    try:
        check_path(path)
    except ValueError as exc:
        raise InvalidParameter(field, str(path), str(exc)) from None


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _fail_if_out_of_memory(exc: BaseException, hint: str) -> None:
    """An allocation failure becomes one error line saying what to change; anything else re-raises."""
    message = out_of_memory_message(exc, hint)
    if message is None:
        raise exc
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(3)


GENERATION_STUDIO_FIELDS = ("models_dir", "outdir", "device", "dtype", "lora_mode", "allow_pickle")


def generation_option_fields(*, exclude: tuple[str, ...] = (), shown_defaults: dict | None = None):
    """The options of the generation commands: every GenerationParams field (less `exclude`), then
    the studio settings a one-shot run can change."""
    from lorastudio.core.params import GenerationParams
    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.cli.options_from_model import model_fields_for_cli

    return (("given", model_fields_for_cli(GenerationParams, exclude=exclude, group="Generation",
                                           shown_defaults=shown_defaults)),
            ("studio", model_fields_for_cli(StudioSettings, include=GENERATION_STUDIO_FIELDS,
                                            group="Models and outputs")))


def _generation_values(prompt: str, from_png: Optional[Path], given: dict) -> dict:
    """The infotext of --from-png, then the prompt and the flags given (they win)."""
    values: dict = _params_from_png(from_png) if from_png is not None else {}
    if prompt:
        values["prompt"] = prompt
    values.update(given)
    return values


@app.command(cls=GroupedCommand)
@with_model_options(*generation_option_fields(exclude=("denoising_strength",),
                                              shown_defaults={"width": "the checkpoint's native size",
                                                              "height": "the checkpoint's native size"}))
def generate(
    prompt: str = typer.Argument("", help="Prompt, with A1111 syntax: (word:1.2), [word], BREAK, <lora:name:0.8>"),
    given: dict = None,
    studio: dict = None,
    from_png: Optional[Path] = typer.Option(None, "--from-png", help="Reproduce the image whose infotext this PNG holds"),
    verbose: bool = verbose_option(),
    controlnet: Optional[list[str]] = typer.Option(None, "--controlnet", help="ControlNet model from models/ControlNet (repeatable)"),
    control_image: Optional[list[Path]] = typer.Option(None, "--control-image", help="Its control picture (one per --controlnet)"),
    control_module: Optional[list[str]] = typer.Option(None, "--control-module", help="Preprocessor: none, canny, invert, ... [none]"),
    control_weight: Optional[list[float]] = typer.Option(None, "--control-weight", help="ControlNet weight [1]"),
):
    """txt2img with the A1111 conventions; every PNG carries its `parameters` text.

    Without --width/--height it draws at the checkpoint's native size (SD 1.x 512, SDXL and
    FLUX 1024, the bundled base 32), as Forge does per model."""
    try:
        from lorastudio.core.params import validate_params

        values = _generation_values(prompt, from_png, given)
        params = validate_params(values)  # a bad value fails before any model loads
        settings = _settings(**studio)

        from lorastudio.generation.engine import GenerationEngine
        from lorastudio.interfaces.cli.progress import step_progress

        from lorastudio.interfaces.cli.controlnet_opts import controlnet_units

        units = controlnet_units(controlnet, control_image, control_module, control_weight, from_png)
        with library_output(verbose):
            engine = GenerationEngine(settings)
            loaded = engine.load(params.model, params.vae)
            if "width" not in values or "height" not in values:
                side = loaded.family.native_resolution(loaded.pipe)
                values.setdefault("width", side)
                values.setdefault("height", side)
                params = validate_params(values)
            with step_progress(params.steps * params.batch_count) as advance:
                result = engine.txt2img(params, on_progress=advance, **({"controlnet": units} if units else {}))
    except LorastudioError as exc:
        _fail(exc)
    except (MemoryError, RuntimeError) as exc:
        _fail_if_out_of_memory(exc, GENERATE_HINT)
    for im in result.images:
        typer.echo(f"{im.path}  seed={im.seed}")
    if result.interrupted:
        typer.echo("interrupted")


def _params_from_png(path: Path) -> dict:
    from lorastudio.core.errors import InvalidParameter
    from lorastudio.core.infotext_params import params_from_infotext
    from lorastudio.core.png_text import read_infotext

    try:
        text = read_infotext(path)
    except OSError as exc:  # missing, unreadable or not an image
        raise InvalidParameter("--from-png", str(path), f"cannot read the image ({exc})") from None
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
        _check_path_arg("image", image)
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

    try:
        settings = _settings(models_dir)
    except LorastudioError as exc:
        _fail(exc)
    cat = Catalog(ModelsRoot.at(settings.models_dir), include_bundled=settings.include_bundled)
    typer.echo(f"models root: {cat.root.root}")
    for head, entries in (("Checkpoints", cat.checkpoints()), ("LoRA", cat.loras()), ("VAE", cat.vaes()),
                          ("Embeddings", cat.embeddings())):
        typer.echo(f"{head}:")
        broken = dict(cat.broken_checkpoints(allow_pickle=settings.allow_pickle)) if head == "Checkpoints" else {}
        for e in entries:
            if e in broken:
                typer.echo(f"  {e.name}  (broken: {broken[e]})")
            elif head == "Checkpoints":
                # storage dtype (fp8 / fp16 / ...) and how the file is read, from its header alone
                typer.echo(f"  {cat.title(e, compute=not no_hash)}  ({listing_summary(e.path)})")
            else:
                typer.echo(f"  {e.name}")
        if not entries:
            typer.echo("  (none)")


def _training_options():
    from lorastudio.interfaces.cli.options_from_model import model_fields_for_cli
    from lorastudio.training.config import TrainingConfig

    return model_fields_for_cli(TrainingConfig)


@app.command(cls=GroupedCommand)
@with_model_options(("flags", _training_options()))
def train(
    config_file: Optional[Path] = typer.Argument(None, help="A TOML file with the same settings (flags override it)"),
    flags: dict = None,
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Print the settings the TOML file and the flags make, as JSON, and stop"),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the LoRA report (weight sweep) after training"),
    tagger: Optional[str] = typer.Option(None, "--tagger", help="With --caption auto: WD14 tagger folder or name under "
                                                                "models/interrogators/"),
    captioner: Optional[str] = typer.Option(None, "--captioner", help="With --caption auto: BLIP / Florence-2 folder "
                                                                      "or name under models/interrogators/"),
    verbose: bool = verbose_option(),
):
    """Train a LoRA from a folder or zip of pictures.

    Every setting is a field of the run's config (config.json, the TOML file, POST /v1/trainings
    take the same names, with _ for -); unset ones take the base model family's defaults."""
    from lorastudio.core.settings import default_models_dir
    from lorastudio.training.config import load_toml, training_config

    try:
        data: dict = load_toml(config_file).model_dump(exclude_unset=True) if config_file else {}
        if "models_dir" not in data:
            data["models_dir"] = default_models_dir(os.environ)
        data.update(flags)
        if tagger or captioner:
            data["caption_options"] = {**data.get("caption_options", {}),
                                       **({"tagger": tagger} if tagger else {}),
                                       **({"captioner": captioner} if captioner else {})}
        config = training_config(data)
        if print_config:
            typer.echo(config.model_dump_json(indent=2))
            return
        if config.num_processes > 1 and "LOCAL_RANK" not in os.environ:
            _train_in_processes(config)
            return
        from lorastudio.interfaces.cli.progress import TrainingProgress
        from lorastudio.services.lora_install import install_trained_lora
        from lorastudio.training.api import train as run_training

        with library_output(verbose), TrainingProgress() as progress:
            result = run_training(config, on_event=progress)
        try:
            installed = install_trained_lora(config, result)
        except OSError as exc:  # the run succeeded: say what went wrong, keep the exit status
            installed = None
            typer.secho(f"warning: the LoRA was not copied into the models folder: {exc}", fg=typer.colors.YELLOW,
                        err=True)
    except LorastudioError as exc:
        _fail(exc)
    except (MemoryError, RuntimeError) as exc:
        _fail_if_out_of_memory(exc, TRAIN_HINT)
    typer.echo(f"LoRA (A1111/Forge/ComfyUI): {result.lora_path}")
    typer.echo(f"LoRA (diffusers/PEFT):      {result.diffusers_lora_dir}")
    typer.echo(f"config:                     {result.config_path}")
    if installed is not None:
        typer.echo(f"installed as {installed.path}")
        typer.echo(f"use it with: {installed.tag}")
    if report:
        from lorastudio.interfaces.cli.report_cmd import report_after_training

        with library_output(verbose):
            report_after_training(result.version_dir, config.models_dir)


def _train_in_processes(config) -> None:
    """`--num-processes N`: one process per device under torch's launcher; accelerate reads its
    environment (NCCL on GPUs, gloo on CPUs), so there is no home-made distribution code.

    The version folder is decided here, before the launch, so this process knows which LoRA to
    install once the processes are done."""
    import subprocess
    import tempfile

    from lorastudio.services.lora_install import install_lora
    from lorastudio.training.project import project_name, version_dir

    project = project_name(config.project, config.trigger)
    vdir = version_dir(config.projects_dir, project, config.version, resume=config.resume)
    config = config.model_copy(update={"project": project, "version": vdir.root.name})
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        fh.write(config.model_dump_json())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(config.num_processes), "-m", "lorastudio.training.launch", fh.name]
    try:
        code = subprocess.call(cmd)
    finally:
        os.unlink(fh.name)
    if code != 0:
        raise typer.Exit(code)
    if config.install_lora:
        from lorastudio.core.paths import ModelsRoot

        try:
            installed = install_lora(vdir.lora(config.output_name or project), ModelsRoot.at(config.models_dir).lora)
        except OSError as exc:
            typer.secho(f"warning: the LoRA was not copied into the models folder: {exc}", fg=typer.colors.YELLOW,
                        err=True)
            return
        typer.echo(f"installed as {installed.path}")
        typer.echo(f"use it with: {installed.tag}")


dataset_app = typer.Typer(help="Inspect a training dataset.", no_args_is_help=True, rich_markup_mode=None)
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
        _check_path_arg("source", source)
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
         steps: int = typer.Option(300, "--steps", help="LoRA training steps"),
         verbose: bool = verbose_option()):
    """Run the whole story on the bundled small model: generate, train a LoRA, compare."""
    from lorastudio.interfaces.cli.progress import TrainingProgress
    from lorastudio.services.demo import run_demo

    try:
        _check_path_arg("--workspace", workspace)
        with library_output(verbose), TrainingProgress() as progress:
            run_demo(workspace, steps=steps, say=typer.echo, on_training_event=progress)
    except LorastudioError as exc:
        _fail(exc)


def _register_optional_commands() -> None:
    from lorastudio.interfaces.cli import dataset_prep_cmd, img2img_cmd, publish_cmd, report_cmd, serve_cmd, upscale_cmd, worker_cmd
    from lorastudio.interfaces.cli import xyz_cmd

    img2img_cmd.register(app)
    serve_cmd.register(app)
    report_cmd.register(app)
    publish_cmd.register(app)
    worker_cmd.register(app)
    upscale_cmd.register(app)
    xyz_cmd.register(app)
    dataset_prep_cmd.register(dataset_app)


_register_optional_commands()


def main() -> None:
    try:
        app()
    except LorastudioError as exc:  # pragma: no cover - safety net for commands that forget
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
