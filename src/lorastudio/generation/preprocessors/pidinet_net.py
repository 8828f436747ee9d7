"""PiDiNet, the soft-edge network of `table5_pidinet.pth` (softedge_pidinet, softedge_pidisafe, scribble_pidinet).

Written from the architecture (Su et al., "Pixel Difference Networks for Efficient Edge Detection",
the "carv4" configuration with 60 base channels, compact dilation modules of 24 channels and spatial
attention) to load lllyasviel/Annotators' `table5_pidinet.pth` unchanged, as the A1111 ControlNet
extension and controlnet_aux load it: the attribute names and the order of the layers give the file's
keys (`init_block.weight`, `block{s}_{i}.conv1/conv2/shortcut`, `dilations.{i}`, `attentions.{i}`,
`conv_reduces.{i}.conv`, `classifier`), so they must stay as they are.

Sixteen of the convolutions (the first one and each block's depthwise 3x3) are pixel-difference
convolutions; the file holds their raw 3x3 kernels, and the difference is taken when the network runs,
as the extension does (its network is built unconverted): central (`cd`: the kernel's response minus
its sum times the centre pixel), angular (`ad`: each tap minus its clockwise neighbour) and radial
(`rd`: the ring of a 5x5 window minus the inner ring). The same arithmetic in the same order as the
extension's keeps the edge maps equal to its own on the same weights.

It takes RGB channels in BGR order, scaled to 0..1, and returns the fused edge logit's sigmoid.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

BASE = 60  # channels of the first stage; the second has 120, the third and fourth 240
DIL = 24  # channels of each compact dilation module
# the "carv4" pattern: the pixel-difference kind of layer 0 (init_block) and of each block's conv1, in order
CARV4 = ("cd", "ad", "rd", "cv") * 4
# Tap indices, as tuples so they stay constant; they index as list(...), since a tuple would index several dims.
# the angular difference pairs each tap of the 3x3 kernel with its clockwise neighbour
_CLOCKWISE = (3, 0, 1, 6, 4, 2, 7, 8, 5)
# the radial difference spreads the 8 outer taps to the 5x5 ring (+) and the 3x3 ring (-)
_OUTER = (0, 2, 4, 10, 14, 20, 22, 24)
_INNER = (6, 7, 8, 11, 13, 16, 17, 18)


class PixelDifferenceConv(nn.Module):
    """A 3x3 convolution (no bias, padding 1) whose kernel is used as a pixel difference of `kind`."""

    def __init__(self, kind: str, cin: int, cout: int, groups: int = 1):
        super().__init__()
        if kind not in ("cv", "cd", "ad", "rd"):
            raise ValueError(f"unknown pixel-difference kind {kind!r}")
        self.kind, self.groups = kind, groups
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, g = self.weight, self.groups
        if self.kind == "cv":
            return F.conv2d(x, w, padding=1, groups=g)
        if self.kind == "cd":
            # the sum of the kernel applied to the centre pixel, subtracted from the plain response
            centre = F.conv2d(x, w.sum(dim=[2, 3], keepdim=True), padding=0, groups=g)
            return F.conv2d(x, w, padding=1, groups=g) - centre
        flat = w.view(w.shape[0], w.shape[1], 9)
        if self.kind == "ad":
            return F.conv2d(x, (flat - flat[:, :, list(_CLOCKWISE)]).view(w.shape), padding=1, groups=g)
        ring = torch.zeros(w.shape[0], w.shape[1], 25, dtype=w.dtype, device=w.device)
        ring[:, :, list(_OUTER)] = flat[:, :, 1:]
        ring[:, :, list(_INNER)] = -flat[:, :, 1:]
        return F.conv2d(x, ring.view(w.shape[0], w.shape[1], 5, 5), padding=2, groups=g)


class PdcBlock(nn.Module):
    """Depthwise pixel-difference conv, ReLU, 1x1 conv, plus the input (pooled and projected when
    the block starts a stage)."""

    def __init__(self, kind: str, cin: int, cout: int, downsample: bool = False):
        super().__init__()
        self.downsample = downsample
        if downsample:
            self.shortcut = nn.Conv2d(cin, cout, 1)
        self.conv1 = PixelDifferenceConv(kind, cin, cin, groups=cin)
        self.conv2 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = F.max_pool2d(x, 2, 2)
        y = self.conv2(F.relu(self.conv1(x)))
        return y + (self.shortcut(x) if self.downsample else x)


class DilationModule(nn.Module):
    """CDCM: ReLU, 1x1 conv to 24 channels, the sum of four 3x3 convs dilated 5, 7, 9 and 11."""

    def __init__(self, cin: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, DIL, 1)
        for i, d in enumerate((5, 7, 9, 11), start=1):
            self.add_module(f"conv2_{i}", nn.Conv2d(DIL, DIL, 3, dilation=d, padding=d, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(x))
        return self.conv2_1(x) + self.conv2_2(x) + self.conv2_3(x) + self.conv2_4(x)


class SpatialAttention(nn.Module):
    """CSAM: the input times a one-channel sigmoid mask made from it (ReLU, 1x1 conv to 4, 3x3 conv to 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class MapReduce(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PidiNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.init_block = PixelDifferenceConv(CARV4[0], 3, BASE)
        # (stage, blocks, channels in, channels out); stages 2-4 start with a pooled block
        stages = ((1, 3, BASE, BASE), (2, 4, BASE, 2 * BASE), (3, 4, 2 * BASE, 4 * BASE), (4, 4, 4 * BASE, 4 * BASE))
        layer = 1
        for s, n, cin, cout in stages:
            for i in range(1, n + 1):
                first = i == 1 and s > 1
                self.add_module(f"block{s}_{i}", PdcBlock(CARV4[layer], cin if i == 1 else cout, cout, first))
                layer += 1
        planes = (BASE, 2 * BASE, 4 * BASE, 4 * BASE)
        self.dilations = nn.ModuleList(DilationModule(c) for c in planes)
        self.attentions = nn.ModuleList(SpatialAttention(DIL) for _ in planes)
        self.conv_reduces = nn.ModuleList(MapReduce(DIL) for _ in planes)
        self.classifier = nn.Conv2d(4, 1, 1)

    def forward(self, bgr01: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) BGR in 0..1 -> (1, 1, H, W) edge probability (the fused output's sigmoid)."""
        h, w = bgr01.shape[2:]
        x = self.init_block(bgr01)
        stage_outputs = []
        for s, n in ((1, 3), (2, 4), (3, 4), (4, 4)):
            for i in range(1, n + 1):
                x = getattr(self, f"block{s}_{i}")(x)
            stage_outputs.append(x)
        sides = []
        for i, xi in enumerate(stage_outputs):
            e = self.conv_reduces[i](self.attentions[i](self.dilations[i](xi)))
            sides.append(F.interpolate(e, (h, w), mode="bilinear", align_corners=False))
        return torch.sigmoid(self.classifier(torch.cat(sides, dim=1)))
