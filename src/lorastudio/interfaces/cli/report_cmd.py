"""`lorastudio report VERSION_DIR`: the LoRA report (weight sweep, concept score, base
preservation, recommended weight) written next to the LoRA.

Registered by app.py (`report_cmd.register(app)`); importing this module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        version_dir: Path = typer.Argument(..., help="A training version folder: projects/<p>/versions/<v>"),
        models_dir: Optional[Path] = typer.Option(None, "--models-dir",
                                                  help="A1111/Forge `models` folder [the one the run trained with]"),
        seeds: int = typer.Option(2, "--seeds", help="Seeds per prompt (the same in every cell)"),
        steps: int = typer.Option(20, "--steps", help="Sampling steps per picture"),
        scorer: str = typer.Option("auto", "--scorer", help="auto | clip | pixel (clip: models/clip_vision/)"),
        device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | mps"),
    ):
        """Sweep LoRA weights 0-1.25 and write report.json, report.png and the pictures beside the LoRA."""
        from lorastudio.core.errors import LorastudioError

        try:
            rep = run_report(version_dir, models_dir=models_dir, device=device,
                             options={"seeds": seeds, "steps": steps, "scorer": scorer}, say=typer.echo)
        except LorastudioError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        from lorastudio.services.report import summary_line

        typer.echo(summary_line(rep))


def run_report(version_dir: Path, *, models_dir: Optional[Path] = None, device: Optional[str] = None,
               options: dict | None = None, say=typer.echo) -> dict:
    from lorastudio.core.settings import StudioSettings
    from lorastudio.services.report import write_report

    values: dict = {"models_dir": models_dir or Path("models")}
    if device:
        values["device"] = device
    return write_report(version_dir, StudioSettings(**values), options, say=say, models_dir=models_dir)


def report_after_training(version_dir: Path, models_dir: Optional[Path]) -> None:
    """The report at the end of `lorastudio train`; a failure is said, never fatal: the LoRA is saved."""
    from lorastudio.core.errors import LorastudioError
    from lorastudio.services.report import summary_line

    try:
        rep = run_report(version_dir, models_dir=models_dir, say=lambda s: None)
    except (LorastudioError, OSError) as exc:
        typer.secho(f"report not written: {exc}", fg=typer.colors.YELLOW, err=True)
        return
    typer.echo(f"report:                     {Path(version_dir) / 'report.json'}")
    typer.echo(summary_line(rep))
