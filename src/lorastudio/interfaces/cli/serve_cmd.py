"""`lorastudio serve`: the A1111-compatible API and the training queue.

Registered by app.py; `python -m lorastudio.interfaces.api` registers the same command, so both
take the same options, generated from ServerSettings and StudioSettings. Importing this module
imports neither torch nor fastapi.
"""

from __future__ import annotations

import os

import typer

from lorastudio.interfaces.cli.options_from_model import GroupedCommand, model_fields_for_cli, with_model_options
from lorastudio.interfaces.cli.quiet import library_output, verbose_option


def serve_option_fields():
    """The options of the server entry points: how it listens, then the studio's settings."""
    from lorastudio.core.settings import PROJECTS_DIR_SHOWN, ServerSettings, StudioSettings

    return (("server", model_fields_for_cli(ServerSettings, group="Server")),
            ("studio", model_fields_for_cli(StudioSettings, group="Models and outputs",
                                            shown_defaults=PROJECTS_DIR_SHOWN)))


def register(app: typer.Typer) -> None:
    @app.command(cls=GroupedCommand)
    @with_model_options(*serve_option_fields())
    def serve(server: dict = None, studio: dict = None, verbose: bool = verbose_option()):
        """Serve /sdapi/v1 (A1111 clients: webuiapi, Krita, SillyTavern...) and /v1/trainings."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.core.params import build_model
        from lorastudio.core.settings import (ServerSettings, StudioSettings, default_models_dir,
                                              default_projects_dir)

        studio.setdefault("models_dir", default_models_dir(os.environ))
        studio.setdefault("projects_dir", default_projects_dir(os.environ))
        try:
            settings = build_model(StudioSettings, studio)
            options = build_model(ServerSettings, server)
            from lorastudio.interfaces.api.server import run_server
            from lorastudio.interfaces.api.state import ApiLimits

            queue: dict = {}
            if options.db:
                from lorastudio.services.jobs import open_job_store

                queue["store"] = open_job_store(options.db)
            if not options.worker:
                queue["run_worker"] = False
            if options.artifacts:
                from lorastudio.services.artifacts import open_artifact_store

                queue["artifacts"] = open_artifact_store(options.artifacts, **s3_options(options.artifacts,
                                                                                         options.s3_endpoint))
            with library_output(verbose):
                run_server(settings, host=options.host, port=options.port, api_auth=options.api_auth or None,
                           webhook_hosts=options.webhook_hosts, dataset_roots=options.dataset_roots,
                           limits=ApiLimits(max_generation_work=options.max_generation_work,
                                            max_upload_bytes=options.max_upload_mb * 1024**2), **queue)
        except LorastudioError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None


def s3_options(url: str, endpoint: str | None) -> dict:
    """open_artifact_store's options for an S3-compatible endpoint (ignored for a folder)."""
    return {"endpoint_url": endpoint} if endpoint and str(url).startswith("s3://") else {}
