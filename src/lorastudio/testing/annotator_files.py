"""Random weights in the layouts of lllyasviel/Annotators' detector files, for tests and benches.

The keys and shapes are written out here from the published architectures (not taken from
lorastudio's networks), so a network that loads them strictly loads the real files too. The
values are random, scaled so the maps are neither flat nor saturated.
"""

from __future__ import annotations

from pathlib import Path


def _uniform(g, shape, bound):
    import torch

    return (torch.rand(shape, generator=g) * 2 - 1) * bound


def _conv(sd, g, key, cout, cin, k, *, gain=2.45, transposed=False):
    shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
    sd[f"{key}.weight"] = _uniform(g, shape, gain / (cin * k * k) ** 0.5)
    sd[f"{key}.bias"] = _uniform(g, (cout,), 0.1)


def hed_state_dict(seed: int = 0) -> dict:
    """ControlNetHED.pth: `norm` (1,3,1,1), then 5 stages of 3x3 convs (64,128,256,512,512 channels;
    2,2,3,3,3 convs) each with a 1x1 projection to one channel."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {"norm": 100 + 60 * torch.rand((1, 3, 1, 1), generator=g)}
    cin = 3
    for b, (cout, n) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), start=1):
        for i in range(n):
            # the first conv sees 0..255 pixels: scaled down so the activations stay near 1
            first = b == 1 and i == 0
            _conv(sd, g, f"block{b}.convs.{i}", cout, cin if i == 0 else cout, 3, gain=2.45 / (60 if first else 1))
        _conv(sd, g, f"block{b}.projection", 1, cout, 1, gain=4)
        cin = cout
    return sd


def lineart_state_dict(seed: int = 0) -> dict:
    """sk_model.pth / sk_model2.pth: a 7x7 conv 3->64, 3x3 stride-2 convs 64->128->256, 3 residual
    blocks of two 3x3 convs (keys conv_block.1 and conv_block.5), transposed 3x3 convs 256->128->64
    (weights (in, out, 3, 3)), a 7x7 conv 64->1; instance norms carry no weights."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd: dict = {}
    _conv(sd, g, "model0.1", 64, 3, 7)
    _conv(sd, g, "model1.0", 128, 64, 3)
    _conv(sd, g, "model1.3", 256, 128, 3)
    for b in range(3):
        _conv(sd, g, f"model2.{b}.conv_block.1", 256, 256, 3)
        _conv(sd, g, f"model2.{b}.conv_block.5", 256, 256, 3, gain=0.5)
    _conv(sd, g, "model3.0", 128, 256, 3, transposed=True)
    _conv(sd, g, "model3.3", 64, 128, 3, transposed=True)
    _conv(sd, g, "model4.1", 1, 64, 7, gain=1.0)
    return sd


def lineart_anime_state_dict(seed: int = 0) -> dict:
    """netG.pth: a pix2pix U-Net of 8 levels, (outer, inner) channels (1, 64) with 3 input channels,
    (64, 128), (128, 256), (256, 512), then four (512, 512), the last innermost; each level's
    Sequential holds its down conv (4x4, index 0 outermost, else 1), the next level (index 1
    outermost, else 3) and its transposed up conv (weights (in, out, 4, 4), in = 2 x inner but
    for the innermost; index 3, or 5 for the middle levels). Every conv has a bias."""
    import torch

    g = torch.Generator().manual_seed(seed)
    levels = [(1, 64), (64, 128), (128, 256), (256, 512)] + [(512, 512)] * 4
    sd: dict = {}
    prefix = "model.model"
    for i, (outer, inner) in enumerate(levels):
        outermost, innermost = i == 0, i == len(levels) - 1
        _conv(sd, g, f"{prefix}.{0 if outermost else 1}", inner, 3 if outermost else outer, 4, gain=1.7)
        up = 3 if outermost or innermost else 5
        _conv(sd, g, f"{prefix}.{up}", outer, inner if innermost else inner * 2, 4, transposed=True,
              gain=2.5 if outermost else 1.7)
        prefix = f"{prefix}.{1 if outermost else 3}.model"
    return sd


