"""`lorastudio worker` and `serve --db/--no-worker`: registered, light to import, clear errors."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner


def _app() -> typer.Typer:
    from lorastudio.interfaces.cli import serve_cmd, worker_cmd

    app = typer.Typer()
    worker_cmd.register(app)
    serve_cmd.register(app)
    return app


def test_registering_worker_pulls_in_neither_torch_nor_psycopg():
    code = ("import sys, typer\n"
            "from lorastudio.interfaces.cli import worker_cmd\n"
            "worker_cmd.register(typer.Typer())\n"
            "heavy = sorted(m for m in ('torch', 'psycopg', 'fastapi', 'diffusers') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_worker_and_serve_options(monkeypatch):
    monkeypatch.delenv("LORASTUDIO_DB", raising=False)
    runner = CliRunner()
    help_text = runner.invoke(_app(), ["worker", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--db", "--device", "--families", "--memory-mb", "--heartbeat-timeout", "--artifacts"):
        assert option in help_text
    from lorastudio.core.settings import WorkerSettings

    for name in WorkerSettings.model_fields:  # the options are the model's fields, none hand-written
        assert f"--{name.replace('_', '-')} " in help_text, name
    assert "LORASTUDIO_S3_ENDPOINT" in help_text and "--no-report" in help_text
    serve_help = runner.invoke(_app(), ["serve", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--db", "--no-worker", "--artifacts", "--s3-endpoint"):
        assert option in serve_help
    assert runner.invoke(_app(), ["worker"]).exit_code == 2  # --db is required


def test_unknown_family_and_unreachable_database_are_clear_errors(monkeypatch):
    runner = CliRunner()
    result = runner.invoke(_app(), ["worker", "--db", "postgresql://u@127.0.0.1:1/x", "--families", "sd1,sd3"])
    assert result.exit_code == 2 and "sd3" in result.output and "sdxl" in result.output
    result = runner.invoke(_app(), ["worker", "--db", "postgresql://u:hunter2@127.0.0.1:1/x"])
    assert result.exit_code == 2 and "cannot open" in result.output
    assert "hunter2" not in result.output  # the password never reaches a message
