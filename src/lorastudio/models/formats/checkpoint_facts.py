"""What a checkpoint file holds beyond the weights a family loads, read from its header alone.

No torch here: `lorastudio models` lists storage dtypes and notes for every file instantly.

- Storage dtype: fp8 downloads (`float8_e4m3fn` / `float8_e5m2`) load like any other and are
  upcast to the compute dtype as they are copied into the model; the listing names what the
  file stores so a user knows which download they have.
- EMA weights (`model_ema.*`, LitEma's names with the dots removed): A1111 builds its model
  without EMA and loads the file non-strictly, so the regular weights are used; we do the same
  (diffusers' single-file conversion reads `model.diffusion_model.*` only) and say so.
- Old SD 1.x text-encoder names (`cond_stage_model.transformer.encoder.*` without the
  `text_model.` level, from transformers < 4.22): renamed as A1111's
  `checkpoint_dict_replacements_sd1` renames them; diffusers refuses them as they are.
- A pickle whose tensors sit under a `state_dict` key (PyTorch Lightning): unwrapped when it is
  converted; the converted file records it under SOURCE_NOTE_KEY.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping

from lorastudio.core.safetensors_header import SafetensorsHeader

__all__ = [
    "SOURCE_NOTE_KEY",
    "STORAGE_DTYPE_NAMES",
    "storage_dtype",
    "is_fp8",
    "ema_tensor_count",
    "ema_note",
    "is_ema_key",
    "legacy_sd1_text_encoder_renames",
    "checkpoint_notes",
    "rename_map_is_safe",
    "listing_summary",
    "OLD_NAMES_NOTE",
]

# Metadata entry of a file we converted (from a pickle), saying what the original looked like.
SOURCE_NOTE_KEY = "lorastudio.source"

# safetensors dtype codes -> the torch names users see in file names and model cards.
STORAGE_DTYPE_NAMES = {
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F16": "float16", "BF16": "bfloat16",
    "F32": "float32", "F64": "float64",
}
FP8_NAMES = ("float8_e4m3fn", "float8_e5m2")

# A1111 modules/sd_models.py `checkpoint_dict_replacements_sd1`: old prefix -> current prefix.
_SD1_TEXT_ENCODER_RENAMES = {
    f"cond_stage_model.transformer.{part}.": f"cond_stage_model.transformer.text_model.{part}."
    for part in ("embeddings", "encoder", "final_layer_norm")
}
OLD_NAMES_NOTE = ("text encoder stored under the old names (cond_stage_model.transformer.encoder.* without "
                  "text_model.); renamed as A1111 does")
_EMA_PREFIX = "model_ema."
_EMA_BOOKKEEPING = {"model_ema.decay", "model_ema.num_updates"}


def storage_dtype(header: SafetensorsHeader) -> str:
    """The floating-point dtype(s) the weights are stored in, most elements first: 'float16',
    'float8_e4m3fn+bfloat16' (fp8 files usually keep norms and biases in 16 bits)."""
    counts: Counter[str] = Counter()
    for info in header.tensors.values():
        name = STORAGE_DTYPE_NAMES.get(info.dtype)
        if name is not None:
            n = 1
            for d in info.shape:
                n *= d
            counts[name] += n
    if not counts:
        return "no float tensors"
    return "+".join(name for name, _ in counts.most_common())


def is_fp8(header: SafetensorsHeader) -> bool:
    return any(STORAGE_DTYPE_NAMES.get(i.dtype) in FP8_NAMES for i in header.tensors.values())


def ema_tensor_count(keys: Collection[str]) -> int:
    return sum(1 for k in keys if k.startswith(_EMA_PREFIX) and k not in _EMA_BOOKKEEPING)


def is_ema_key(key: str) -> bool:
    return key.startswith(_EMA_PREFIX)


def ema_note(count: int) -> str:
    return f"also holds EMA weights ({count} model_ema.* tensors); the regular weights are used, as A1111 does"


def legacy_sd1_text_encoder_renames(keys: Collection[str]) -> dict[str, str]:
    """{old key: new key} for an SD 1.x file that stores CLIP without the `text_model.` level."""
    if "model.diffusion_model.input_blocks.0.0.weight" not in keys:
        return {}
    renames = {}
    for key in keys:
        for old, new in _SD1_TEXT_ENCODER_RENAMES.items():
            if key.startswith(old):
                renames[key] = new + key[len(old):]
    return renames


def checkpoint_notes(header: SafetensorsHeader, *, compute_dtype: str | None = None) -> list[str]:
    """Plain sentences about how the file is read (empty for an ordinary checkpoint)."""
    notes = []
    source = header.metadata.get(SOURCE_NOTE_KEY)
    if source:
        notes.append(source)
    keys = header.tensors.keys()
    ema = ema_tensor_count(keys)
    if ema:
        notes.append(ema_note(ema))
    if legacy_sd1_text_encoder_renames(keys):
        notes.append(OLD_NAMES_NOTE)
    if is_fp8(header):
        target = f" to {compute_dtype}" if compute_dtype else ""
        notes.append(f"stored as {storage_dtype(header)}; upcast{target} for compute")
    return notes


def rename_map_is_safe(keys: Collection[str], renames: Mapping[str, str]) -> bool:
    """True when no renamed key collides with a key that is kept."""
    kept = set(keys) - set(renames)
    return not (set(renames.values()) & kept) and len(set(renames.values())) == len(renames)


def listing_summary(path) -> str:
    """One short line for `lorastudio models`: storage dtype, then anything unusual about the file."""
    from pathlib import Path

    from lorastudio.core.errors import ModelFileError
    from lorastudio.core.safetensors_header import read_header
    from lorastudio.models.formats.unsupported import identify_by_magic, identify_unsupported

    path = Path(path)
    if path.is_dir():
        return "diffusers folder"
    what = identify_by_magic(path)
    if what:
        return f"not loadable: {what.split(';')[0]}"
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return "pickle (not inspected; needs --allow-pickle)"
    try:
        header = read_header(path)
    except ModelFileError as exc:
        return f"unreadable: {exc.why}"
    what = identify_unsupported(header.tensors.keys())
    if what:
        return f"{storage_dtype(header)}; not loadable: {what.split(';')[0]}"
    notes = [n for n in checkpoint_notes(header) if not n.startswith("stored as")]
    return "; ".join([storage_dtype(header), *notes])
