"""depth_midas: `dpt_hybrid-midas-501f0c75.pt` (MiDaS v3 DPT-Hybrid) as transformers' hybrid DPT, the extension's
map, the pickle policy and the detect route.

The real file (~490 MB, 123 M parameters) is not written here: its key names and shapes are checked as literals
(taken from the extension's `DPTDepthModel(backbone="vitb_rn50_384")` on timm) and loaded onto the meta device
through the same conversion code. The numbers are checked on a tiny hybrid built the same way (a BiT of one block
per stage, a 12-block ViT 32 wide): its map and float prediction are compared with a fixture that the extension's
own code (processor.midas, annotator/midas on timm) wrote from the same weights, which are drawn here and there
by one formula (bench/depth_midas_vs_extension.py --golden; that bench also compares the real-size network).
"""

from __future__ import annotations

import base64
import io
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lorastudio.core.errors import InvalidParameter, ModelFileError, PickleRefused
from lorastudio.generation.preprocessors import preprocessors, run_preprocessor

GOLDEN = Path(__file__).parent / "data" / "depth_midas_extension_tiny.npz"
FILE = "dpt_hybrid-midas-501f0c75"
REAL = dict(hidden=768, layers=12, grid=24, stem=64, widths=(256, 512, 1024), depths=(3, 4, 9),
            neck=(256, 512, 768, 768), features=256)
TINY = dict(hidden=32, layers=12, grid=8, stem=32, widths=(128, 128, 128), depths=(1, 1, 1),
            neck=(128, 128, 32, 32), features=16)  # the bench's TINY, which wrote the fixture


