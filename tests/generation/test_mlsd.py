"""The mlsd preprocessor: the network in mlsd_large_512_fp32.pth's layout, the line decoding on known
network outputs (drawn lines asserted pixel by pixel), the extension's processing end to end with
real-size random weights (6 MB), the pickle rule, the sliders and the API.

Agreement with controlnet_aux's MLSDdetector (which runs M-LSD as the extension does) on the same
weights: bench/mlsd_vs_controlnet_aux.py (a separate venv, which the suite cannot use).
"""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.core.errors import InvalidParameter, ModelFileError, PickleRefused
from lorastudio.generation.preprocessors import detect, preprocessors, run_preprocessor
from lorastudio.generation.preprocessors.mlsd import decode_lines, draw_lines, mlsd_map, network_input
from lorastudio.generation.preprocessors.mlsd_net import MlsdNet
from lorastudio.testing.annotator_files import edge_picture, mlsd_state_dict, write_annotator_file

FILE = "mlsd_large_512_fp32.pth"
# From the published architecture (M-LSD large: MobileNetV2 front with a 4-channel stem, decoder blocks
# 15-23): keys and shapes of the file.
REAL_SHAPES = {
    "backbone.features.0.0.weight": (32, 4, 3, 3),
    "backbone.features.1.conv.0.0.weight": (32, 1, 3, 3),  # expansion 1: depthwise first
    "backbone.features.1.conv.1.weight": (16, 32, 1, 1),
    "backbone.features.2.conv.0.0.weight": (96, 16, 1, 1),
    "backbone.features.2.conv.1.0.weight": (96, 1, 3, 3),
    "backbone.features.13.conv.2.weight": (96, 576, 1, 1),
    "backbone.features.13.conv.3.running_var": (96,),
    "block15.conv1.0.weight": (64, 96, 1, 1),
    "block15.conv2.0.weight": (64, 64, 1, 1),
    "block17.conv2.0.weight": (64, 32, 1, 1),
    "block19.conv2.0.weight": (64, 24, 1, 1),
    "block21.conv2.0.weight": (64, 16, 1, 1),
    "block22.conv1.0.weight": (128, 128, 3, 3),
    "block22.conv2.1.bias": (64,),
    "block23.conv1.0.weight": (64, 64, 3, 3),
    "block23.conv3.weight": (16, 64, 1, 1),
    "block23.conv3.bias": (16,),
}
N_TENSORS, N_BATCH_NORMS = 362, 57
N_PARAMETERS = 1_552_624  # without the 57 num_batches_tracked counters


@pytest.fixture(scope="module")
def state():
    return mlsd_state_dict(0)


@pytest.fixture(scope="module")
def pth_root(tmp_path_factory, state):
    """models/ with the file as the published .pth pickle in the extension's folder."""
    root = tmp_path_factory.mktemp("mlsd") / "models"
    write_annotator_file(root / "ControlNetPreprocessor", FILE, state)
    return root


def run(image, root, *, a=0.1, b=0.1, resolution=128, allow_pickle=True):
    return run_preprocessor("mlsd", image, resolution=resolution, threshold_a=a, threshold_b=b, models_root=root,
                            allow_pickle=allow_pickle)


def test_network_has_the_files_layout(state):
    sd = MlsdNet().state_dict()
    assert len(sd) == N_TENSORS and sum(k.endswith("num_batches_tracked") for k in sd) == N_BATCH_NORMS
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked")) == N_PARAMETERS
    assert {k: tuple(sd[k].shape) for k in REAL_SHAPES} == REAL_SHAPES
    assert "backbone.features.14.conv.0.0.weight" not in sd and "block24.conv1.0.weight" not in sd
    # the test file's layout (written from the architecture, not from MlsdNet) loads strictly
    net = MlsdNet()
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 4, 64, 128))
    assert out.shape == (1, 9, 32, 64)  # the head's channels 7..15 at half the input size


def _fixed_net(tp: np.ndarray, seen: list | None = None):
    """Stands in for the network: returns `tp` (1, 9, h, w) and records what it was given."""

    class Fixed(torch.nn.Module):
        def forward(self, x):
            if seen is not None:
                seen.append(x.clone())
            assert x.shape[2:] == (2 * tp.shape[2], 2 * tp.shape[3])
            return torch.from_numpy(tp)

    return Fixed()


