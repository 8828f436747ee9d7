"""ControlNet models from `models/ControlNet` (A1111 / Forge / the ControlNet extension's folder).

Single files (`control_v11p_sd15_canny.safetensors`, the `control_model.`-prefixed or bare
original names, fp16 or fp32) and diffusers folders (`config.json` + weights). The family is read
off the keys by each family (`ModelFamily.claims_controlnet`), the config comes from the loaded
base model (a ControlNet copies its base UNet's encoder), and the family builds the module.
Pickles (.pth) load only with allow_pickle, weights-only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lorastudio.core.errors import ModelFileError, NotFound, UnknownModelFamily
from lorastudio.core.paths import CHECKPOINT_EXTENSIONS, PICKLE_EXTENSIONS
from lorastudio.core.safetensors_header import read_header
from lorastudio.models.families.base import LoadOptions, ModelFamily
from lorastudio.models.families.registry import families

CONTROLNET_FOLDERS = ("ControlNet", "controlnet")  # A1111/Forge, ComfyUI
# The original ControlNet checkpoints keep the network under this prefix; extracted files drop it.
LDM_PREFIX = "control_model."


@dataclass(frozen=True)
class ControlNetEntry:
    name: str  # file stem or folder name: what A1111's dropdown and the API's `model` use
    path: Path
    kind: str  # "file" | "folder"


def controlnet_entries(models_root: Path) -> list[ControlNetEntry]:
    """ControlNet files and diffusers folders under the models root, sorted by name."""
    seen: dict[str, ControlNetEntry] = {}
    for sub in CONTROLNET_FOLDERS:
        folder = Path(models_root) / sub
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix.lower() in CHECKPOINT_EXTENSIONS and not _inside_diffusers_folder(p):
                seen.setdefault(p.stem, ControlNetEntry(p.stem, p, "file"))
            elif p.is_dir() and (p / "config.json").is_file():
                seen.setdefault(p.name, ControlNetEntry(p.name, p, "folder"))
    return sorted(seen.values(), key=lambda e: e.name.lower())


def _inside_diffusers_folder(p: Path) -> bool:
    return (p.parent / "config.json").is_file()


def find_controlnet(models_root: Path, ref: str) -> ControlNetEntry:
    """By name as A1111 writes it: `name`, `name [hash]`, or the file name."""
    entries = controlnet_entries(models_root)
    name = ref.rsplit(" [", 1)[0].strip() if ref.endswith("]") else ref.strip()
    for e in entries:
        if name in (e.name, e.path.name):
            return e
    from difflib import get_close_matches

    raise NotFound("ControlNet model", ref, get_close_matches(name, [e.name for e in entries], n=3, cutoff=0.3))


def controlnet_keys(path: Path, options: LoadOptions) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """(safetensors file, key -> shape with the `control_model.` prefix removed)."""
    path = Path(path)
    if path.is_dir():
        weights = _folder_weights(path)
        header = read_header(weights)
        return weights, {k: tuple(t.shape) for k, t in header.tensors.items()}
    if not path.exists():
        raise ModelFileError(path, "file not found")
    st = path
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        from lorastudio.models.loader import _pickle_to_safetensors

        st = _pickle_to_safetensors(path, options)
    header = read_header(st)
    shapes = {(k[len(LDM_PREFIX):] if k.startswith(LDM_PREFIX) else k): tuple(t.shape)
              for k, t in header.tensors.items()}
    return st, shapes


def _folder_weights(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        if (folder / name).is_file():
            return folder / name
    raise ModelFileError(folder, "diffusers ControlNet folder without diffusion_pytorch_model.safetensors")


def controlnet_family(path: Path, shapes) -> ModelFamily:
    if "difference" in shapes:
        raise UnknownModelFamily(path, "a 'diff' ControlNet (weights stored as a difference to SD 1.5), which "
                                       "diffusers cannot read; use the full ControlNet file of the same name")
    for fam in families():
        if fam.claims_controlnet(shapes):
            return fam
    hint = "input_hint_block.0.weight" in shapes or "controlnet_cond_embedding.conv_in.weight" in shapes
    raise UnknownModelFamily(path, "not a ControlNet model of a supported family" if hint
                             else "not a ControlNet model (no hint encoder: a T2I-Adapter, IP-Adapter, "
                                  "control-LoRA or a base model?)")


def load_controlnet(path: Path, base_family: ModelFamily, base_pipe, options: LoadOptions):
    """The ControlNet module for `base_pipe`; refuses, naming both families, one made for another."""
    st, shapes = controlnet_keys(path, options)
    fam = controlnet_family(path, shapes)
    if fam.name != base_family.name:
        raise ModelFileError(path, f"is a {fam.title} ControlNet; the loaded model is {base_family.title}")
    config = None
    if Path(path).is_dir():
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return fam.load_controlnet(st, shapes, base_pipe, options, folder_config=config)
