"""Training runs in an artifact store, so a run can resume on a machine that never saw it.

Layout under the store: `<project>/versions/<version>/...` as on disk, with each checkpoint
under `checkpoints/step-NNNNNN/`. A checkpoint counts as complete once its progress.json is
there; it is uploaded last, so a worker killed mid-upload leaves an incomplete checkpoint that
no one resumes from (the same rule training.checkpoints.latest_checkpoint applies on disk).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lorastudio.services.artifacts.store import ArtifactStore

MARKER = "progress.json"
# Rebuilt by any run from the inputs; not worth a round trip through the bucket.
LOCAL_ONLY = ("cache", "checkpoints", "dataset")


def run_prefix(project: str, version: str) -> str:
    return f"{project}/versions/{version}"


def push_checkpoint(store: ArtifactStore, prefix: str, checkpoint: Path) -> None:
    checkpoint = Path(checkpoint)
    files = sorted(p for p in checkpoint.iterdir() if p.is_file())
    for path in [p for p in files if p.name != MARKER] + [p for p in files if p.name == MARKER]:
        store.put_file(path, f"{prefix}/checkpoints/{checkpoint.name}/{path.name}")


def pull_checkpoints(store: ArtifactStore, prefix: str, local_dir: Path) -> list[Path]:
    """Copy complete checkpoints the store has and local_dir lacks; returns the new folders."""
    base = f"{prefix}/checkpoints/"
    remote: dict[str, list[str]] = {}
    for key in store.list(base.rstrip("/")):
        name, _, file = key[len(base):].partition("/")
        if file and "/" not in file:
            remote.setdefault(name, []).append(file)
    fetched = []
    for name, files in sorted(remote.items()):
        final = Path(local_dir) / name
        if MARKER not in files or (final / MARKER).exists():
            continue
        # Staged under a name latest_checkpoint ignores, renamed when whole.
        staging = Path(local_dir) / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        for file in files:
            store.get_file(f"{base}{name}/{file}", staging / file)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        fetched.append(final)
    return fetched


def push_run(store: ArtifactStore, prefix: str, version_root: Path) -> list[str]:
    """Upload a finished version (LoRA, diffusers copy, config, samples, logs, report)."""
    keys = []
    root = Path(version_root)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.parts[0] in LOCAL_ONLY or path.name.endswith(".partial"):
            continue
        key = f"{prefix}/{rel.as_posix()}"
        store.put_file(path, key)
        keys.append(key)
    return keys