def original_layout(hidden, layers, grid, stem, widths, depths, neck, features) -> dict[str, tuple]:
    """Key -> shape of a MiDaS DPT-Hybrid file as the extension's modules name them: timm's hybrid ViT under
    `pretrained.model.` (ResNetV2 `patch_embed.backbone` with stem / stages.S.blocks.B, `patch_embed.proj`,
    `blocks.N`, `norm`, the 1000-class `head`), `pretrained.act_postprocess3/4`, `scratch.` (layerN_rn,
    refinenet1-4, output_conv 0/2/4)."""
    p = "pretrained.model."
    bit = p + "patch_embed.backbone."
    s = {p + "cls_token": (1, 1, hidden), p + "pos_embed": (1, grid * grid + 1, hidden),
         bit + "stem.conv.weight": (stem, 3, 7, 7), bit + "stem.norm.weight": (stem,), bit + "stem.norm.bias": (stem,),
         p + "patch_embed.proj.weight": (hidden, widths[-1], 1, 1), p + "patch_embed.proj.bias": (hidden,),
         p + "norm.weight": (hidden,), p + "norm.bias": (hidden,), p + "head.weight": (1000, hidden),
         p + "head.bias": (1000,)}
    prev = stem
    for i, (width, depth) in enumerate(zip(widths, depths)):
        mid = width // 4
        for j in range(depth):
            b = f"{bit}stages.{i}.blocks.{j}."
            if j == 0:
                s.update({b + "downsample.conv.weight": (width, prev, 1, 1), b + "downsample.norm.weight": (width,),
                          b + "downsample.norm.bias": (width,)})
            s.update({b + "conv1.weight": (mid, prev if j == 0 else width, 1, 1), b + "conv2.weight": (mid, mid, 3, 3),
                      b + "conv3.weight": (width, mid, 1, 1)})
            for n, c in (("norm1", mid), ("norm2", mid), ("norm3", width)):
                s.update({f"{b}{n}.weight": (c,), f"{b}{n}.bias": (c,)})
        prev = width
    for i in range(layers):
        b = f"{p}blocks.{i}."
        s.update({b + "norm1.weight": (hidden,), b + "norm1.bias": (hidden,),
                  b + "attn.qkv.weight": (3 * hidden, hidden), b + "attn.qkv.bias": (3 * hidden,),
                  b + "attn.proj.weight": (hidden, hidden), b + "attn.proj.bias": (hidden,),
                  b + "norm2.weight": (hidden,), b + "norm2.bias": (hidden,),
                  b + "mlp.fc1.weight": (4 * hidden, hidden), b + "mlp.fc1.bias": (4 * hidden,),
                  b + "mlp.fc2.weight": (hidden, 4 * hidden), b + "mlp.fc2.bias": (hidden,)})
    for n in (3, 4):
        a = f"pretrained.act_postprocess{n}."
        s.update({a + "0.project.0.weight": (hidden, 2 * hidden), a + "0.project.0.bias": (hidden,),
                  a + "3.weight": (neck[n - 1], hidden, 1, 1), a + "3.bias": (neck[n - 1],)})
    s.update({"pretrained.act_postprocess4.4.weight": (neck[3], neck[3], 3, 3),
              "pretrained.act_postprocess4.4.bias": (neck[3],)})
    for i in range(4):
        s[f"scratch.layer{i + 1}_rn.weight"] = (features, neck[i], 3, 3)
        r = f"scratch.refinenet{i + 1}."
        s.update({r + "out_conv.weight": (features, features, 1, 1), r + "out_conv.bias": (features,)})
        for u in (1, 2):
            for c in (1, 2):
                s.update({f"{r}resConfUnit{u}.conv{c}.weight": (features, features, 3, 3),
                          f"{r}resConfUnit{u}.conv{c}.bias": (features,)})
    s.update({"scratch.output_conv.0.weight": (features // 2, features, 3, 3),
              "scratch.output_conv.0.bias": (features // 2,),
              "scratch.output_conv.2.weight": (32, features // 2, 3, 3), "scratch.output_conv.2.bias": (32,),
              "scratch.output_conv.4.weight": (1, 32, 1, 1), "scratch.output_conv.4.bias": (1,)})
    return s


def formula_weights(shapes: dict) -> dict:
    """The bench's formula_weights, rewritten here (numpy's legacy RandomState streams are frozen)."""
    out = {}
    for key, shape in shapes.items():
        x = np.random.RandomState(zlib.crc32(key.encode())).standard_normal(shape)
        if key.endswith("bias"):
            x = 0.1 * x
        elif len(shape) == 1:
            x = 1 + 0.1 * x
        else:
            x = x / max(1, int(np.prod(shape[1:]))) ** 0.5
        if key.startswith("scratch.output_conv.4."):
            x = np.abs(x) + 0.1
        out[key] = torch.from_numpy(x.astype(np.float32))
    return out


def photo(h=48, w=80):
    yy, xx = np.mgrid[:h, :w]
    im = np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy) * 2 % 256], axis=2).astype(np.uint8)
    im[h // 4: 3 * h // 4, w // 4: w // 2] = (240, 200, 30)
    return im


def models_with(tmp_path, sd, name=f"{FILE}.safetensors", sub="") -> Path:
    where = tmp_path / "models" / "ControlNetPreprocessor" / sub
    where.mkdir(parents=True, exist_ok=True)
    if name.endswith(".safetensors"):
        save_file(sd, where / name)
    else:
        torch.save(sd, where / name)
    return tmp_path / "models"


def test_the_real_files_keys_load_strictly_into_the_hybrid_dpt():
    from lorastudio.generation.preprocessors.midas_net import build_from_original

    shapes = original_layout(**REAL)
    # literals of dpt_hybrid-midas-501f0c75.pt: 368 tensors, 123,146,985 values (the ~490 MB of float32)
    assert len(shapes) == 368 and sum(int(np.prod(s)) for s in shapes.values()) == 123_146_985
    for key, shape in {
            "pretrained.model.cls_token": (1, 1, 768), "pretrained.model.pos_embed": (1, 577, 768),
            "pretrained.model.patch_embed.backbone.stem.conv.weight": (64, 3, 7, 7),
            "pretrained.model.patch_embed.backbone.stem.norm.bias": (64,),
            "pretrained.model.patch_embed.backbone.stages.0.blocks.0.downsample.conv.weight": (256, 64, 1, 1),
            "pretrained.model.patch_embed.backbone.stages.1.blocks.3.conv2.weight": (128, 128, 3, 3),
            "pretrained.model.patch_embed.backbone.stages.2.blocks.8.norm3.weight": (1024,),
            "pretrained.model.patch_embed.backbone.stages.2.blocks.0.conv1.weight": (256, 512, 1, 1),
            "pretrained.model.patch_embed.proj.weight": (768, 1024, 1, 1),
            "pretrained.model.blocks.11.attn.qkv.weight": (2304, 768),
            "pretrained.model.blocks.0.mlp.fc1.weight": (3072, 768),
            "pretrained.model.norm.weight": (768,), "pretrained.model.head.weight": (1000, 768),
            "pretrained.act_postprocess3.0.project.0.weight": (768, 1536),
            "pretrained.act_postprocess3.3.weight": (768, 768, 1, 1),
            "pretrained.act_postprocess4.4.weight": (768, 768, 3, 3), "scratch.layer1_rn.weight": (256, 256, 3, 3),
            "scratch.layer2_rn.weight": (256, 512, 3, 3), "scratch.layer4_rn.weight": (256, 768, 3, 3),
            "scratch.refinenet4.resConfUnit1.conv2.weight": (256, 256, 3, 3),
            "scratch.refinenet1.out_conv.bias": (256,),
            "scratch.output_conv.0.weight": (128, 256, 3, 3), "scratch.output_conv.2.weight": (32, 128, 3, 3),
            "scratch.output_conv.4.weight": (1, 32, 1, 1)}.items():
        assert shapes[key] == shape, key
    assert not any(k.startswith(("pretrained.act_postprocess1", "pretrained.act_postprocess2")) for k in shapes)

    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}  # names and shapes, no 490 MB
    model = build_from_original(sd)
    c, b = model.config, model.config.backbone_config
    assert (c.is_hybrid, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.image_size,
            c.neck_hidden_sizes, c.fusion_hidden_size, c.backbone_out_indices[2:], c.layer_norm_eps) == (
        True, 768, 12, 12, 3072, 384, [256, 512, 768, 768], 256, [8, 11], 1e-6)
    assert (b.model_type, b.layer_type, b.depths, b.hidden_sizes, b.embedding_size, b.global_padding) == (
        "bit", "bottleneck", [3, 4, 9], [256, 512, 1024], 64, "SAME")
    # every tensor used: all but the ImageNet classifier (769,000 values), which the depth network never runs
    assert sum(p.numel() for p in model.parameters()) == 123_146_985 - 1000 * 768 - 1000
    assert all(p.is_meta for p in model.parameters())  # all from the file (assigned), none initialised

    with pytest.raises(RuntimeError, match="scratch.extra"):  # strict: an extra key ...
        build_from_original({**sd, "scratch.extra.weight": torch.empty(1, device="meta")})
    bad = dict(sd)
    del bad["scratch.refinenet3.resConfUnit2.conv1.bias"]  # ... or a missing one is refused by name
    with pytest.raises(RuntimeError, match=r"neck\.fusion_stage\.layers\.1\.residual_layer2\.convolution1\.bias"):
        build_from_original(bad)
    bad = {**sd, "scratch.refinenet2.out_conv.weight": torch.empty(256, 256, 3, 3, device="meta")}
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_from_original(bad)
    bad = {**sd, "pretrained.model.patch_embed.proj.weight": torch.empty(768, 512, 1, 1, device="meta")}
    with pytest.raises(ValueError, match="512 channels"):
        build_from_original(bad)


