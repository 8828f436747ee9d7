"""The openpose preprocessor (body): the network in body_pose_model.pth's layout, people from heatmaps
and PAFs, the extension's drawing and JSON, the pickle policy, the API and a txt2img unit.

The network has a fixed architecture, so its weights are real-size random ones (209 MB), written once
per module. Agreement with controlnet_aux's own detector on the same weights is measured by
bench/openpose_vs_controlnet_aux.py (a separate venv, which the suite cannot use).
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lorastudio.core.errors import InvalidParameter, ModelFileError, PickleRefused

# From the published architecture (CMU's COCO body model as lllyasviel/Annotators ships it): flat
# layer names; a VGG front, 6 stages of a PAF branch (L1, 38 maps) and a heatmap branch (L2, 19),
# stages 2-6 reading 38 + 19 + 128 = 185 channels with 7x7 convolutions.
REAL_SHAPES = {
    "conv1_1.weight": (64, 3, 3, 3),
    "conv4_2.weight": (512, 512, 3, 3),
    "conv4_4_CPM.weight": (128, 256, 3, 3),
    "conv5_4_CPM_L1.weight": (512, 128, 1, 1),
    "conv5_5_CPM_L1.weight": (38, 512, 1, 1),
    "conv5_5_CPM_L2.bias": (19,),
    "Mconv1_stage2_L1.weight": (128, 185, 7, 7),
    "Mconv6_stage4_L2.weight": (128, 128, 1, 1),
    "Mconv7_stage6_L1.weight": (38, 128, 1, 1),
    "Mconv7_stage6_L2.weight": (19, 128, 1, 1),
}
N_TENSORS = 184  # 92 convolutions (12 front, 2 x 5 in stage 1, 2 x 7 in each of stages 2-6), weight + bias

# COCO-18 order and the OpenPose limb -> PAF channel table, as published (pytorch-openpose's mapIdx - 19)
LIMBS = [(2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18)]
PAF = [(12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11),
       (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27)]
COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
STANDING = [(0.50, 0.15), (0.50, 0.25), (0.40, 0.25), (0.36, 0.40), (0.34, 0.55), (0.60, 0.25), (0.64, 0.40),
            (0.66, 0.55), (0.44, 0.55), (0.43, 0.72), (0.42, 0.90), (0.56, 0.55), (0.57, 0.72), (0.58, 0.90),
            (0.48, 0.13), (0.52, 0.13), (0.46, 0.15), (0.54, 0.15)]


def random_body_pose_state(seed: int) -> dict[str, torch.Tensor]:
    """Real-size random weights in the file's layout, He-scaled so six stages keep their maps in range."""
    from lorastudio.generation.preprocessors.openpose_net import BodyPoseNet

    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(t.shape, generator=gen) * ((2.0 / t[0].numel()) ** 0.5 if t.ndim == 4 else 0.05)
            for k, t in BodyPoseNet().state_dict().items()}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """models roots: `st` (safetensors, controlnet_aux's Annotators folder, plus a tiny SD and ControlNet),
    `pth` (the pickle only), `both` (pickle and safetensors twin side by side), `empty`."""
    from safetensors.torch import save_file

    from lorastudio.testing.tiny_controlnet import write_controlnet_models_root

    base = tmp_path_factory.mktemp("openpose")
    state = random_body_pose_state(seed=0)
    st = base / "st"
    annotators = st / "ControlNetPreprocessor" / "lllyasviel" / "Annotators"
    annotators.mkdir(parents=True)
    save_file(state, annotators / "body_pose_model.safetensors")
    pth = base / "pth" / "ControlNetPreprocessor"
    pth.mkdir(parents=True)
    torch.save(state, pth / "body_pose_model.pth")
    both = base / "both" / "ControlNetPreprocessor"
    both.mkdir(parents=True)
    (both / "body_pose_model.pth").symlink_to(pth / "body_pose_model.pth")
    (both / "body_pose_model.safetensors").symlink_to(annotators / "body_pose_model.safetensors")
    write_controlnet_models_root(st, "control_tiny_openpose")
    for d in ("Stable-diffusion", "Lora", "VAE", "ControlNet"):  # the pickle root generates too
        (base / "pth" / d).mkdir()
        for f in (st / d).iterdir():
            (base / "pth" / d / f.name).symlink_to(f)
    (base / "empty").mkdir()
    return {"st": st, "pth": base / "pth", "both": base / "both", "empty": base / "empty", "state": state}


