"""depth_leres: the network in res101.pth's layout, the extension's processing on known predictions (normalisation,
inversion, the Remove Near % / Remove Background % sliders, padding), the file found and read under the pickle
rule, and the module in /controlnet/detect and a txt2img ControlNet unit.

The real res101.pth is ~530 MB (115.6 M parameters): its key names and shapes are checked as literals on the
network built on the meta device; the runs use a smaller network of the same layout (1, 1, 2, 1 blocks, widths
32..256 in 4 groups, decoder 32/64 wide) written in the file's format, which goes through the same code (the
sizes are read from the file's shapes). A fixture written by controlnet_aux's own LeReS modules at that small size
(its prediction and maps) is matched; agreement with controlnet_aux's LeresDetector on real-size random weights:
bench/depth_leres_vs_controlnet_aux.py (a separate venv, which the suite cannot use).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.core.errors import InvalidParameter, ModelFileError, PickleRefused
from lorastudio.generation.preprocessors import preprocessors, run_preprocessor
from lorastudio.generation.preprocessors.depth_leres import leres_map, network_input
from lorastudio.generation.preprocessors.leres_net import LeresNet
from lorastudio.testing.annotator_files import edge_picture, leres_state_dict, write_annotator_file

FILE = "res101.pth"
SMALL = dict(stem=16, widths=(32, 64, 128, 256), groups=4, blocks=(1, 1, 2, 1), mids=(32, 32, 32, 64))
E, D = "depth_model.encoder_modules.encoder.", "depth_model.decoder_modules."
# From the published architecture (AdelaiDepth's RelDepthModel, ResNeXt-101 32x8d): keys (without the file's
# "module." prefix) and shapes of res101.pth's depth_model entry.
REAL_SHAPES = {
    E + "conv1.weight": (64, 3, 7, 7),
    E + "bn1.running_var": (64,),
    E + "layer1.0.conv1.weight": (256, 64, 1, 1),
    E + "layer1.0.conv2.weight": (256, 8, 3, 3),  # 32 groups of 8
    E + "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    E + "layer2.0.conv2.weight": (512, 16, 3, 3),
    E + "layer2.3.bn3.weight": (512,),
    E + "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
    E + "layer3.22.conv3.weight": (1024, 1024, 1, 1),
    E + "layer4.2.conv2.weight": (2048, 64, 3, 3),
    E + "layer4.2.bn3.num_batches_tracked": (),
    D + "conv.conv1.weight": (512, 2048, 3, 3),
    D + "conv.conv_branch.1.weight": (512, 512, 3, 3),
    D + "conv.conv_branch.2.running_mean": (512,),
    D + "conv.conv_branch.4.bias": (512,),
    D + "conv1.weight": (256, 512, 3, 3),
    D + "ffm2.ftb1.conv1.weight": (256, 1024, 3, 3),
    D + "ffm1.ftb1.conv1.weight": (256, 512, 3, 3),
    D + "ffm0.ftb2.conv_branch.4.weight": (256, 256, 3, 3),
    D + "outconv.adapt_conv.0.weight": (128, 256, 3, 3),
    D + "outconv.adapt_conv.1.running_var": (128,),
    D + "outconv.adapt_conv.3.weight": (1, 128, 3, 3),
    D + "outconv.adapt_conv.3.bias": (1,),
}
N_TENSORS, N_PARAMETERS = 712, 115_568_065  # the reference RelDepthModel's state dict: tensors, values
# controlnet_aux's own LeReS modules at SMALL, loading strictly the small file of leres_state_dict(0, **SMALL), run
# by its LeresDetector on the extension's padded picture (bench/depth_leres_vs_controlnet_aux.py --golden)
GOLDEN = Path(__file__).parent / "data" / "depth_leres_aux_small.npz"


@pytest.fixture(scope="module")
def small():
    return leres_state_dict(0, **SMALL)  # "module."-prefixed, as the file


@pytest.fixture(scope="module")
def pth_root(tmp_path_factory, small):
    """models/ with res101.pth as the published checkpoint: the network under 'depth_model', other entries beside."""
    root = tmp_path_factory.mktemp("leres") / "models"
    other = {"module.fc.weight": torch.ones(4, 4)}
    write_annotator_file(root / "ControlNetPreprocessor", FILE,
                         {"depth_model": small, "shift_model": other, "focal_model": other})
    return root


def run(image, root, *, a=0.0, b=0.0, resolution=64, allow_pickle=True):
    return run_preprocessor("depth_leres", image, resolution=resolution, threshold_a=a, threshold_b=b,
                            models_root=root, allow_pickle=allow_pickle)


def test_network_has_the_files_layout(small):
    with torch.device("meta"):
        sd = LeresNet().state_dict()  # the real size, no memory
    assert len(sd) == N_TENSORS
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked")) == N_PARAMETERS
    assert {k: tuple(sd[k].shape) for k in REAL_SHAPES} == REAL_SHAPES
    assert E + "layer3.23.conv1.weight" not in sd and E + "layer4.3.conv1.weight" not in sd
    assert E + "layer2.1.downsample.0.weight" not in sd and E + "fc.weight" not in sd
    assert D + "outconv.adapt_conv.2.weight" not in sd  # index 2 is the ReLU
    # the smaller file of the same layout (written from the architecture, not from LeresNet) loads strictly
    from lorastudio.generation.preprocessors.leres_net import LeresConfig

    state = {k.removeprefix("module."): v for k, v in small.items()}
    net = LeresNet(LeresConfig.from_state_dict(state))
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, 1, 64, 96)  # the input's size


def test_the_small_network_gives_controlnet_aux_map(pth_root):
    g = np.load(GOLDEN)
    picture = edge_picture(48, 80)
    assert (g["picture"] == picture).all()
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles
    from lorastudio.generation.preprocessors.depth_leres import load_network
    from lorastudio.generation.preprocessors.picture_steps import pad_to_64

    padded = pad_to_64(picture, 64)[0]
    assert (padded == g["padded"]).all()  # cv2's cubic resize of uint8 is fixed-point: the same picture
    net = load_network(pth_root / "ControlNetPreprocessor" / FILE, AnnotatorFiles(pth_root, allow_pickle=True))
    with torch.no_grad():
        depth = net(network_input(padded))[0, 0].numpy()
    want = g["prediction"]
    assert want.max() - want.min() > 1  # the fixture's prediction is not flat
    # the same torch on both sides, but other builds may sum the convolutions in another order: float32 rounding
    assert np.abs(depth - want).max() <= 1e-5 * (want.max() - want.min())
    for a, b in ((0.0, 0.0), (20.0, 30.0)):
        got = run(picture, pth_root, a=a, b=b)[..., 0]
        d = np.abs(got.astype(int) - g[f"map_{a}_{b}"].astype(int))
        assert got.shape == (64, 107) and d.max() <= 1 and (d > 0).mean() < 0.01  # a level may flip at a boundary
    assert (g["map_20.0_30.0"] == 255).any() and (g["map_20.0_30.0"] == 0).any()  # both sliders acted


def _fixed(pred: np.ndarray, seen: list | None = None):
    def net(x):
        if seen is not None:
            seen.append(x.clone())
        return torch.from_numpy(pred)
    return net


def _gray(depth_row: np.ndarray) -> np.ndarray:
    """The extension's uint8 levels of a depth row whose min is 0: 0..65535 truncated, then x 255/65535 rounded."""
    v16 = np.floor(65535 * depth_row.astype(np.float64) / depth_row.max())
    return np.floor(v16 * 255 / 65535 + 0.5).astype(np.uint8)  # no ties: v16 / 257 never ends in .5


