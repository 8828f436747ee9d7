"""Finding models on disk, with A1111 titles (`name.safetensors [abcdef0123]`).

No torch here: listing models must stay instant.
"""

from __future__ import annotations

import difflib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lorastudio.core.errors import InvalidParameter, ModelFileError, NotFound
from lorastudio.core.hashes import HashCache, a1111_short_hash, sha256_file
from lorastudio.core.limits import check_name, check_path
from lorastudio.core.paths import CHECKPOINT_EXTENSIONS, LORA_EXTENSIONS, PICKLE_EXTENSIONS, ModelsRoot
from lorastudio.core.safetensors_header import read_header

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled" / "base"
_RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class ModelEntry:
    path: Path
    name: str  # path relative to its folder, as A1111 shows it
    kind: str  # "file" | "diffusers"

    @property
    def stem(self) -> str:
        return Path(self.name).stem if self.kind == "file" else self.name


class Catalog:
    def __init__(self, root: ModelsRoot, *, include_bundled: bool = True):
        self.root = root
        self.include_bundled = include_bundled
        self.hashes = HashCache(root.hash_cache)
        # folder -> (directory mtimes seen, entries): a <lora:> tag is looked up on every request,
        # and re-walking thousands of files each time costs more than a tiny image.
        self._scans: dict[tuple, tuple[dict[str, int], list[ModelEntry], bool]] = {}
        self._scan_count = 0  # bumped on every (re)scan: an index built from an older scan is stale
        self._lora_index: tuple[int, dict[str, ModelEntry]] = (-1, {})

    def _cached_scan(self, folder: Path, extensions: tuple[str, ...], *, folders: bool) -> list[ModelEntry]:
        """`_scan`, redone only when a directory of the tree changed (a file added, removed or
        renamed changes its directory's mtime; a new subfolder changes its parent's)."""
        return list(self._scan_entries(folder, extensions, folders=folders))

    def _scan_entries(self, folder: Path, extensions: tuple[str, ...], *, folders: bool) -> list[ModelEntry]:
        key = (str(folder), extensions, folders)
        cached = self._scans.get(key)
        if cached is not None and cached[2] and _dirs_unchanged(cached[0]):
            return cached[1]
        # Stamps first: a file added while the scan runs makes the next call scan again.
        started = time.time_ns()
        stamps = _dir_stamps(folder)
        entries = _scan(folder, extensions, folders=folders)
        # A directory changed within the last seconds may change again within the same mtime
        # tick (coarse on many filesystems): such a scan is not reused (git's "racy" rule).
        trusted = max(stamps.values()) < started - _RACY_NS
        self._scans[key] = (stamps, entries, trusted)
        self._scan_count += 1
        return entries

    # --- checkpoints --------------------------------------------------------------------
    def checkpoints(self) -> list[ModelEntry]:
        entries = _scan(self.root.checkpoints, CHECKPOINT_EXTENSIONS, folders=True)
        if self.include_bundled and BUNDLED_DIR.is_dir():
            known = {e.name for e in entries}
            entries += [e for e in _scan(BUNDLED_DIR, (".safetensors",), folders=False) if e.name not in known]
        return entries

    def default_checkpoint(self, *, allow_pickle: bool = False) -> ModelEntry:
        """The first checkpoint that can be loaded: a broken download or a refused pickle that
        sorts first must not make every request without a model fail while a good one exists."""
        entries = self.checkpoints()
        for e in entries:
            if checkpoint_problem(e, allow_pickle=allow_pickle) is None:
                return e
        if entries:
            why = checkpoint_problem(entries[0], allow_pickle=allow_pickle)
            raise NotFound("model", f"(default; none loadable, {entries[0].name}: {why})", [])
        raise NotFound("model", "(default)", [])

    def broken_checkpoints(self, *, allow_pickle: bool = False) -> list[tuple[ModelEntry, str]]:
        """Checkpoints that cannot be loaded, with the reason (for listings)."""
        out = []
        for e in self.checkpoints():
            why = checkpoint_problem(e, allow_pickle=allow_pickle)
            if why is not None:
                out.append((e, why))
        return out

    def title(self, entry: ModelEntry, *, compute: bool = True) -> str:
        short = self.short_hash(entry, compute=compute)
        return f"{entry.name} [{short}]" if short else entry.name

    def short_hash(self, entry: ModelEntry, *, compute: bool = True) -> str | None:
        if entry.kind != "file":
            return None
        full = self.sha256(entry.path, compute=compute)
        return a1111_short_hash(full) if full else None

    def sha256(self, path: Path, *, compute: bool = True) -> str | None:
        if not compute:
            return self.hashes.lookup(path, "sha256")
        return sha256_file(path, cache=self.hashes)

    def find_checkpoint(self, ref: str) -> ModelEntry:
        """Resolve a path, a title, a name, a stem or a short hash, as A1111 does."""
        _check_ref("model", ref)
        path = Path(ref).expanduser()
        if _exists(path):
            kind = "diffusers" if path.is_dir() else "file"
            return ModelEntry(path.resolve(), path.name, kind)
        entries = self.checkpoints()
        ref_name, _, rest = ref.partition(" [")
        ref_name = ref_name.strip()
        short = rest.rstrip("]").strip().lower() if rest else ""
        if not short and len(ref_name) >= 8 and all(c in "0123456789abcdef" for c in ref_name.lower()):
            short, ref_name = ref_name.lower(), ""
        if short:  # the hash names the exact file, so it wins over the name
            for e in entries:
                full = self.sha256(e.path) if e.kind == "file" else None
                if full and full.startswith(short):
                    return e
        for e in entries:
            if ref_name and ref_name in (e.name, e.stem, e.path.name):
                return e
        raise NotFound("model", ref, _closest(ref_name, [e.name for e in entries]))

    # --- other folders -------------------------------------------------------------------
    def loras(self) -> list[ModelEntry]:
        return self._cached_scan(self.root.lora, LORA_EXTENSIONS, folders=False)

    def find_lora(self, name: str) -> ModelEntry:
        # Most tags name a file at the top of models/Lora: look there before scanning the tree,
        # since every <lora:> tag of every request comes through here.
        try:
            check_path(name)
            check_name(Path(name).name, suffix=".safetensors")
        except ValueError as exc:
            raise InvalidParameter("lora", name, str(exc)) from None
        for ext in LORA_EXTENSIONS:
            direct = self.root.lora / f"{name}{ext}"
            if direct.is_file() and direct.parent == self.root.lora and not name.startswith("."):
                return ModelEntry(direct, direct.name, "file")
        entries = self._scan_entries(self.root.lora, LORA_EXTENSIONS, folders=False)
        built_from, index = self._lora_index
        if built_from != self._scan_count:
            # First entry wins for each of its names, as the linear search it replaces did.
            index = {}
            for e in entries:
                for key in (e.stem, e.name, e.path.stem):
                    index.setdefault(key, e)
            self._lora_index = (self._scan_count, index)
        found = index.get(name)
        if found is not None:
            return found
        raise NotFound("LoRA", name, _closest(name, [e.path.stem for e in entries]))

    def vaes(self) -> list[ModelEntry]:
        return _scan(self.root.vae, CHECKPOINT_EXTENSIONS, folders=False)

    def find_vae(self, name: str) -> ModelEntry:
        _check_ref("vae", name)
        path = Path(name).expanduser()
        if _exists(path) and path.is_file():
            return ModelEntry(path.resolve(), path.name, "file")
        entries = self.vaes()
        for e in entries:
            if name in (e.name, e.stem, e.path.name):
                return e
        raise NotFound("VAE", name, _closest(name, [e.name for e in entries]))

    def embeddings(self) -> list[ModelEntry]:
        out: list[ModelEntry] = []
        for folder in self.root.embeddings:
            out += _scan(folder, (".safetensors", ".pt", ".bin"), folders=False)
        return out