def picture(h=100, w=70, seed=1) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return (rng.rand(h, w, 3) * 255).astype(np.uint8)


def test_network_has_the_real_files_layout(roots):
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles, load_network
    from lorastudio.generation.preprocessors.openpose_net import BodyPoseNet

    sd = BodyPoseNet().state_dict()
    assert len(sd) == N_TENSORS and all(k in sd for k in REAL_SHAPES)
    assert {k: tuple(sd[k].shape) for k in REAL_SHAPES} == REAL_SHAPES
    net = load_network(BodyPoseNet(), roots["st"] / "ControlNetPreprocessor" / "lllyasviel" / "Annotators" /
                       "body_pose_model.safetensors", AnnotatorFiles(roots["st"]))
    with torch.no_grad():
        paf, heat = net(torch.zeros(1, 3, 64, 48))
    assert paf.shape == (1, 38, 8, 6) and heat.shape == (1, 19, 8, 6)
    assert heat.min() >= 0  # the last heatmap layer is rectified in the published network

    # a file of another network is refused by name, not half-loaded
    from safetensors.torch import save_file

    other = roots["empty"] / "not_body.safetensors"
    save_file({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, other)
    with pytest.raises(ModelFileError) as e:
        load_network(BodyPoseNet(), other, AnnotatorFiles(roots["empty"]))
    assert "not_body.safetensors" in str(e.value) and "conv1_1.bias" in str(e.value)


def test_openpose_runs_with_the_file_and_names_it_without(roots):
    from lorastudio.generation.preprocessors import detect

    im = picture()
    kw = dict(resolution=64, threshold_a=-1, threshold_b=-1)
    pose_map, poses = detect("openpose", im, models_root=roots["st"], **kw)
    # short side to 64 (70 x 100 -> 64 x 91), drawn on the 64-padded canvas (64 x 128), the padding cut
    assert pose_map.shape == (91, 64, 3) and pose_map.dtype == np.uint8
    assert (poses["canvas_width"], poses["canvas_height"]) == (64, 128)
    allowed = {(0, 0, 0)} | set(COLORS) | {tuple(int(c * 0.6) for c in color) for color in COLORS}
    assert {tuple(p) for p in pose_map.reshape(-1, 3)} <= allowed  # sticks and joints on black, nothing else
    for person in poses["people"]:
        kp = np.array(person["pose_keypoints_2d"]).reshape(18, 3)
        assert set(kp[:, 2]) <= {0.0, 1.0} and (kp[:, :2] >= 0).all() and (kp[:, :2] <= 1).all()

    with pytest.raises(InvalidParameter) as e:
        detect("openpose", im, models_root=roots["empty"], **kw)
    assert "body_pose_model.pth" in str(e.value) and str(roots["empty"] / "ControlNetPreprocessor") in str(e.value)
    with pytest.raises(InvalidParameter) as e:  # hands and face need their own networks
        detect("openpose_full", im, models_root=roots["st"], **kw)
    assert "hand_pose_model.pth" in str(e.value) and "facenet.pth" in str(e.value)


def test_pickle_needs_permission_and_the_safetensors_twin_does_not(roots):
    from lorastudio.generation.preprocessors import detect
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles, load_network
    from lorastudio.generation.preprocessors.openpose_net import BodyPoseNet

    with pytest.raises(PickleRefused) as e:
        detect("openpose", picture(), resolution=64, threshold_a=-1, threshold_b=-1, models_root=roots["pth"])
    msg = str(e.value)
    assert str(roots["pth"] / "ControlNetPreprocessor" / "body_pose_model.pth") in msg
    assert "--allow-pickle" in msg and "body_pose_model.safetensors" in msg and "weights_only=True" in msg

    allowed = AnnotatorFiles(roots["pth"], allow_pickle=True)
    net = load_network(BodyPoseNet(), allowed.find("body_pose_model.pth"), allowed)
    assert all(torch.equal(v, roots["state"][k]) for k, v in net.state_dict().items())

    twin = AnnotatorFiles(roots["both"], allow_pickle=False)
    assert twin.find("body_pose_model.pth").name == "body_pose_model.safetensors"
    net = load_network(BodyPoseNet(), twin.find("body_pose_model.pth"), twin)
    assert torch.equal(net.state_dict()["Mconv7_stage6_L2.weight"], roots["state"]["Mconv7_stage6_L2.weight"])


def _known_pose_net(cells: int, joints=range(18)):
    """Stands in for the network: one standing person's heatmaps and PAFs at 1/8 of the input."""
    yy, xx = np.mgrid[0:cells, 0:cells].astype(np.float32)
    # cell c covers input pixels 8c..8c+7: a joint at fraction f of the picture sits at cell f * cells - 0.5
    pts = np.array(STANDING) * cells - 0.5
    heat = np.zeros((1, 19, cells, cells), np.float32)
    for j, (x, y) in enumerate(pts):
        if j in joints:
            heat[0, j] = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 0.8 ** 2))
    paf = np.zeros((1, 38, cells, cells), np.float32)
    for (a, b), (cx, cy) in zip(LIMBS, PAF):
        if a - 1 not in joints or b - 1 not in joints:
            continue
        p, v = pts[a - 1], pts[b - 1] - pts[a - 1]
        u = v / np.hypot(*v)
        t = (xx - p[0]) * u[0] + (yy - p[1]) * u[1]
        on = (t >= -1) & (t <= np.hypot(*v) + 1) & (np.abs((xx - p[0]) * u[1] - (yy - p[1]) * u[0]) <= 1)
        paf[0, cx][on], paf[0, cy][on] = u[0], u[1]

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.from_numpy(paf), torch.from_numpy(heat)

    return Fixed()


