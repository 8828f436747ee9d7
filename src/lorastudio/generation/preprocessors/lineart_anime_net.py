"""The anime line-art network of the ControlNet annotators, as `netG.pth` holds it.

Written from the architecture to load lllyasviel/Annotators' `netG.pth` (lineart_anime) unchanged,
the file the A1111 ControlNet extension and controlnet_aux use: the pix2pix U-Net generator with
8 levels (64 filters doubling to 512), 4x4 stride-2 convolutions down and transposed
convolutions up, instance norms without parameters (so every convolution keeps its bias) and a
tanh out. Each level is `model` = Sequential(...) holding the next level, which gives the file's
nested keys (`model.model.0.weight`, `model.model.1.model.1.weight`, ...,
`model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.model.1.weight` innermost); the
layer order (activations and norms included) must stay as it is.
"""

from __future__ import annotations

import torch
from torch import nn

LEVELS = 8
FILTERS = 64


class UnetLevel(nn.Module):
    def __init__(self, outer: int, inner: int, *, inside: "UnetLevel | None", cin: int | None = None,
                 outermost: bool = False):
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(cin or outer, inner, 4, stride=2, padding=1)
        up_in = inner if inside is None else inner * 2  # the level inside returns its input and its output
        up = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1)
        if outermost:
            layers = [down, inside, nn.ReLU(), up, nn.Tanh()]
        elif inside is None:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, nn.InstanceNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.InstanceNorm2d(inner), inside,
                      nn.ReLU(), up, nn.InstanceNorm2d(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        # The published network applies this LeakyReLU in place, so its skip connection carries the
        # activated input, not the input itself; written out here to give the same numbers.
        x = self.model[0](x)
        return torch.cat([x, self.model[1:](x)], 1)


class LineartAnimeNet(nn.Module):
    def __init__(self):
        super().__init__()
        f = FILTERS
        level = UnetLevel(f * 8, f * 8, inside=None)
        for _ in range(LEVELS - 5):
            level = UnetLevel(f * 8, f * 8, inside=level)
        for outer in (f * 4, f * 2, f):
            level = UnetLevel(outer, outer * 2, inside=level)
        self.model = UnetLevel(1, f, inside=level, cin=3, outermost=True)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) RGB in -1..1, H and W multiples of 256 -> (1, 1, H, W) in -1..1 (dark lines on white)."""
        return self.model(rgb)
