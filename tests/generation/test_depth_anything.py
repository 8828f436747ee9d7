"""depth_anything / depth_anything_v2: the users' original files and transformers folders, the pickle policy,
the extension's map, and both in /controlnet/detect and a txt2img ControlNet unit."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lorastudio.core.errors import InvalidParameter, ModelFileError, PickleRefused
from lorastudio.generation.preprocessors import preprocessors, run_preprocessor


def original_layout(dim: int, blocks: int, features: int, outs: list[int]) -> dict[str, tuple]:
    """Key -> shape of a Depth Anything file as the published modules name them (DINOv2 `pretrained.` with
    blocks of norm1 / attn.qkv / attn.proj / ls1 / norm2 / mlp / ls2; DPT `depth_head.` with projects,
    resize_layers 0,1,3 (2 is an Identity), scratch.layerN_rn, refinenet1-4, output_conv1/2)."""
    shapes = {"pretrained.cls_token": (1, 1, dim), "pretrained.pos_embed": (1, 37 * 37 + 1, dim),
              "pretrained.mask_token": (1, dim), "pretrained.patch_embed.proj.weight": (dim, 3, 14, 14),
              "pretrained.patch_embed.proj.bias": (dim,), "pretrained.norm.weight": (dim,),
              "pretrained.norm.bias": (dim,)}
    for i in range(blocks):
        b = f"pretrained.blocks.{i}."
        shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim),
                       b + "attn.qkv.bias": (3 * dim,), b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                       b + "ls1.gamma": (dim,), b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                       b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
                       b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,), b + "ls2.gamma": (dim,)})
    h = "depth_head."
    for i, c in enumerate(outs):
        shapes.update({f"{h}projects.{i}.weight": (c, dim, 1, 1), f"{h}projects.{i}.bias": (c,),
                       f"{h}scratch.layer{i + 1}_rn.weight": (features, c, 3, 3)})
    for i, k in ((0, 4), (1, 2), (3, 3)):
        shapes.update({f"{h}resize_layers.{i}.weight": (outs[i], outs[i], k, k), f"{h}resize_layers.{i}.bias": (outs[i],)})
    for n in range(1, 5):
        r = f"{h}scratch.refinenet{n}."
        shapes.update({r + "out_conv.weight": (features, features, 1, 1), r + "out_conv.bias": (features,)})
        for u in (1, 2):
            for c in (1, 2):
                shapes.update({f"{r}resConfUnit{u}.conv{c}.weight": (features, features, 3, 3),
                               f"{r}resConfUnit{u}.conv{c}.bias": (features,)})
    shapes.update({h + "scratch.output_conv1.weight": (features // 2, features, 3, 3),
                   h + "scratch.output_conv1.bias": (features // 2,),
                   h + "scratch.output_conv2.0.weight": (32, features // 2, 3, 3), h + "scratch.output_conv2.0.bias": (32,),
                   h + "scratch.output_conv2.2.weight": (1, 32, 1, 1), h + "scratch.output_conv2.2.bias": (1,)})
    return shapes


def random_weights(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        fan_in = int(np.prod(s[1:])) if len(s) > 1 else 1
        t = torch.randn(s, generator=g) / max(fan_in, 1) ** 0.5
        if k.endswith(("gamma", "norm1.weight", "norm2.weight", "norm.weight")):
            t = 1 + 0.1 * t
        if k.endswith(("output_conv2.2.weight", "output_conv2.2.bias")):
            t = t.abs() + 0.1  # a random last conv is mostly negative before the final ReLU: keep the depth alive
        out[k] = t.contiguous()
    return out


def tiny_original(seed=0, blocks=4):
    return random_weights(original_layout(32, blocks, 16, [8, 16, 32, 32]), seed)


def photo(h=48, w=80):
    yy, xx = np.mgrid[:h, :w]
    im = np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy) * 2 % 256], axis=2).astype(np.uint8)
    im[h // 4: 3 * h // 4, w // 4: w // 2] = (240, 200, 30)
    return im


def test_real_vits_layout_loads_strictly_and_the_map_is_the_extensions_shape(tmp_path):
    from lorastudio.generation.preprocessors.depth_anything_net import build_from_original

    shapes = original_layout(384, 12, 64, [48, 96, 192, 384])  # vits: Depth-Anything's model_configs
    # literal shapes of depth_anything_vits14.pth (DINOv2 ViT-S/14 at 518 px, DPT head of 64 features)
    for key, shape in {"pretrained.pos_embed": (1, 1370, 384), "pretrained.blocks.11.attn.qkv.weight": (1152, 384),
                       "pretrained.blocks.0.ls1.gamma": (384,), "depth_head.projects.0.weight": (48, 384, 1, 1),
                       "depth_head.resize_layers.0.weight": (48, 48, 4, 4),
                       "depth_head.resize_layers.3.weight": (384, 384, 3, 3),
                       "depth_head.scratch.layer4_rn.weight": (64, 384, 3, 3),
                       "depth_head.scratch.refinenet1.resConfUnit2.conv2.weight": (64, 64, 3, 3),
                       "depth_head.scratch.output_conv2.2.weight": (1, 32, 1, 1)}.items():
        assert shapes[key] == shape, key
    sd = random_weights(shapes, seed=1)
    model = build_from_original(sd, version=1)
    c = model.config
    assert (c.backbone_config.hidden_size, c.backbone_config.num_hidden_layers, c.backbone_config.num_attention_heads,
            c.fusion_hidden_size, c.neck_hidden_sizes, c.backbone_config.out_indices) == (
        384, 12, 6, 64, [48, 96, 192, 384], [9, 10, 11, 12])  # v1: the last four blocks
    assert build_from_original(sd, version=2).config.backbone_config.out_indices == [3, 6, 9, 12]
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in sd.values())
    # strict: one extra or one missing key is refused
    with pytest.raises(RuntimeError, match="depth_head.extra"):
        build_from_original({**sd, "depth_head.extra.weight": torch.zeros(1)}, version=1)
    bad = dict(sd)
    del bad["depth_head.scratch.refinenet2.out_conv.bias"]
    with pytest.raises(RuntimeError, match="fusion_stage.layers.2.projection.bias"):
        build_from_original(bad, version=1)

    root = tmp_path / "models"
    (root / "ControlNetPreprocessor").mkdir(parents=True)
    save_file(sd, root / "ControlNetPreprocessor" / "depth_anything_vits14.safetensors")
    got = run_preprocessor("depth_anything", photo(64, 64), resolution=64, threshold_a=-1, threshold_b=-1,
                           models_root=root)
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    assert (got[..., 0] == got[..., 2]).all() and got.max() > got.min()


def to_original(hf: dict) -> dict:
    """transformers' names back to the original file's (the inverse mapping, written out here)."""
    out = {}
    fusion_to_refinenet = {0: 4, 1: 3, 2: 2, 3: 1}
    for k, v in hf.items():
        m = re.match(r"backbone\.encoder\.layer\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)", k)
        if m:
            continue
        for a, b in ((r"backbone\.embeddings\.cls_token", "pretrained.cls_token"),
                     (r"backbone\.embeddings\.mask_token", "pretrained.mask_token"),
                     (r"backbone\.embeddings\.position_embeddings", "pretrained.pos_embed"),
                     (r"backbone\.embeddings\.patch_embeddings\.projection\.", "pretrained.patch_embed.proj."),
                     (r"backbone\.layernorm\.", "pretrained.norm."),
                     (r"backbone\.encoder\.layer\.(\d+)\.attention\.o_proj\.", r"pretrained.blocks.\1.attn.proj."),
                     (r"backbone\.encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1", r"pretrained.blocks.\1.ls\2.gamma"),
                     (r"backbone\.encoder\.layer\.(\d+)\.", r"pretrained.blocks.\1."),
                     (r"neck\.reassemble_stage\.layers\.(\d)\.projection\.", r"depth_head.projects.\1."),
                     (r"neck\.reassemble_stage\.layers\.(\d)\.resize\.", r"depth_head.resize_layers.\1."),
                     (r"head\.conv1\.", "depth_head.scratch.output_conv1."),
                     (r"head\.conv2\.", "depth_head.scratch.output_conv2.0."),
                     (r"head\.conv3\.", "depth_head.scratch.output_conv2.2.")):
            new, n = re.subn("^" + a, b, k)
            if n:
                out[new] = v
                break
        else:
            if m := re.match(r"neck\.convs\.(\d)\.weight", k):
                out[f"depth_head.scratch.layer{int(m.group(1)) + 1}_rn.weight"] = v
            elif m := re.match(r"neck\.fusion_stage\.layers\.(\d)\.(.+)", k):
                rest = m.group(2).replace("projection.", "out_conv.")
                rest = re.sub(r"residual_layer(\d)\.convolution(\d)\.", r"resConfUnit\1.conv\2.", rest)
                out[f"depth_head.scratch.refinenet{fusion_to_refinenet[int(m.group(1))]}.{rest}"] = v
            else:
                raise AssertionError(f"unmapped {k}")
    for i in {int(k.split(".")[3]) for k in hf if k.startswith("backbone.encoder.layer.")}:
        p = f"backbone.encoder.layer.{i}.attention."
        for part in ("weight", "bias"):
            out[f"pretrained.blocks.{i}.attn.qkv.{part}"] = torch.cat([hf[p + f"{x}_proj.{part}"] for x in "qkv"])
    return out


def test_a_transformers_folder_and_its_original_naming_hold_the_same_network(tmp_path):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    from lorastudio.generation.preprocessors import depth_anything
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles

    torch.manual_seed(0)
    bc = Dinov2Config(image_size=518, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=1,
                      layer_norm_eps=1e-6, out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False)
    hf = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=bc, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16))
    pre = tmp_path / "models" / "ControlNetPreprocessor"
    hf.save_pretrained(pre / "depth-anything-small-hf")
    original = to_original(hf.state_dict())
    assert set(original) == set(original_layout(32, 4, 16, [8, 16, 32, 32]))  # the test's two layouts agree
    save_file(original, tmp_path / "depth_anything_vits14.safetensors")

    files = AnnotatorFiles(tmp_path / "models")
    from_folder = depth_anything.load_model("depth_anything", pre / "depth-anything-small-hf", files)
    from_file = depth_anything.load_model("depth_anything", tmp_path / "depth_anything_vits14.safetensors", files)
    ref = hf.state_dict()
    for name, model in (("folder", from_folder), ("file", from_file)):
        got = model.state_dict()
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref), name
    assert from_file.config.backbone_config.out_indices == [1, 2, 3, 4]  # v1 with 4 blocks: the last four
    im = photo()
    # the same weights through the same code: equal maps
    assert (depth_anything.depth_map(from_folder, im, 64) == depth_anything.depth_map(from_file, im, 64)).all()
    got = run_preprocessor("depth_anything", im, resolution=64, threshold_a=-1, threshold_b=-1,
                           models_root=tmp_path / "models")  # the folder is found
    assert got.shape == (64, 107, 3) and got.max() > got.min()


def test_pickle_policy_and_the_missing_file_message(tmp_path):
    root = tmp_path / "models"
    where = root / "ControlNetPreprocessor" / "depth_anything"
    where.mkdir(parents=True)
    args = dict(resolution=64, threshold_a=-1, threshold_b=-1, models_root=root)

    with pytest.raises(InvalidParameter) as e:
        run_preprocessor("depth_anything", photo(), **args)
    assert "depth_anything_vitl14.pth" in str(e.value) and str(root / "ControlNetPreprocessor") in str(e.value)
    with pytest.raises(InvalidParameter, match="depth_anything_v2_vitl.pth"):
        run_preprocessor("depth_anything_v2", photo(), **args)

    sd = tiny_original(seed=3)
    torch.save(sd, where / "depth_anything_vits14.pth")
    with pytest.raises(PickleRefused) as e:
        run_preprocessor("depth_anything", photo(), **args)
    msg = str(e.value)
    assert str(where / "depth_anything_vits14.pth") in msg and "--allow-pickle" in msg and ".safetensors" in msg
    allowed = run_preprocessor("depth_anything", photo(), **args, allow_pickle=True)
    assert allowed.shape == (64, 107, 3) and allowed.max() > allowed.min()

    # a .safetensors twin is read instead, with no permission (the pickle is made unreadable to prove it)
    save_file(sd, where / "depth_anything_vits14.safetensors")
    (where / "depth_anything_vits14.pth").write_bytes(b"not a pickle")
    twin = run_preprocessor("depth_anything", photo(), **args)
    assert (twin == allowed).all()  # same weights, same call

    # v2: 12 blocks, the fixed intermediate blocks; refused when its depth is not one of the released ones
    save_file(tiny_original(seed=4), root / "ControlNetPreprocessor" / "depth_anything_v2_vits.safetensors")
    with pytest.raises(ModelFileError, match="12, 24 or 40 blocks"):
        run_preprocessor("depth_anything_v2", photo(), **args)
    save_file(tiny_original(seed=4, blocks=12), root / "ControlNetPreprocessor" / "depth_anything_v2_vits.safetensors")
    assert run_preprocessor("depth_anything_v2", photo(), **args).shape == (64, 107, 3)

    table = preprocessors()
    assert table["depth_anything"].runs and not table["seg_ofade20k"].runs


def test_detect_route_and_a_txt2img_unit_with_depth_anything(tmp_path, studio_client):
    from lorastudio.testing.tiny_controlnet import write_controlnet_models_root

    root = tmp_path / "models"
    (root / "ControlNetPreprocessor").mkdir(parents=True)
    write_controlnet_models_root(root, "control_tiny")
    torch.save(tiny_original(seed=6), root / "ControlNetPreprocessor" / "depth_anything_vits14.pth")
    pic = io.BytesIO()
    Image.fromarray(photo(64, 64)).save(pic, format="PNG")
    pic = base64.b64encode(pic.getvalue()).decode()

    detect = {"controlnet_module": "depth_anything", "controlnet_input_images": [pic], "controlnet_processor_res": 64}
    with studio_client(root) as c:
        r = c.post("/controlnet/detect", json=detect)
        assert r.status_code >= 400 and "depth_anything_vits14.pth" in r.text and "allow-pickle" in r.text, r.text
        detail = c.get("/controlnet/module_list").json()["module_detail"]
        assert detail["depth_anything"]["runs"] and not detail["depth_anything"]["model_free"]
        assert not detail["seg_ofade20k"]["runs"] and detail["canny"]["runs"]
    with studio_client(root, allow_pickle=True) as c:
        r = c.post("/controlnet/detect", json=detect)
        assert r.status_code == 200, r.text
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
        want = run_preprocessor("depth_anything", photo(64, 64), resolution=64, threshold_a=-1, threshold_b=-1,
                                models_root=root, allow_pickle=True)
        assert (got == want).all()
        body = {"prompt": "a square", "seed": 4, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
                "alwayson_scripts": {"controlnet": {"args": [
                    {"module": "depth_anything", "model": "control_tiny", "image": pic, "processor_res": 64}]}}}
        r = c.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        text = json.loads(r.json()["info"])["infotexts"][0]
        assert 'ControlNet 0: "Module: depth_anything, Model: control_tiny [' in text