def test_a_person_is_found_and_drawn_as_the_extension_draws(roots):
    from lorastudio.generation.preprocessors.openpose_body import detect_people, draw_people, poses_json

    side = 512  # the network sees it 184 px high: 23 x 23 maps
    people = detect_people(_known_pose_net(23), np.full((side, side, 3), 90, np.uint8))
    assert len(people) == 1 and people[0].parts == 18
    found = np.array(people[0].keypoints)
    assert np.abs(found - np.array(STANDING)).max() < 2 / side  # the peaks land on the joints (to a pixel or so)

    canvas = draw_people(people, side, side)
    x, y = (int(c * side) for c in people[0].keypoints[0])
    assert tuple(canvas[y, x]) == (255, 0, 0)  # the nose, joint colour 0
    (ax, ay), (bx, by) = people[0].keypoints[8], people[0].keypoints[9]  # right hip -> right knee: limb 7
    mid = int((ax + bx) / 2 * side), int((ay + by) / 2 * side)
    assert tuple(canvas[mid[1], mid[0]]) == (0, 153, 51)  # colour 7 (0, 255, 85) at 60 %
    assert tuple(canvas[5, 5]) == (0, 0, 0)
    js = poses_json(people, side, side)
    assert js["canvas_width"] == side and len(js["people"][0]["pose_keypoints_2d"]) == 54


