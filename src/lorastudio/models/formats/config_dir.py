"""Write a weightless diffusers pipeline folder for `from_single_file(path, config=folder)`.

diffusers needs a folder with model_index.json, each component's config and the tokenizers to
assemble a pipeline from a single-file checkpoint; without one it would download the reference
repo from the Hub. We write that folder ourselves from inferred configs and the bundled tokenizer
files, so loading stays offline.

Folders are content-addressed (hash of everything that goes in) under `root` and written to a
temporary sibling that is renamed into place, so a folder that exists is complete and reusable, and
concurrent writers of the same folder both succeed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from lorastudio.core.errors import InvalidParameter

__all__ = ["make_config_dir", "CLIP_VOCAB_DIR"]

CLIP_VOCAB_DIR = Path(__file__).resolve().parent.parent / "bundled" / "tokenizers" / "clip"
_FORMAT_VERSION = 1  # bump when the folder content for the same inputs changes


def make_config_dir(
    pipeline_class_name: str,
    configs: Mapping[str, Mapping[str, Any]],
    tokenizers: Mapping[str, Mapping[str, Any]],
    scheduler: Mapping[str, Any],
    root: Path,
    *,
    pipeline_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Return a diffusers pipeline folder (no weights) under `root`, writing it if needed.

    configs:    {component: config}. diffusers configs need `_class_name`; transformers configs
                need `architectures` (e.g. ["CLIPTextModel"]) and are written as config.json.
    tokenizers: {component: spec}, spec one of
                {"kind": "clip", "pad_token": "<|endoftext|>", "model_max_length": 77}
                    the bundled CLIP BPE vocabulary (ids of openai/clip-vit-large-patch14);
                {"kind": "files", "path": folder, "class": "T5TokenizerFast"}
                    a tokenizer folder copied as is; "class" defaults to its tokenizer_config.json
                    `tokenizer_class`.
    scheduler:  scheduler config with `_class_name`.
    pipeline_extra: extra model_index.json entries (e.g. {"requires_safety_checker": False}).
    """
    index: dict[str, Any] = {"_class_name": pipeline_class_name}
    plan_configs: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, cfg in configs.items():
        library, cls, filename = _model_entry(name, cfg)
        index[name] = [library, cls]
        plan_configs[name] = (filename, dict(cfg))

    plan_tokenizers: dict[str, dict[str, Any]] = {}
    sources: dict[str, Path] = {}  # kept out of the hash: a copied folder is addressed by content
    for name, spec in tokenizers.items():
        spec = dict(spec)
        kind = spec.get("kind")
        if kind == "clip":
            index[name] = ["transformers", "CLIPTokenizer"]
            spec.setdefault("pad_token", "<|endoftext|>")
            spec.setdefault("model_max_length", 77)
            spec["_files"] = _tree_digest(CLIP_VOCAB_DIR)
        elif kind == "files":
            src = Path(spec.get("path", ""))
            if not src.is_dir():
                raise InvalidParameter(f"tokenizers.{name}.path", str(src), "is not a folder")
            sources[name] = src.resolve()
            del spec["path"]
            index[name] = ["transformers", spec.get("class") or _tokenizer_class(src, name)]
            spec["_files"] = _tree_digest(src)
        else:
            raise InvalidParameter(f"tokenizers.{name}.kind", kind, "expected 'clip' or 'files'")
        plan_tokenizers[name] = spec

    if "_class_name" not in scheduler:
        raise InvalidParameter("scheduler._class_name", None, "scheduler config must name its class")
    index["scheduler"] = ["diffusers", scheduler["_class_name"]]
    for key, value in (pipeline_extra or {}).items():
        if key in index:
            raise InvalidParameter(f"pipeline_extra.{key}", value, "clashes with a component name")
        index[key] = value

    plan = {
        "format": _FORMAT_VERSION,
        "index": index,
        "configs": plan_configs,
        "tokenizers": plan_tokenizers,
        "scheduler": dict(scheduler),
    }
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:20]
    root = Path(root)
    final = root / f"{pipeline_class_name}-{digest}"
    if final.is_dir():
        return final

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=root))
    try:
        _write_json(tmp / "model_index.json", index)
        for name, (filename, cfg) in plan_configs.items():
            _write_json(tmp / name / filename, cfg)
        for name, spec in plan_tokenizers.items():
            _write_tokenizer(tmp / name, spec, sources.get(name))
        _write_json(tmp / "scheduler" / "scheduler_config.json", dict(scheduler))
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # a concurrent writer finishing first is fine; anything else is not
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _model_entry(name: str, cfg: Mapping[str, Any]) -> tuple[str, str, str]:
    if "_class_name" in cfg:
        return "diffusers", str(cfg["_class_name"]), "config.json"
    archs = cfg.get("architectures")
    if isinstance(archs, (list, tuple)) and archs:
        return "transformers", str(archs[0]), "config.json"
    raise InvalidParameter(f"configs.{name}", None, "needs '_class_name' (diffusers) or 'architectures' (transformers)")


def _tokenizer_class(src: Path, name: str) -> str:
    try:
        cls = json.loads((src / "tokenizer_config.json").read_text("utf-8")).get("tokenizer_class")
    except (OSError, ValueError):
        cls = None
    if not cls:
        raise InvalidParameter(f"tokenizers.{name}.class", None, f"{src} has no tokenizer_class; pass 'class'")
    return str(cls)


def _write_tokenizer(dest: Path, spec: Mapping[str, Any], source: Path | None) -> None:
    if source is not None:
        shutil.copytree(source, dest)
        return
    from transformers import CLIPTokenizer

    options = {k: v for k, v in spec.items() if k not in {"kind", "_files", "class"}}
    tok = CLIPTokenizer(str(CLIP_VOCAB_DIR / "vocab.json"), str(CLIP_VOCAB_DIR / "merges.txt"), **options)
    tok.save_pretrained(str(dest))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()