def _tp(h: int, w: int, centres) -> np.ndarray:
    """A network output with line centres: (row, col, logit, (dx0, dy0, dx1, dy1) in cells); elsewhere a
    logit of -8 (score 0.0003) and no displacement."""
    tp = np.zeros((1, 9, h, w), np.float32)
    tp[0, 0] = -8.0
    for row, col, logit, disp in centres:
        tp[0, 0, row, col] = logit
        tp[0, 1:5, row, col] = disp
    return tp


def _white(m: np.ndarray) -> set[tuple[int, int]]:
    ys, xs = np.nonzero(m[..., 0])
    return set(zip(xs.tolist(), ys.tolist()))


CENTRES = [
    (10, 20, 2.0, (-10, 0, 10, 0)),  # (20, 20) -> (60, 20): horizontal
    (10, 21, 1.5, (0, -8, 0, 8)),  # next to the one above and weaker: not a local maximum, not drawn
    (40, 30, 1.0, (0, -5.25, 0, 5.75)),  # (60, 69.5) -> (60, 91.5), truncated to (60, 69) -> (60, 91)
    (50, 50, 0.5, (-4, -4, 4, 4)),  # (92, 92) -> (108, 108): diagonal
    (30, 10, -2.5, (-3, 0, 3, 0)),  # score sigmoid(-2.5) = 0.076: under the default 0.1
    (56, 20, 0.8, (-1.5, -2, 1.5, 2)),  # (37, 108) -> (43, 116): 5 cells long, under a distance threshold of 5
]


def _expected(a=0.1, b=0.1) -> set[tuple[int, int]]:
    pts = {(x, 20) for x in range(20, 61)} | {(60, y) for y in range(69, 92)} | {(92 + i, 92 + i) for i in range(17)}
    if a < 0.076:
        pts |= {(x, 60) for x in range(14, 27)}
    if b < 5:
        pts |= {(37, 108), (38, 109), (38, 110), (39, 111), (40, 112), (41, 113), (41, 114), (42, 115), (43, 116)}
    return pts


def test_known_output_is_decoded_and_drawn_exactly():
    picture = np.full((128, 128, 3), 90, np.uint8)  # resolution 128: no resize, no padding; a 64 x 64 TP map
    net = _fixed_net(_tp(64, 64, CENTRES))
    got = mlsd_map(picture, 128, 0.1, 0.1, net)
    assert got.shape == (128, 128, 3) and got.dtype == np.uint8 and set(np.unique(got)) == {0, 255}
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
    assert _white(got) == _expected()
    # the value threshold is the centre's score (sigmoid of the logit), strictly above it
    assert _white(mlsd_map(picture, 128, 0.05, 0.1, net)) == _expected(a=0.05)
    assert _white(mlsd_map(picture, 128, float(torch.sigmoid(torch.tensor(0.5))), 0.1, net)) == \
        _expected() - {(92 + i, 92 + i) for i in range(17)}
    # the distance threshold is the segment's length in TP-map cells (half the pixels), strictly above it
    assert _white(mlsd_map(picture, 128, 0.1, 4.9, net)) == _expected()
    assert _white(mlsd_map(picture, 128, 0.1, 5.0, net)) == _expected(b=5)
    # lengths: 20 (horizontal), 11 (vertical), 11.3 (diagonal) cells
    assert _white(mlsd_map(picture, 128, 0.1, 11.2, net)) == _expected(b=5) - {(60, y) for y in range(69, 92)}
    assert not mlsd_map(picture, 128, 0.1, 20.0, net).any()
    # the segments themselves: pixels of the network input, strongest centre first
    lines = decode_lines(torch.from_numpy(_tp(64, 64, CENTRES)), 0.1, 0.1)
    assert lines.dtype == np.float64 and lines.tolist() == [[20, 20, 60, 20], [60, 69.5, 60, 91.5],
                                                            [37, 108, 43, 116], [92, 92, 108, 108]]
    # nothing passes: a black map (the extension swallows pred_lines' error on an empty list)
    assert not mlsd_map(picture, 128, 0.99, 0.1, net).any()


