"""`lorastudio serve`: registered on the typer app, light to import, safe by default."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner


def _app() -> typer.Typer:
    from lorastudio.interfaces.cli import serve_cmd

    app = typer.Typer()
    serve_cmd.register(app)

    @app.command()
    def other():  # with a single command typer would hide the `serve` name
        pass

    return app


def test_importing_and_registering_serve_pulls_in_neither_torch_nor_fastapi():
    code = ("import sys, typer\n"
            "from lorastudio.interfaces.cli import serve_cmd\n"
            "serve_cmd.register(typer.Typer())\n"
            "heavy = sorted(m for m in ('torch', 'fastapi', 'uvicorn', 'diffusers') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_serve_options_and_refusal_to_listen_beyond_loopback_without_auth(monkeypatch):
    monkeypatch.delenv("LORASTUDIO_API_AUTH", raising=False)
    runner = CliRunner()
    help_text = runner.invoke(_app(), ["serve", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--host", "--port", "--models-dir", "--outdir", "--projects-dir", "--api-auth"):
        assert option in help_text
    result = runner.invoke(_app(), ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2 and "--api-auth" in result.output
    result = runner.invoke(_app(), ["serve", "--host", "0.0.0.0", "--api-auth", "no-colon"])
    assert result.exit_code == 2 and "USER:PASS" in result.output
