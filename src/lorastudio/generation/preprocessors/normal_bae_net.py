"""Bae et al.'s surface-normal network (NNET, "Estimating and Exploiting the Aleatoric Uncertainty in Surface
Normal Estimation", ICCV 2021), written from the published architecture to load lllyasviel/Annotators'
`scannet.pt` unchanged (its `model` dict, keys without the `module.` prefix).

Encoder, `encoder.original_model.*`: EfficientNet-B5 as gen_efficientnet's `tf_efficientnet_b5_ap` lays it
out (width x1.6, depth x2.2, TensorFlow "same" padding, batch-norm eps 1e-3, swish): `conv_stem` 3x3/2
3->48, `bn1`; `blocks.<stage>.<block>`: stage 0 three depthwise-separable blocks (`conv_dw`, `bn1`,
`se`, `conv_pw`, `bn2`), stages 1-6 inverted residuals (`conv_pw`, `bn1`, `conv_dw`, `bn2`, `se`,
`conv_pwl`, `bn3`), expansion 6; every `se` a squeeze-excite (`conv_reduce`, `conv_expand`, with bias)
reducing to a quarter of the block's input channels; then `conv_head` 1x1 512->2048 and `bn2` (in the
file, unused by the decoder, which reads the head conv's output).

Decoder, `decoder.*`: `conv2` 1x1 2048->2048; `up1..up4` (`_net`: 3x3 conv, batch norm, leaky ReLU, twice)
each upsampling (bilinear, corners aligned) to a skip feature and concatenating it: stage 4 (176 ch,
1/16), stage 2 (64, 1/8), stage 1 (40, 1/4), stage 0 (24, 1/2); `out_conv_res8` 3x3 512->4 on the 1/8
features; then three refinements (`out_conv_res4/2/1`, four 1x1 Conv1d with ReLUs) each reading the next
features upsampled x2 with the previous prediction upsampled x2. Every prediction is (x, y, z, kappa):
the normal made unit length and kappa = elu + 1.01. At inference every pixel is refined (the
uncertainty-guided point sampling is for training only), so the last output is at the input's size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# tf_efficientnet_b5_ap: EfficientNet-B0's stages with channels x1.6 (rounded to multiples of 8) and
# repeats x2.2 (rounded up): (kind, blocks, kernel, first stride, expansion, out channels)
STEM, HEAD = 48, 2048
STAGES = (("ds", 3, 3, 1, 1, 24), ("ir", 5, 3, 2, 6, 40), ("ir", 5, 5, 2, 6, 64), ("ir", 7, 3, 2, 6, 128),
          ("ir", 7, 5, 1, 6, 176), ("ir", 9, 5, 2, 6, 304), ("ir", 3, 3, 1, 6, 512))
ENCODER_BN_EPS = 1e-3  # the TensorFlow port's
SKIPS = (0, 1, 2, 4)  # the stages whose outputs the decoder joins, at 1/2, 1/4, 1/8 and 1/16
MIN_KAPPA = 0.01


class SameConv2d(nn.Conv2d):
    """A conv with TensorFlow's "same" padding: symmetric (in the conv) at stride 1; at stride 2 the input
    is padded as TF does, the odd pixel at the bottom / right."""

    def __init__(self, cin, cout, k, stride=1, groups=1, bias=False):
        super().__init__(cin, cout, k, stride, padding=(k - 1) // 2 if stride == 1 else 0, groups=groups,
                         bias=bias)

    def forward(self, x):
        if self.stride[0] == 1:
            return super().forward(x)
        pads = []
        for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                           (x.shape[-2], self.kernel_size[0], self.stride[0])):
            p = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [p // 2, p - p // 2]
        return super().forward(F.pad(x, pads))


def _bn(ch):
    return nn.BatchNorm2d(ch, eps=ENCODER_BN_EPS)


class SqueezeExcite(nn.Module):
    def __init__(self, ch, reduced):
        super().__init__()
        self.conv_reduce = nn.Conv2d(ch, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, ch, 1)

    def forward(self, x):
        s = F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.conv_expand(s))


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv_dw = SameConv2d(cin, cin, k, stride, groups=cin)
        self.bn1 = _bn(cin)
        self.se = SqueezeExcite(cin, cin // 4)
        self.conv_pw = SameConv2d(cin, cout, 1)
        self.bn2 = _bn(cout)  # no activation after the projection
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
        return y + x if self.residual else y


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, k, stride, expansion):
        super().__init__()
        mid = cin * expansion
        self.conv_pw = SameConv2d(cin, mid, 1)
        self.bn1 = _bn(mid)
        self.conv_dw = SameConv2d(mid, mid, k, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.se = SqueezeExcite(mid, cin // 4)  # a quarter of the block's input, not of the expanded width
        self.conv_pwl = SameConv2d(mid, cout, 1)
        self.bn3 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = F.silu(self.bn1(self.conv_pw(x)))
        y = F.silu(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return y + x if self.residual else y


class EfficientNetB5(nn.Module):
    """gen_efficientnet's module names; global pool and classifier removed (as NNET removes them)."""

    def __init__(self):
        super().__init__()
        self.conv_stem = SameConv2d(3, STEM, 3, 2)
        self.bn1 = _bn(STEM)
        stages, cin = [], STEM
        for kind, n, k, stride, expansion, cout in STAGES:
            blocks = []
            for i in range(n):
                s = stride if i == 0 else 1
                blocks.append(DepthwiseSeparable(cin, cout, k, s) if kind == "ds"
                              else InvertedResidual(cin, cout, k, s, expansion))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = SameConv2d(cin, HEAD, 1)
        self.bn2 = _bn(HEAD)  # in the file; the decoder reads conv_head's output, before this norm

    def forward(self, x) -> list:
        """[the outputs of the stages in SKIPS..., conv_head's output]."""
        x = F.silu(self.bn1(self.conv_stem(x)))
        skips = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in SKIPS:
                skips.append(x)
        return [*skips, self.conv_head(x)]


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.original_model = EfficientNetB5()

    def forward(self, x):
        return self.original_model(x)


