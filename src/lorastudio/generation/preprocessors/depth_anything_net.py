"""Depth Anything (v1 and v2) as transformers' DepthAnythingForDepthEstimation, from the files users have.

Written to load these files unchanged: `depth_anything_vit{s,b,l}14.pth` (LiheYoung/Depth-Anything, what the
A1111 ControlNet extension, controlnet_aux and comfyui_controlnet_aux read) and
`depth_anything_v2_vit{s,b,l}.{pth,safetensors}` (Depth-Anything-V2). Both hold a DINOv2 ViT-14 under
`pretrained.` and a DPT head under `depth_head.`; the two versions differ only in which four blocks feed the
head (v1: the last four, v2: fixed ones per size), which the file's shapes cannot tell, so the caller says.
The size (vits / vitb / vitl) is read from the shapes. transformers runs the network (no timm needed).
"""

from __future__ import annotations

import math
import re

# Which encoder blocks (1-based, as transformers counts hidden states after the embeddings) feed the head.
# v2's fixed choice per depth is Depth-Anything-V2's `intermediate_layer_idx` (0-based 2,5,8,11 / 4,11,17,23).
V2_OUT_INDICES = {12: [3, 6, 9, 12], 24: [5, 12, 18, 24], 40: [10, 20, 30, 40]}
# The original DPT head's refinenet4 fuses first; transformers' fusion stage counts from the first it runs.
_REFINENET_TO_FUSION = {4: 0, 3: 1, 2: 2, 1: 3}
# DINOv2's ViTs use 64-channel attention heads at every size (vits 6, vitb 12, vitl 16 heads).
_HEAD_DIM = 64


def _blocks(sd: dict) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k))}
    if not found or found != set(range(len(found))):
        raise ValueError("no pretrained.blocks.N.* keys in order: not a Depth Anything file")
    return len(found)


