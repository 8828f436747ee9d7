"""The OpenPose body network (CMU's COCO 18-keypoint model, 6 stages of two branches).

Written from the architecture of lllyasviel/Annotators' `body_pose_model.pth` (the file the A1111
ControlNet extension, controlnet_aux and comfyui_controlnet_aux load) so that it loads that file
unchanged: its keys are flat layer names ("conv1_1.weight", "Mconv7_stage6_L2.bias"), so each
convolution is an attribute of the module under exactly that name.
"""

from __future__ import annotations

import torch
from torch import nn

# (name, in, out, kernel); a "pool" entry is a 2x2 max pool with stride 2. A VGG-19 front, then
# CPM convolutions bring it to 128 features at 1/8 of the picture's size.
BACKBONE = (
    ("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), ("pool",),
    ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), ("pool",),
    ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3), ("pool",),
    ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3), ("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, 128, 3),
)
PAF_CHANNELS, HEATMAP_CHANNELS = 38, 19  # branch L1: 19 limbs x (dx, dy); branch L2: 18 parts + background
FEATURES = 128
STAGES = 6


def _stage_layers(stage: int, branch: int) -> list[tuple[str, int, int, int]]:
    out = PAF_CHANNELS if branch == 1 else HEATMAP_CHANNELS
    if stage == 1:
        return [(f"conv5_1_CPM_L{branch}", FEATURES, 128, 3), (f"conv5_2_CPM_L{branch}", 128, 128, 3),
                (f"conv5_3_CPM_L{branch}", 128, 128, 3), (f"conv5_4_CPM_L{branch}", 128, 512, 1),
                (f"conv5_5_CPM_L{branch}", 512, out, 1)]
    cat = PAF_CHANNELS + HEATMAP_CHANNELS + FEATURES  # 185: both branches' previous outputs and the features
    layers = [(f"Mconv1_stage{stage}_L{branch}", cat, 128, 7)]
    layers += [(f"Mconv{i}_stage{stage}_L{branch}", 128, 128, 7) for i in range(2, 6)]
    layers += [(f"Mconv6_stage{stage}_L{branch}", 128, 128, 1), (f"Mconv7_stage{stage}_L{branch}", 128, out, 1)]
    return layers


def _relu_after_last(stage: int, branch: int) -> bool:
    # Every convolution is followed by a ReLU except each branch's last one, with one exception
    # every published port of the model keeps: the last stage's heatmap output (Mconv7_stage6_L2)
    # is rectified too (its name is missing from their "no ReLU" list). The maps the ControlNet
    # openpose models were trained on come from that network, so it is kept.
    return stage == STAGES and branch == 2


class BodyPoseNet(nn.Module):
    """(N, 3, H, W) BGR in [-0.5, 0.5) -> (PAFs (N, 38, H/8, W/8), heatmaps (N, 19, H/8, W/8))."""

    def __init__(self):
        super().__init__()
        for entry in BACKBONE:
            if entry[0] != "pool":
                self._conv(*entry)
        self.stages = [[_stage_layers(s, b) for b in (1, 2)] for s in range(1, STAGES + 1)]
        for stage in self.stages:
            for layers in stage:
                for entry in layers:
                    self._conv(*entry)

    def _conv(self, name: str, cin: int, cout: int, k: int) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, k, padding=k // 2))

    def _run(self, x: torch.Tensor, layers, relu_last: bool) -> torch.Tensor:
        for i, (name, *_rest) in enumerate(layers):
            x = getattr(self, name)(x)
            if i < len(layers) - 1 or relu_last:
                x = torch.relu(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for entry in BACKBONE:
            if entry[0] == "pool":
                x = torch.nn.functional.max_pool2d(x, 2, 2)
            else:
                x = torch.relu(getattr(self, entry[0])(x))
        features = x
        out = features
        for s, (paf_layers, heat_layers) in enumerate(self.stages, start=1):
            paf = self._run(out, paf_layers, _relu_after_last(s, 1))
            heat = self._run(out, heat_layers, _relu_after_last(s, 2))
            out = torch.cat([paf, heat, features], 1)
        return paf, heat