def test_known_output_at_the_extensions_sizes():
    # 48 x 80 at resolution 64: resized to 64 x 107 (cubic), edge-padded to 64 x 128 for the network, which
    # sees it at that size (the extension passes the picture's own shape to M-LSD): a 32 x 64 TP map
    picture = edge_picture(48, 80)
    seen: list = []
    centres = [(10, 50, 2.0, (-5, 0, 5, 0)),  # (90, 20) -> (110, 20): cut at the unpadded width 107
               (20, 60, 1.0, (-2, 0, 2, 0))]  # (116, 40) -> (124, 40): in the padding, cut away
    got = mlsd_map(picture, 64, 0.1, 0.1, _fixed_net(_tp(32, 64, centres), seen))
    assert got.shape == (64, 107, 3)
    assert _white(got) == {(x, 20) for x in range(90, 107)}
    (x,) = seen
    padded = np.pad(cv2.resize(picture, (107, 64), interpolation=cv2.INTER_CUBIC), [[0, 0], [0, 21], [0, 0]],
                    mode="edge")
    assert x.shape == (1, 4, 64, 128) and x.dtype == torch.float32
    want = padded.astype(np.float32).transpose(2, 0, 1) / np.float32(127.5) - np.float32(1)
    assert (x[0, :3].numpy() == want).all()
    assert (x[0, 3] == np.float32(1) / np.float32(127.5) - np.float32(1)).all()  # the constant 4th plane
    assert x.permute(0, 2, 3, 1).is_contiguous()  # M-LSD's layout: an (h, w, 4) buffer
    assert (network_input(padded) == x).all()


