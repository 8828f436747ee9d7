"""The converted layout of a single-file checkpoint, kept for the next load.

Loading an A1111-style single file means renaming and reshaping every tensor into diffusers'
layout (`from_single_file`), which costs several times the time of reading the file. The first
load of a file saves the converted pipeline as a diffusers folder in the models folder's cache;
later loads of the same file read that folder (`from_pretrained`: the tensors as they are, memory-
mapped) and skip the conversion. The folder holds exactly the tensors the conversion produced, so
both loads give the same weights.

A cached folder is keyed by the file's resolved path, size and modification time (the hash cache's
rule: a file changed in place gets a new key), the compute dtype it was converted to and the
family. It appears under its final name only when complete: it is written to a temporary sibling
and renamed. A cache that cannot be written (full disk, read-only folder) costs only the speed-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lorastudio.models.families.base import LoadOptions, ModelFamily

log = logging.getLogger(__name__)

# v1: diffusers' save_pretrained layout of the pipeline `load_checkpoint` returns.
_VERSION = "v1"
_COMPLETE = "lorastudio-converted.json"  # written last, inside the folder, before the rename


def converted_dir(path: Path, family: ModelFamily, options: LoadOptions) -> Path:
    """Where the converted layout of the single file `path` is kept (whether or not it exists yet)."""
    st = Path(path).stat()
    key = f"{_VERSION}:{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}:{family.name}:{options.dtype}"
    return options.cache_dir / "converted-layout" / f"{Path(path).stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def cached_layout(path: Path, family: ModelFamily, options: LoadOptions) -> Path | None:
    """The complete converted folder of `path`, or None."""
    folder = converted_dir(path, family, options)
    return folder if (folder / _COMPLETE).is_file() else None


def load_via_cache(path: Path, st_path: Path, family: ModelFamily, options: LoadOptions,
                   convert: Callable[[], object], say: Callable[[str], None]):
    """The pipeline of the single file `path` (`st_path`: its safetensors form): from the cached
    converted layout when there is one, else converted by `convert()` and then cached."""
    folder = cached_layout(st_path, family, options)
    if folder is not None:
        say(f"loading {path.name} from its converted layout in {folder.parent}")
        try:
            return family.load_folder(folder, options)
        except Exception as exc:  # noqa: BLE001 -- a damaged cache must not stop a file that loads
            log.warning("%s: its cached conversion %s does not load (%s); converting the file again",
                        path.name, folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    say(f"converting {path.name} to diffusers' layout (first load; kept in {options.cache_dir} so the next "
        f"load skips this)")
    pipe = convert()
    save_layout(pipe, converted_dir(st_path, family, options), path)
    return pipe


def save_layout(pipe, folder: Path, source: Path) -> bool:
    """Write `pipe` as a diffusers folder at `folder`, complete or not at all; False when it could not."""
    import json

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / _COMPLETE).write_text(json.dumps({"source": str(source), "version": _VERSION}), encoding="utf-8")
        try:
            os.replace(tmp, folder)
        except OSError:
            if (folder / _COMPLETE).is_file():  # another process cached the same file meanwhile
                return True
            raise
        return True
    except Exception as exc:  # noqa: BLE001 -- any failure to write (full disk: OSError, safetensors' own
        # SafetensorError) leaves the load as it was, only slower next time
        log.warning("%s: the converted layout was not cached in %s (%s); the next load converts again",
                    source.name, folder.parent, exc)
        return False
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
