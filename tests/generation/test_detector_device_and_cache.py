"""Detector networks run on the device given to detect() (the studio's generation device), and the engine's
AnnotatorCache reads a detector file once for maps in a row.

No GPU exists on the machines that run these tests: the device checks run with device "cpu" given explicitly
and show that the device given reaches the detector (the network's parameters and its input are on it when
the network runs, seen from a forward pre-hook) and that the maps are those of the default call, bit for bit.
CUDA itself is not exercised here.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.core.errors import ModelFileError, PickleRefused
from lorastudio.generation.preprocessors import detect
from lorastudio.generation.preprocessors.annotator_weights import AnnotatorCache, AnnotatorFiles
from lorastudio.testing.annotator_files import (edge_picture, leres_state_dict, lineart_state_dict, mlsd_state_dict,
                                                pidinet_state_dict, write_annotator_file)

LERES_SMALL = dict(stem=16, widths=(32, 64, 128, 256), groups=4, blocks=(1, 1, 2, 1), mids=(32, 32, 32, 64))


def _body_pose_state() -> dict:
    from lorastudio.generation.preprocessors.openpose_net import BodyPoseNet

    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(t.shape, generator=gen) * ((2.0 / t[0].numel()) ** 0.5 if t.ndim == 4 else 0.05)
            for k, t in BodyPoseNet().state_dict().items()}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """models/ with small or random detector files of the cheap detectors, as .safetensors."""
    base = tmp_path_factory.mktemp("devicecache")
    folder = base / "ControlNetPreprocessor"
    write_annotator_file(folder, "sk_model.pth", lineart_state_dict(0), safetensors=True)
    write_annotator_file(folder, "table5_pidinet.pth", pidinet_state_dict(0), safetensors=True)
    write_annotator_file(folder, "mlsd_large_512_fp32.pth", mlsd_state_dict(0), safetensors=True)
    write_annotator_file(folder, "res101.pth", leres_state_dict(0, **LERES_SMALL), safetensors=True)
    write_annotator_file(folder, "body_pose_model.pth", _body_pose_state(), safetensors=True)
    return base


class NetworkCalls:
    """Every nn.Module call while open: (the devices of its tensor inputs, of its parameters and buffers)."""

    def __init__(self):
        self.calls: list[tuple[set, set]] = []

    def _hook(self, module, args):
        inputs = {a.device for a in args if isinstance(a, torch.Tensor)}
        own = {t.device for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))}
        self.calls.append((inputs, own))

    def __enter__(self):
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


MODULES = ["lineart_realistic", "softedge_pidinet", "scribble_pidinet", "mlsd", "depth_leres", "openpose"]


@pytest.mark.parametrize("module", MODULES)
def test_the_network_runs_on_the_device_given_and_the_map_is_unchanged(root, module):
    picture = edge_picture(64, 64, seed=2)
    kw = dict(resolution=64, threshold_a=0.1, threshold_b=0.1, models_root=root)
    default = detect(module, picture, **kw)[0]
    with NetworkCalls() as seen:
        given = detect(module, picture, **kw, device=torch.device("cpu"))[0]
    assert seen.calls, "the detector ran no network"
    devices = set().union(*(inputs | own for inputs, own in seen.calls))
    assert devices == {torch.device("cpu")}
    assert any(own for _, own in seen.calls)  # the network's weights were seen, not only parameterless modules
    assert (given == default).all()


def test_files_place_puts_the_network_on_its_device_in_float32():
    net = torch.nn.Conv2d(3, 4, 3).double()
    placed = AnnotatorFiles(device="cpu").place(net)
    assert {p.dtype for p in placed.parameters()} == {torch.float32}
    assert {p.device for p in placed.parameters()} == {torch.device("cpu")} and not placed.training


def test_cached_tensors_are_copies_a_network_cannot_alter(root):
    path = root / "ControlNetPreprocessor" / "table5_pidinet.safetensors"
    files = AnnotatorFiles(root, cache=AnnotatorCache())
    first = files.read(path)
    original = {k: v.clone() for k, v in first.items()}
    for v in first.values():
        v.zero_()  # what a network built with assign=True could do to the tensors it was given
    again = files.read(path)
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)
    assert all(again[k].data_ptr() != first[k].data_ptr() for k in first)


def _same_size_garbage(path):
    """`path` overwritten with as many garbage bytes, its modification time set back: the cache cannot tell."""
    st = path.stat()
    path.write_bytes(b"\x07" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return st


def test_two_maps_in_a_row_read_the_file_once_and_equal_the_uncached_map(tmp_path):
    folder = tmp_path / "ControlNetPreprocessor"
    path = write_annotator_file(folder, "table5_pidinet.pth", pidinet_state_dict(1), safetensors=True)
    picture = edge_picture(64, 64, seed=4)
    kw = dict(resolution=64, threshold_a=-1, threshold_b=-1, models_root=tmp_path)
    uncached = detect("softedge_pidinet", picture, **kw)[0]
    cache = AnnotatorCache()
    first = detect("softedge_pidinet", picture, **kw, cache=cache)[0]
    assert (first == uncached).all() and first.std() > 1

    st = _same_size_garbage(path)
    with pytest.raises(ModelFileError, match="table5_pidinet.safetensors"):  # the file is garbage now
        detect("softedge_pidinet", picture, **kw)
    second = detect("softedge_pidinet", picture, **kw, cache=cache)[0]  # not read again
    assert (second == first).all()

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # changed on disk: read again
    with pytest.raises(ModelFileError, match="table5_pidinet.safetensors"):
        detect("softedge_pidinet", picture, **kw, cache=cache)


def test_a_cached_pickle_still_needs_the_permission(tmp_path):
    folder = tmp_path / "ControlNetPreprocessor"
    write_annotator_file(folder, "table5_pidinet.pth", pidinet_state_dict(1))
    picture = edge_picture(64, 64, seed=4)
    kw = dict(resolution=64, threshold_a=-1, threshold_b=-1, models_root=tmp_path)
    cache = AnnotatorCache()
    allowed = detect("softedge_pidinet", picture, **kw, allow_pickle=True, cache=cache)[0]
    assert (allowed == detect("softedge_pidinet", picture, **kw, allow_pickle=True)[0]).all()
    with pytest.raises(PickleRefused, match="table5_pidinet.pth"):
        detect("softedge_pidinet", picture, **kw, allow_pickle=False, cache=cache)


def _b64(arr) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_detect_route_reads_through_the_engines_cache(tmp_path):
    from fastapi.testclient import TestClient

    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine
    from lorastudio.interfaces.api.server import create_app

    models = tmp_path / "models"
    path = write_annotator_file(models / "ControlNetPreprocessor", "table5_pidinet.pth", pidinet_state_dict(2),
                                safetensors=True)
    settings = StudioSettings(models_dir=models, outdir=tmp_path / "o", projects_dir=tmp_path / "p", device="cpu",
                              include_bundled=False)
    engine = GenerationEngine(settings)
    assert isinstance(engine.annotator_cache, AnnotatorCache)
    picture = edge_picture(64, 64, seed=5)
    body = {"controlnet_module": "softedge_pidinet", "controlnet_input_images": [_b64(picture)],
            "controlnet_processor_res": 64}
    with TestClient(create_app(settings, engine=engine, poll_interval_s=0.05), base_url="http://127.0.0.1:7860") as c:
        first = c.post("/controlnet/detect", json=body)
        assert first.status_code == 200, first.text
        st = _same_size_garbage(path)
        second = c.post("/controlnet/detect", json=body)  # the engine's cache: the garbage is not read
        assert second.status_code == 200, second.text
        assert second.json()["images"] == first.json()["images"]
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        third = c.post("/controlnet/detect", json=body)
        assert third.status_code != 200 and "table5_pidinet.safetensors" in third.text


def test_a_control_plan_keeps_the_device_and_the_cache_in_its_second_pass_and_masked_region(tmp_path):
    from lorastudio.generation.controlnet_units import ControlNetUnit, prepare_control

    path = write_annotator_file(tmp_path / "ControlNetPreprocessor", "table5_pidinet.pth", pidinet_state_dict(3),
                                safetensors=True)
    picture = Image.fromarray(edge_picture(64, 64, seed=6))
    unit = ControlNetUnit(module="softedge_pidinet", model="tiny", image=picture, processor_res=64)
    cache = AnnotatorCache()
    plan = prepare_control([unit], width=64, height=64, cfg=True, load=lambda name: (None, "tiny [0]"),
                           models_root=tmp_path, device=torch.device("cpu"), annotator_cache=cache)
    assert plan.device == torch.device("cpu") and plan.annotator_cache is cache
    _same_size_garbage(path)  # the maps made again below can only come from the cache
    high = plan.for_pass("high", 64, 64)
    assert high.annotator_cache is cache and high.device == plan.device
    assert np.array_equal(np.asarray(high.maps[0]), np.asarray(plan.maps[0]))
    region = high.for_masked_region((0, 0, 64, 64), (64, 64), 64, 64)
    assert region.annotator_cache is cache and region.device == plan.device
    assert np.array_equal(np.asarray(region.maps[0]), np.asarray(plan.maps[0]))


def test_the_engines_control_plan_carries_its_device_and_cache(tmp_path):
    from lorastudio.core.params import GenerationParams
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    settings = StudioSettings(models_dir=tmp_path / "models", outdir=tmp_path / "o", projects_dir=tmp_path / "p",
                              device="cpu", include_bundled=False)
    engine = GenerationEngine(settings)
    picture = Image.fromarray(edge_picture(64, 64, seed=7))
    plan = engine._control_plan([{"module": "reference_only", "image": picture}],
                                GenerationParams(prompt="x", width=64, height=64))
    assert plan.annotator_cache is engine.annotator_cache and plan.device == engine.device