def test_known_prediction_gives_the_extensions_map():
    # 64 x 64 at resolution 64: no resize, no padding; depth = the column (far to the right)
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[5, 7] = (255, 0, 10)
    seen: list = []
    pred = np.tile(np.arange(64, dtype=np.float32), (64, 1))[None, None]
    got = leres_map(picture, 64, 0, 0, _fixed(pred, seen))
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
    gray = _gray(np.arange(64.0))
    assert (got[..., 0] == 255 - gray[None, :]).all()  # inverted: near (small depth) white
    assert got[0, 0, 0] == 255 and got[0, 63, 0] == 0
    # the input: channels reversed (BGR), ImageNet mean / std on 0..255 values (no / 255)
    (x,) = seen
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    f = np.float32
    assert x[0, :, 5, 7].tolist() == [(f(10) - f(0.485)) / f(0.229), (f(0) - f(0.456)) / f(0.224),
                                     (f(255) - f(0.406)) / f(0.225)]
    assert (network_input(picture) == x).all()

    # Remove Near 20%: levels not above 51 (the nearest) go to 0 before the inversion, so white after it
    near = leres_map(picture, 64, 20, 0, _fixed(pred))[..., 0]
    want = np.where(gray <= 51, 255, 255 - gray)
    assert (near == want[None, :]).all() and (gray <= 51).sum() == 13
    # Remove Background 30% (76.5): inverted levels not above it (the farthest) go to 0
    bg = leres_map(picture, 64, 0, 30, _fixed(pred))[..., 0]
    inv = 255 - gray
    assert (bg == np.where(inv <= 76, 0, inv)[None, :]).all() and (inv <= 76).sum() == 19
    both = leres_map(picture, 64, 20, 30, _fixed(pred))[..., 0]
    assert (both == np.where(gray <= 51, 255, np.where(inv <= 76, 0, inv))[None, :]).all()
    # 100% near: every level is at most 255, all go to 0, all white
    assert (leres_map(picture, 64, 100, 0, _fixed(pred)) == 255).all()
    # a flat prediction: 0 everywhere, white after the inversion
    assert (leres_map(picture, 64, 0, 0, _fixed(np.full((1, 1, 64, 64), 3.5, np.float32))) == 255).all()


