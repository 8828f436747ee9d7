"""lineart_realistic / lineart_coarse / softedge_hed / softedge_hedsafe: the Annotators files' layouts,
the extension's pre/post-processing, and the pickle rule. (Agreement with controlnet_aux's own
detectors on the same weights: bench/lineart_vs_controlnet_aux.py.)"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from lorastudio.core.errors import InvalidParameter, ModelFileError, PickleRefused
from lorastudio.generation.preprocessors import preprocessors, run_preprocessor
from lorastudio.generation.preprocessors.hed_net import HedNet
from lorastudio.generation.preprocessors.lineart_anime_net import LineartAnimeNet
from lorastudio.generation.preprocessors.lineart_net import LineartNet
from lorastudio.testing.annotator_files import (
    edge_picture,
    hed_state_dict,
    lineart_anime_state_dict,
    lineart_state_dict,
    write_annotator_file,
)

MODULES = ("lineart_realistic", "lineart_coarse", "softedge_hed", "softedge_hedsafe")


@pytest.fixture(scope="module")
def states():
    return {"ControlNetHED.pth": hed_state_dict(0), "sk_model.pth": lineart_state_dict(1),
            "sk_model2.pth": lineart_state_dict(2)}


@pytest.fixture(scope="module")
def pth_root(tmp_path_factory, states):
    """models/ with the three files as .pth pickles, in the extension's own folder."""
    root = tmp_path_factory.mktemp("pp") / "models"
    for name, sd in states.items():
        if name == "ControlNetHED.pth":  # a half-precision file loads too (into the float32 network)
            sd = {k: v.half() for k, v in sd.items()}
        write_annotator_file(root / "ControlNetPreprocessor", name, sd)
    return root


def run(module, image, root, *, allow_pickle, resolution=64):
    return run_preprocessor(module, image, resolution=resolution, threshold_a=-1, threshold_b=-1, models_root=root,
                            allow_pickle=allow_pickle)


def test_networks_have_the_annotator_files_keys_and_shapes(states):
    # keys and shapes of lllyasviel/Annotators' files, from the published architectures
    hed = {k: tuple(v.shape) for k, v in HedNet().state_dict().items()}
    assert len(hed) == 37 and sum(np.prod(s) for s in hed.values()) == 14_716_168
    assert hed["norm"] == (1, 3, 1, 1) and hed["block1.convs.0.weight"] == (64, 3, 3, 3)
    assert hed["block3.convs.2.weight"] == (256, 256, 3, 3) and hed["block4.convs.0.weight"] == (512, 256, 3, 3)
    assert hed["block5.projection.weight"] == (1, 512, 1, 1) and "block5.convs.3.weight" not in hed
    line = {k: tuple(v.shape) for k, v in LineartNet().state_dict().items()}
    assert len(line) == 24 and sum(np.prod(s) for s in line.values()) == 4_290_945
    assert line["model0.1.weight"] == (64, 3, 7, 7) and line["model1.3.weight"] == (256, 128, 3, 3)
    assert line["model2.2.conv_block.5.weight"] == (256, 256, 3, 3) and line["model3.0.weight"] == (256, 128, 3, 3)
    assert line["model3.3.weight"] == (128, 64, 3, 3) and line["model4.1.weight"] == (1, 64, 7, 7)
    # the test files' layouts (written from the architecture, not from these classes) load strictly
    HedNet().load_state_dict(states["ControlNetHED.pth"], strict=True)
    LineartNet().load_state_dict(states["sk_model.pth"], strict=True)


