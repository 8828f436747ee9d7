"""Opening a base model: probe the file, pick the family, hand over to it.

Pickled files (.ckpt/.pt/.bin) can run code when unpickled, so they are refused unless the user
opts in; even then only `torch.load(weights_only=True)` is used. Checkpoints are re-saved as
safetensors in the cache so the rest of the code sees one format; LoRA, VAE and embedding files
go through `read_tensors` / `load_pickle_weights_only` under the same rule.

Layouts A1111 reads and diffusers does not are brought into the current layout first (see
formats/checkpoint_facts.py); what was done is logged and shown by `lorastudio models`. Formats
we cannot load yet (formats/unsupported.py) are named in the error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from lorastudio.core.errors import ModelFileError, PickleRefused, UnknownModelFamily
from lorastudio.core.paths import PICKLE_EXTENSIONS
from lorastudio.core.safetensors_header import SafetensorsHeader, read_header
from lorastudio.models.formats.checkpoint_facts import (
    OLD_NAMES_NOTE,
    SOURCE_NOTE_KEY,
    checkpoint_notes,
    ema_note,
    ema_tensor_count,
    is_ema_key,
    rename_map_is_safe,
)
from lorastudio.models.formats.unsupported import identify_by_magic, identify_unsupported
from lorastudio.models.families.base import LoadOptions, ModelFamily
from lorastudio.models.families.registry import families
from lorastudio.models.loaded import LoadedModel


log = logging.getLogger(__name__)


def probe_checkpoint(path: Path, options: LoadOptions) -> tuple[Path, dict[str, tuple[int, ...]], dict[str, str]]:
    """Return (safetensors path, key -> shape, metadata); pickles are converted when allowed."""
    st_path, header = open_checkpoint(path, options)
    shapes = {name: tuple(t.shape) for name, t in header.tensors.items()}
    return st_path, shapes, dict(header.metadata)


def open_checkpoint(path: Path, options: LoadOptions) -> tuple[Path, SafetensorsHeader]:
    """(safetensors file in the current layout, its header) for a checkpoint the user gave.

    Unsupported formats raise UnknownModelFamily naming what the file is. A file with the old
    SD 1.x text-encoder names is served as a renamed copy in the cache (tensor bytes unchanged).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "file not found")
    what = identify_by_magic(path)
    if what:
        raise UnknownModelFamily(path, f"this is {what}")
    source = path  # errors name the user's file, not a converted copy
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        path = _pickle_to_safetensors(path, options)
    header = read_header(path)
    what = identify_unsupported(header.tensors.keys())
    if what:
        raise UnknownModelFamily(source, f"this is {what}")
    renames = key_renames(header.tensors.keys())
    if renames:
        from lorastudio.models.formats.renamed_copy import write_renamed_copy

        if not rename_map_is_safe(header.tensors.keys(), renames):
            raise ModelFileError(source, "holds the text encoder under both the old and the current names")
        out = _cache_file(path, options, "renamed")
        if not out.exists():
            write_renamed_copy(path, header, renames, out, extra_metadata={SOURCE_NOTE_KEY: _joined(
                header.metadata.get(SOURCE_NOTE_KEY), OLD_NAMES_NOTE)})
        path, header = out, read_header(out)
    return path, header


_STATE_DICT_NOTE = ("weights stored under a 'state_dict' key (a PyTorch Lightning checkpoint); those are used, "
                    "as A1111 does")


def _joined(*notes: str | None) -> str:
    return "; ".join(n for n in notes if n)


def _cache_file(path: Path, options: LoadOptions, kind: str) -> Path:
    st = path.stat()
    # v2: converted files carry the SOURCE_NOTE_KEY metadata and the current text-encoder names
    digest = hashlib.sha256(f"v2:{path.resolve()}:{st.st_mtime_ns}:{st.st_size}".encode()).hexdigest()[:16]
    return options.cache_dir / kind / f"{path.stem}-{digest}.safetensors"


def key_renames(keys) -> dict[str, str]:
    """{old key: current key} that some family asks for before its checkpoints are detected and loaded."""
    for fam in families():
        renames = fam.checkpoint_key_renames(keys)
        if renames:
            return renames
    return {}


def detect_family(path: Path, keys) -> ModelFamily:
    for fam in families():
        if fam.claims_checkpoint(keys):
            return fam
    sample = ", ".join(sorted(keys)[:5])
    titles = [f.title for f in reversed(families())]  # oldest first: "SD 1.x, SDXL or FLUX.1"
    raise UnknownModelFamily(path, f"not a {', '.join(titles[:-1])} or {titles[-1]} checkpoint (first keys: {sample})")


def detect_folder_family(path: Path) -> tuple[ModelFamily, dict]:
    index_file = path / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(index_file, f"cannot read diffusers model_index.json: {exc}") from None
    for fam in families():
        if fam.claims_folder(index):
            return fam, index
    raise UnknownModelFamily(path, f"diffusers pipeline {index.get('_class_name')!r} is not supported")


