"""Where images go: A1111's `outputs/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png`, never overwriting."""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

from lorastudio.core.errors import DiskFullError, raise_if_disk_full
from lorastudio.core.png_text import write_png_with_infotext

_NUMBERED = re.compile(r"^(\d{5,})-")


def dated_folder(outdir: Path, kind: str, today: _dt.date | None = None) -> Path:
    day = (today or _dt.date.today()).isoformat()
    return Path(outdir) / f"{kind}-images" / day


def next_number(folder: Path) -> int:
    best = -1
    if folder.is_dir():
        for name in os.listdir(folder):
            m = _NUMBERED.match(name)
            if m:
                best = max(best, int(m.group(1)))
    return best + 1


def save_image(image, folder: Path, seed: int, infotext: str) -> Path:
    """Write under a temporary name, then hard-link to the first free number (no overwrite race).

    A full disk is a DiskFullError naming the folder; nothing is left under a final name.
    """
    hint = "free space there (old images under the outputs folder are the usual culprit) or choose another output folder"
    try:
        return _save_numbered(image, folder, seed, infotext)
    except DiskFullError as exc:  # from the atomic writer: same error, told with what to free here
        raise DiskFullError(exc.path, hint, what="an image") from exc
    except OSError as exc:
        raise_if_disk_full(exc, folder, "an image", hint)
        raise


def _save_numbered(image, folder: Path, seed: int, infotext: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n = next_number(folder)
    tmp_holder = folder / f".pending-{os.getpid()}-{seed}.png"
    write_png_with_infotext(image, tmp_holder, infotext)  # atomic: never a partial file
    try:
        while True:
            final = folder / f"{n:05d}-{seed}.png"
            try:
                os.link(tmp_holder, final)
                return final
            except FileExistsError:
                n += 1
    finally:
        tmp_holder.unlink(missing_ok=True)
