"""Find tagger and captioner folders: a path as given, or a bare name under `models/interrogators/`.

`models/interrogators/` is where the A1111 tagger extension keeps its models, beside the other
model folders, so users point lorastudio at folders they already have; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from lorastudio.core.errors import ModelFileError
from lorastudio.core.paths import ModelsRoot

INTERROGATORS_DIR = "interrogators"


def interrogators_dir(models_dir: str | Path) -> Path:
    return ModelsRoot.at(models_dir).root / INTERROGATORS_DIR


def resolve_interrogator(name_or_path: str, models_dir: str | Path, *, option: str) -> Path:
    """The folder for `--tagger` / `--captioner`; ModelFileError naming what was looked for."""
    given = Path(name_or_path).expanduser()
    if given.is_dir():
        return given
    bare = len(given.parts) == 1 and not given.is_absolute()
    if bare:
        folder = interrogators_dir(models_dir)
        candidate = folder / name_or_path
        if candidate.is_dir():
            return candidate
        known = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        listing = f"; available: {', '.join(known)}" if known else f"; {folder} holds no model folders"
        raise ModelFileError(candidate, f"{option} {name_or_path!r}: no such folder{listing}")
    raise ModelFileError(given, f"{option}: no such model folder")
