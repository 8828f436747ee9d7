"""The M-LSD line-segment network of the ControlNet annotators, as `mlsd_large_512_fp32.pth` holds it.

Written from the architecture ("Towards Light-weight and Real-time Line Segment Detection", Gu et al.,
the large MobileNetV2 variant that lllyasviel/Annotators ships) to load that file unchanged, the file
the A1111 ControlNet extension and controlnet_aux use. Two parts:

- `backbone.features`: the front of a MobileNetV2 (width 1.0) that takes 4 channels (RGB and a
  constant plane): a 3x3 stride-2 convolution to 32 channels, then inverted-residual blocks
  (expansion, out channels, repeats, first stride) (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
  (6, 64, 4, 2), (6, 96, 3, 1): 14 modules. Convolutions carry no bias, every one is followed by a
  batch norm, and ReLU6 follows all but the projecting 1x1 ones. Stride-2 convolutions pad one
  zero row and column at the bottom / right only (the TFLite "same" padding the model was trained with).
  The decoder reads the outputs of modules 1, 3, 6, 10 and 13 (strides 2, 4, 8, 16, 16).
- the decoder, blocks 15 to 23 (the file's names): four fusion steps from the deepest feature up,
  each a "merge" (1x1 conv + BN + ReLU on both inputs, the deeper one upsampled x2 bilinearly with
  aligned corners except in the first, concatenated) followed by a "refine" (a residual 3x3 conv,
  then a 3x3 conv to 64 channels, each with BN + ReLU); and a head (a 3x3 conv dilated by 5, a
  3x3 conv, a 1x1 conv to 16 channels). Decoder convolutions carry biases.

The output is the head's channels 7 to 15 at half the input size: channel 0 of that is the
line-centre logit and 1..4 the displacements to the segment's two ends (the "TP map" the
line decoding reads; the rest are the training's auxiliary maps). Sub-module names and
`nn.Sequential` indices give the file's keys (`backbone.features.3.conv.1.0.weight`,
`block21.conv2.1.running_var`, `block23.conv3.bias`...), so they must stay as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STEM_CHANNELS = 32
# (expansion, out channels, repeats, stride of the first repeat): MobileNetV2's table up to 96 channels
INVERTED_RESIDUALS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
TAPS = (1, 3, 6, 10, 13)  # the feature modules whose outputs the decoder reads
HEAD_CHANNELS, TP_FIRST = 16, 7  # the head's 16 channels; the map the decoding reads starts at 7


class ConvBnRelu6(nn.Sequential):
    """conv (no bias) -> BN -> ReLU6; a stride-2 one pads only the bottom and right edges by one."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        padding = 0 if stride == 2 else kernel // 2
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: [1x1 expand] -> 3x3 depthwise (stride) -> 1x1 project (+ BN, no activation);
    the input is added back when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = [ConvBnRelu6(cin, hidden, kernel=1)] if expansion != 1 else []
        layers += [ConvBnRelu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [ConvBnRelu6(4, STEM_CHANNELS, stride=2)]
        cin = STEM_CHANNELS
        for expansion, cout, repeats, stride in INVERTED_RESIDUALS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Merge(nn.Module):
    """A shallow feature and a deeper one, each through 1x1 conv + BN + ReLU (conv2 the shallow,
    conv1 the deeper), the deeper upsampled x2 (bilinear, aligned corners) unless `upsample` is off,
    concatenated shallow first."""

    def __init__(self, shallow: int, deep: int, out_shallow: int, out_deep: int, upsample: bool = True):
        super().__init__()
        self.conv1 = _conv_bn_relu(deep, out_deep, 1)
        self.conv2 = _conv_bn_relu(shallow, out_shallow, 1)
        self.upsample = upsample

    def forward(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = self.conv1(deep)
        if self.upsample:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(shallow), deep), dim=1)


class Refine(nn.Module):
    """A residual 3x3 conv + BN + ReLU, then a 3x3 conv + BN + ReLU to `cout` channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(cin, cin, 3)
        self.conv2 = _conv_bn_relu(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class Head(nn.Module):
    """A 3x3 conv dilated by 5 and a 3x3 conv (each + BN + ReLU), then a 1x1 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(cin, cin, 3, dilation=5)
        self.conv2 = _conv_bn_relu(cin, cin, 3)
        self.conv3 = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class MlsdNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.block15 = Merge(64, 96, 64, 64, upsample=False)  # stride 16: modules 10 and 13
        self.block16 = Refine(128, 64)
        self.block17 = Merge(32, 64, 64, 64)  # stride 8
        self.block18 = Refine(128, 64)
        self.block19 = Merge(24, 64, 64, 64)  # stride 4
        self.block20 = Refine(128, 64)
        self.block21 = Merge(16, 64, 64, 64)  # stride 2
        self.block22 = Refine(128, 64)
        self.block23 = Head(64, HEAD_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 4, H, W) in -1..1 (RGB and a plane of 1 / 127.5 - 1), H and W multiples of 32 ->
        (1, 9, H / 2, W / 2): the line-centre logit, the 4 end displacements, 4 auxiliary maps."""
        s2, s4, s8, s16, s16_deep = self.backbone(x)
        y = self.block16(self.block15(s16, s16_deep))
        y = self.block18(self.block17(s8, y))
        y = self.block20(self.block19(s4, y))
        y = self.block22(self.block21(s2, y))
        return self.block23(y)[:, TP_FIRST:]
