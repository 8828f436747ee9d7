"""`lorastudio serve`: the A1111-compatible API and the training queue.

Registered by app.py; importing this module imports neither torch nor fastapi.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from lorastudio.interfaces.cli.quiet import library_output, verbose_option


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but loopback needs --api-auth"),
        port: int = typer.Option(7860, help="Port (A1111's default)"),
        models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="A1111/Forge `models` folder "
                                                  "(default: ./models or $LORASTUDIO_MODELS_DIR)"),
        outdir: Optional[Path] = typer.Option(None, "--outdir", help="Output root [outputs]"),
        projects_dir: Optional[Path] = typer.Option(None, "--projects-dir", help="Training projects [projects]"),
        api_auth: Optional[str] = typer.Option(None, "--api-auth", envvar="LORASTUDIO_API_AUTH",
                                               help="USER:PASS for HTTP Basic auth on every route "
                                                    "(or $LORASTUDIO_API_AUTH, kept out of the process list)"),
        device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | mps"),
        report: bool = typer.Option(True, "--report/--no-report", help="Write the LoRA report after each training"),
        verbose: bool = verbose_option(),
        db: Optional[str] = typer.Option(None, "--db", envvar="LORASTUDIO_DB",
                                         help="Job database: postgresql://... for a queue shared by several "
                                              "API nodes and workers (or $LORASTUDIO_DB); default: a SQLite "
                                              "file in the projects folder"),
        no_worker: bool = typer.Option(False, "--no-worker",
                                       help="Only queue jobs; `lorastudio worker` processes run them"),
    ):
        """Serve /sdapi/v1 (A1111 clients: webuiapi, Krita, SillyTavern...) and /v1/trainings."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.core.params import build_model
        from lorastudio.core.settings import StudioSettings, default_models_dir

        values: dict = {"models_dir": models_dir or default_models_dir(os.environ),
                        "report_after_training": report}
        for key, value in (("outdir", outdir), ("projects_dir", projects_dir), ("device", device)):
            if value is not None:
                values[key] = value
        try:
            from lorastudio.interfaces.api.server import run_server

            settings = build_model(StudioSettings, values)
            options: dict = {}
            if db:
                from lorastudio.services.jobs import open_job_store

                options["store"] = open_job_store(db)
            if no_worker:
                options["run_worker"] = False
            with library_output(verbose):
                run_server(settings, host=host, port=port, api_auth=api_auth or None, **options)
        except LorastudioError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
