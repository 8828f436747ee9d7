"""softedge_pidinet / softedge_pidisafe / scribble_pidinet: table5_pidinet.pth's layout, the pixel-difference
convolutions, the extension's pre/post-processing, and the pickle rule. (Agreement with controlnet_aux's
own detector on the same weights: bench/pidinet_vs_controlnet_aux.py.)"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from lorastudio.core.errors import InvalidParameter, PickleRefused
from lorastudio.generation.preprocessors import preprocessors, run_preprocessor
from lorastudio.generation.preprocessors.pidinet_net import PidiNet, PixelDifferenceConv
from lorastudio.testing.annotator_files import edge_picture, pidinet_state_dict, write_annotator_file

MODULES = ("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet")


@pytest.fixture(scope="module")
def state():
    return pidinet_state_dict(0)


@pytest.fixture(scope="module")
def pth_root(tmp_path_factory, state):
    """models/ with table5_pidinet.pth as the published file holds it: a pickled dict whose `state_dict`
    has every key prefixed with `module.` (saved from a DataParallel model)."""
    root = tmp_path_factory.mktemp("pidi") / "models"
    write_annotator_file(root / "ControlNetPreprocessor", "table5_pidinet.pth",
                         {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    return root


def run(module, image, root, *, allow_pickle, resolution=64):
    return run_preprocessor(module, image, resolution=resolution, threshold_a=-1, threshold_b=-1, models_root=root,
                            allow_pickle=allow_pickle)


def test_network_has_the_files_keys_and_shapes(state):
    # table5_pidinet.pth's keys and shapes, from the published architecture (carv4, 60 channels, dil 24, sa)
    shapes = {k: tuple(v.shape) for k, v in PidiNet().state_dict().items()}
    assert len(shapes) == 83 and sum(np.prod(s) for s in shapes.values()) == 710_149
    assert shapes["init_block.weight"] == (60, 3, 3, 3) and "init_block.bias" not in shapes
    # the radial-difference kernels are stored 3x3 like the others (the 5x5 is made when the network runs)
    assert shapes["block1_2.conv1.weight"] == (60, 1, 3, 3) and shapes["block1_3.conv2.weight"] == (60, 60, 1, 1)
    assert shapes["block2_1.shortcut.weight"] == (120, 60, 1, 1) and shapes["block2_1.shortcut.bias"] == (120,)
    assert shapes["block2_1.conv1.weight"] == (60, 1, 3, 3) and shapes["block2_1.conv2.weight"] == (120, 60, 1, 1)
    assert shapes["block3_1.conv2.weight"] == (240, 120, 1, 1)
    assert shapes["block4_1.shortcut.weight"] == (240, 240, 1, 1)
    assert "block1_1.shortcut.weight" not in shapes and "block4_5.conv1.weight" not in shapes
    assert shapes["dilations.0.conv1.weight"] == (24, 60, 1, 1)
    assert shapes["dilations.3.conv1.weight"] == (24, 240, 1, 1)
    assert shapes["dilations.2.conv2_4.weight"] == (24, 24, 3, 3) and "dilations.2.conv2_4.bias" not in shapes
    assert shapes["attentions.1.conv1.weight"] == (4, 24, 1, 1) and shapes["attentions.1.conv2.weight"] == (1, 4, 3, 3)
    assert shapes["conv_reduces.3.conv.weight"] == (1, 24, 1, 1) and shapes["conv_reduces.3.conv.bias"] == (1,)
    assert shapes["classifier.weight"] == (1, 4, 1, 1) and shapes["classifier.bias"] == (1,)
    # the test file's layout (written from the architecture, not from this class) loads strictly
    PidiNet().load_state_dict(state, strict=True)
    # carv4: layer 0 and every fourth block central, then angular, radial, vanilla
    net = PidiNet()
    kinds = [net.init_block.kind] + [getattr(net, f"block{s}_{i}").conv1.kind
                                     for s, n in ((1, 3), (2, 4), (3, 4), (4, 4)) for i in range(1, n + 1)]
    assert kinds == ["cd", "ad", "rd", "cv"] * 4


def _by_definition(kind: str, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """One channel, one kernel, zero padding: the pixel differences written out tap by tap
    (w indexed 0..8 row by row, as the file stores it)."""
    h, wd = x.shape
    p = np.pad(x, 2)
    offsets = [(r, c) for r in (-1, 0, 1) for c in (-1, 0, 1)]
    # the clockwise neighbour of each tap of the 3x3 ring (the centre paired with itself)
    clockwise = {(-1, -1): (-1, 0), (-1, 0): (-1, 1), (-1, 1): (0, 1), (0, 1): (1, 1), (1, 1): (1, 0),
                 (1, 0): (1, -1), (1, -1): (0, -1), (0, -1): (-1, -1), (0, 0): (0, 0)}
    # radial: taps 1..8 of the kernel weigh the 8 directions, outer ring (2 px) minus inner ring (1 px)
    directions = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(wd):
            at = lambda r, c: p[i + 2 + r, j + 2 + c]  # noqa: E731
            if kind == "cd":
                out[i, j] = sum(w.flat[k] * (at(*o) - at(0, 0)) for k, o in enumerate(offsets))
            elif kind == "ad":
                out[i, j] = sum(w.flat[k] * (at(*o) - at(*clockwise[o])) for k, o in enumerate(offsets))
            else:
                out[i, j] = sum(w.flat[k + 1] * (at(2 * r, 2 * c) - at(r, c)) for k, (r, c) in enumerate(directions))
    return out


def test_pixel_difference_convolutions_follow_their_definitions():
    # outside the picture every pixel counts as 0 (zero padding, as in the extension), on both sides
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1, 1, 9, 10), generator=g, dtype=torch.float64)
    for kind in ("cd", "ad", "rd"):
        conv = PixelDifferenceConv(kind, 1, 1).double()
        with torch.no_grad():
            conv.weight.copy_(torch.rand((1, 1, 3, 3), generator=g, dtype=torch.float64) * 2 - 1)
            got = conv(x)[0, 0].numpy()
        want = _by_definition(kind, x[0, 0].numpy(), conv.weight[0, 0].detach().numpy())
        assert got.shape == (9, 10)
        np.testing.assert_allclose(got, want, atol=1e-12)  # float64, sums in another order: rounding only
    # depthwise (groups = channels): each channel its own kernel
    conv = PixelDifferenceConv("ad", 2, 2, groups=2).double()
    with torch.no_grad():
        conv.weight.copy_(torch.rand((2, 1, 3, 3), generator=g, dtype=torch.float64))
        x2 = torch.rand((1, 2, 6, 7), generator=g, dtype=torch.float64)
        got = conv(x2)[0].numpy()
    for c in range(2):
        want = _by_definition("ad", x2[0, c].numpy(), conv.weight[c, 0].detach().numpy())
        np.testing.assert_allclose(got[c], want, atol=1e-12)


def _thin_lines(edges: np.ndarray) -> np.ndarray:
    """The extension's nms(x, 127, 3.0), written with shifts: blurred, kept where no larger neighbour
    lies on either side along one of the four directions, 255 above 127."""
    blurred = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), 3.0)
    p = np.pad(blurred, 1, constant_values=-np.inf)
    h, w = blurred.shape
    near = lambda r, c: p[1 + r:1 + r + h, 1 + c:1 + c + w]  # noqa: E731
    kept = np.zeros(blurred.shape, bool)
    for r, c in ((0, 1), (1, 0), (1, 1), (1, -1)):
        kept |= (blurred >= near(r, c)) & (blurred >= near(-r, -c))
    return np.where(kept & (blurred > 127), 255, 0).astype(np.uint8)


def test_maps_follow_the_extensions_processing(pth_root, state):
    im = edge_picture(48, 80)
    maps = {m: run(m, im, pth_root, allow_pickle=True) for m in MODULES}
    for m, got in maps.items():
        assert got.shape == (64, 107, 3) and got.dtype == np.uint8, m
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all(), m
        assert got.std() > 5, m  # a real map, not a flat one
    # resolution 64: the short side 48 -> 64 (cubic), 80 -> 107, padded by edge to 64 x 128 for the network
    padded = np.pad(cv2.resize(im, (107, 64), interpolation=cv2.INTER_CUBIC), [[0, 0], [0, 21], [0, 0]], mode="edge")
    net = PidiNet()
    net.load_state_dict(state)

    def edge_of(pic):
        with torch.no_grad():
            return net.eval()(torch.from_numpy(pic.copy()).float().div(255).permute(2, 0, 1)[None])[0, 0].numpy()

    edge = edge_of(padded[:, :, ::-1])  # the channels reversed, as the extension feeds its RGB picture
    soft = (edge * 255).clip(0, 255).astype(np.uint8)[:, :107]
    # white edges on black, not inverted; the same weights and the same call, so the same bits
    assert (maps["softedge_pidinet"][..., 0] == soft).all()
    rgb_fed = (edge_of(padded) * 255).clip(0, 255).astype(np.uint8)[:, :107]
    assert (rgb_fed != soft).any()  # the channel order matters, so the check above sees it
    safe = maps["softedge_pidisafe"][..., 0]
    assert set(np.unique(safe)) <= {0, 127, 255} and len(np.unique(safe)) >= 2
    level = np.array([0, 127, 255, 255], np.uint8)[np.floor(edge[:, :107].astype(np.float64) * 3).astype(int)]
    # safe = floor(3 e) / 2: float32 rounding of 3 e may fall either side of 1 and 2 only at those boundaries
    away = np.abs(edge[:, :107] * 3 - np.round(edge[:, :107] * 3)) > 1e-5
    assert (safe[away] == level[away]).all()
    # scribble: the soft map (cut to the picture first) thinned, blurred, every pixel above 4 white
    want = np.where(cv2.GaussianBlur(_thin_lines(soft), (0, 0), 3.0) > 4, 255, 0)
    scribble = maps["scribble_pidinet"][..., 0]
    assert (scribble == want).all() and set(np.unique(scribble)) == {0, 255} and 0.01 < (scribble > 0).mean() < 0.9
    detail = preprocessors()
    assert all(detail[m].runs and detail[m].resolution.value == 512 and detail[m].threshold_a is None
               for m in MODULES)
    assert all(detail[m].weights == ("table5_pidinet.pth",) for m in MODULES)


def test_pickle_rule_safetensors_twin_and_absent_file(pth_root, state, tmp_path):
    im = edge_picture(40, 56, seed=3)
    with pytest.raises(PickleRefused) as e:
        run("softedge_pidinet", im, pth_root, allow_pickle=False)
    msg = str(e.value)
    assert str(pth_root / "ControlNetPreprocessor" / "table5_pidinet.pth") in msg
    assert "--allow-pickle" in msg and "table5_pidinet.safetensors" in msg and "weights_only=True" in msg
    allowed = run("softedge_pidinet", im, pth_root, allow_pickle=True)
    # a .safetensors twin in the lllyasviel/Annotators layout, keys without the prefix: no permission needed
    twin_root = tmp_path / "models"
    annotators = twin_root / "ControlNetPreprocessor" / "lllyasviel" / "Annotators"
    write_annotator_file(annotators, "table5_pidinet.pth", state, safetensors=True)
    assert (run("softedge_pidinet", im, twin_root, allow_pickle=False) == allowed).all()  # same weights, same call
    for module in MODULES:
        with pytest.raises(InvalidParameter) as e:
            run(module, im, tmp_path / "empty", allow_pickle=True)
        assert "table5_pidinet.pth" in str(e.value) and "never downloads" in str(e.value)
        assert str(tmp_path / "empty" / "ControlNetPreprocessor") in str(e.value)