class UpSampleBN(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self._net = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(),
                                  nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU())

    def forward(self, x, skip):
        up = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([up, skip], dim=1))


def _refiner(cin):
    return nn.Sequential(nn.Conv1d(cin, 128, 1), nn.ReLU(), nn.Conv1d(128, 128, 1), nn.ReLU(),
                         nn.Conv1d(128, 128, 1), nn.ReLU(), nn.Conv1d(128, 4, 1))


def normalize_prediction(out):
    """(x, y, z, kappa) -> the unit normal and kappa = elu(kappa) + 1 + 0.01 (channels on dim 1)."""
    x, y, z, kappa = torch.split(out, 1, dim=1)
    norm = torch.sqrt(x ** 2.0 + y ** 2.0 + z ** 2.0) + 1e-10
    return torch.cat([x / norm, y / norm, z / norm, F.elu(kappa) + 1.0 + MIN_KAPPA], dim=1)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(HEAD, 2048, 1)
        self.up1 = UpSampleBN(2048 + 176, 1024)
        self.up2 = UpSampleBN(1024 + 64, 512)
        self.up3 = UpSampleBN(512 + 40, 256)
        self.up4 = UpSampleBN(256 + 24, 128)
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4 = _refiner(512 + 4)
        self.out_conv_res2 = _refiner(256 + 4)
        self.out_conv_res1 = _refiner(128 + 4)

    def forward(self, features) -> list:
        """[the predictions at 1/8, 1/4, 1/2 and 1/1 of the input], each (B, 4, h, w)."""
        half, quarter, eighth, sixteenth, head = features
        d2 = self.up2(self.up1(self.conv2(head), sixteenth), eighth)
        d3 = self.up3(d2, quarter)
        d4 = self.up4(d3, half)
        outs = [normalize_prediction(self.out_conv_res8(d2))]
        for feat, refine in ((d2, self.out_conv_res4), (d3, self.out_conv_res2), (d4, self.out_conv_res1)):
            up = F.interpolate(feat, scale_factor=2, mode="bilinear", align_corners=True)
            prev = F.interpolate(outs[-1], scale_factor=2, mode="bilinear", align_corners=True)
            joined = torch.cat([up, prev], dim=1)
            b, c, h, w = joined.shape
            # every pixel refined, through the file's Conv1d layers on the flattened map
            outs.append(normalize_prediction(refine(joined.view(b, c, -1))).view(b, 4, h, w))
        return outs


class NormalBaeNet(nn.Module):
    """image (B, 3, H, W), ImageNet-normalised, H and W multiples of 32 -> predictions as Decoder gives."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def forward(self, x):
        return self.decoder(self.encoder(x))
