"""Names of UNet modules in diffusers' `UNet2DConditionModel` and in the original LDM/SGM UNet.

The original UNet (CompVis `openaimodel.py`, reused by SGM for SDXL) numbers its blocks flatly:
`input_blocks.N.S` / `middle_block.S` / `output_blocks.N.S`, where N counts every resnet, attention
pair and down/upsampler in order and S is the position inside that sequential. diffusers groups the
same modules per resolution level instead. The mapping depends only on how many resnets each level
has and which levels carry attention, which is what `UNetLayout` records.

Pure Python on purpose: kohya LoRA names (`lora_unet_input_blocks_4_1_...`) are computed from this
module without loading a model, so both full parameter keys (`...to_q.weight`) and bare module
paths (`...to_q`) map.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

__all__ = [
    "UNetLayout",
    "layout_from_unet_config",
    "layout_from_diffusers_keys",
    "diffusers_to_ldm_unet_key",
    "ldm_to_diffusers_unet_key",
]


@dataclass(frozen=True)
class UNetLayout:
    """Block structure of a UNet, in diffusers order (down blocks high-res first, up blocks low-res first)."""

    layers_per_block: tuple[int, ...]  # resnets per down block; up block i has layers_per_block[-1-i] + 1
    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]
    mid_attention: bool = True

    def __post_init__(self) -> None:
        n = len(self.layers_per_block)
        if n == 0 or len(self.down_attention) != n or len(self.up_attention) != n:
            raise ValueError(
                f"UNetLayout: layers_per_block={self.layers_per_block}, down_attention={self.down_attention}, "
                f"up_attention={self.up_attention} must all have the same non-zero length"
            )

    @property
    def num_blocks(self) -> int:
        return len(self.layers_per_block)

    def up_layers(self, i: int) -> int:
        # each up block has one resnet more than its mirror down block: it also consumes the skip
        # connection that came out of the mirror block's downsampler (or conv_in)
        return self.layers_per_block[self.num_blocks - 1 - i] + 1


def layout_from_unet_config(config: Mapping[str, object]) -> UNetLayout:
    """Layout of a diffusers `UNet2DConditionModel` config dict (as in its config.json)."""
    try:
        down_types = list(config["down_block_types"])  # type: ignore[arg-type]
        up_types = list(config["up_block_types"])  # type: ignore[arg-type]
    except KeyError as exc:
        raise ValueError(f"UNet config has no {exc.args[0]!r}; cannot derive the block layout") from None
    lpb = config.get("layers_per_block", 2)  # diffusers' default
    layers = tuple(int(x) for x in lpb) if isinstance(lpb, (list, tuple)) else (int(lpb),) * len(down_types)  # type: ignore[arg-type]
    mid_type = config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
    return UNetLayout(
        layers_per_block=layers,
        down_attention=tuple("Attn" in str(t) for t in down_types),
        up_attention=tuple("Attn" in str(t) for t in up_types),
        mid_attention="Attn" in str(mid_type),
    )


_DOWN_RE = re.compile(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.|$)")
_UP_RE = re.compile(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.|$)")


def layout_from_diffusers_keys(keys: Iterable[str]) -> UNetLayout:
    """Layout read off the parameter names of a diffusers UNet state dict (no config needed)."""
    down_res: dict[int, int] = {}
    down_attn: set[int] = set()
    up_attn: set[int] = set()
    num_up = 0
    mid_attn = False
    for key in keys:
        if m := _DOWN_RE.match(key):
            i, kind, j = int(m[1]), m[2], int(m[3])
            if kind == "resnets":
                down_res[i] = max(down_res.get(i, 0), j + 1)
            else:
                down_attn.add(i)
        elif m := _UP_RE.match(key):
            num_up = max(num_up, int(m[1]) + 1)
            if m[2] == "attentions":
                up_attn.add(int(m[1]))
        elif key.startswith("mid_block.attentions."):
            mid_attn = True
    n = len(down_res)
    if n == 0 or sorted(down_res) != list(range(n)) or num_up != n:
        raise ValueError(f"not a UNet2DConditionModel state dict: down blocks {sorted(down_res)}, {num_up} up blocks")
    return UNetLayout(
        layers_per_block=tuple(down_res[i] for i in range(n)),
        down_attention=tuple(i in down_attn for i in range(n)),
        up_attention=tuple(i in up_attn for i in range(n)),
        mid_attention=mid_attn,
    )


# Modules outside the level structure. Both the container and its children are listed so that
# module paths (kohya names `time_embed_0`) and parameter keys map alike.
_TOP_LEVEL: dict[str, str] = {
    "conv_in": "input_blocks.0.0",
    "time_embedding": "time_embed",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    # SDXL's text_time add-embedding MLP is SGM's `label_emb` (a Sequential inside a Sequential)
    "add_embedding": "label_emb.0",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

# Children renamed inside a block, by block kind. Kinds missing here keep their child names
# (attention transformers and upsamplers are spelled identically in both codebases).
_CHILDREN: dict[str, dict[str, str]] = {
    "resnet": {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "time_emb_proj": "emb_layers.1",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "conv_shortcut": "skip_connection",
    },
    "downsampler": {"conv": "op"},
}


@functools.lru_cache(maxsize=32)
def _tables(layout: UNetLayout) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """(diffusers prefix -> (ldm prefix, kind), ldm prefix -> (diffusers prefix, kind))."""
    fwd: dict[str, tuple[str, str]] = {k: (v, "top") for k, v in _TOP_LEVEL.items()}
    n = layout.num_blocks

    index = 1  # input_blocks.0 is conv_in
    for i, layers in enumerate(layout.layers_per_block):
        for j in range(layers):
            fwd[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{index}.0", "resnet")
            if layout.down_attention[i]:
                fwd[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{index}.1", "attention")
            index += 1
        if i < n - 1:
            fwd[f"down_blocks.{i}.downsamplers.0"] = (f"input_blocks.{index}.0", "downsampler")
            index += 1

    fwd["mid_block.resnets.0"] = ("middle_block.0", "resnet")
    if layout.mid_attention:
        fwd["mid_block.attentions.0"] = ("middle_block.1", "attention")
        fwd["mid_block.resnets.1"] = ("middle_block.2", "resnet")
    else:
        fwd["mid_block.resnets.1"] = ("middle_block.1", "resnet")

    index = 0
    for i in range(n):
        layers = layout.up_layers(i)
        for j in range(layers):
            fwd[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{index}.0", "resnet")
            if layout.up_attention[i]:
                fwd[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{index}.1", "attention")
            index += 1
        if i < n - 1:
            # the upsampler shares the sequential of the block's last resnet, after its attention if any
            slot = 2 if layout.up_attention[i] else 1
            fwd[f"up_blocks.{i}.upsamplers.0"] = (f"output_blocks.{index - 1}.{slot}", "upsampler")

    rev = {ldm: (diff, kind) for diff, (ldm, kind) in fwd.items()}
    return fwd, rev


def _rename_child(rest: str, table: Mapping[str, str], kind: str, name: str) -> str:
    if not rest:
        return rest
    parts = rest.split(".")
    for k in range(len(parts), 0, -1):
        head = ".".join(parts[:k])
        if head in table:
            return ".".join([table[head], *parts[k:]])
    if table:
        raise ValueError(f"{name!r}: unknown child {rest!r} of a UNet {kind} block")
    return rest


def _convert(name: str, table: Mapping[str, tuple[str, str]], children: Mapping[str, Mapping[str, str]]) -> str:
    parts = name.split(".")
    for k in range(min(len(parts), 5), 0, -1):
        head = ".".join(parts[:k])
        if head in table:
            new_head, kind = table[head]
            rest = _rename_child(".".join(parts[k:]), children.get(kind, {}), kind, name)
            return f"{new_head}.{rest}" if rest else new_head
    raise ValueError(f"{name!r} is not a UNet module or parameter name of this layout")


@functools.lru_cache(maxsize=4)
def _reverse_children() -> dict[str, dict[str, str]]:
    return {kind: {v: k for k, v in table.items()} for kind, table in _CHILDREN.items()}


def diffusers_to_ldm_unet_key(name: str, layout: UNetLayout) -> str:
    """`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q[.weight]` -> `input_blocks.4.1...`.

    Raises ValueError for names that have no single LDM counterpart (e.g. `down_blocks.0`, which
    spans several LDM input blocks).
    """
    fwd, _ = _tables(layout)
    return _convert(name, fwd, _CHILDREN)


def ldm_to_diffusers_unet_key(name: str, layout: UNetLayout) -> str:
    """Inverse of `diffusers_to_ldm_unet_key` (names without the `model.diffusion_model.` prefix)."""
    _, rev = _tables(layout)
    return _convert(name, rev, _reverse_children())