def test_known_prediction_at_the_extensions_sizes():
    # 48 x 80 at resolution 64: 64 x 107 (cubic), edge-padded to 64 x 128; the min-max runs over the padded
    # prediction, whose farthest values lie in the padding, then the padding is cut off
    picture = edge_picture(48, 80)
    seen: list = []
    pred = np.zeros((1, 1, 64, 128), np.float32)
    pred[0, 0, :, :107] = np.linspace(0, 1, 107, dtype=np.float32)
    pred[0, 0, :, 107:] = 4.0
    got = leres_map(picture, 64, 0, 0, _fixed(pred, seen))[..., 0]
    assert got.shape == (64, 107)
    levels = _gray(np.concatenate([np.linspace(0, 1, 107, dtype=np.float32), [4.0]]))[:107]
    assert (got == 255 - levels[None, :]).all() and got.min() >= 255 - 64  # the padding held the far end
    padded = np.pad(cv2.resize(picture, (107, 64), interpolation=cv2.INTER_CUBIC), [[0, 0], [0, 21], [0, 0]],
                    mode="edge")
    (x,) = seen
    assert x.shape == (1, 3, 64, 128) and (x == network_input(padded)).all()


def test_runs_with_the_file_as_the_extension_does(pth_root, small):
    im = edge_picture(96, 128)
    got = run(im, pth_root)
    # resolution 64: 96 x 128 -> 64 x 85 (area), padded to 64 x 128
    assert got.shape == (64, 85, 3) and got.dtype == np.uint8
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
    assert len(np.unique(got)) > 20  # random weights in this layout give a varied map
    from lorastudio.generation.preprocessors.depth_leres import depth_to_map
    from lorastudio.generation.preprocessors.leres_net import LeresConfig

    state = {k.removeprefix("module."): v for k, v in small.items()}
    net = LeresNet(LeresConfig.from_state_dict(state))
    net.load_state_dict(state)
    padded = np.pad(cv2.resize(im, (85, 64), interpolation=cv2.INTER_AREA), [[0, 0], [0, 43], [0, 0]], mode="edge")
    with torch.no_grad():
        depth = net.eval()(network_input(padded))[0, 0].numpy()
    assert (got[..., 0] == depth_to_map(depth, 0, 0)[:, :85]).all()
    # the sliders: near levels saturate to white, far ones go black; the rest is unchanged
    near, far = run(im, pth_root, a=30)[..., 0], run(im, pth_root, b=40)[..., 0]
    base = got[..., 0]
    assert ((base >= 255 - 76) == (near == 255)).all() and (near[base < 255 - 76] == base[base < 255 - 76]).all()
    assert ((base <= 102) == (far == 0)).all() and (far[base > 102] == base[base > 102]).all()
    assert 0 < (near == 255).sum() < near.size and 0 < (far == 0).sum() < far.size
    pre = preprocessors()["depth_leres"]
    assert pre.runs and pre.weights == (FILE,) and pre.resolution.value == 512
    assert (pre.threshold_a.label, pre.threshold_a.value, pre.threshold_a.minimum, pre.threshold_a.maximum) == \
        ("Remove Near %", 0, 0, 100)
    assert (pre.threshold_b.label, pre.threshold_b.value, pre.threshold_b.minimum, pre.threshold_b.maximum) == \
        ("Remove Background %", 0, 0, 100)