def load_model(path: Path, options: LoadOptions, *, name: str | None = None, sha256: str | None = None,
               say: Callable[[str], None] | None = None) -> LoadedModel:
    """Load a checkpoint file or diffusers folder. `say` hears what the load is doing (a single
    file is converted to diffusers' layout); the log hears it too."""
    path = Path(path)

    def tell(message: str) -> None:
        log.info("%s", message)
        if say is not None:
            say(message)

    # Library errors (shape mismatches, missing configs, unreadable data) are reported against
    # the user's file; our own errors already name it.
    failures = (ValueError, KeyError, RuntimeError, OSError)
    if path.is_dir():
        family, _ = detect_folder_family(path)
        try:
            pipe = family.load_folder(path, options)
        except failures as exc:
            raise ModelFileError(path, f"could not load the diffusers folder as {family.title}: {exc}") from exc
    else:
        st_path, header = open_checkpoint(path, options)
        shapes = {name: tuple(t.shape) for name, t in header.tensors.items()}
        family = detect_family(path, shapes.keys())
        for note in checkpoint_notes(header, compute_dtype=options.dtype):
            log.info("%s: %s", path.name, note)
        # Not cached: from_single_file maps the file and renames its keys, which costs about what
        # reading a saved diffusers copy would (docs/benchmarks.md, bench/load_cache.py).
        tell(f"loading {path.name} ({family.title}, {path.stat().st_size / 2**30:.1f} GiB) and converting it to "
             f"diffusers' layout")
        try:
            pipe = family.load_checkpoint(st_path, shapes, dict(header.metadata), options)
        except failures as exc:
            raise ModelFileError(path, f"could not load as {family.title}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    pipe.to(options.device)
    return LoadedModel(family=family, pipe=pipe, path=path, name=name or path.name, sha256=sha256)


PICKLE_HELP = (
    "pickles can run arbitrary code when loaded and are refused. Convert it to .safetensors (e.g. "
    "`python -c \"import torch,safetensors.torch as s; sd=torch.load('in.ckpt', weights_only=True); "
    "s.save_file(sd.get('state_dict', sd), 'out.safetensors')\"`) or pass --allow-pickle "
    "(allow_pickle=True) to load it with torch.load(weights_only=True)."
)


def load_pickle_weights_only(path: Path, allow_pickle: bool, *, also_allow: tuple = ()):
    """The object in a .ckpt/.pt file, through torch's restricted unpickler only.

    weights_only=True admits tensors, containers, numbers and strings (plus the classes named in
    `also_allow`); any other global (a class instance, a function to call) makes torch refuse the
    file, and there is no fallback to a full unpickle, whatever the file holds.
    """
    path = Path(path)
    if not allow_pickle:
        raise PickleRefused(path, PICKLE_HELP)
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(list(also_allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(path, f"not loadable with torch.load(weights_only=True), so refused (no unsafe "
                                   f"fallback): {first}") from None


def read_tensors(path: Path, *, allow_pickle: bool) -> tuple[dict, dict[str, str]]:
    """(name -> tensor, metadata) of a LoRA / VAE file: .safetensors, or a weights-only pickle when allowed."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        import torch

        obj = load_pickle_weights_only(path, allow_pickle)
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict):
            raise ModelFileError(path, "the pickle does not hold a dict of tensors")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, {}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_header(path)  # names the file when it is truncated or not safetensors
    try:
        return load_file(str(path)), dict(header.metadata)
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(path, f"cannot read tensors: {exc}") from None


def _pickle_to_safetensors(path: Path, options: LoadOptions) -> Path:
    import torch
    from safetensors.torch import save_file

    from lorastudio.core.atomic import atomic_path

    if not options.allow_pickle:  # a conversion made earlier with permission does not grant it now
        raise PickleRefused(path, PICKLE_HELP)
    out = _cache_file(path, options, "converted")
    if out.exists():
        return out
    obj = load_pickle_weights_only(path, options.allow_pickle)
    state, notes = obj, []
    # A1111 takes the weights from under "state_dict" (and drops a nested one) like this.
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state, notes = state["state_dict"], [_STATE_DICT_NOTE]
    if not isinstance(state, dict):
        raise ModelFileError(path, "the pickle does not hold a state dict")
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(path, "the pickle holds no tensors")
    ema = ema_tensor_count(tensors.keys())
    if ema:
        # not copied into the cache: nothing reads them (A1111 neither), and they double its size
        tensors = {k: v for k, v in tensors.items() if not is_ema_key(k)}
        notes.append(ema_note(ema))
    renames = key_renames(tensors.keys())
    if renames and rename_map_is_safe(tensors.keys(), renames):
        tensors = {renames.get(k, k): v for k, v in tensors.items()}
        notes.append(OLD_NAMES_NOTE)
    metadata = {SOURCE_NOTE_KEY: _joined(*notes)} if notes else None
    with atomic_path(out) as tmp:
        # clone: checkpoints share storage between entries (EMA copies, tied weights)
        save_file({k: v.clone() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return out
