"""MiDaS v3 DPT-Hybrid (`dpt_hybrid-midas-501f0c75.pt`) as transformers' DPTForDepthEstimation (is_hybrid).

The file is the state dict of MiDaS's `DPTDepthModel(backbone="vitb_rn50_384", non_negative=True)`, which the
A1111 ControlNet extension and controlnet_aux load strictly: timm's `vit_base_resnet50_384` under
`pretrained.model.` (a BiT ResNet-50 stem of 3 stages as `patch_embed.backbone`, a 1x1 `patch_embed.proj`,
12 ViT-B/16 blocks, the final norm and timm's unused ImageNet classifier `head`), the readout projections
and reassemble convolutions under `pretrained.act_postprocess3/4`, and the DPT neck and depth head under
`scratch.`. transformers' model of Intel/dpt-hybrid-midas is the same network; the config is built here
from the file's shapes (nothing is downloaded) and every tensor of the file is loaded strictly, except the
ImageNet classifier, which the depth network never runs and transformers' model does not have.
"""

from __future__ import annotations

import math
import re

# MiDaS's hooks for vitb_rn50_384: the reassemble stages take the BiT stages 1 and 2 and ViT blocks 8 and 11
# (0-based); transformers' hybrid DPT reads the two BiT stages itself and the blocks from backbone_out_indices[2:].
HOOKS = [0, 1, 8, 11]
# The hybrid's patch grid: BiT's stem (stride 4) and stages of stride 1, 2, 2.
PATCH = 16
# timm's ViT-B/16 uses 64-channel attention heads (12 heads at 768).
_HEAD_DIM = 64
_ORIGINAL_HEAD = ("pretrained.model.head.weight", "pretrained.model.head.bias")
_PREFIX = "pretrained.model."
_BIT = _PREFIX + "patch_embed.backbone."


def _count(sd: dict, prefix: str) -> int:
    """How many `prefix<N>.` groups of keys the file has; they must be numbered 0..n-1."""
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found != set(range(len(found))):
        raise ValueError(f"the keys {prefix}N. are numbered {sorted(found)}, not 0..n-1")
    return len(found)


def config_from_state_dict(sd: dict):
    """The DPTConfig (is_hybrid, BiT backbone) whose model holds exactly this file's tensors."""
    from transformers import BitConfig, DPTConfig

    if _BIT + "stem.conv.weight" not in sd:
        raise ValueError(f"no {_BIT}stem.conv.weight: not a MiDaS DPT-Hybrid file")
    hidden = sd[_PREFIX + "cls_token"].shape[-1]
    layers = _count(sd, _PREFIX + "blocks.")
    if layers <= HOOKS[-1]:
        raise ValueError(f"DPT-Hybrid reads ViT blocks {HOOKS[2]} and {HOOKS[3]}; this file has {layers} blocks")
    stages = _count(sd, _BIT + "stages.")
    if stages != 3:
        raise ValueError(f"DPT-Hybrid's BiT has 3 stages, this file {stages}")
    depths = [_count(sd, f"{_BIT}stages.{s}.blocks.") for s in range(stages)]
    widths = [sd[f"{_BIT}stages.{s}.blocks.0.conv3.weight"].shape[0] for s in range(stages)]
    grid = int(round(math.sqrt(sd[_PREFIX + "pos_embed"].shape[1] - 1)))
    featmap = sd[_PREFIX + "patch_embed.proj.weight"].shape[1]
    if featmap != widths[-1]:  # transformers sizes the projection from the config, not from the BiT
        raise ValueError(f"patch_embed.proj takes {featmap} channels, the BiT's last stage gives {widths[-1]}")
    backbone = BitConfig(
        global_padding="same", layer_type="bottleneck", embedding_dynamic_padding=True,
        embedding_size=sd[_BIT + "stem.conv.weight"].shape[0], hidden_sizes=widths, depths=depths,
        out_features=[f"stage{i + 1}" for i in range(stages)])
    return DPTConfig(
        is_hybrid=True, backbone_config=backbone, backbone_featmap_shape=[1, featmap, grid, grid],
        image_size=grid * PATCH, patch_size=PATCH, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // _HEAD_DIM),
        intermediate_size=sd[_PREFIX + "blocks.0.mlp.fc1.weight"].shape[0],
        # timm's ViT LayerNorms use 1e-6 (transformers' DPT default and the Intel/dpt-hybrid-midas config say 1e-12)
        layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True, backbone_out_indices=list(HOOKS),
        readout_type="project", reassemble_factors=[1, 1, 1, 0.5],
        neck_hidden_sizes=[sd[f"scratch.layer{i}_rn.weight"].shape[1] for i in range(1, 5)],
        fusion_hidden_size=sd["scratch.layer1_rn.weight"].shape[0],
        use_batch_norm_in_fusion_residual=False, add_projection=False, head_in_index=-1)


