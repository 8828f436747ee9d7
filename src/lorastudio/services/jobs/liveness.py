"""Is the process that claimed a job still running?

Identified by (host + pid namespace, pid, process start time): a pid alone is
reused (after a reboot the old server's pid may belong to anything), and a pid
from another namespace (another container) cannot be checked at all; such
jobs are left to the heartbeat timeout.
"""

from __future__ import annotations

import os
import socket


def host_identity() -> str:
    # A pid only means something inside one pid namespace: two containers may
    # share a hostname and a database volume yet not see each other's pids.
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}|{ns}"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) from /proc, or None without procfs/process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name in field 2 may contain spaces and ')'; fields after the
    # last ')' start at field 3 (state); starttime is field 22.
    fields = raw[raw.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


def process_start_token(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def process_alive(pid: int, start_token: str | None) -> bool:
    stat = _proc_stat(pid)
    if stat is not None:
        state, started = stat
        if state in ("Z", "X"):  # killed but not yet reaped by its parent
            return False
        # Same pid, different start time: the pid now belongs to a new process.
        return start_token is None or started == start_token
    if os.name == "nt":
        # os.kill on Windows terminates the target; rely on the heartbeat there.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists but belongs to someone else
        return True
    return True
