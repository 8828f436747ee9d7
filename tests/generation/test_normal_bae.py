"""The normal_bae preprocessor: the network in scannet.pt's layout (real size, 72.6 M random parameters),
the extension's processing on a known network output (input normalisation, sizes, the normal -> RGB
mapping), end to end with the file as published, the pickle rule, and the API (/controlnet/detect and a
txt2img ControlNet unit).

Agreement with controlnet_aux's NormalBaeDetector (the same network code and processing as the extension)
on the same weights: bench/normal_bae_vs_controlnet_aux.py (a separate venv, which the suite cannot use).
"""

from __future__ import annotations

import base64
import io
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.core.errors import InvalidParameter, ModelFileError, PickleRefused
from lorastudio.generation.preprocessors import preprocessors, run_preprocessor
from lorastudio.generation.preprocessors.normal_bae import network_input, normal_map
from lorastudio.generation.preprocessors.normal_bae_net import NormalBaeNet
from lorastudio.testing.annotator_files import edge_picture, normal_bae_state_dict, write_annotator_file

FILE = "scannet.pt"
# From the published architecture (gen_efficientnet's tf_efficientnet_b5_ap under encoder.original_model,
# NNET's decoder): keys and shapes of the file.
REAL_SHAPES = {
    "encoder.original_model.conv_stem.weight": (48, 3, 3, 3),
    "encoder.original_model.bn1.running_var": (48,),
    "encoder.original_model.blocks.0.0.conv_dw.weight": (48, 1, 3, 3),
    "encoder.original_model.blocks.0.0.se.conv_reduce.weight": (12, 48, 1, 1),
    "encoder.original_model.blocks.0.0.conv_pw.weight": (24, 48, 1, 1),
    "encoder.original_model.blocks.0.2.bn2.weight": (24,),
    "encoder.original_model.blocks.1.0.conv_pw.weight": (144, 24, 1, 1),
    "encoder.original_model.blocks.1.0.se.conv_reduce.weight": (6, 144, 1, 1),
    "encoder.original_model.blocks.1.0.se.conv_expand.bias": (144,),
    "encoder.original_model.blocks.2.0.conv_dw.weight": (240, 1, 5, 5),
    "encoder.original_model.blocks.2.4.conv_pw.weight": (384, 64, 1, 1),
    "encoder.original_model.blocks.3.6.conv_pwl.weight": (128, 768, 1, 1),
    "encoder.original_model.blocks.4.6.bn3.running_mean": (176,),
    "encoder.original_model.blocks.5.0.conv_dw.weight": (1056, 1, 5, 5),
    "encoder.original_model.blocks.5.8.se.conv_reduce.weight": (76, 1824, 1, 1),
    "encoder.original_model.blocks.6.2.conv_pwl.weight": (512, 3072, 1, 1),
    "encoder.original_model.conv_head.weight": (2048, 512, 1, 1),
    "encoder.original_model.bn2.num_batches_tracked": (),
    "decoder.conv2.weight": (2048, 2048, 1, 1),
    "decoder.up1._net.0.weight": (1024, 2224, 3, 3),
    "decoder.up2._net.0.weight": (512, 1088, 3, 3),
    "decoder.up3._net.3.weight": (256, 256, 3, 3),
    "decoder.up4._net.0.weight": (128, 280, 3, 3),
    "decoder.up4._net.4.running_var": (128,),
    "decoder.out_conv_res8.weight": (4, 512, 3, 3),
    "decoder.out_conv_res4.0.weight": (128, 516, 1),
    "decoder.out_conv_res2.0.weight": (128, 260, 1),
    "decoder.out_conv_res1.0.weight": (128, 132, 1),
    "decoder.out_conv_res1.6.weight": (4, 128, 1),
    "decoder.out_conv_res1.6.bias": (4,),
}
# the counts of controlnet_aux's NNET(architecture="BN") built by its own gen_efficientnet
N_TENSORS, N_PARAMETERS = 936, 72_602_752  # parameters without the num_batches_tracked counters


@pytest.fixture(scope="module")
def state():
    return normal_bae_state_dict(0)


