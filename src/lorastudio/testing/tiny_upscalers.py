"""Tiny random model upscalers in the layouts users' files have, for the tests.

- ESRGAN (RRDBNet): BasicSR's "new" names (`conv_first`, `body.N.rdbK.convJ`, `conv_body`,
  `conv_upN`, `conv_hr`, `conv_last`, as Real-ESRGAN ships them) and the original ESRGAN's "old"
  sequential names (`model.0`, `model.1.sub.N.RDBK.convJ.0`, ...), as in `4x-UltraSharp.pth`.
- Real-ESRGAN compact (SRVGGNetCompact): `body.N` convolutions and PReLUs.
- SwinIR: built with spandrel's own class (its layout is too large to write by hand here).

ESRGAN and compact have a plain-torch forward here (`rrdbnet_forward`, `compact_forward`),
written from the published architectures, so the tests compare what spandrel loads against a
computation that does not go through spandrel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _randn(g: torch.Generator, *shape: int, scale: float) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def _conv(sd: dict, g: torch.Generator, name: str, cin: int, cout: int) -> None:
    # He-like init keeps activations in range through the residual stacks
    sd[f"{name}.weight"] = _randn(g, cout, cin, 3, 3, scale=1.0 / math.sqrt(cin * 9))
    sd[f"{name}.bias"] = _randn(g, cout, scale=0.05)


def rrdbnet_state_dict(scale: int = 4, *, feat: int = 8, grow: int = 32, blocks: int = 1, seed: int = 0) -> dict:
    """A random RRDBNet (ESRGAN) in BasicSR's names; `scale` a power of 2 (one `conv_upN` per doubling).

    The growth width stays ESRGAN's 32: every published ESRGAN uses it, and spandrel assumes it."""
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}
    _conv(sd, g, "conv_first", 3, feat)
    for b in range(blocks):
        for r in (1, 2, 3):
            for j in range(1, 6):
                _conv(sd, g, f"body.{b}.rdb{r}.conv{j}", feat + (j - 1) * grow, feat if j == 5 else grow)
    _conv(sd, g, "conv_body", feat, feat)
    for n in range(1, int(math.log2(scale)) + 1):
        _conv(sd, g, f"conv_up{n}", feat, feat)
    _conv(sd, g, "conv_hr", feat, feat)
    _conv(sd, g, "conv_last", feat, 3)
    return sd


def rrdbnet_old_layout(sd: dict) -> dict:
    """The same weights under the original ESRGAN's sequential names (model.0, model.1.sub..., model.3...)."""
    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    ups = sorted(k for k in sd if k.startswith("conv_up") and k.endswith(".weight"))
    out: dict = {}
    for k, v in sd.items():
        name, leaf = k.rsplit(".", 1)
        if name == "conv_first":
            new = "model.0"
        elif name.startswith("body."):
            _, b, rdb, conv = name.split(".")
            new = f"model.1.sub.{b}.RDB{rdb[3:]}.{conv}.0"
        elif name == "conv_body":
            new = f"model.1.sub.{blocks}"
        elif name.startswith("conv_up"):
            new = f"model.{3 * int(name[7:])}"  # each doubling: Upsample, Conv2d, LeakyReLU
        elif name == "conv_hr":
            new = f"model.{3 * len(ups) + 2}"
        else:  # conv_last, after the LeakyReLU that follows conv_hr
            new = f"model.{3 * len(ups) + 4}"
        out[f"{new}.{leaf}"] = v
    return out


def rrdbnet_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """ESRGAN's forward (BasicSR RRDBNet) on BasicSR-named weights, x in [0, 1]."""

    def conv(name, t):
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    def lrelu(t):
        return F.leaky_relu(t, 0.2)

    def rdb(prefix, t):
        feats = [t]
        for j in range(1, 5):
            feats.append(lrelu(conv(f"{prefix}.conv{j}", torch.cat(feats, 1))))
        return conv(f"{prefix}.conv5", torch.cat(feats, 1)) * 0.2 + t

    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    feat = conv("conv_first", x)
    body = feat
    for b in range(blocks):
        inner = body
        for r in (1, 2, 3):
            inner = rdb(f"body.{b}.rdb{r}", inner)
        body = inner * 0.2 + body
    feat = feat + conv("conv_body", body)
    n = 1
    while f"conv_up{n}.weight" in sd:
        feat = lrelu(conv(f"conv_up{n}", F.interpolate(feat, scale_factor=2, mode="nearest")))
        n += 1
    return conv("conv_last", lrelu(conv("conv_hr", feat)))


def compact_state_dict(scale: int = 2, *, feat: int = 8, convs: int = 2, seed: int = 0) -> dict:
    """A random Real-ESRGAN compact network (SRVGGNetCompact, PReLU), as `realesr-general-x4v3` is laid out."""
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}
    _conv(sd, g, "body.0", 3, feat)
    i = 1
    for c in range(convs + 1):
        sd[f"body.{i}.weight"] = 0.1 + 0.2 * torch.rand(feat, generator=g)  # PReLU slopes
        _conv(sd, g, f"body.{i + 1}", feat, feat if c < convs else 3 * scale * scale)
        i += 2
    return sd


def compact_forward(sd: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    """SRVGGNetCompact's forward: conv/PReLU stack, pixel shuffle, plus the nearest-upscaled input."""
    n = max(int(k.split(".")[1]) for k in sd)
    t = x
    for i in range(n + 1):
        if f"body.{i}.bias" in sd:
            t = F.conv2d(t, sd[f"body.{i}.weight"], sd[f"body.{i}.bias"], padding=1)
        else:
            t = F.prelu(t, sd[f"body.{i}.weight"])
    return F.pixel_shuffle(t, scale) + F.interpolate(x, scale_factor=scale, mode="nearest")


def swinir_state_dict(scale: int = 2, *, seed: int = 0) -> dict:
    """A tiny random SwinIR (classical SR, pixel-shuffle upsampler), laid out by spandrel's own class.

    The class's initial weights (std 0.02 linear layers) leave attention almost without effect; the
    weights are redrawn at unit gain so that a test sees attention across windows."""
    from spandrel.architectures.SwinIR import SwinIR

    with torch.random.fork_rng():  # the class draws its initial weights from the global generator
        torch.manual_seed(seed)
        net = SwinIR(img_size=16, patch_size=1, in_chans=3, embed_dim=12, depths=[2], num_heads=[2], window_size=4,
                     mlp_ratio=2.0, upscale=scale, img_range=1.0, upsampler="pixelshuffle",
                     resi_connection="1conv")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in net.state_dict().items():
        if not v.is_floating_point() or "norm" in k:
            out[k] = v.detach().clone()  # index buffers, attention masks, layer norms
        elif "relative_position_bias_table" in k:
            out[k] = torch.randn(v.shape, generator=g)
        elif v.ndim > 1:
            out[k] = torch.randn(v.shape, generator=g) / math.sqrt(v[0].numel())
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.05
    return out
