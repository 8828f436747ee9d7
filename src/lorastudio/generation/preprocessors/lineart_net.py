"""The line-art network of the ControlNet annotators, as `sk_model.pth` / `sk_model2.pth` hold it.

Written from the architecture to load lllyasviel/Annotators' `sk_model.pth` (lineart_realistic)
and `sk_model2.pth` (lineart_coarse) unchanged, the files the A1111 ControlNet extension and
controlnet_aux use. It is the generator of "Learning to generate line drawings" (Chan et al.):
a ResNet-style image-to-image network with instance norms (no parameters), two stride-2
convolutions down, three residual blocks, two transposed convolutions up and a sigmoid. The
`nn.Sequential` indices below (padding, norm and ReLU layers included) give the file's keys
(`model0.1.weight`, `model2.0.conv_block.5.weight`, `model3.3.weight`, ...), so the layer order
must stay as it is.
"""

from __future__ import annotations

import torch
from torch import nn

RESIDUAL_BLOCKS = 3  # both annotator files are built with 3 (the paper's default is 9)


def _norm_relu(ch: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(ch), nn.ReLU()]


class ResidualBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv_block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), *_norm_relu(ch),
                                        nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartNet(nn.Module):
    def __init__(self, residual_blocks: int = RESIDUAL_BLOCKS):
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), *_norm_relu(64))
        self.model1 = nn.Sequential(nn.Conv2d(64, 128, 3, stride=2, padding=1), *_norm_relu(128),
                                    nn.Conv2d(128, 256, 3, stride=2, padding=1), *_norm_relu(256))
        self.model2 = nn.Sequential(*[ResidualBlock(256) for _ in range(residual_blocks)])
        self.model3 = nn.Sequential(nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1),
                                    *_norm_relu(128),
                                    nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1),
                                    *_norm_relu(64))
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, rgb01: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) RGB in 0..1, H and W multiples of 4 -> (1, 1, H, W) in 0..1 (dark lines on white)."""
        x = self.model0(rgb01)
        x = self.model1(x)
        x = self.model2(x)
        x = self.model3(x)
        return self.model4(x)
