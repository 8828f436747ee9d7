"""`lorastudio publish VERSION_DIR --repo OWNER/NAME`: the LoRA, its pictures, report and model
card to the Hugging Face Hub in one commit (or `--to-folder DIR`: the same files, no network).

Registered by app.py (`publish_cmd.register(app)`); importing this module imports no torch.
"""

from __future__ import annotations

import os

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def publish(
        version_dir: Path = typer.Argument(..., help="A training version folder: projects/<p>/versions/<v>"),
        repo: str = typer.Option(..., "--repo", help="OWNER/NAME on the Hugging Face Hub"),
        description: str = typer.Option("", "--description", help="Your own words at the top of the card"),
        private: bool = typer.Option(False, "--private", help="Create the repo private"),
        license: Optional[str] = typer.Option(None, "--license", help="Hub licence id [the base model's]"),
        base_model_id: Optional[str] = typer.Option(None, "--base-model-id",
                                                    help="Hub id of the base model when the file does not tell"),
        revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to [main]"),
        commit_message: Optional[str] = typer.Option(None, "--commit-message"),
        to_folder: Optional[Path] = typer.Option(None, "--to-folder",
                                                 help="Write exactly the repo contents here; no network (dry run)"),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before uploading"),
    ):
        """Publish a trained LoRA (kohya + diffusers files, pictures, report, model card) to the Hub."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.services.publish.publish import endpoint_from_env, publish as run_publish

        options = {"repo": repo, "description": description, "private": private, "license": license,
                   "base_model_id": base_model_id, "revision": revision, "commit_message": commit_message,
                   "to_folder": to_folder}
        try:
            result = run_publish(version_dir, options, endpoint=endpoint_from_env(os.environ), say=typer.echo,
                                 confirm=None if yes else (lambda q: typer.confirm(q, default=False)))
        except LorastudioError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        for name in result.files:
            typer.echo(f"  {name}")