def config_from_state_dict(sd: dict, version: int):
    """The transformers config whose model has exactly this file's tensors (sizes read from its shapes)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    if "depth_head.readout_projects.0.0.weight" in sd:
        raise ValueError("a head with class-token readout (use_clstoken), which no released file has")
    if "pretrained.blocks.0.mlp.w12.weight" in sd:
        raise ValueError("a SwiGLU DINOv2 (vitg), not supported")
    hidden = sd["pretrained.cls_token"].shape[-1]
    layers = _blocks(sd)
    patch = sd["pretrained.patch_embed.proj.weight"].shape[-1]
    positions = sd["pretrained.pos_embed"].shape[1] - 1
    if version == 1:
        out_indices = [layers - 3, layers - 2, layers - 1, layers]
    elif layers in V2_OUT_INDICES:
        out_indices = V2_OUT_INDICES[layers]
    else:
        raise ValueError(f"a Depth Anything V2 file has 12, 24 or 40 blocks, this one {layers}")
    backbone = Dinov2Config(
        image_size=int(round(math.sqrt(positions))) * patch, patch_size=patch, hidden_size=hidden,
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // _HEAD_DIM),
        mlp_ratio=sd["pretrained.blocks.0.mlp.fc1.weight"].shape[0] // hidden, layer_norm_eps=1e-6,
        layerscale_value=1.0, out_indices=out_indices, apply_layernorm=True, reshape_hidden_states=False)
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=patch, reassemble_hidden_size=hidden,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[sd[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4)],
        fusion_hidden_size=sd["depth_head.scratch.layer1_rn.weight"].shape[0],
        head_hidden_size=sd["depth_head.scratch.output_conv2.0.weight"].shape[0], head_in_index=-1,
        depth_estimation_type="relative")


def _rename(key: str) -> str:
    rules = (
        (r"pretrained\.cls_token", "backbone.embeddings.cls_token"),
        (r"pretrained\.mask_token", "backbone.embeddings.mask_token"),
        (r"pretrained\.pos_embed", "backbone.embeddings.position_embeddings"),
        (r"pretrained\.patch_embed\.proj\.", "backbone.embeddings.patch_embeddings.projection."),
        (r"pretrained\.norm\.", "backbone.layernorm."),
        (r"pretrained\.blocks\.(\d+)\.attn\.proj\.", r"backbone.encoder.layer.\1.attention.o_proj."),
        (r"pretrained\.blocks\.(\d+)\.ls(\d)\.gamma", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
        (r"pretrained\.blocks\.(\d+)\.", r"backbone.encoder.layer.\1."),
        (r"depth_head\.projects\.(\d)\.", r"neck.reassemble_stage.layers.\1.projection."),
        (r"depth_head\.resize_layers\.(\d)\.", r"neck.reassemble_stage.layers.\1.resize."),
        (r"depth_head\.scratch\.output_conv1\.", "head.conv1."),
        (r"depth_head\.scratch\.output_conv2\.0\.", "head.conv2."),
        (r"depth_head\.scratch\.output_conv2\.2\.", "head.conv3."),
    )
    for pattern, repl in rules:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    m = re.match(r"^depth_head\.scratch\.layer(\d)_rn\.weight$", key)
    if m:
        return f"neck.convs.{int(m.group(1)) - 1}.weight"
    m = re.match(r"^depth_head\.scratch\.refinenet(\d)\.(.+)$", key)
    if m:
        rest = m.group(2).replace("out_conv.", "projection.")
        rest = re.sub(r"resConfUnit(\d)\.conv(\d)\.", r"residual_layer\1.convolution\2.", rest)
        return f"neck.fusion_stage.layers.{_REFINENET_TO_FUSION[int(m.group(1))]}.{rest}"
    return key  # left as is: the strict load names it as unexpected


def to_transformers(sd: dict) -> dict:
    """The original file's tensors under transformers' names (the fused qkv split into q, k, v)."""
    out = {}
    for key, value in sd.items():
        m = re.match(r"^pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if m:
            q, k, v = value.chunk(3, dim=0)  # DINOv2's qkv Linear stacks q, k, v along its output
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"backbone.encoder.layer.{m.group(1)}.attention.{name}.{m.group(2)}"] = part
        else:
            out[_rename(key)] = value
    return out


def original_pos_encoding(embeddings, height: int, width: int):
    """DINOv2's own position-embedding interpolation, which the original files were run with.

    It resizes by a scale factor of (patches + 0.1) / grid (bicubic, no antialias), where transformers
    resizes to a size; the sample positions differ slightly, so the original forward pass is kept."""
    import torch
    from torch import nn

    num_patches = (height // embeddings.patch_size) * (width // embeddings.patch_size)
    pos = embeddings.position_embeddings
    grid_n = pos.shape[1] - 1
    if num_patches == grid_n and height == width:
        return pos
    grid = int(math.sqrt(grid_n))
    dim = pos.shape[-1]
    h0 = height // embeddings.patch_size + 0.1
    w0 = width // embeddings.patch_size + 0.1
    patch_pos = pos[:, 1:].float().reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    patch_pos = nn.functional.interpolate(patch_pos, scale_factor=(h0 / grid, w0 / grid), mode="bicubic",
                                          antialias=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)
    return torch.cat((pos[:, :1], patch_pos), dim=1)


def use_original_pos_encoding(model) -> None:
    """Bind DINOv2's own interpolation on this model's embeddings (this instance only)."""
    import types

    emb = model.backbone.embeddings
    emb.patch_size = model.config.backbone_config.patch_size
    emb.interpolate_pos_encoding = types.MethodType(
        lambda self, embeddings, height, width: original_pos_encoding(self, height, width), emb)


def build_from_original(sd: dict, version: int):
    """DepthAnythingForDepthEstimation holding exactly the file's tensors (strict: every key used, none missing)."""
    from transformers import DepthAnythingForDepthEstimation

    import torch

    config = config_from_state_dict(sd, version)
    with torch.device("meta"):  # no random init of 335M parameters (vitl): every tensor comes from the file
        model = DepthAnythingForDepthEstimation(config)
    model.load_state_dict(to_transformers(sd), strict=True, assign=True)
    use_original_pos_encoding(model)
    return model.eval()
