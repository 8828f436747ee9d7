"""compose.yaml against the real CLI (no Docker daemon here, so the file is checked, not run):
every lorastudio command parses with the real options, every LORASTUDIO_* variable is one
that command reads, and the database, bucket, ports and folders line up between services.
deploy/farm_local.py, which starts the same farm without Docker, is checked against it too."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import click
import typer

REPO = Path(__file__).resolve().parents[2]


def _farm_local():
    """deploy/farm_local.py, a script outside the package, imported by path."""
    if "farm_local" not in sys.modules:
        spec = importlib.util.spec_from_file_location("farm_local", REPO / "deploy" / "farm_local.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["farm_local"] = module  # its dataclass looks itself up there
        spec.loader.exec_module(module)
    return sys.modules["farm_local"]


def _parse(args: list[str], env: dict[str, str], monkeypatch) -> tuple[str, dict[str, dict]]:
    """(subcommand, {destination: given values}) exactly as `lorastudio <args>` would parse them,
    with the service's environment; click raises on an unknown flag or a bad value."""
    from lorastudio.interfaces.cli import serve_cmd, worker_cmd
    from lorastudio.interfaces.cli.app import app

    for name in [n for n in os.environ if n.startswith("LORASTUDIO_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    group = typer.main.get_command(app)
    name, rest = args[0], args[1:]
    command = group.get_command(click.Context(group), name)
    assert command is not None, f"compose runs `lorastudio {name}`, which does not exist"
    ctx = command.make_context(name, list(rest))
    sources = {"serve": serve_cmd.serve_option_fields, "worker": worker_cmd.worker_option_fields}[name]()
    given = {dest: {f.name: ctx.params[f.name] for f in fields if ctx.params.get(f.name) not in (None, [], ())}
             for dest, fields in sources}
    reads = {p.envvar for p in command.params if p.envvar}
    return name, {**given, "_reads": reads}


def test_compose_services_run_real_commands_with_settings_that_line_up(monkeypatch):
    from lorastudio.core.params import build_model
    from lorastudio.core.settings import ENTRY_POINT_ENV, ServerSettings, StudioSettings, WorkerSettings
    from lorastudio.interfaces.api.server import check_bind

    compose = _farm_local().load_compose(REPO / "compose.yaml", environ={})  # compose's own defaults
    services = compose["services"]
    ours = _farm_local().lorastudio_services(compose)
    assert set(ours) == {"api", "worker"}
    parsed = {}
    for name, svc in ours.items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        command, given = _parse(_farm_local().command_args(svc), env, monkeypatch)
        unread = {k for k in env if k.startswith("LORASTUDIO_")} - given.pop("_reads") - set(ENTRY_POINT_ENV)
        assert not unread, f"{name}: `lorastudio {command}` never reads {sorted(unread)}"
        studio = dict(given["studio"])
        studio.setdefault("models_dir", env.get("LORASTUDIO_MODELS_DIR", "models"))
        studio.setdefault("projects_dir", env.get("LORASTUDIO_PROJECTS_DIR", "projects"))
        own = build_model(ServerSettings if command == "serve" else WorkerSettings,
                          given["server" if command == "serve" else "farm"])
        parsed[name] = (own, build_model(StudioSettings, studio), svc)

    server, api_studio, api = parsed["api"]
    worker, worker_studio, _ = parsed["worker"]
    assert not server.worker, "the API node must leave the jobs to the workers (--no-worker)"
    check_bind(server.host, server.api_auth)  # listening on 0.0.0.0 needs the password compose sets
    # One queue, one bucket, one folder layout for every node.
    assert server.db == worker.db and server.artifacts == worker.artifacts
    assert server.s3_endpoint == worker.s3_endpoint
    mount = _farm_local().shared_mount(api)
    for field in ("models_dir", "projects_dir"):
        assert getattr(api_studio, field) == getattr(worker_studio, field)
        assert str(getattr(api_studio, field)).startswith(mount + "/"), f"{field} is not on the shared volume"
    assert worker_studio.device == "cpu"  # LORASTUDIO_DEVICE's default, interpolated

    db = urlsplit(server.db)
    pg = services["postgres"]["environment"]
    assert (db.hostname, db.port or 5432) == ("postgres", 5432)
    assert (db.username, db.password, db.path.lstrip("/")) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"],
                                                              pg["POSTGRES_DB"])
    assert f"-U {pg['POSTGRES_USER']} -d {pg['POSTGRES_DB']}" in " ".join(services["postgres"]["healthcheck"]["test"])

    s3 = urlsplit(server.s3_endpoint)
    minio = services["minio"]
    assert s3.hostname == "minio" and f"--address :{s3.port}" in minio["command"]
    bucket = urlsplit(server.artifacts).netloc
    assert server.artifacts.startswith("s3://") and f"local/{bucket}" in services["minio-bucket"]["entrypoint"]
    assert f"http://minio:{s3.port}" in services["minio-bucket"]["entrypoint"]
    env = api["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["environment"]["MINIO_ROOT_USER"], minio["environment"]["MINIO_ROOT_PASSWORD"])
    for name, svc in services.items():  # a shell variable in an entrypoint must be in its environment
        for var in re.findall(r"\$\{?(\w+)", str(svc.get("entrypoint", ""))):
            assert var in (svc.get("environment") or {}), f"{name}'s entrypoint uses ${var}, which it is not given"
    for dep, cond in api["depends_on"].items():
        assert dep in services and cond["condition"] in ("service_healthy", "service_completed_successfully")

    assert f"{server.port}:{server.port}" in [str(p) for p in api["ports"]]


def test_the_image_runs_the_lorastudio_entry_point_with_extras_that_exist():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    docker = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["lorastudio"]' in docker and "lorastudio" in project["scripts"]
    for extras in re.findall(r'"\.\[([\w,-]+)\]"', docker):
        for extra in extras.split(","):
            assert extra in project["optional-dependencies"], f"Dockerfile installs a missing extra [{extra}]"
    assert "s3fs" in docker  # the bucket of compose.yaml needs it in the image


def test_farm_local_starts_the_same_processes_with_local_stand_ins(tmp_path):
    farm_local = _farm_local()
    compose = farm_local.load_compose(REPO / "compose.yaml", environ={"LORASTUDIO_DEVICE": "cuda:1"})
    procs = farm_local.plan(compose, tmp_path, db_url="postgresql://u@127.0.0.1:5999/lorastudio",
                            s3_url="http://127.0.0.1:9999", workers=3)
    assert [p.name for p in procs] == ["api", "worker-1", "worker-2", "worker-3"]
    shared = str(tmp_path.resolve() / "shared")
    for p in procs:
        compose_args = farm_local.command_args(compose["services"][p.name.split("-")[0]])
        assert len(p.args) == len(compose_args)
        for mine, theirs in zip(p.args, compose_args):  # the same command; only the stand-ins differ
            assert mine == theirs or mine == theirs.replace("/data", shared) or (theirs, mine) == ("0.0.0.0",
                                                                                                   "127.0.0.1")
        assert p.env["LORASTUDIO_DB"] == "postgresql://u@127.0.0.1:5999/lorastudio"
        assert p.env["LORASTUDIO_S3_ENDPOINT"] == "http://127.0.0.1:9999"
        assert p.env["LORASTUDIO_MODELS_DIR"] == shared + "/models"
        assert p.env["LORASTUDIO_ARTIFACTS"] == "s3://lorastudio-artifacts/farm"
    assert procs[1].args[:3] == ["worker", "--device", "cuda:1"]  # the user's variables still apply
    assert "127.0.0.1" in procs[0].args and "--outdir" in procs[0].args
