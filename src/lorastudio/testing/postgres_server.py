"""A throwaway PostgreSQL server for tests: initdb into a folder, run it on 127.0.0.1.

The real server binary (Debian's `postgresql` package), never a mock. initdb refuses
to run as root, so as root the server runs as the `postgres` user (or `nobody`).

Settings are for a small shared test machine, not for keeping data:
- fsync=off, synchronous_commit=off, full_page_writes=off: they only matter when the
  machine (not a process) crashes; a killed or restarted postgres still loses no
  committed data, which is what the tests check. They make a commit ~10x cheaper here.
- shared_buffers=16MB, few connections: many agents share two cores and the memory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

INSTALL_HINT = "apt-get install -y postgresql  (or `make ensure-postgres`)"


def find_bindir() -> Path:
    """The folder holding initdb and postgres: $LORASTUDIO_PG_BINDIR, PATH, or Debian's."""
    candidates = []
    if os.environ.get("LORASTUDIO_PG_BINDIR"):
        candidates.append(Path(os.environ["LORASTUDIO_PG_BINDIR"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        candidates += sorted(debian.glob("*/bin"), key=lambda p: _version(p.parent.name), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise RuntimeError(f"PostgreSQL server binaries (initdb, postgres) not found; install them: {INSTALL_HINT}")


def _version(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in name.split("."))
    except ValueError:
        return (0,)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, root: Path, *, port: int | None = None, max_connections: int = 60):
        self.bindir = find_bindir()
        self.root = Path(root)
        self.data = self.root / "data"
        self.port = port or free_port()
        self.max_connections = max_connections
        self.superuser = "postgres"
        self._proc: subprocess.Popen | None = None
        self._run_as = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._run_as = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self._run_as is None:
                raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run the server as")

    # ------------------------------------------------------------ lifecycle

    def _popen_kwargs(self) -> dict:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        kw: dict = {"env": env, "cwd": str(self.root)}
        if self._run_as is not None:
            env["HOME"] = str(self.root)
            kw.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        return kw

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            # Every folder above must be enterable by the server's user.
            for folder in [self.root, *self.root.parents]:
                mode = folder.stat().st_mode
                if not mode & 0o001:
                    os.chmod(folder, mode | 0o001)
            os.chown(self.root, self._run_as.pw_uid, self._run_as.pw_gid)
        out = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.superuser,
             "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=120, **self._popen_kwargs(),
        )
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed ({out.returncode}): {out.stderr or out.stdout}")

    def start(self, timeout: float = 60.0) -> None:
        cmd = [
            str(self.bindir / "postgres"), "-D", str(self.data),
            "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.root}",
            "-c", "shared_buffers=16MB", "-c", f"max_connections={self.max_connections}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_wal_size=64MB", "-c", "log_min_messages=warning",
            "-c", "dynamic_shared_memory_type=posix",
        ]
        log = open(self.root / "postgres.log", "ab")
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True, **self._popen_kwargs())
        log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start in {timeout:.0f}s: {self.log_tail()}") from None
                time.sleep(0.1)

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """fast: roll back sessions, checkpoint, exit (SIGINT). immediate: a crash (SIGQUIT)."""
        if self._proc is None:
            return
        sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "smart": signal.SIGTERM}[mode]
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------ databases

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> PostgresServer:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