def test_the_tiny_hybrid_gives_the_extensions_map():
    from lorastudio.generation.preprocessors import depth_midas
    from lorastudio.generation.preprocessors.picture_steps import pad_to_64
    from lorastudio.generation.preprocessors.midas_net import build_from_original, predict

    g = np.load(GOLDEN)
    shapes = original_layout(**TINY)
    ext_shapes = {str(k): tuple(int(d) for d in s if d) for k, s in zip(g["keys"], g["shapes"])}
    assert ext_shapes == shapes  # this file's layout is the extension's modules' own, key for key
    assert (g["picture"] == photo()).all()
    padded, (th, tw) = pad_to_64(photo(), 64)
    assert padded.shape == g["padded"].shape == (64, 128, 3) and (th, tw) == g["map"].shape == (64, 107)
    # cv2's cubic resize of uint8 is fixed-point: the same picture for the same input
    assert (padded == g["padded"]).all()

    model = build_from_original(formula_weights(shapes))
    with torch.inference_mode():
        depth = predict(model, depth_midas.network_input(g["padded"]))[0].numpy()
    want = g["depth"]
    assert depth.shape == want.shape and want.max() - want.min() > 1  # the fixture's prediction is not flat
    # timm's and transformers' attention and convolutions sum in other orders: float32 rounding, no more
    assert np.abs(depth - want).max() <= 2e-5 * (want.max() - want.min())

    got = depth_midas.depth_map(model, photo(), 64)
    assert got.shape == (64, 107, 3) and (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
    # uint8 truncation can flip one level where a float lands on a boundary
    d = np.abs(got[..., 0].astype(int) - g["map"].astype(int))
    assert d.max() <= 1 and (d > 0).mean() < 0.01
    assert got[..., 0].max() >= 250 and got[..., 0].min() <= 5  # min-max over the padded picture, then cropped


def test_module_finds_the_file_and_keeps_the_pickle_rule(tmp_path):
    sd = formula_weights(original_layout(**TINY))
    args = dict(resolution=64, threshold_a=-1, threshold_b=-1)
    root = tmp_path / "models"
    (root / "ControlNetPreprocessor").mkdir(parents=True)
    with pytest.raises(InvalidParameter) as e:
        run_preprocessor("depth_midas", photo(), **args, models_root=root)
    assert f"{FILE}.pt" in str(e.value) and str(root / "ControlNetPreprocessor") in str(e.value)

    models_with(tmp_path, sd, f"{FILE}.pt", sub="midas")  # the extension's downloads/midas layout
    with pytest.raises(PickleRefused) as e:
        run_preprocessor("depth_midas", photo(), **args, models_root=root)
    assert f"midas/{FILE}.pt" in str(e.value) and "--allow-pickle" in str(e.value)
    allowed = run_preprocessor("depth_midas", photo(), **args, models_root=root, allow_pickle=True)
    assert allowed.shape == (64, 107, 3) and allowed.max() > allowed.min()

    # the .safetensors twin is read without permission (the pickle made unreadable to prove it)
    save_file(sd, root / "ControlNetPreprocessor" / "midas" / f"{FILE}.safetensors")
    (root / "ControlNetPreprocessor" / "midas" / f"{FILE}.pt").write_bytes(b"not a pickle")
    assert (run_preprocessor("depth_midas", photo(), **args, models_root=root) == allowed).all()

    # another network's file under this name is refused by name, not half-loaded
    other = tmp_path / "other"
    bad = dict(sd)
    del bad["pretrained.model.blocks.11.norm1.weight"]
    models_with(other, bad)
    with pytest.raises(ModelFileError, match=f"{FILE}.safetensors.*not a MiDaS DPT-Hybrid file"):
        run_preprocessor("depth_midas", photo(), **args, models_root=other / "models")
    late = tuple(f"pretrained.model.blocks.{i}." for i in (9, 10, 11))
    short = {k: v for k, v in sd.items() if not k.startswith(late)}
    models_with(other, short)  # a 9-block ViT: MiDaS's hook on block 11 has nothing to read
    with pytest.raises(ModelFileError, match="blocks 8 and 11; this file has 9 blocks"):
        run_preprocessor("depth_midas", photo(), **args, models_root=other / "models")
    gap = {k: v for k, v in sd.items() if not k.startswith("pretrained.model.blocks.4.")}
    models_with(other, gap)
    with pytest.raises(ModelFileError, match=r"pretrained.model.blocks.N. are numbered \[0, 1, 2, 3, 5,"):
        run_preprocessor("depth_midas", photo(), **args, models_root=other / "models")

    pre = preprocessors()["depth_midas"]
    assert pre.runs and pre.threshold_a is None and pre.threshold_b is None  # the extension's: resolution only
    assert (pre.resolution.value, pre.resolution.minimum, pre.resolution.maximum) == (512, 64, 2048)


def test_detect_route_runs_depth_midas(tmp_path, studio_client):
    root = models_with(tmp_path, formula_weights(original_layout(**TINY)))
    pic = io.BytesIO()
    Image.fromarray(photo(64, 64)).save(pic, format="PNG")
    with studio_client(root) as c:
        detail = c.get("/controlnet/module_list").json()["module_detail"]
        assert detail["depth_midas"]["runs"] and not detail["depth_midas"]["model_free"]
        r = c.post("/controlnet/detect", json={"controlnet_module": "depth_midas", "controlnet_processor_res": 64,
                                               "controlnet_input_images": [base64.b64encode(pic.getvalue()).decode()]})
        assert r.status_code == 200, r.text
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
    want = run_preprocessor("depth_midas", photo(64, 64), resolution=64, threshold_a=-1, threshold_b=-1,
                            models_root=root)
    assert (got == want).all()