@pytest.fixture(scope="module")
def roots(tmp_path_factory, state):
    """(models/ with scannet.pt as published: a pickle of {"model": weights with a `module.` prefix},
    models/ with a scannet.safetensors twin in the Annotators layout)."""
    base = tmp_path_factory.mktemp("normalbae")
    write_annotator_file(base / "pth" / "ControlNetPreprocessor", FILE,
                         {"model": {f"module.{k}": v for k, v in state.items()}})
    write_annotator_file(base / "st" / "ControlNetPreprocessor" / "lllyasviel" / "Annotators", FILE, state,
                         safetensors=True)
    return base / "pth", base / "st"


def run(image, root, *, resolution=64, allow_pickle=True):
    return run_preprocessor("normal_bae", image, resolution=resolution, threshold_a=-1, threshold_b=-1,
                            models_root=root, allow_pickle=allow_pickle)


def test_network_has_the_files_layout_and_outputs_unit_normals(state):
    with torch.device("meta"):  # shapes only: no time spent initialising 72.6 M parameters
        sd = NormalBaeNet().state_dict()
    assert len(sd) == N_TENSORS
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked")) == N_PARAMETERS
    assert {k: tuple(sd[k].shape) for k in REAL_SHAPES} == REAL_SHAPES
    assert "encoder.original_model.classifier.weight" not in sd and "encoder.original_model.blocks.7.0.bn1.weight" \
        not in sd and "encoder.original_model.blocks.6.3.bn1.weight" not in sd
    with torch.device("meta"):
        net = NormalBaeNet()
    net.load_state_dict(state, strict=True, assign=True)
    with torch.inference_mode():
        outs = net.eval()(torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)))
    assert [tuple(o.shape) for o in outs] == [(1, 4, 8, 12), (1, 4, 16, 24), (1, 4, 32, 48), (1, 4, 64, 96)]
    for o in outs:  # unit normals (up to the 1e-10 in the norm and float32 rounding), kappa >= 0.01
        assert torch.isfinite(o).all()
        assert torch.allclose(o[:, :3].norm(dim=1), torch.ones(1), atol=1e-5)
        assert (o[:, 3] >= 0.01 - 1e-6).all()
    assert outs[-1][:, :3].std() > 0.2  # random weights give normals that vary, not one flat colour