def test_maps_follow_the_extensions_processing(pth_root, states, tmp_path):
    im = edge_picture(48, 80)
    # resolution 64: the short side 48 -> 64 (cubic), 80 -> 107, padded by edge to 64 x 128 for the network
    big = cv2.resize(im, (107, 64), interpolation=cv2.INTER_CUBIC)
    padded = np.pad(big, [[0, 0], [0, 21], [0, 0]], mode="edge")
    maps = {m: run(m, im, pth_root, allow_pickle=True) for m in MODULES}
    for m, got in maps.items():
        assert got.shape == (64, 107, 3) and got.dtype == np.uint8, m
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all(), m
        assert got.std() > 5, m  # a real map, not a flat one
    for module, name in (("lineart_realistic", "sk_model.pth"), ("lineart_coarse", "sk_model2.pth")):
        net = LineartNet()
        net.load_state_dict(states[name])
        with torch.no_grad():
            line = net.eval()(torch.from_numpy(padded).float().div(255).permute(2, 0, 1)[None])[0, 0].numpy()
        # inverted (white lines on black) and cut back to the unpadded size; the network is the same call
        assert (maps[module][..., 0] == 255 - (line * 255).clip(0, 255).astype(np.uint8)[:, :107]).all(), module
    assert not (maps["lineart_realistic"] == maps["lineart_coarse"]).all()  # each its own file
    assert set(np.unique(maps["softedge_hedsafe"])) <= {0, 127, 255}
    hed, safe = maps["softedge_hed"][..., 0].astype(int), maps["softedge_hedsafe"][..., 0]
    # safe = floor(3 e) / 2 of the same edge probability e, and hed = floor(255 e): floor(3 e) = floor(3 hed / 255)
    # except at the two boundary levels 85 and 170, where float rounding may fall either side
    level = np.array([0, 127, 255, 255], np.uint8)[(3 * hed) // 255]
    away = (hed != 85) & (hed != 170)
    assert (safe[away] == level[away]).all() and len(np.unique(level)) >= 2
    assert (maps["softedge_hed"] != maps["softedge_hedsafe"]).any()
    detail = preprocessors()
    assert all(detail[m].runs and detail[m].resolution.value == 512 for m in MODULES)


def test_pickle_rule_and_safetensors_twin(pth_root, states, tmp_path):
    im = edge_picture(40, 40, seed=3)
    with pytest.raises(PickleRefused) as e:
        run("lineart_realistic", im, pth_root, allow_pickle=False)
    msg = str(e.value)
    assert str(pth_root / "ControlNetPreprocessor" / "sk_model.pth") in msg
    assert "--allow-pickle" in msg and "sk_model.safetensors" in msg and "weights_only=True" in msg
    allowed = run("lineart_realistic", im, pth_root, allow_pickle=True)
    # a .safetensors twin (here in the lllyasviel/Annotators layout) needs no permission, holds the same weights
    twin_root = tmp_path / "models"
    annotators = twin_root / "ControlNetPreprocessor" / "lllyasviel" / "Annotators"
    write_annotator_file(annotators, "sk_model.pth", states["sk_model.pth"], safetensors=True)
    assert (run("lineart_realistic", im, twin_root, allow_pickle=False) == allowed).all()  # same weights, same call
    # preferred over a pickle beside it, even one that is not a state dict
    (annotators / "sk_model.pth").write_bytes(b"not a pickle")
    assert (run("lineart_realistic", im, twin_root, allow_pickle=False) == allowed).all()
    # a file of the wrong network is named
    write_annotator_file(twin_root / "ControlNetPreprocessor", "ControlNetHED.pth", states["sk_model.pth"],
                         safetensors=True)
    with pytest.raises(ModelFileError) as e:
        run("softedge_hed", im, twin_root, allow_pickle=False)
    assert "ControlNetHED.safetensors" in str(e.value) and "HedNet" in str(e.value)


def test_absent_files_keep_the_message(tmp_path):
    for module, name in (("lineart_coarse", "sk_model2.pth"), ("softedge_hedsafe", "ControlNetHED.pth"),
                         ("lineart_anime", "netG.pth")):
        with pytest.raises(InvalidParameter) as e:
            run(module, edge_picture(32, 32), tmp_path, allow_pickle=True)
        assert name in str(e.value) and str(tmp_path / "ControlNetPreprocessor") in str(e.value)
        assert "never downloads" in str(e.value)


def test_lineart_anime(tmp_path):
    # netG.pth's layout (the pix2pix U-Net), from the published architecture
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LineartAnimeNet().state_dict().items()}
    assert len(shapes) == 32 and sum(np.prod(s) for s in shapes.values()) == 54_405_505
    assert shapes["model.model.0.weight"] == (64, 3, 4, 4) and shapes["model.model.3.weight"] == (128, 1, 4, 4)
    assert shapes["model.model.1.model.5.weight"] == (256, 64, 4, 4)
    inner = "model.model" + ".1.model" + ".3.model" * 6
    assert shapes[f"{inner}.1.weight"] == (512, 512, 4, 4) and shapes[f"{inner}.3.weight"] == (512, 512, 4, 4)
    assert f"{inner}.5.weight" not in shapes  # the innermost level has no level inside, so no index 5
    state = lineart_anime_state_dict(0)
    # as saved from a DataParallel model ("module." keys), in half precision to keep the test file at 109 MB
    write_annotator_file(tmp_path / "ControlNetPreprocessor", "netG.pth",
                         {f"module.{k}": v.half() for k, v in state.items()})
    im = edge_picture(48, 80)
    got = run("lineart_anime", im, tmp_path, allow_pickle=True)
    assert got.shape == (64, 107, 3) and got.dtype == np.uint8 and got.std() > 5
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
    # the extension's processing: resize + edge pad to 64 x 128, cubic to 256 x 256 for the network,
    # x / 127.5 - 1 in, y * 127.5 + 127.5 out, cubic back, unpadded, inverted to white lines
    padded = np.pad(cv2.resize(im, (107, 64), interpolation=cv2.INTER_CUBIC), [[0, 0], [0, 21], [0, 0]], mode="edge")
    with torch.device("meta"):
        net = LineartAnimeNet()
    net.load_state_dict({k: v.half().float() for k, v in state.items()}, assign=True)
    feed = cv2.resize(padded, (256, 256), interpolation=cv2.INTER_CUBIC)
    with torch.no_grad():
        y = net.eval()(torch.from_numpy(feed).float().div(127.5).sub(1).permute(2, 0, 1)[None])[0, 0] * 127.5 + 127.5
    line = cv2.resize(y.numpy(), (128, 64), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    # the same network on the same input, built another way: the float sums may round apart, by one level at most
    diff = np.abs(got[..., 0].astype(int) - (255 - line[:, :107]).astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
