"""Install a finished training run's LoRA into the models root's `Lora` folder.

The A1111 train-tools guide makes users copy the file there by hand; after this step
`<lora:NAME:1>` works at once, in lorastudio and in an A1111 / Forge sharing the folder (both
find a LoRA by its file stem). Another file is never overwritten: when `NAME.safetensors` is
taken by different bytes, the copy becomes `NAME-v2.safetensors` (then -v3, ...). The copy is
written beside its final name and linked into place, so the final name only ever holds a
complete file and a name taken meanwhile by someone else is not clobbered.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lorastudio.core.paths import ModelsRoot

if TYPE_CHECKING:
    from lorastudio.training.config import TrainingConfig

MAX_VERSIONS = 10_000


@dataclass(frozen=True)
class InstalledLora:
    path: Path
    name: str  # the file stem, what `<lora:NAME:w>` refers to
    already_there: bool = False  # the same bytes were installed before under this name

    @property
    def tag(self) -> str:
        return f"<lora:{self.name}:1>"


def install_trained_lora(config: "TrainingConfig | dict", result) -> InstalledLora | None:
    """Install `result.lora_path` into `config.models_dir`/Lora unless `config.install_lora` is off."""
    from lorastudio.training.config import training_config

    config = training_config(config)
    if not config.install_lora:
        return None
    return install_lora(Path(result.lora_path), ModelsRoot.at(config.models_dir).lora)


def install_lora(source: Path, lora_dir: Path) -> InstalledLora:
    source = Path(source)
    lora_dir.mkdir(parents=True, exist_ok=True)
    digest = _sha256(source)
    stem, suffix = source.stem, source.suffix
    for n in range(1, MAX_VERSIONS + 1):
        name = stem if n == 1 else f"{stem}-v{n}"
        target = lora_dir / f"{name}{suffix}"
        if target.exists():
            if target.is_file() and target.stat().st_size == source.stat().st_size and _sha256(target) == digest:
                return InstalledLora(target, name, already_there=True)
            continue
        if _copy_without_overwriting(source, target):
            return InstalledLora(target, name)
    raise FileExistsError(f"{lora_dir}: {stem}{suffix} and {MAX_VERSIONS - 1} numbered versions already exist")


def _copy_without_overwriting(source: Path, target: Path) -> bool:
    """Copy `source` to `target` completely or not at all; False when `target` appeared meanwhile."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        shutil.copyfile(source, tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        try:
            # A hard link fails when the name exists: no window in which another file is replaced.
            os.link(tmp_path, target)
        except FileExistsError:
            return False
        except OSError:
            # File systems without hard links (FAT, some network shares): check, then rename.
            if target.exists():
                return False
            os.replace(tmp_path, target)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