def _fixed_net(last: np.ndarray, seen: list):
    """Stands in for the network: four predictions, the full-size one `last`, the others garbage."""

    class Fixed(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            h, w = x.shape[2:]
            assert last.shape[2:] == (h, w)
            junk = [torch.full((1, 4, h // s, w // s), 0.3) for s in (8, 4, 2)]
            return [*junk, torch.from_numpy(last)]

    return Fixed()


def test_known_output_mapped_to_rgb_at_the_extensions_sizes():
    # 48 x 80 at resolution 64: resized to 64 x 107 (cubic), edge-padded to 64 x 128 for the network
    picture = edge_picture(48, 80)
    last = np.zeros((1, 4, 64, 128), np.float32)
    last[0, 3] = 5.0  # kappa: not a colour
    last[0, :3, 0, 0] = (-1.0, 0.0, 1.0)  # x -> R 0, y -> G 127 (127.5 truncated), z -> B 255
    last[0, :3, 1, 2] = (0.5, -0.5, 1.5)  # 191.25 -> 191, 63.75 -> 63, clipped to 255
    last[0, :3, 2, 5] = (-3.0, 0.02, -0.02)  # clipped to 0; 130.05 -> 130, 124.95 -> 124
    last[0, :3, 63, 106] = (0.9, 0.1, -0.9)  # the last kept pixel: 242, 140, 12
    last[0, :3, 10, 107:] = 0.7  # in the padding: cut off
    seen: list = []
    got = normal_map(picture, 64, _fixed_net(last, seen))
    assert got.shape == (64, 107, 3) and got.dtype == np.uint8
    assert got[0, 0].tolist() == [0, 127, 255] and got[1, 2].tolist() == [191, 63, 255]
    assert got[2, 5].tolist() == [0, 130, 124] and got[63, 106].tolist() == [242, 140, 12]
    assert got[5, 5].tolist() == [127, 127, 127]  # a zero prediction is mid grey
    assert not (got[10] == [216, 216, 216]).all(axis=1).any()  # 0.7 -> 216: only in the cut padding
    (x,) = seen
    padded = np.pad(cv2.resize(picture, (107, 64), interpolation=cv2.INTER_CUBIC), [[0, 0], [0, 21], [0, 0]],
                    mode="edge")
    want = (padded.astype(np.float32) / np.float32(255) - np.array([0.485, 0.456, 0.406], np.float32)) \
        / np.array([0.229, 0.224, 0.225], np.float32)
    assert x.shape == (1, 3, 64, 128) and x.dtype == torch.float32
    # float32 division by 255 then the ImageNet normalisation: the same operations, so equal to rounding
    np.testing.assert_allclose(x[0].numpy(), want.transpose(2, 0, 1), rtol=0, atol=1e-6)
    assert (network_input(padded) == x).all()


@pytest.mark.pixels
def test_runs_with_the_file_as_published(roots, state, tmp_path):
    pth_root, st_root = roots
    im = edge_picture(48, 64)
    got = run(im, pth_root)
    # resolution 64: 48 x 64 -> 64 x 85 (cubic), padded to 64 x 128
    assert got.shape == (64, 85, 3) and got.dtype == np.uint8 and got.std() > 10
    with torch.device("meta"):
        net = NormalBaeNet()
    net.load_state_dict(state, assign=True)
    padded = np.pad(cv2.resize(im, (85, 64), interpolation=cv2.INTER_CUBIC), [[0, 0], [0, 43], [0, 0]], mode="edge")
    with torch.inference_mode():
        n = net.eval()(network_input(padded))[-1][0, :3, :, :85].permute(1, 2, 0).numpy()
    assert (got == (((n + 1) * 0.5).clip(0, 1) * 255.0).astype(np.uint8)).all()
    # the pickle rule: refused without permission, naming the file and the twin that needs none
    with pytest.raises(PickleRefused) as e:
        run(im, pth_root, allow_pickle=False)
    assert str(pth_root / "ControlNetPreprocessor" / FILE) in str(e.value)
    assert "scannet.safetensors" in str(e.value) and "--allow-pickle" in str(e.value)
    assert (run(im, st_root, allow_pickle=False) == got).all()
    # another network's file is named, not half-loaded; an absent one names what to put where
    wrong = tmp_path / "wrong"
    write_annotator_file(wrong / "ControlNetPreprocessor", FILE, {"decoder.conv2.weight": torch.zeros(4, 4, 1, 1)},
                         safetensors=True)
    with pytest.raises(ModelFileError) as e:
        run(im, wrong)
    assert "scannet.safetensors" in str(e.value) and "NormalBaeNet" in str(e.value)
    with pytest.raises(InvalidParameter) as e:
        run(im, tmp_path / "empty")
    assert FILE in str(e.value) and "never downloads" in str(e.value) and "ControlNetPreprocessor" in str(e.value)
    pre = preprocessors()["normal_bae"]
    assert pre.runs and pre.weights == (FILE,) and pre.resolution.value == 512
    assert pre.threshold_a is None and pre.threshold_b is None


def _b64(arr) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_detect_route_and_a_txt2img_unit(roots, studio_client):
    from lorastudio.testing.tiny_controlnet import write_controlnet_models_root

    _, st_root = roots
    root = st_root  # scannet.safetensors: no pickle permission needed
    write_controlnet_models_root(root, "control_tiny_normalbae")
    pic = edge_picture(64, 64, seed=3)
    with studio_client(root) as c:
        detail = c.get("/controlnet/module_list").json()["module_detail"]["normal_bae"]
        assert detail["runs"] is True and detail["weights"] == [FILE]
        assert [s["name"] for s in detail["sliders"]] == ["Resolution"]
        r = c.post("/controlnet/detect", json={"controlnet_module": "normal_bae",
                                               "controlnet_input_images": [_b64(pic)], "controlnet_processor_res": 64})
        assert r.status_code == 200, r.text
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
        assert (got == run(pic, root, allow_pickle=False)).all() and got.std() > 10
        body = {"prompt": "a sticker", "seed": 3, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
                "alwayson_scripts": {"controlnet": {"args": [
                    {"module": "normal_bae", "model": "control_tiny_normalbae", "image": _b64(pic),
                     "processor_res": 64, "resize_mode": "Just Resize"}]}}}
        r = c.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        assert 'ControlNet 0: "Module: normal_bae, Model: control_tiny_normalbae [' in json.loads(
            r.json()["info"])["infotexts"][0]
        # the map steers the picture: the same unit on the plain picture (module none) draws another one
        none = {**body, "alwayson_scripts": {"controlnet": {"args": [
            {**body["alwayson_scripts"]["controlnet"]["args"][0], "module": "none"}]}}}
        assert c.post("/sdapi/v1/txt2img", json=none).json()["images"][0] != r.json()["images"][0]