# original name (regex, anchored at the start) -> transformers' name; the first rule that matches is used.
RULES = (
    (r"pretrained\.model\.cls_token$", "dpt.embeddings.cls_token"),
    (r"pretrained\.model\.pos_embed$", "dpt.embeddings.position_embeddings"),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.conv\.", "dpt.embeddings.backbone.bit.embedder.convolution."),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.norm\.", "dpt.embeddings.backbone.bit.embedder.norm."),
    (r"pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.",
     r"dpt.embeddings.backbone.bit.encoder.stages.\1.layers.\2."),
    (r"pretrained\.model\.patch_embed\.proj\.", "dpt.embeddings.projection."),
    (r"pretrained\.model\.blocks\.(\d+)\.norm1\.", r"dpt.encoder.layer.\1.layernorm_before."),
    (r"pretrained\.model\.blocks\.(\d+)\.norm2\.", r"dpt.encoder.layer.\1.layernorm_after."),
    (r"pretrained\.model\.blocks\.(\d+)\.attn\.proj\.", r"dpt.encoder.layer.\1.attention.output.dense."),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc1\.", r"dpt.encoder.layer.\1.intermediate.dense."),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc2\.", r"dpt.encoder.layer.\1.output.dense."),
    (r"pretrained\.model\.norm\.", "dpt.layernorm."),
    # act_postprocessN: 0 = readout (ProjectReadout: Linear + GELU), 3 = 1x1 projection, 4 = resize (stage 4's
    # stride-2 conv); 1 and 2 are a transpose and an unflatten without weights
    (r"pretrained\.act_postprocess([34])\.0\.project\.0\.",
     lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0."),
    (r"pretrained\.act_postprocess([34])\.3\.", lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection."),
    (r"pretrained\.act_postprocess4\.4\.", "neck.reassemble_stage.layers.3.resize."),
    (r"scratch\.layer([1-4])_rn\.", lambda m: f"neck.convs.{int(m[1]) - 1}."),
    # MiDaS runs refinenet4 first; transformers numbers its fusion layers in the order they run
    (r"scratch\.refinenet([1-4])\.out_conv\.", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection."),
    (r"scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.",
     lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}."),
    (r"scratch\.output_conv\.([024])\.", r"head.head.\1."),
)


def rename(key: str) -> str:
    for pattern, repl in RULES:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    return key  # left as is: the strict load names it as unexpected


def to_transformers(sd: dict) -> dict:
    """The file's tensors under transformers' names: timm's fused qkv split into query, key and value, and the
    unused ImageNet classifier left out (after checking it is the classifier of this ViT)."""
    hidden = sd[_PREFIX + "cls_token"].shape[-1]
    out = {}
    for key, value in sd.items():
        if key in _ORIGINAL_HEAD:
            if value.shape[-1:] != (hidden,) and key.endswith("weight"):
                raise ValueError(f"{key} of shape {tuple(value.shape)} is no classifier of a {hidden}-wide ViT")
            continue
        m = re.match(r"^pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if m:
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):  # timm stacks q, k, v
                out[f"dpt.encoder.layer.{m[1]}.attention.attention.{name}.{m[2]}"] = part
        else:
            out[rename(key)] = value
    return out


def predict(model, pixel_values):
    """(B, H, W) relative inverse depth (near is large) of pictures (B, 3, H, W) whose sides are multiples of 16.

    DPTForDepthEstimation.forward with the patch grid given: transformers' forward runs the hybrid at the
    config's square size only (the embeddings refuse another size unless told `interpolate_pos_encoding`,
    which DPTModel does not pass on, and the neck takes the grid for a square), while the extension runs
    the network at the picture's own size and shape, the position embeddings resized to its patch grid
    (MiDaS's `forward_flex`; both resize bilinearly). The same modules, in the same order."""
    emb = model.dpt.embeddings(pixel_values, interpolate_pos_encoding=True)
    hidden = list(emb.intermediate_activations)  # BiT stages 1 and 2
    x = emb.last_hidden_states
    blocks = model.config.backbone_out_indices[2:]
    for i, layer in enumerate(model.dpt.encoder.layer[: max(blocks) + 1]):  # later blocks feed nothing
        x = layer(x)
        if i in blocks:
            hidden.append(x)
    h, w = pixel_values.shape[-2:]
    return model.head(model.neck(hidden, h // PATCH, w // PATCH))


def build_from_original(sd: dict):
    """DPTForDepthEstimation holding the file's tensors (strict: every key used, none missing), in eval mode;
    run it with `predict`."""
    import torch
    from transformers import DPTForDepthEstimation

    config = config_from_state_dict(sd)
    with torch.device("meta"):  # no random init of 122M parameters: every tensor comes from the file
        model = DPTForDepthEstimation(config)
    model.load_state_dict(to_transformers(sd), strict=True, assign=True)
    return model.float().eval()