def write_annotator_file(folder: Path, filename: str, state: dict, *, safetensors: bool = False) -> Path:
    """`state` saved as folder/filename (a torch pickle, as the Annotators files are) or as its
    `.safetensors` twin."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if safetensors:
        from safetensors.torch import save_file

        path = folder / (Path(filename).stem + ".safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = folder / filename
        torch.save(state, path)
    return path


def edge_picture(h: int = 96, w: int = 128, seed: int = 0):
    """An RGB uint8 picture with shapes, lines and a little noise: edges for the detectors to find."""
    import cv2
    import numpy as np

    rng = np.random.RandomState(seed)
    im = np.full((h, w, 3), 235, np.uint8)
    cv2.circle(im, (w // 3, h // 2), min(h, w) // 4, (200, 90, 30), -1)
    cv2.rectangle(im, (w // 2, h // 5), (w - w // 8, h - h // 4), (40, 120, 180), -1)
    cv2.line(im, (0, h - 5), (w - 1, h // 3), (10, 10, 10), 2)
    return np.clip(im.astype(int) + rng.randint(-12, 13, im.shape), 0, 255).astype(np.uint8)


def pidinet_state_dict(seed: int = 0) -> dict:
    """table5_pidinet.pth (PiDiNet "carv4", 60 channels, dilation modules of 24, attention), keys without
    the file's `module.` prefix: `init_block.weight` (60,3,3,3); blocks 1_1..1_3 at 60 channels, 2_1..2_4
    at 120, 3_1..3_4 and 4_1..4_4 at 240, each a depthwise `conv1` (C_in,1,3,3) and a 1x1 `conv2`
    (C_out,C_in,1,1) without bias, the first block of stages 2-4 also a 1x1 `shortcut` with bias; per
    stage i: `dilations.i.conv1` (24,C,1,1)+bias and `conv2_1..4` (24,24,3,3), `attentions.i.conv1`
    (4,24,1,1)+bias and `conv2` (1,4,3,3), `conv_reduces.i.conv` (1,24,1,1)+bias; `classifier` (1,4,1,1)+bias.
    The pixel-difference kernels are stored raw (3x3 for every kind)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd: dict = {"init_block.weight": _uniform(g, (60, 3, 3, 3), 2.0)}
    channels = {1: (60, 60), 2: (60, 120), 3: (120, 240), 4: (240, 240)}
    for s, n in ((1, 3), (2, 4), (3, 4), (4, 4)):
        cin, cout = channels[s]
        for i in range(1, n + 1):
            c = cin if i == 1 else cout
            key = f"block{s}_{i}"
            if i == 1 and s > 1:
                _conv(sd, g, f"{key}.shortcut", cout, cin, 1, gain=1.0)
            sd[f"{key}.conv1.weight"] = _uniform(g, (c, 1, 3, 3), 0.8)
            sd[f"{key}.conv2.weight"] = _uniform(g, (cout, c, 1, 1), 1.2 / c ** 0.5)
    for i, c in enumerate((60, 120, 240, 240)):
        _conv(sd, g, f"dilations.{i}.conv1", 24, c, 1, gain=1.7)
        for j in range(1, 5):
            sd[f"dilations.{i}.conv2_{j}.weight"] = _uniform(g, (24, 24, 3, 3), 0.9 / (24 * 9) ** 0.5)
        _conv(sd, g, f"attentions.{i}.conv1", 4, 24, 1)
        sd[f"attentions.{i}.conv2.weight"] = _uniform(g, (1, 4, 3, 3), 0.8)
        _conv(sd, g, f"conv_reduces.{i}.conv", 1, 24, 1, gain=4.0)
    _conv(sd, g, "classifier", 1, 4, 1, gain=2.0)
    return sd
