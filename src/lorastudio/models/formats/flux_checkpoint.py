"""FLUX.1 checkpoints: diffusers <-> Black Forest Labs (BFL) single-file layout, config inference.

Layouts users keep on disk (models/Stable-diffusion or models/unet):

    transformer only   flux1-dev.safetensors / flux1-schnell.safetensors as BFL published them:
                       img_in, txt_in, time_in, vector_in, guidance_in (dev only), double_blocks.N,
                       single_blocks.N, final_layer; beside it ae.safetensors, clip_l.safetensors,
                       t5xxl_*.safetensors (see flux_components.py)
    prefixed           the same keys under `model.diffusion_model.` (some trainers/mergers)
    all-in-one         what ComfyUI's checkpoint save and Forge's FLUX checkpoints use:
                       model.diffusion_model.*  vae.* (ae keys)  text_encoders.clip_l.transformer.*
                       text_encoders.t5xxl.transformer.*  (first_stage_model.* accepted for the VAE)

BFL fuses what diffusers keeps apart: attention q, k, v are one `qkv` linear, and a single block's
q, k, v and MLP input are one `linear1`. The mapping lives in the tables below; both directions and
the kohya LoRA writer read the same tables.

diffusers' own single-file converter hardcodes FLUX.1's width (3072) when it splits `linear1`, so it
cannot open narrower models such as the tiny test ones; `flux_checkpoint_to_diffusers` takes the
split sizes from the config instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence, TypeVar

from lorastudio.core.errors import InvalidParameter, ModelFileError, UnknownModelFamily
from lorastudio.models.formats.sd_config_inference import CONFIG_METADATA_KEY, apply_config_overrides

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "TRANSFORMER_PREFIX",
    "VAE_PREFIXES",
    "CLIP_L_PREFIX",
    "T5XXL_PREFIX",
    "CONFIG_METADATA_KEY",
    "FLUX_CONFIG_DIR",
    "T5_TOKENIZER_DIR",
    "FluxLinear",
    "swap_halves",
    "FluxLayout",
    "flux_linears",
    "flux_params",
    "flux_checkpoint_from_diffusers",
    "flux_checkpoint_to_diffusers",
    "detect_flux_layout",
    "split_flux_checkpoint",
    "join_flux_checkpoint",
    "flux_variant",
    "infer_flux_configs",
    "infer_component_config",
    "default_flux_configs",
    "flux_tokenizer_specs",
    "t5_tokenizer_dir",
]

V = TypeVar("V")
Shapes = Mapping[str, Sequence[int]]

TRANSFORMER_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("vae.", "first_stage_model.")  # ComfyUI/Forge write vae.; LDM tools first_stage_model.
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
T5XXL_PREFIX = "text_encoders.t5xxl.transformer."
_BUNDLED = Path(__file__).resolve().parent.parent / "bundled"
FLUX_CONFIG_DIR = _BUNDLED / "configs" / "flux"
T5_TOKENIZER_DIR = _BUNDLED / "tokenizers" / "t5"
_MARKER = "double_blocks.0.img_attn.norm.key_norm.scale"  # what diffusers and ComfyUI key FLUX.1 on

# --- name tables ----------------------------------------------------------------------------------
# (BFL linear, diffusers linears whose outputs it stacks, in row order). Every one has weight + bias.
GLOBAL_LINEARS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("img_in", ("x_embedder",)),
    ("txt_in", ("context_embedder",)),
    ("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",)),
    ("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",)),
    ("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",)),
    ("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",)),
    ("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",)),
    ("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",)),
    ("final_layer.linear", ("proj_out",)),
    ("final_layer.adaLN_modulation.1", ("norm_out.linear",)),
)
DOUBLE_BLOCK_LINEARS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("img_attn.proj", ("attn.to_out.0",)),
    ("txt_attn.proj", ("attn.to_add_out",)),
    ("img_mlp.0", ("ff.net.0.proj",)),
    ("img_mlp.2", ("ff.net.2",)),
    ("txt_mlp.0", ("ff_context.net.0.proj",)),
    ("txt_mlp.2", ("ff_context.net.2",)),
    ("img_mod.lin", ("norm1.linear",)),
    ("txt_mod.lin", ("norm1_context.linear",)),
)
SINGLE_BLOCK_LINEARS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ("linear2", ("proj_out",)),
    ("modulation.lin", ("norm.linear",)),
)
# per-head RMSNorm scales: (BFL tensor, diffusers tensor)
DOUBLE_BLOCK_PARAMS: tuple[tuple[str, str], ...] = (
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
)
SINGLE_BLOCK_PARAMS: tuple[tuple[str, str], ...] = (
    ("norm.query_norm.scale", "attn.norm_q.weight"),
    ("norm.key_norm.scale", "attn.norm_k.weight"),
)
# BFL's LastLayer modulation emits (shift, scale); diffusers' AdaLayerNormContinuous reads (scale, shift).
SWAPPED_HALVES = frozenset({"final_layer.adaLN_modulation.1"})


@dataclass(frozen=True)
class FluxLinear:
    bfl: str  # module path in the BFL layout, e.g. "double_blocks.3.img_attn.qkv"
    parts: tuple[str, ...]  # diffusers module paths stacked along the output rows, in order

    @property
    def swapped(self) -> bool:
        return self.bfl in SWAPPED_HALVES


def flux_linears(num_layers: int, num_single_layers: int, guidance: bool) -> list[FluxLinear]:
    """Every linear layer of a FLUX.1 transformer, BFL name beside its diffusers name(s)."""
    out = [FluxLinear(b, d) for b, d in GLOBAL_LINEARS if guidance or not b.startswith("guidance_in.")]
    for i in range(num_layers):
        out += [FluxLinear(f"double_blocks.{i}.{b}", tuple(f"transformer_blocks.{i}.{p}" for p in d)) for b, d in DOUBLE_BLOCK_LINEARS]
    for i in range(num_single_layers):
        out += [
            FluxLinear(f"single_blocks.{i}.{b}", tuple(f"single_transformer_blocks.{i}.{p}" for p in d))
            for b, d in SINGLE_BLOCK_LINEARS
        ]
    return out


def flux_params(num_layers: int, num_single_layers: int) -> list[tuple[str, str]]:
    """(BFL tensor name, diffusers tensor name) of the tensors that are only renamed."""
    out = [(f"double_blocks.{i}.{b}", f"transformer_blocks.{i}.{d}") for i in range(num_layers) for b, d in DOUBLE_BLOCK_PARAMS]
    out += [
        (f"single_blocks.{i}.{b}", f"single_transformer_blocks.{i}.{d}") for i in range(num_single_layers) for b, d in SINGLE_BLOCK_PARAMS
    ]
    return out


def swap_halves(t: "Tensor") -> "Tensor":
    import torch

    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


# --- transformer conversion -----------------------------------------------------------------------


def _cfg(config: Any) -> dict[str, Any]:
    return dict(getattr(config, "config", config))  # a model, its FrozenDict config, or a plain dict


def flux_checkpoint_from_diffusers(
    transformer_sd: Mapping[str, "Tensor"], config: Any, *, prefix: str = ""
) -> dict[str, "Tensor"]:
    """diffusers FluxTransformer2DModel state dict -> BFL single-file names (optionally prefixed).

    Works on any device, `meta` included. Raises ModelFileError when a tensor is missing or left over.
    """
    import torch

    cfg = _cfg(config)
    src = dict(transformer_sd)
    where = "diffusers FLUX transformer state dict"
    out: dict[str, Tensor] = {}
    for lin in flux_linears(cfg["num_layers"], cfg["num_single_layers"], bool(cfg.get("guidance_embeds"))):
        for leaf in ("weight", "bias"):
            names = [f"{p}.{leaf}" for p in lin.parts]
            missing = [n for n in names if n not in src]
            if missing:
                raise ModelFileError(where, f"missing {missing[0]} (needed for {lin.bfl}.{leaf})")
            pieces = [src.pop(n) for n in names]
            t = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
            out[f"{prefix}{lin.bfl}.{leaf}"] = swap_halves(t) if lin.swapped else t
    for bfl, dif in flux_params(cfg["num_layers"], cfg["num_single_layers"]):
        if dif not in src:
            raise ModelFileError(where, f"missing {dif} (needed for {bfl})")
        out[prefix + bfl] = src.pop(dif)
    if src:
        raise ModelFileError(where, f"{len(src)} tensors have no place in the BFL layout, e.g. {sorted(src)[:3]}")
    return out


def flux_checkpoint_to_diffusers(bfl_sd: Mapping[str, "Tensor"], config: Any) -> dict[str, "Tensor"]:
    """BFL transformer tensors (bare or under `model.diffusion_model.`) -> diffusers names.

    Fused tensors are split with sizes from `config` (inner = heads x head_dim; a single block's
    MLP part is whatever remains of linear1), so any width works. Returned pieces are views.
    """
    cfg = _cfg(config)
    where = "FLUX transformer checkpoint"
    src = {k[len(TRANSFORMER_PREFIX):] if k.startswith(TRANSFORMER_PREFIX) else k: v for k, v in bfl_sd.items()}
    inner = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
    out: dict[str, Tensor] = {}
    for lin in flux_linears(cfg["num_layers"], cfg["num_single_layers"], bool(cfg.get("guidance_embeds"))):
        for leaf in ("weight", "bias"):
            name = f"{lin.bfl}.{leaf}"
            if name not in src:
                raise ModelFileError(where, f"missing {name}")
            t = src.pop(name)
            t = swap_halves(t) if lin.swapped else t
            sizes = _part_sizes(lin, t.shape[0], inner, where)
            for part, piece in zip(lin.parts, t.split(sizes, dim=0), strict=True):
                out[f"{part}.{leaf}"] = piece
    for bfl, dif in flux_params(cfg["num_layers"], cfg["num_single_layers"]):
        if bfl not in src:
            raise ModelFileError(where, f"missing {bfl}")
        out[dif] = src.pop(bfl)
    if src:
        raise ModelFileError(where, f"{len(src)} tensors do not belong to a FLUX.1 transformer, e.g. {sorted(src)[:3]}")
    return out


def _part_sizes(lin: FluxLinear, rows: int, inner: int, where: str) -> list[int]:
    n = len(lin.parts)
    if n == 1:
        return [rows]
    if n == 3 and rows == 3 * inner:
        return [inner] * 3
    if n == 4 and rows > 3 * inner:
        return [inner, inner, inner, rows - 3 * inner]
    raise ModelFileError(where, f"{lin.bfl} has {rows} rows, which does not split into {n} parts of width {inner}")


# --- file layouts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FluxLayout:
    transformer_prefix: str  # "" (BFL file) or "model.diffusion_model."
    vae_prefix: str | None  # set when the file carries the autoencoder
    has_clip_l: bool
    has_t5xxl: bool

    @property
    def all_in_one(self) -> bool:
        return self.vae_prefix is not None or self.has_clip_l or self.has_t5xxl


def detect_flux_layout(keys: Iterable[str]) -> FluxLayout | None:
    """The layout of a FLUX.1 single file, or None when these keys are not a FLUX.1 transformer."""
    keys = set(keys)
    prefix = next((p for p in (TRANSFORMER_PREFIX, "") if p + _MARKER in keys), None)
    if prefix is None:
        return None
    return FluxLayout(
        transformer_prefix=prefix,
        vae_prefix=next((p for p in VAE_PREFIXES if f"{p}decoder.conv_in.weight" in keys), None),
        has_clip_l=any(k.startswith(CLIP_L_PREFIX) for k in keys),
        has_t5xxl=any(k.startswith(T5XXL_PREFIX) for k in keys),
    )


def split_flux_checkpoint(sd: Mapping[str, V], *, source: object = "checkpoint") -> dict[str, dict[str, V]]:
    """Route a FLUX.1 single file's entries (tensors or shapes) to its components, prefixes removed.

    Returns {"transformer": BFL names, "vae": ae names, "text_encoder": clip_l.safetensors names,
    "text_encoder_2": t5xxl names}; components the file lacks are absent. Extra text-encoder entries
    that ComfyUI saves but no model uses (logit_scale, text_projection) are dropped.
    """
    layout = detect_flux_layout(sd.keys())
    if layout is None:
        raise UnknownModelFamily(source, f"no {_MARKER} (or {TRANSFORMER_PREFIX}{_MARKER}); not a FLUX.1 transformer")
    routes = [(CLIP_L_PREFIX, "text_encoder"), (T5XXL_PREFIX, "text_encoder_2")]
    if layout.vae_prefix:
        routes.append((layout.vae_prefix, "vae"))
    if layout.transformer_prefix:
        routes.append((layout.transformer_prefix, "transformer"))
    parts: dict[str, dict[str, V]] = {}
    for key, value in sd.items():
        for prefix, component in routes:
            if key.startswith(prefix):
                parts.setdefault(component, {})[key[len(prefix):]] = value
                break
        else:
            if key.startswith("text_encoders."):
                continue  # per-encoder extras outside the models (ComfyUI's logit_scale)
            if layout.transformer_prefix:
                raise ModelFileError(source, f"{key!r} belongs to no FLUX.1 component")
            parts.setdefault("transformer", {})[key] = value
    for component in ("text_encoder", "text_encoder_2"):
        for extra in ("logit_scale", "text_projection.weight", "text_model.embeddings.position_ids"):
            parts.get(component, {}).pop(extra, None)
    return parts


def join_flux_checkpoint(
    transformer: Mapping[str, V],
    vae: Mapping[str, V] | None = None,
    clip_l: Mapping[str, V] | None = None,
    t5xxl: Mapping[str, V] | None = None,
) -> dict[str, V]:
    """Assemble the all-in-one layout from BFL transformer, ae, clip_l and t5xxl names."""
    out = {TRANSFORMER_PREFIX + k: v for k, v in transformer.items()}
    for prefix, part in ((VAE_PREFIXES[0], vae), (CLIP_L_PREFIX, clip_l), (T5XXL_PREFIX, t5xxl)):
        out.update({prefix + k: v for k, v in (part or {}).items()})
    return out


# --- configs --------------------------------------------------------------------------------------


def _shapes(shapes: Shapes) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(d) for d in v) for k, v in shapes.items()}


def flux_variant(shapes: Shapes, *, source: object = "checkpoint") -> Literal["dev", "schnell"]:
    """dev carries the guidance embedder (guidance distillation); schnell has none."""
    parts = split_flux_checkpoint(_shapes(shapes), source=source)
    return "dev" if "guidance_in.in_layer.weight" in parts.get("transformer", {}) else "schnell"


def default_flux_configs(variant: str) -> dict[str, dict[str, Any]]:
    """The real FLUX.1 configs (bundled): transformer, vae, text_encoder, text_encoder_2, scheduler."""
    if variant not in ("dev", "schnell"):
        raise InvalidParameter("variant", variant, "expected 'dev' or 'schnell'")
    files = {
        "transformer": f"transformer-{variant}.json",
        "vae": "vae.json",
        "text_encoder": "text_encoder.json",
        "text_encoder_2": "text_encoder_2.json",
        "scheduler": f"scheduler-{variant}.json",
    }
    return {name: json.loads((FLUX_CONFIG_DIR / f).read_text("utf-8")) for name, f in files.items()}


def infer_flux_configs(
    shapes: Shapes, metadata: Mapping[str, str] | None = None, *, source: object = "checkpoint", validate: bool = True
) -> dict[str, dict[str, Any]]:
    """diffusers/transformers configs of a FLUX.1 single file from its tensor shapes.

    Returns transformer, vae, text_encoder, text_encoder_2 and scheduler configs: the real model's
    (bundled) for what a file does not carry or shapes cannot tell, what the shapes say for the
    rest, then the `lorastudio.config` metadata entry ({component: {field: value}}) on top. Head
    width is read from the per-head RMSNorm scale, so only the RoPE axis split stays a convention
    (FLUX.1's 16/56/56 for 128-wide heads). validate=False skips the check that the RoPE axes fit
    the heads (for writers that are about to store the missing fields).
    """
    parts = split_flux_checkpoint(_shapes(shapes), source=source)
    variant = "dev" if "guidance_in.in_layer.weight" in parts.get("transformer", {}) else "schnell"
    configs = {name: _clean(cfg) for name, cfg in default_flux_configs(variant).items()}
    configs["transformer"].update(_transformer_fields(parts["transformer"], source))
    for name in _COMPONENT_INFERERS:
        if name in parts:
            configs[name] = infer_component_config(name, parts[name], variant=variant, source=source)
    configs = apply_config_overrides(configs, metadata, source=str(source))
    if validate:
        _check_rope(configs["transformer"], source)
    return configs


_COMPONENT_INFERERS = {"vae": "infer_ae_config", "text_encoder": "infer_clip_l_config", "text_encoder_2": "infer_t5xxl_config"}
# provenance fields of the real configs that would only add noise to configs built here
_BOOKKEEPING = frozenset({"_diffusers_version", "_name_or_path", "transformers_version", "torch_dtype"})


def _clean(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in _BOOKKEEPING}


def infer_component_config(
    component: str,
    shapes: Shapes,
    metadata: Mapping[str, str] | None = None,
    *,
    variant: str = "dev",
    source: object = "checkpoint",
) -> dict[str, Any]:
    """Config of a separate ae / clip_l / t5xxl file ("vae", "text_encoder", "text_encoder_2"):
    the real FLUX.1 config, what its shapes say, then its own `lorastudio.config` metadata."""
    from lorastudio.models.formats import flux_components

    if component not in _COMPONENT_INFERERS:
        raise InvalidParameter("component", component, f"expected one of {sorted(_COMPONENT_INFERERS)}")
    cfg = _clean(default_flux_configs(variant)[component])
    cfg.update(getattr(flux_components, _COMPONENT_INFERERS[component])(_shapes(shapes), source=source))
    return apply_config_overrides({component: cfg}, metadata, source=str(source))[component]


def _transformer_fields(sh: Mapping[str, tuple[int, ...]], source: object) -> dict[str, Any]:
    def need(key: str) -> tuple[int, ...]:
        if key not in sh:
            raise ModelFileError(source, f"FLUX.1 transformer lacks {key}")
        return sh[key]

    hidden, in_channels = need("img_in.weight")
    head_dim = need("double_blocks.0.img_attn.norm.query_norm.scale")[0]
    if hidden % head_dim:
        raise ModelFileError(source, f"width {hidden} is not a whole number of {head_dim}-wide heads")
    fields: dict[str, Any] = {
        "in_channels": in_channels,
        "num_layers": len(_indices(sh, r"double_blocks\.(\d+)\.")),
        "num_single_layers": len(_indices(sh, r"single_blocks\.(\d+)\.")),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": need("txt_in.weight")[1],
        "pooled_projection_dim": need("vector_in.in_layer.weight")[1],
        "guidance_embeds": "guidance_in.in_layer.weight" in sh,
    }
    out_channels = need("final_layer.linear.weight")[0]
    if out_channels != in_channels:
        fields["out_channels"] = out_channels
    return fields


def _check_rope(cfg: dict[str, Any], source: object) -> None:
    axes = cfg.get("axes_dims_rope", (16, 56, 56))
    if sum(axes) != cfg["attention_head_dim"]:
        raise ModelFileError(
            source,
            f"RoPE axes {list(axes)} do not add up to the head width {cfg['attention_head_dim']}; "
            f"store the model's axes_dims_rope in the {CONFIG_METADATA_KEY!r} metadata",
        )


def _indices(sh: Mapping[str, Any], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sh if (m := rx.match(k))})


# --- tokenizers -----------------------------------------------------------------------------------


def t5_tokenizer_dir(override: str | Path | None = None) -> Path:
    """Folder of the T5 tokenizer: `override` when given (a folder saved by transformers, or
    FLUX.1's tokenizer_2), else the bundled copy of FLUX.1's tokenizer_2."""
    folder = Path(override) if override is not None else T5_TOKENIZER_DIR
    if not ((folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()):
        raise ModelFileError(folder, "not a T5 tokenizer folder (needs tokenizer.json or spiece.model)")
    return folder


def flux_tokenizer_specs(t5_override: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Tokenizer specs for `make_config_dir`: CLIP-L BPE and the T5 SentencePiece folder."""
    return {
        "tokenizer": {"kind": "clip", "pad_token": "<|endoftext|>", "model_max_length": 77},
        "tokenizer_2": {"kind": "files", "path": str(t5_tokenizer_dir(t5_override)), "class": "T5TokenizerFast"},
    }