@pytest.fixture(scope="module")
def client(roots, tmp_path_factory):
    from fastapi.testclient import TestClient

    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.server import create_app

    out = tmp_path_factory.mktemp("openpose-api")
    settings = StudioSettings(models_dir=roots["st"], outdir=out / "o", projects_dir=out / "p", device="cpu",
                              include_bundled=False)
    with TestClient(create_app(settings, poll_interval_s=0.05), base_url="http://127.0.0.1:7860") as c:
        yield c


def b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_detect_route_returns_the_map_and_the_poses(client):
    detail = client.get("/controlnet/module_list").json()["module_detail"]
    assert detail["openpose"]["runs"] is True and detail["openpose"]["model_free"] is False
    assert detail["openpose"]["sliders"][0]["value"] == 512
    assert detail["seg_ofade20k"]["runs"] is False and detail["canny"]["runs"] is True

    r = client.post("/controlnet/detect", json={"controlnet_module": "openpose", "controlnet_input_images":
                                                [b64(picture())], "controlnet_processor_res": 64})
    assert r.status_code == 200, r.text
    body = r.json()
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))))
    assert drawn.shape == (91, 64, 3) and body["info"] == "Success"
    assert len(body["poses"]) == 1 and (body["poses"][0]["canvas_width"], body["poses"][0]["canvas_height"]) == (64, 128)
    assert "poses" not in client.post("/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [b64(picture())]}).json()



def test_pickles_reach_the_api_and_txt2img_only_with_the_studios_permission(roots, tmp_path):
    from fastapi.testclient import TestClient

    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.server import create_app

    detect_req = {"controlnet_module": "openpose", "controlnet_input_images": [b64(picture())],
                  "controlnet_processor_res": 64}
    unit = {"module": "openpose", "model": "control_tiny_openpose", "image": b64(picture(64, 64)), "processor_res": 64}
    txt2img_req = {"prompt": "a pose", "seed": 3, "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler",
                   "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    for allow in (False, True):
        settings = StudioSettings(models_dir=roots["pth"], outdir=tmp_path / "o", projects_dir=tmp_path / "p",
                                  device="cpu", include_bundled=False, allow_pickle=allow)
        with TestClient(create_app(settings, poll_interval_s=0.05), base_url="http://127.0.0.1:7860") as c:
            detected = c.post("/controlnet/detect", json=detect_req)
            generated = c.post("/sdapi/v1/txt2img", json=txt2img_req)
        for r in (detected, generated):
            if allow:
                assert r.status_code == 200, r.text
            else:
                assert r.status_code in (400, 422) and "body_pose_model.pth" in r.text and "allow" in r.text, r.text
        if allow:
            assert detected.json()["poses"][0]["canvas_height"] == 128
            text = json.loads(generated.json()["info"])["infotexts"][0]
            assert 'ControlNet 0: "Module: openpose, Model: control_tiny_openpose [' in text
            assert "Processor Res: 64," in text


# --- openpose_full: hands and face ---------------------------------------------------------------

# From the published hand (22 maps) and face (71 maps) networks: a VGG-19 front to conv5_3_CPM,
# conv6_1/6_2_CPM, then Mconv1..7 for stages 2-6 reading maps + 128 features.
HAND_SHAPES = {"conv4_4.weight": (512, 512, 3, 3), "conv5_3_CPM.weight": (128, 512, 3, 3),
               "conv6_2_CPM.weight": (22, 512, 1, 1), "Mconv1_stage2.weight": (128, 150, 7, 7),
               "Mconv7_stage6.bias": (22,)}
FACE_SHAPES = {"conv6_1_CPM.weight": (512, 128, 1, 1), "conv6_2_CPM.weight": (71, 512, 1, 1),
               "Mconv1_stage6.weight": (128, 199, 7, 7), "Mconv7_stage6.weight": (71, 128, 1, 1)}


def test_hand_and_face_boxes_follow_the_body():
    from lorastudio.generation.preprocessors.openpose_hand_face import face_box, hand_boxes

    body = [None] * 18
    body[5], body[6], body[7] = (100.0, 100.0), (100.0, 160.0), (100.0, 220.0)  # left shoulder, elbow, wrist
    # centre a third of the forearm past the wrist (100, 239.8), side 1.5 x max(60, 0.9 x 60) = 90
    assert hand_boxes(body, 512, 512) == [(55, 194, 90, True)]
    assert hand_boxes(body, 512, 250) == [(55, 194, 55, True)]  # clipped by the picture's bottom
    body[2], body[3], body[4] = (300.0, 100.0), (310.0, 105.0), (312.0, 108.0)  # a right forearm too short
    assert len(hand_boxes(body, 512, 512)) == 1
    assert face_box(body, 512, 512) is None  # no nose
    body[0], body[14], body[16] = (200.0, 100.0), (190.0, 95.0), (180.0, 100.0)  # nose, right eye, right ear
    assert face_box(body, 512, 512) == (170, 70, 60)  # half side max(10 x 3, 20 x 1.5) = 30


def test_openpose_full_finds_a_face_and_draws_it(roots, tmp_path):
    from safetensors.torch import save_file

    from lorastudio.generation.preprocessors import detect
    from lorastudio.generation.preprocessors.annotator_weights import AnnotatorFiles, load_network
    from lorastudio.generation.preprocessors.openpose_body import openpose_map
    from lorastudio.generation.preprocessors.openpose_hand_face_net import KeypointHeatmapNet

    folder = tmp_path / "ControlNetPreprocessor"
    folder.mkdir()
    for name, maps, shapes, seed in (("hand_pose_model", 22, HAND_SHAPES, 1), ("facenet", 71, FACE_SHAPES, 2)):
        sd = KeypointHeatmapNet(maps).state_dict()
        assert len(sd) == 104 and {k: tuple(sd[k].shape) for k in shapes} == shapes
        gen = torch.Generator().manual_seed(seed)
        save_file({k: torch.randn(t.shape, generator=gen) * ((2.0 / t[0].numel()) ** 0.5 if t.ndim == 4 else 0.05)
                   for k, t in sd.items()}, folder / f"{name}.safetensors")
    # a body network that finds nobody (zero weights: flat maps), so only the loading is exercised here
    save_file({k: torch.zeros_like(v) for k, v in roots["state"].items()}, folder / "body_pose_model.safetensors")
    kw = dict(resolution=64, threshold_a=-1, threshold_b=-1)
    empty_map, poses = detect("openpose_full", picture(), models_root=tmp_path, **kw)
    assert poses["people"] == [] and not empty_map.any() and empty_map.shape == (91, 64, 3)

    # a head without arms (the hands' 4-scale network is measured by the bench): the face network runs
    source = AnnotatorFiles(tmp_path)
    hand = load_network(KeypointHeatmapNet(22), folder / "hand_pose_model.safetensors", source)
    face = load_network(KeypointHeatmapNet(71), folder / "facenet.safetensors", source)
    head = _known_pose_net(23, joints=(0, 1, 14, 15, 16, 17))
    rng = np.random.RandomState(3)
    pose_map, poses = openpose_map((rng.rand(512, 512, 3) * 255).astype(np.uint8), 512, head, hand, face)
    (person,) = poses["people"]
    assert person["hand_left_keypoints_2d"] is None and person["hand_right_keypoints_2d"] is None
    points = np.array(person["face_keypoints_2d"]).reshape(-1, 3)
    assert 0 < len(points) <= 71 and set(points[:, 2]) == {1.0}
    # the face box: nose (256, 76.8) +- 3 x the nose-eye distance, so every point lies within ~0.1 of the nose
    inside = points[(points[:, 0] >= 0) & (points[:, 1] >= 0)]
    assert len(inside) and np.abs(inside[:, :2] - np.array(STANDING[0])).max() < 0.1
    white = (pose_map == 255).all(axis=2)
    assert white.any()  # face points: white dots of radius 3
    assert len(np.array(person["pose_keypoints_2d"]).reshape(18, 3)) == 18
