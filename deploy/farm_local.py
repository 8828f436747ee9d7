"""Start the farm of compose.yaml as local processes, for a machine without Docker.

    deploy/farm-local.sh [--root farm] [--workers 3] [--db postgresql://...] [--dry-run]

What compose.yaml runs in containers runs here as processes, from the same file: the same
`lorastudio` commands and LORASTUDIO_* variables, with what only containers have replaced:
- the `shared` volume's mount point (/data) -> <root>/shared (put or link your models folder
  at <root>/shared/models);
- the postgres service -> a PostgreSQL server in <root>/postgres (Debian's `postgresql`
  package, as the tests use; `make ensure-postgres`), or the server --db names;
- the minio service -> moto's S3 server (in memory: the bucket lasts as long as the farm; the
  runs stay in <root>/shared/projects too);
- listening on 0.0.0.0 -> 127.0.0.1 (a local farm is not a public server; --public keeps it).
Logs go to <root>/logs/<process>.log. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose.yaml"
# Docker compose's interpolation: $$ is a literal $, ${X:-d} is d when X is unset or empty,
# ${X-d} only when unset, ${X} / $X the value or "".
_VAR = re.compile(r"\$\$|\$\{(\w+)(:?-)?([^}]*)\}|\$(\w+)")


def interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    """compose's variable substitution applied to every string in a loaded compose file."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1) or m.group(4), m.group(2), m.group(3) or ""
        got = environ.get(name)
        if op == ":-" and not got:
            return default
        if op == "-" and got is None:
            return default
        return got or ""

    return _VAR.sub(sub, value)


def load_compose(path: Path = COMPOSE, environ: Mapping[str, str] | None = None) -> dict:
    import yaml

    return interpolate(yaml.safe_load(Path(path).read_text()), os.environ if environ is None else environ)


def lorastudio_services(compose: dict) -> dict[str, dict]:
    """The services that run this project's image (built from the Dockerfile)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def command_args(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def shared_mount(service: dict, volume: str = "shared") -> str:
    for entry in service.get("volumes", []):
        source, _, target = str(entry).partition(":")
        if source == volume:
            return target.split(":")[0].rstrip("/")
    raise ValueError(f"no {volume!r} volume mounted in {service}")


@dataclass
class Process:
    name: str
    args: list[str]  # after `lorastudio`
    env: dict[str, str] = field(default_factory=dict)


def plan(compose: dict, root: Path, *, db_url: str, s3_url: str, workers: int | None = None,
         public: bool = False) -> list[Process]:
    """The processes that make compose.yaml's farm on this machine."""
    shared = str(Path(root).resolve() / "shared")
    out = []
    for name, svc in lorastudio_services(compose).items():
        mount = shared_mount(svc)

        def local(text: str) -> str:
            return shared + text[len(mount):] if text == mount or text.startswith(mount + "/") else text

        env = {k: local(str(v)) for k, v in (svc.get("environment") or {}).items()}
        if "LORASTUDIO_DB" in env:
            env["LORASTUDIO_DB"] = db_url
        if "LORASTUDIO_S3_ENDPOINT" in env:
            env["LORASTUDIO_S3_ENDPOINT"] = s3_url
        args = [local(a) for a in command_args(svc)]
        if not public and "--host" in args:
            args[args.index("--host") + 1] = "127.0.0.1"
        replicas = int((svc.get("deploy") or {}).get("replicas", 1))
        if workers is not None and replicas > 1:
            replicas = workers
        for i in range(replicas):
            out.append(Process(f"{name}-{i + 1}" if replicas > 1 else name, list(args), dict(env)))
    return out


def _database(server_root: Path, compose_db: str) -> tuple[Any, str]:
    """A local PostgreSQL server holding the database compose.yaml names; (server, url)."""
    import psycopg

    from lorastudio.testing.postgres_server import PostgresServer

    server = PostgresServer(server_root)
    if not (server.data / "PG_VERSION").exists():
        server.init()
    server.start()
    name = compose_db.rsplit("/", 1)[1].split("?")[0] or "lorastudio"
    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    return server, server.url(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/farm-local.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("farm"), help="Folder for the farm's data and logs [farm]")
    parser.add_argument("--workers", type=int, default=None, help="Worker processes [compose.yaml's replicas]")
    parser.add_argument("--db", default=None, help="An existing PostgreSQL database URL instead of a local server")
    parser.add_argument("--public", action="store_true", help="Listen where compose.yaml says (0.0.0.0)")
    parser.add_argument("--dry-run", action="store_true", help="Print the processes and stop")
    opts = parser.parse_args(argv)

    compose = load_compose()
    root = opts.root.resolve()
    if opts.dry_run:
        for p in plan(compose, root, db_url=opts.db or "<local postgresql>", s3_url="<local s3>",
                      workers=opts.workers, public=opts.public):
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(p.env.items()) if k.startswith("LORASTUDIO_"))
            print(f"{p.name}: {env} lorastudio {shlex.join(p.args)}")
        return 0

    from lorastudio.testing.s3_server import S3Server

    (root / "logs").mkdir(parents=True, exist_ok=True)
    for sub in ("models", "projects"):
        (root / "shared" / sub).mkdir(parents=True, exist_ok=True)
    first = next(iter(lorastudio_services(compose).values()))
    server, db_url = (None, opts.db) if opts.db else _database(root / "postgres", first["environment"]["LORASTUDIO_DB"])
    s3 = S3Server()
    procs: list[tuple[Process, subprocess.Popen]] = []
    try:
        s3.start()
        artifacts = first["environment"].get("LORASTUDIO_ARTIFACTS", "")
        if artifacts.startswith("s3://"):
            s3.create_bucket(artifacts[len("s3://"):].split("/", 1)[0])
        for p in plan(compose, root, db_url=db_url, s3_url=s3.url, workers=opts.workers, public=opts.public):
            log = open(root / "logs" / f"{p.name}.log", "ab")
            procs.append((p, subprocess.Popen([sys.executable, "-m", "lorastudio.interfaces.cli.app", *p.args],
                                              env={**os.environ, **p.env}, stdout=log, stderr=subprocess.STDOUT)))
            log.close()
            print(f"started {p.name}: lorastudio {shlex.join(p.args)}  (log: {root / 'logs' / (p.name + '.log')})")
        print(f"farm up: database {db_url.split('@')[-1]}, bucket {artifacts} on {s3.url}; Ctrl-C stops it")
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        while not stop:
            dead = [(p, proc) for p, proc in procs if proc.poll() is not None]
            if dead:
                for p, proc in dead:
                    print(f"{p.name} exited with {proc.returncode}; see {root / 'logs' / (p.name + '.log')}")
                return 1
            time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        s3.stop()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
