"""`python -m lorastudio.interfaces.api`: the server without the rest of the CLI (tests, benches,
services). It is `lorastudio serve` itself (same registration, same options)."""

from __future__ import annotations

import sys

import click

PROG = "python -m lorastudio.interfaces.api"


def command() -> click.Command:
    import typer

    from lorastudio.interfaces.cli import serve_cmd

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    serve_cmd.register(app)
    return typer.main.get_command(app)  # one command: the command itself, no `serve` word


def main(argv: list[str] | None = None) -> int:
    try:
        command().main(args=argv, prog_name=PROG, standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