def test_the_200_strongest_centres_only():
    # 250 separate centres with rising scores, each a 4 px vertical line: only the 200 strongest are read
    centres = [(8 + 8 * (i // 25), 8 + 8 * (i % 25), -1.0 + 4.0 * i / 249, (0, -1, 0, 1)) for i in range(250)]
    got = mlsd_map(np.zeros((512, 512, 3), np.uint8), 512, 0.1, 0.1, _fixed_net(_tp(256, 256, centres)))
    drawn = [bool(got[2 * r, 2 * c, 0]) for r, c, _, _ in centres]
    assert drawn == [False] * 50 + [True] * 200
    assert _white(got) == {(2 * c, 2 * r + d) for r, c, _, _ in centres[50:] for d in range(-2, 3)}


def test_drawing_stops_where_the_extensions_loop_stops():
    lines = np.array([[0, 5, 30, 5], [0, 10, np.inf, 10], [0, 15, 30, 15]])
    assert _white(draw_lines(lines, 20, 40)[..., None]) == {(x, 5) for x in range(31)}
    lines = np.array([[0, 5, 30, 5], [0, 10, 2.0 ** 31 + 1, 10], [0, 15, 30, 15]])  # past cv2.line's int32
    assert _white(draw_lines(lines, 20, 40)[..., None]) == {(x, 5) for x in range(31)}
    lines = np.array([[-5.9, 2, 3.9, 2], [0, 15, 2.0 ** 31 - 0.5, 15]])  # truncated toward 0: in range
    assert _white(draw_lines(lines, 20, 40)[..., None]) == {(x, 2) for x in range(4)} | {(x, 15) for x in range(40)}
    # a NaN displacement makes no line (its length is not above the threshold) and stops nothing
    tp = _tp(16, 16, [(4, 4, 2.0, (np.nan, 0, 1, 0)), (10, 10, 1.0, (-2, 0, 2, 0))])
    assert decode_lines(torch.from_numpy(tp), 0.1, 0.1).tolist() == [[16, 20, 24, 20]]


@pytest.mark.pixels
def test_runs_with_the_file_as_the_extension_does(pth_root, state):
    im = edge_picture(96, 128)
    got = run(im, pth_root)
    # resolution 128: 96 x 128 -> 128 x 171 (cubic), padded to 128 x 192
    assert got.shape == (128, 171, 3) and got.dtype == np.uint8 and set(np.unique(got)) == {0, 255}
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
    assert 0.01 < (got > 0).mean() < 0.5  # random weights in this layout do draw lines
    net = MlsdNet()
    net.load_state_dict(state)
    padded = np.pad(cv2.resize(im, (171, 128), interpolation=cv2.INTER_CUBIC), [[0, 0], [0, 21], [0, 0]],
                    mode="edge")
    with torch.no_grad():
        tp = net.eval()(network_input(padded))
    lines = decode_lines(tp, 0.1, 0.1)
    assert len(lines) > 10
    assert (got[..., 0] == draw_lines(lines, 128, 192)[:128, :171]).all()
    # stricter thresholds keep a subset of the lines, so of the pixels
    strict = run(im, pth_root, a=0.2, b=10.0)
    assert 0 < (strict > 0).sum() < (got > 0).sum() and not (strict & ~got).any()
    # the sliders: the extension's labels, defaults and ranges
    pre = preprocessors()["mlsd"]
    assert pre.runs and pre.weights == (FILE,) and pre.resolution.value == 512
    assert (pre.threshold_a.label, pre.threshold_a.value, pre.threshold_a.minimum, pre.threshold_a.maximum) == \
        ("MLSD Value Threshold", 0.1, 0.01, 2.0)
    assert (pre.threshold_b.label, pre.threshold_b.value, pre.threshold_b.minimum, pre.threshold_b.maximum) == \
        ("MLSD Distance Threshold", 0.1, 0.01, 20.0)
    assert detect("mlsd", im, resolution=128, threshold_a=0.1, threshold_b=0.1, models_root=pth_root,
                  allow_pickle=True)[1] is None


def test_pickle_rule_safetensors_twin_and_absent_file(pth_root, state, tmp_path):
    im = edge_picture(64, 64, seed=2)
    with pytest.raises(PickleRefused) as e:
        run(im, pth_root, allow_pickle=False)
    assert str(pth_root / "ControlNetPreprocessor" / FILE) in str(e.value)
    assert "mlsd_large_512_fp32.safetensors" in str(e.value) and "--allow-pickle" in str(e.value)
    allowed = run(im, pth_root)
    # a .safetensors twin in the Annotators layout needs no permission; a file without the batch norms'
    # num_batches_tracked counters (as some saves of the weights have) loads the same
    twin = tmp_path / "models"
    trimmed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    write_annotator_file(twin / "ControlNetPreprocessor" / "lllyasviel" / "Annotators", FILE, trimmed, safetensors=True)
    assert (run(im, twin, allow_pickle=False) == allowed).all()
    # half precision loads into the float32 network
    half = tmp_path / "half"
    write_annotator_file(half / "ControlNetPreprocessor", FILE, {k: v.half() if v.is_floating_point() else v
                                                                 for k, v in state.items()})
    assert run(im, half).shape == allowed.shape
    # another network's file is named, not half-loaded
    wrong = tmp_path / "wrong"
    write_annotator_file(wrong / "ControlNetPreprocessor", FILE, {"block23.conv3.weight": torch.zeros(16, 64, 1, 1)},
                         safetensors=True)
    with pytest.raises(ModelFileError) as e:
        run(im, wrong, allow_pickle=False)
    assert "mlsd_large_512_fp32.safetensors" in str(e.value) and "MlsdNet" in str(e.value)
    with pytest.raises(InvalidParameter) as e:
        run(im, tmp_path / "empty")
    assert FILE in str(e.value) and "never downloads" in str(e.value)


def _b64(arr) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_detect_route_and_a_units_map(pth_root, studio_client):
    from lorastudio.generation.controlnet_units import ControlNetUnit, control_map

    pic = edge_picture(64, 96)
    with studio_client(pth_root, allow_pickle=True) as c:
        detail = c.get("/controlnet/module_list").json()["module_detail"]["mlsd"]
        assert detail["runs"] is True and detail["weights"] == [FILE]
        assert [s["name"] for s in detail["sliders"]] == ["Resolution", "MLSD Value Threshold",
                                                          "MLSD Distance Threshold"]
        assert [s["value"] for s in detail["sliders"]] == [512, 0.1, 0.1]
        # -1 thresholds take the sliders' defaults, as the extension's API does
        r = c.post("/controlnet/detect", json={"controlnet_module": "mlsd", "controlnet_input_images": [_b64(pic)],
                                               "controlnet_processor_res": 128})
        assert r.status_code == 200, r.text
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
    assert (got == run(pic, pth_root)).all() and got.any()
    unit = ControlNetUnit(module="mlsd", processor_res=128).with_slider_defaults()
    assert (unit.threshold_a, unit.threshold_b) == (0.1, 0.1)
    fitted = control_map(unit, Image.fromarray(pic), 96, 64, models_root=pth_root, allow_pickle=True)
    assert fitted.size == (96, 64)
