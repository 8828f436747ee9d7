"""LeReS's depth network (AdelaiDepth's `DepthModel` with the ResNeXt-101 32x8d encoder), written to load
lllyasviel/Annotators' `res101.pth` unchanged.

The file keeps the network under its `depth_model` entry, every key prefixed `module.` (a DataParallel save);
without that prefix the names are those of this module: `depth_model.encoder_modules.encoder.*` (the
ResNeXt: `conv1`/`bn1` stem, `layer1..4` of bottlenecks `conv1/bn1` 1x1, `conv2/bn2` 3x3 grouped and
strided, `conv3/bn3` 1x1, `downsample.0/.1` on each stage's first block) and `depth_model.decoder_modules.*`
(`conv` an FTB on the deepest features, `conv1`, `ffm2/1/0` fusion modules of two FTBs each, `outconv`).
The sizes are read from the file's shapes (`LeresConfig.from_state_dict`), so a smaller network of the same
layout, as the tests write, runs through the same code; the defaults are the file's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class LeresConfig:
    """The network's sizes; the defaults are res101.pth's."""

    stem: int = 64  # channels of the 7x7 stem
    widths: tuple[int, ...] = (256, 512, 1024, 2048)  # each stage's output (= its bottleneck width, 32x8d)
    groups: int = 32  # of the 3x3 convs
    blocks: tuple[int, ...] = (3, 4, 23, 3)
    mids: tuple[int, ...] = (256, 256, 256, 512)  # decoder: ffm0, ffm1, ffm2 widths, the deepest FTB's

    @classmethod
    def from_state_dict(cls, sd: dict) -> LeresConfig:
        """The sizes of the network whose (prefix-free) weights `sd` holds; KeyError when it is not this network."""
        enc, dec = "depth_model.encoder_modules.encoder.", "depth_model.decoder_modules."
        widths = tuple(int(sd[f"{enc}layer{i}.0.conv3.weight"].shape[0]) for i in range(1, 5))
        blocks = []
        for i in range(1, 5):
            n = 0
            while f"{enc}layer{i}.{n}.conv1.weight" in sd:
                n += 1
            blocks.append(n)
        per_group = int(sd[f"{enc}layer1.0.conv2.weight"].shape[1])
        mids = tuple(int(sd[f"{dec}ffm{i}.ftb1.conv1.weight"].shape[0]) for i in range(3))
        return cls(stem=int(sd[f"{enc}conv1.weight"].shape[0]), widths=widths, groups=widths[0] // per_group,
                   blocks=tuple(blocks), mids=mids + (int(sd[f"{dec}conv.conv1.weight"].shape[0]),))



def _up2(x):
    # nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), as the decoder uses throughout
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Bottleneck(nn.Module):
    """ResNeXt bottleneck, stride on the 3x3 conv (the torchvision "v1.5" placement LeReS uses)."""

    def __init__(self, cin: int, width: int, groups: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNeXt(nn.Module):
    def __init__(self, cfg: LeresConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(3, cfg.stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem)
        cin = cfg.stem
        for i, (width, n) in enumerate(zip(cfg.widths, cfg.blocks), start=1):
            stride = 1 if i == 1 else 2
            first = Bottleneck(cin, width, cfg.groups, stride)
            rest = [Bottleneck(width, width, cfg.groups, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(first, *rest))
            cin = width

    def forward(self, x) -> list:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        features = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)  # 1/4, 1/8, 1/16, 1/32
        return features


class FTB(nn.Module):
    """Feature transfer block: a 3x3 conv, then a residual branch (ReLU, conv, BN, ReLU, conv) and a ReLU."""

    def __init__(self, cin: int, mid: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, 1, 1)
        self.conv_branch = nn.Sequential(nn.ReLU(), nn.Conv2d(mid, mid, 3, 1, 1), nn.BatchNorm2d(mid), nn.ReLU(),
                                         nn.Conv2d(mid, mid, 3, 1, 1))

    def forward(self, x):
        # The published block's branch opens with an in-place ReLU on the conv's output, which the sum then
        # reads too: the skip carries relu(conv1(x)), not conv1(x). The weights were trained so.
        x = F.relu(self.conv1(x))
        return F.relu(x + self.conv_branch(x))


class FFM(nn.Module):
    """Feature fusion: an FTB on the encoder's features, plus the coarser decoder output, an FTB, 2x up."""

    def __init__(self, cin: int, mid: int, out: int):
        super().__init__()
        self.ftb1 = FTB(cin, mid)
        self.ftb2 = FTB(mid, out)

    def forward(self, low, high):
        return _up2(self.ftb2(self.ftb1(low) + high))


class AO(nn.Module):
    """Adaptive output: conv, BN, ReLU, conv to one channel, 2x up (keys adapt_conv.0/1/3)."""

    def __init__(self, cin: int):
        super().__init__()
        self.adapt_conv = nn.Sequential(nn.Conv2d(cin, cin // 2, 3, 1, 1), nn.BatchNorm2d(cin // 2), nn.ReLU(),
                                        nn.Conv2d(cin // 2, 1, 3, 1, 1))

    def forward(self, x):
        return _up2(self.adapt_conv(x))


class Decoder(nn.Module):
    def __init__(self, cfg: LeresConfig):
        super().__init__()
        w, m = cfg.widths, cfg.mids
        self.conv = FTB(w[3], m[3])
        self.conv1 = nn.Conv2d(m[3], m[2], 3, 1, 1)
        self.ffm2 = FFM(w[2], m[2], m[2])
        self.ffm1 = FFM(w[1], m[1], m[1])
        self.ffm0 = FFM(w[0], m[0], m[0])
        self.outconv = AO(m[0])

    def forward(self, features):
        x = _up2(self.conv1(self.conv(features[3])))  # 1/32 -> 1/16
        x = self.ffm2(features[2], x)  # 1/8
        x = self.ffm1(features[1], x)  # 1/4
        x = self.ffm0(features[0], x)  # 1/2
        return self.outconv(x)  # the input's size


class _Encoder(nn.Module):
    def __init__(self, cfg: LeresConfig):
        super().__init__()
        self.encoder = ResNeXt(cfg)

    def forward(self, x):
        return self.encoder(x)


class DepthModel(nn.Module):
    def __init__(self, cfg: LeresConfig):
        super().__init__()
        self.encoder_modules = _Encoder(cfg)
        self.decoder_modules = Decoder(cfg)

    def forward(self, x):
        return self.decoder_modules(self.encoder_modules(x))


class LeresNet(nn.Module):
    """(1, 3, H, W), H and W multiples of 32 -> (1, 1, H, W) relative depth (far is larger)."""

    def __init__(self, cfg: LeresConfig | None = None):
        super().__init__()
        self.depth_model = DepthModel(cfg or LeresConfig())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depth_model(x)
