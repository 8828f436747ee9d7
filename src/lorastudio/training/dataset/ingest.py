"""Open a dataset given as a folder or a .zip: list its files, extract archives safely.

Zip archives come from anywhere (chat apps, sticker shops), so extraction trusts nothing in
them: every entry name is checked before a single byte is written, sizes are counted while
writing (declared sizes can lie), and the result appears under its final name only once
complete (staging folder + rename).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lorastudio.core.errors import DatasetError
from lorastudio.training.dataset.config import DEFAULT_MAX_UNZIPPED_BYTES
from lorastudio.training.dataset.images import SUPPORTED_FORMATS, sniff_format

DEFAULT_MAX_RATIO = 250.0
# Small entries may legitimately compress far (an empty caption, a flat BMP tile); the ratio
# only says "bomb" once the entry is big enough to hurt.
RATIO_CHECK_MIN_BYTES = 1 << 20
DEFAULT_MAX_ENTRIES = 20_000

_REPEATS_DIR = re.compile(r"^([1-9][0-9]{0,3})_(.+)$")
_IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN", "System Volume Information"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_UTF8_FLAG = 0x800


@dataclass(frozen=True)
class SourceFile:
    path: Path  # absolute path on disk (inside the extraction folder for zips)
    rel: str  # POSIX path relative to the dataset root, used for stems and messages
    image_format: str | None  # what sniff_format found in the first bytes (None: not a picture)
    repeats: int | None  # from the nearest kohya `N_name` folder, None when there is none

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.rel).suffix.lower()

    @property
    def stem_key(self) -> str:
        """Folder + stem: `a.png`, `a.txt` and `a.jpg` in the same folder share it."""
        p = PurePosixPath(self.rel)
        return str(p.parent / p.stem)


@dataclass
class DatasetSource:
    origin: Path  # what the user gave: a folder or a .zip
    root: Path  # folder holding the files
    files: list[SourceFile]  # sorted by rel; hidden and OS-junk files left out
    ignored: list[str] = field(default_factory=list)  # rel paths of hidden / __MACOSX entries
    is_zip: bool = False
    _owned_dir: Path | None = None

    @property
    def images(self) -> list[SourceFile]:
        """Pictures in a supported format (GIF, TIFF, ... are files the check reports)."""
        return [f for f in self.files if f.image_format in SUPPORTED_FORMATS]

    def display(self, rel: str) -> str:
        """How a file is named in messages: inside the archive for zips, a full path otherwise."""
        return f"{self.origin}:{rel}" if self.is_zip else str(self.root / rel)

    def close(self) -> None:
        """Remove the extraction folder when open_source created it in a temporary place."""
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> "DatasetSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(
    path: str | os.PathLike[str],
    *,
    extract_to: str | os.PathLike[str] | None = None,
    max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> DatasetSource:
    """Open a dataset folder, or extract a .zip and open the result.

    A zip goes to `extract_to` (which must not exist or be empty) or, when None, to a temporary
    folder that `DatasetSource.close()` removes. Raises DatasetError naming the archive and entry
    for any unsafe entry; nothing is left behind when it does.
    """
    origin = Path(path)
    if origin.is_dir():
        return _scan(origin, origin, is_zip=False)
    if not origin.exists():
        raise DatasetError(f"{origin}: no such folder or .zip file")
    if not zipfile.is_zipfile(origin):
        raise DatasetError(f"{origin}: expected a folder of pictures or a .zip archive")
    owned = None
    if extract_to is None:
        owned = Path(tempfile.mkdtemp(prefix="lorastudio-dataset-"))
        target = owned / "dataset"
    else:
        target = Path(extract_to)
    try:
        extract_zip(origin, target, max_unzipped_bytes=max_unzipped_bytes, max_ratio=max_ratio,
                    max_entries=max_entries)
    except BaseException:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    source = _scan(origin, target, is_zip=True)
    source._owned_dir = owned
    return source


def _scan(origin: Path, root: Path, *, is_zip: bool) -> DatasetSource:
    files: list[SourceFile] = []
    ignored: list[str] = []
    # followlinks=False: a link back to a parent folder would otherwise loop forever.
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for d in list(dirnames):
            if _is_ignored(d):
                ignored.append((rel_dir / d).as_posix() + "/")
                dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if _is_ignored(name):
                ignored.append(rel)
                continue
            full = Path(dirpath) / name
            if not full.is_file():
                continue  # dangling link, socket, fifo
            files.append(SourceFile(path=full, rel=rel, image_format=_sniff(full),
                                    repeats=_repeats_for(PurePosixPath(rel))))
    files.sort(key=lambda f: f.rel)
    return DatasetSource(origin=origin, root=root, files=files, ignored=sorted(ignored), is_zip=is_zip)


def _is_ignored(name: str) -> bool:
    # "._x.png" are macOS resource forks; they carry the picture's extension but no picture.
    return name.startswith(".") or name in _IGNORED_NAMES


def _sniff(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(32))
    except OSError:
        return None


def _repeats_for(rel: PurePosixPath) -> int | None:
    """kohya's convention: pictures inside `10_name/` are repeated 10 times per epoch.

    Only folders inside the dataset count, the nearest one winning: the dataset folder's own
    name is the user's to choose ("2024_stickers" must not mean 2024 repeats).
    """
    for part in reversed(rel.parent.parts):
        m = _REPEATS_DIR.match(part)
        if m:
            return int(m.group(1))
    return None


def extract_zip(
    archive: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> Path:
    """Extract `archive` into the folder `target` (created; must not exist or be empty)."""
    archive, target = Path(archive), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DatasetError(f"{target}: extraction folder already exists and is not empty")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{archive}: not a readable zip archive ({exc})") from None
    with zf:
        plan = _plan_entries(archive, zf, max_unzipped_bytes, max_ratio, max_entries)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
        try:
            _write_entries(archive, zf, plan, staging, max_unzipped_bytes)
            with contextlib.suppress(FileNotFoundError):
                target.rmdir()  # empty (checked above); rename needs the name free
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _plan_entries(archive: Path, zf: zipfile.ZipFile, max_total: int, max_ratio: float,
                  max_entries: int) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise DatasetError(f"{archive}: has {len(infos)} entries, more than the limit of {max_entries}")
    plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    seen: dict[str, str] = {}
    total = 0
    for info in infos:
        name = _entry_name(info)
        where = f"{archive}: entry {name!r}"
        safe = _safe_relative(name, where)
        # Unix zips keep st_mode in the high 16 bits; many writers set only permission bits
        # there (no file type), which means a plain file.
        ftype = stat.S_IFMT((info.external_attr >> 16) & 0xFFFF)
        if ftype == stat.S_IFLNK:
            raise DatasetError(f"{where} is a symbolic link; archives with links are refused")
        if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
            raise DatasetError(f"{where} is a special file (device, pipe); refused")
        if info.flag_bits & 0x1:
            raise DatasetError(f"{where} is encrypted; extract it yourself and pass the folder")
        if info.is_dir():
            continue
        if safe is None:
            continue
        # Case-folded: on Windows and macOS "A.png" and "a.png" are one file, the second would
        # silently replace the first.
        key = str(safe).casefold()
        if key in seen:
            raise DatasetError(f"{where} appears twice in the archive (also as {seen[key]!r})")
        seen[key] = name
        total += info.file_size
        if total > max_total:
            raise DatasetError(f"{archive}: unpacks to more than {_human(max_total)} "
                               f"(limit max_unzipped_bytes); refusing to extract")
        if info.file_size >= RATIO_CHECK_MIN_BYTES:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > max_ratio:
                raise DatasetError(f"{where} expands {ratio:.0f}x ({_human(info.compress_size)} → "
                                   f"{_human(info.file_size)}), more than {max_ratio:.0f}x: "
                                   "looks like a zip bomb; refused")
        plan.append((info, safe))
    return plan


def _entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's name, repairing Japanese names that Windows zip tools store in CP932.

    Without the UTF-8 flag, zipfile decodes names as CP437, which turns "スタンプ.png" into
    mojibake; the raw bytes are recovered and decoded as UTF-8 (macOS) or CP932 (Windows).
    """
    name = info.filename
    if info.flag_bits & _UTF8_FLAG:
        return name
    try:
        raw = name.encode("cp437")
    except UnicodeEncodeError:
        return name
    for enc in ("utf-8", "cp932"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return name


def _safe_relative(name: str, where: str) -> PurePosixPath | None:
    if "\x00" in name:
        raise DatasetError(f"{where} contains a NUL character; refused")
    if "\\" in name:
        raise DatasetError(f"{where} contains a backslash; a path in a zip must use '/'; refused")
    if name.startswith("/") or _DRIVE.match(name):
        raise DatasetError(f"{where} is an absolute path; refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise DatasetError(f"{where} points outside the extraction folder ('..'); refused")
    if any(_DRIVE.match(p) for p in parts):
        raise DatasetError(f"{where} contains a drive letter; refused")
    if not parts:
        return None
    # Junk is filtered here too so that it never touches the disk.
    if any(_is_ignored(p) for p in parts):
        return None
    return PurePosixPath(*parts)


def _write_entries(archive: Path, zf: zipfile.ZipFile, plan: list[tuple[zipfile.ZipInfo, PurePosixPath]],
                   staging: Path, max_total: int) -> None:
    staging_real = staging.resolve()
    written_total = 0
    for info, rel in plan:
        dest = staging.joinpath(*rel.parts)
        # Belt and braces after the name checks: the resolved path must stay in the staging folder.
        if not dest.resolve().is_relative_to(staging_real):
            raise DatasetError(f"{archive}: entry {info.filename!r} resolves outside the extraction folder")
        written = 0
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "xb") as out:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    written += len(chunk)
                    written_total += len(chunk)
                    # A forged header can declare 1 KiB and inflate to gigabytes.
                    if written > info.file_size or written_total > max_total:
                        raise DatasetError(f"{archive}: entry {info.filename!r} inflates beyond its declared "
                                           f"size or the {_human(max_total)} limit; refused (zip bomb?)")
                    out.write(chunk)
        except OSError as exc:
            # "a" as a file and "a/b" as an entry, or the same name twice under another spelling.
            raise DatasetError(f"{archive}: entry {info.filename!r} clashes with another entry "
                               f"({exc.strerror or exc})") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
            raise DatasetError(f"{archive}: entry {info.filename!r} cannot be extracted ({exc})") from None
        os.chmod(dest, 0o644)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