def test_pickle_rule_safetensors_twin_and_absent_file(pth_root, small, tmp_path):
    im = edge_picture(64, 64, seed=2)
    with pytest.raises(PickleRefused) as e:
        run(im, pth_root, allow_pickle=False)
    assert str(pth_root / "ControlNetPreprocessor" / FILE) in str(e.value)
    assert "res101.safetensors" in str(e.value) and "--allow-pickle" in str(e.value)
    allowed = run(im, pth_root)
    # a .safetensors twin (the depth_model entry's tensors, flat) in the extension's leres folder needs no permission;
    # one without the batch norms' num_batches_tracked counters (unused in eval) loads the same
    twin = tmp_path / "twin"
    trimmed = {k: v for k, v in small.items() if not k.endswith("num_batches_tracked")}
    write_annotator_file(twin / "ControlNetPreprocessor" / "leres", FILE, trimmed, safetensors=True)
    assert (run(im, twin, allow_pickle=False) == allowed).all()
    # a checkpoint holding the bare state dict (no 'depth_model' entry, no prefix), in the Annotators layout
    bare = tmp_path / "bare"
    write_annotator_file(bare / "ControlNetPreprocessor" / "lllyasviel" / "Annotators", FILE,
                         {k.removeprefix("module."): v for k, v in small.items()})
    assert (run(im, bare) == allowed).all()
    # another network's file is named, not half-loaded
    wrong = tmp_path / "wrong"
    write_annotator_file(wrong / "ControlNetPreprocessor", FILE, {"depth_model": {"block23.conv3.weight":
                                                                                  torch.zeros(16, 64, 1, 1)}})
    with pytest.raises(ModelFileError) as e:
        run(im, wrong)
    assert FILE in str(e.value) and "LeReS" in str(e.value)
    broken = dict(small)
    del broken["module.depth_model.decoder_modules.ffm1.ftb2.conv_branch.4.bias"]
    write_annotator_file(wrong / "ControlNetPreprocessor", FILE, {"depth_model": broken})
    with pytest.raises(ModelFileError, match="ffm1.ftb2.conv_branch.4.bias"):
        run(im, wrong)
    with pytest.raises(InvalidParameter) as e:
        run(im, tmp_path / "empty")
    assert FILE in str(e.value) and "never downloads" in str(e.value) and "leres" in str(e.value)
    # depth_leres++ (the boost) is listed and names the merging network's file, but does not run
    args = dict(resolution=64, threshold_a=0, threshold_b=0, allow_pickle=True)
    with pytest.raises(InvalidParameter, match="needs latest_net_G.pth in"):
        run_preprocessor("depth_leres++", im, models_root=pth_root, **args)
    write_annotator_file(twin / "ControlNetPreprocessor", "latest_net_G.pth", {"w": torch.zeros(1)}, safetensors=True)
    write_annotator_file(twin / "ControlNetPreprocessor", FILE, small, safetensors=True)
    with pytest.raises(InvalidParameter, match="does not run yet"):
        run_preprocessor("depth_leres++", im, models_root=twin, **args)
    assert not preprocessors()["depth_leres++"].runs


def _b64(arr) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_detect_route_and_a_txt2img_unit(pth_root, studio_client):
    from lorastudio.testing.tiny_controlnet import write_controlnet_models_root

    root = pth_root
    write_controlnet_models_root(root, "control_tiny")
    pic = edge_picture(64, 96)
    with studio_client(root, allow_pickle=True) as c:
        detail = c.get("/controlnet/module_list").json()["module_detail"]["depth_leres"]
        assert detail["runs"] is True and detail["weights"] == [FILE]
        assert [s["name"] for s in detail["sliders"]] == ["Resolution", "Remove Near %", "Remove Background %"]
        assert [s["value"] for s in detail["sliders"]] == [512, 0, 0]
        # -1 thresholds take the sliders' defaults (0, 0), as the extension's API does
        r = c.post("/controlnet/detect", json={"controlnet_module": "depth_leres", "controlnet_input_images":
                                               [_b64(pic)], "controlnet_processor_res": 64})
        assert r.status_code == 200, r.text
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
        assert (got == run(pic, root)).all() and len(np.unique(got)) > 10
        body = {"prompt": "a square", "seed": 4, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
                "alwayson_scripts": {"controlnet": {"args": [
                    {"module": "depth_leres", "model": "control_tiny", "image": _b64(pic), "processor_res": 64,
                     "threshold_a": 10, "threshold_b": 20}]}}}
        r = c.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        text = json.loads(r.json()["info"])["infotexts"][0]
        assert 'ControlNet 0: "Module: depth_leres, Model: control_tiny [' in text
