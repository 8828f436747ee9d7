"""The OpenPose hand and face networks (CMU's 21-point hand and 70-point face models).

Both are one architecture with a different number of output maps: a VGG-19 front to conv5_3_CPM
(128 features at 1/8 of the input), a first stage (conv6_1_CPM, conv6_2_CPM) and five refinement
stages (Mconv1..7_stageN) that read the previous maps and the features. Written from that
architecture so that lllyasviel/Annotators' `hand_pose_model.pth` (22 maps) and `facenet.pth`
(71 maps) load unchanged: their keys are flat layer names ("conv5_3_CPM.weight",
"Mconv7_stage6.bias"), so each convolution is an attribute under exactly that name.
"""

from __future__ import annotations

import torch
from torch import nn

HAND_MAPS = 22  # 21 keypoints + background
FACE_MAPS = 71  # 70 keypoints + background
FEATURES = 128
FRONT = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64), ("pool",),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128), ("pool",),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), ("pool",),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3_CPM", 512, FEATURES),
)


class KeypointHeatmapNet(nn.Module):
    """(N, 3, H, W) BGR in [-0.5, 0.5) -> the last stage's maps (N, maps, H/8, W/8)."""

    def __init__(self, maps: int):
        super().__init__()
        for entry in FRONT:
            if entry[0] != "pool":
                setattr(self, entry[0], nn.Conv2d(entry[1], entry[2], 3, padding=1))
        self.conv6_1_CPM = nn.Conv2d(FEATURES, 512, 1)
        self.conv6_2_CPM = nn.Conv2d(512, maps, 1)
        self.refinements = range(2, 7)
        for s in self.refinements:
            for i, (cin, cout, k) in enumerate([(maps + FEATURES, 128, 7)] + [(128, 128, 7)] * 4 + [(128, 128, 1),
                                                                                                   (128, maps, 1)]):
                setattr(self, f"Mconv{i + 1}_stage{s}", nn.Conv2d(cin, cout, k, padding=k // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for entry in FRONT:
            x = torch.nn.functional.max_pool2d(x, 2, 2) if entry[0] == "pool" else torch.relu(getattr(self, entry[0])(x))
        features = x
        h = self.conv6_2_CPM(torch.relu(self.conv6_1_CPM(features)))  # each stage's last layer is linear
        for s in self.refinements:
            h = torch.cat([h, features], 1)
            for i in range(1, 7):
                h = torch.relu(getattr(self, f"Mconv{i}_stage{s}")(h))
            h = getattr(self, f"Mconv7_stage{s}")(h)
        return h