def _scan(folder: Path, extensions: tuple[str, ...], *, folders: bool) -> list[ModelEntry]:
    if not folder.is_dir():
        return []
    found: list[ModelEntry] = []
    for p in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if p.is_file() and p.suffix.lower() in extensions:
            inside = p.relative_to(folder).parents
            if any(str(rel) != "." and (folder / rel / "model_index.json").exists() for rel in inside):
                continue  # weights inside a diffusers folder
            found.append(ModelEntry(p, p.relative_to(folder).as_posix(), "file"))
        elif folders and p.is_dir() and (p / "model_index.json").is_file():
            found.append(ModelEntry(p, p.relative_to(folder).as_posix(), "diffusers"))
    return found


def checkpoint_problem(entry: ModelEntry, *, allow_pickle: bool = False) -> str | None:
    """Why `entry` cannot be loaded, judged from its header alone (cheap); None if it looks usable."""
    try:
        if entry.kind == "diffusers":
            index = json.loads((entry.path / "model_index.json").read_text(encoding="utf-8"))
            return None if isinstance(index, dict) else "model_index.json is not a JSON object"
        suffix = entry.path.suffix.lower()
        if suffix in PICKLE_EXTENSIONS:
            if not allow_pickle:
                return "a pickle file (.ckpt/.pt), refused without --allow-pickle"
            with open(entry.path, "rb") as fh:
                head = fh.read(2)
            # torch.save writes a zip (PK) or, in the legacy format, a pickle stream (0x80 protocol byte).
            if head[:2] == b"PK" or head[:1] == b"\x80":
                return None
            return "not a torch checkpoint (no zip or pickle header)"
        read_header(entry.path)
        return None
    except ModelFileError as exc:
        return exc.why
    except (OSError, ValueError) as exc:
        return f"unreadable ({getattr(exc, 'strerror', None) or exc})"


def _check_ref(field: str, ref: str) -> None:
    # A 300-byte name makes every system call fail with ENAMETOOLONG: refuse it as bad input.
    try:
        check_path(ref)
    except ValueError as exc:
        raise InvalidParameter(field, ref, str(exc)) from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # unreadable or not a possible path: it names no file we can use
        return False
def _dir_stamps(folder: Path) -> dict[str, int]:
    stamps: dict[str, int] = {}
    if not folder.is_dir():
        return {str(folder): -1}
    for dirpath, _dirs, _files in os.walk(folder):
        try:
            stamps[dirpath] = os.stat(dirpath).st_mtime_ns
        except OSError:
            stamps[dirpath] = -1
    return stamps


def _dirs_unchanged(stamps: dict[str, int]) -> bool:
    for d, mtime in stamps.items():
        try:
            if os.stat(d).st_mtime_ns != mtime:
                return False
        except OSError:
            if mtime != -1:
                return False
    return True


def _closest(name: str, names: list[str]) -> list[str]:
    return difflib.get_close_matches(name, names, n=3, cutoff=0.3) or names[:3]
