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


def _batch_norm(sd, g, key, ch, *, batches_tracked: bool):
    import torch

    sd[f"{key}.weight"] = 0.8 + 0.4 * torch.rand((ch,), generator=g)
    sd[f"{key}.bias"] = _uniform(g, (ch,), 0.1)
    sd[f"{key}.running_mean"] = _uniform(g, (ch,), 0.1)
    sd[f"{key}.running_var"] = 0.75 + 0.5 * torch.rand((ch,), generator=g)
    if batches_tracked:
        sd[f"{key}.num_batches_tracked"] = torch.tensor(1000, dtype=torch.long)


def mlsd_state_dict(seed: int = 0, *, batches_tracked: bool = True) -> dict:
    """mlsd_large_512_fp32.pth (M-LSD large): every conv followed by a batch norm (weight, bias,
    running_mean, running_var and, unless `batches_tracked` is off, num_batches_tracked).

    `backbone.features`: `0` a 3x3 conv 4->32 (key 0.0, no bias; BN 0.1); then 13 MobileNetV2 inverted
    residuals (expansion, out channels, repeats) (1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4),
    (6, 96, 3), each `conv` a Sequential: with expansion 6, `0.0` the 1x1 expand conv (hidden = 6 x in),
    `1.0` the 3x3 depthwise conv (hidden, 1, 3, 3), `2` the 1x1 projection, `3` its BN; with
    expansion 1 the expand conv is absent (`0.0` depthwise, `1` projection, `2` BN). No backbone bias.
    Decoder (convs with bias, BN at `.1` after the conv at `.0`): blocks 15/17/19/21 `conv1` a 1x1 conv
    of the deeper input (96, 64, 64, 64 -> 64) and `conv2` of the shallower (64, 32, 24, 16 -> 64);
    blocks 16/18/20/22 `conv1` 3x3 128->128, `conv2` 3x3 128->64; block 23 `conv1` and `conv2` 3x3
    64->64 and `conv3` a 1x1 conv 64->16 (no BN).

    The head is scaled so random weights draw lines: its output channel 7 (the line-centre logit)
    has a negative bias, so only some centres score above 0.1, and channels 8..11 (the displacements
    to the ends) are enlarged so the segments are several pixels long."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd: dict = {}

    def conv_bn(key, cout, cin, k, *, groups=1, bias=False, gain=2.45):
        sd[f"{key}.0.weight"] = _uniform(g, (cout, cin // groups, k, k), gain / (cin // groups * k * k) ** 0.5)
        if bias:
            sd[f"{key}.0.bias"] = _uniform(g, (cout,), 0.1)
        _batch_norm(sd, g, f"{key}.1", cout, batches_tracked=batches_tracked)

    conv_bn("backbone.features.0", 32, 4, 3)
    cin, index = 32, 1
    for t, cout, n in ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3)):
        for _ in range(n):
            key, hidden, i = f"backbone.features.{index}.conv", cin * t, 0
            if t != 1:
                conv_bn(f"{key}.0", hidden, cin, 1)
                i = 1
            conv_bn(f"{key}.{i}", hidden, hidden, 3, groups=hidden)
            sd[f"{key}.{i + 1}.weight"] = _uniform(g, (cout, hidden, 1, 1), 1.7 / hidden ** 0.5)
            _batch_norm(sd, g, f"{key}.{i + 2}", cout, batches_tracked=batches_tracked)
            cin, index = cout, index + 1
    for block, deep, shallow in ((15, 96, 64), (17, 64, 32), (19, 64, 24), (21, 64, 16)):
        conv_bn(f"block{block}.conv1", 64, deep, 1, bias=True)
        conv_bn(f"block{block}.conv2", 64, shallow, 1, bias=True)
        conv_bn(f"block{block + 1}.conv1", 128, 128, 3, bias=True, gain=1.2)
        conv_bn(f"block{block + 1}.conv2", 64, 128, 3, bias=True)
    conv_bn("block23.conv1", 64, 64, 3, bias=True)
    conv_bn("block23.conv2", 64, 64, 3, bias=True)
    head = _uniform(g, (16, 64, 1, 1), 1.7 / 8)
    head[8:12] *= 3.0
    sd["block23.conv3.weight"] = head
    sd["block23.conv3.bias"] = _uniform(g, (16,), 0.1)
    sd["block23.conv3.bias"][7] = -3.0
    return sd


def normal_bae_state_dict(seed: int = 0) -> dict:
    """scannet.pt's `model` dict (Bae et al.'s NNET, 72.6 M parameters), keys without the `module.` prefix.

    `encoder.original_model` (gen_efficientnet's tf_efficientnet_b5_ap, no conv bias, batch norms with
    num_batches_tracked): `conv_stem` (48,3,3,3), `bn1`; `blocks.<s>.<b>` with (blocks, kernel, out
    channels) per stage (3,3,24) (5,3,40) (5,5,64) (7,3,128) (7,5,176) (9,5,304) (3,3,512): stage 0
    `conv_dw` (C,1,k,k), `bn1`, `se.conv_reduce` (C/4,C,1,1)+bias, `se.conv_expand` (C,C/4,1,1)+bias,
    `conv_pw` (out,C,1,1), `bn2`; later stages `conv_pw` (6C,C,1,1), `bn1`, `conv_dw` (6C,1,k,k), `bn2`,
    `se` reducing 6C to C/4 (C the block's input), `conv_pwl` (out,6C,1,1), `bn3`; `conv_head` (2048,512,1,1),
    `bn2`. `decoder` (convs with bias): `conv2` (2048,2048,1,1); `up1..4._net.0` 3x3 (2048+176 -> 1024,
    1024+64 -> 512, 512+40 -> 256, 256+24 -> 128), `_net.1` BN, `_net.3` 3x3 same width, `_net.4` BN;
    `out_conv_res8` (4,512,3,3); `out_conv_res4/2/1` Conv1d `.0` (128, 516/260/132, 1), `.2` and `.4`
    (128,128,1), `.6` (4,128,1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd: dict = {}

    def conv(key, cout, cin, k, *, bias=False, gain=2.45, conv1d=False):
        shape = (cout, cin, k) if conv1d else (cout, cin, k, k)
        sd[f"{key}.weight"] = _uniform(g, shape, gain / (cin * k * k) ** 0.5)
        if bias:
            sd[f"{key}.bias"] = _uniform(g, (cout,), 0.1)

    def bn(key, ch):
        _batch_norm(sd, g, key, ch, batches_tracked=True)

    enc = "encoder.original_model"
    conv(f"{enc}.conv_stem", 48, 3, 3, gain=1.0)
    bn(f"{enc}.bn1", 48)
    cin = 48
    for s, (n, k, cout) in enumerate(((3, 3, 24), (5, 3, 40), (5, 5, 64), (7, 3, 128), (7, 5, 176),
                                      (9, 5, 304), (3, 3, 512))):
        for b in range(n):
            key = f"{enc}.blocks.{s}.{b}"
            mid = cin if s == 0 else 6 * cin
            if s > 0:
                conv(f"{key}.conv_pw", mid, cin, 1)
                bn(f"{key}.bn1", mid)
            sd[f"{key}.conv_dw.weight"] = _uniform(g, (mid, 1, k, k), 2.45 / k)
            bn(f"{key}.{'bn1' if s == 0 else 'bn2'}", mid)
            conv(f"{key}.se.conv_reduce", cin // 4, mid, 1, bias=True)
            conv(f"{key}.se.conv_expand", mid, cin // 4, 1, bias=True)
            conv(f"{key}.{'conv_pw' if s == 0 else 'conv_pwl'}", cout, mid, 1, gain=1.0)
            bn(f"{key}.{'bn2' if s == 0 else 'bn3'}", cout)
            cin = cout
    conv(f"{enc}.conv_head", 2048, 512, 1)
    bn(f"{enc}.bn2", 2048)
    conv("decoder.conv2", 2048, 2048, 1, bias=True)
    for i, (cin, cout) in enumerate(((2048 + 176, 1024), (1024 + 64, 512), (512 + 40, 256), (256 + 24, 128)), 1):
        conv(f"decoder.up{i}._net.0", cout, cin, 3, bias=True)
        bn(f"decoder.up{i}._net.1", cout)
        conv(f"decoder.up{i}._net.3", cout, cout, 3, bias=True)
        bn(f"decoder.up{i}._net.4", cout)
    conv("decoder.out_conv_res8", 4, 512, 3, bias=True)
    for name, cin in (("res4", 516), ("res2", 260), ("res1", 132)):
        conv(f"decoder.out_conv_{name}.0", 128, cin, 1, bias=True, conv1d=True)
        conv(f"decoder.out_conv_{name}.2", 128, 128, 1, bias=True, conv1d=True)
        conv(f"decoder.out_conv_{name}.4", 128, 128, 1, bias=True, conv1d=True)
        conv(f"decoder.out_conv_{name}.6", 4, 128, 1, bias=True, conv1d=True)
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


def leres_state_dict(seed: int = 0, *, stem: int = 64, widths=(256, 512, 1024, 2048), groups: int = 32,
                     blocks=(3, 4, 23, 3), mids=(256, 256, 256, 512)) -> dict:
    """res101.pth's `depth_model` entry (LeReS, ResNeXt-101 32x8d), keys with the file's `module.` prefix; the
    defaults are the real sizes (115.6 M parameters), smaller ones keep the layout.

    Encoder `module.depth_model.encoder_modules.encoder.`: `conv1` 7x7 3->stem (no bias), `bn1`; stages
    `layer1..4` of `blocks` bottlenecks whose width is the stage's output (32x8d: 256..2048): `conv1` 1x1,
    `conv2` 3x3 with `groups` groups (weight (w, w / groups, 3, 3)), `conv3` 1x1, each with its BN
    (`bn1..3`), no conv bias; block 0 of each stage also `downsample.0` 1x1 conv and `downsample.1` BN.
    Decoder `module.depth_model.decoder_modules.`: FTBs (`conv1` 3x3 in->mid with bias, `conv_branch.1` and
    `.4` 3x3 mid->mid with bias, `conv_branch.2` BN): `conv` (widths[3] -> mids[3]); `conv1` 3x3 mids[3] ->
    mids[2] with bias; `ffm2/1/0` with `ftb1` (widths[i] -> mids[i]) and `ftb2` (mids[i] -> mids[i]);
    `outconv.adapt_conv.0` 3x3 mids[0] -> mids[0] / 2, `.1` BN, `.3` 3x3 -> 1 channel, with biases.
    Every BN has weight, bias, running_mean, running_var, num_batches_tracked."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd: dict = {}
    enc, dec = "module.depth_model.encoder_modules.encoder", "module.depth_model.decoder_modules"

    def conv(key, cout, cin, k, *, bias=False, gain=2.45):
        sd[f"{key}.weight"] = _uniform(g, (cout, cin, k, k), gain / (cin * k * k) ** 0.5)
        if bias:
            sd[f"{key}.bias"] = _uniform(g, (cout,), 0.1)

    conv(f"{enc}.conv1", stem, 3, 7, gain=2.45 / 300)  # the stem sees ImageNet-normalised 0..255 values
    _batch_norm(sd, g, f"{enc}.bn1", stem, batches_tracked=True)
    cin = stem
    for i, (w, n) in enumerate(zip(widths, blocks), start=1):
        for b in range(n):
            key = f"{enc}.layer{i}.{b}"
            conv(f"{key}.conv1", w, cin if b == 0 else w, 1)
            conv(f"{key}.conv2", w, w // groups, 3)
            conv(f"{key}.conv3", w, w, 1, gain=0.8)  # a modest residual branch: the 33 blocks stay finite
            for j in (1, 2, 3):
                _batch_norm(sd, g, f"{key}.bn{j}", w, batches_tracked=True)
            if b == 0:
                conv(f"{key}.downsample.0", w, cin, 1)
                _batch_norm(sd, g, f"{key}.downsample.1", w, batches_tracked=True)
        cin = w

    def ftb(key, cin, mid):
        conv(f"{key}.conv1", mid, cin, 3, bias=True)
        conv(f"{key}.conv_branch.1", mid, mid, 3, bias=True)
        _batch_norm(sd, g, f"{key}.conv_branch.2", mid, batches_tracked=True)
        conv(f"{key}.conv_branch.4", mid, mid, 3, bias=True, gain=0.8)

    ftb(f"{dec}.conv", widths[3], mids[3])
    conv(f"{dec}.conv1", mids[2], mids[3], 3, bias=True)
    for i in (2, 1, 0):
        ftb(f"{dec}.ffm{i}.ftb1", widths[i], mids[i])
        ftb(f"{dec}.ffm{i}.ftb2", mids[i], mids[i])
    conv(f"{dec}.outconv.adapt_conv.0", mids[0] // 2, mids[0], 3, bias=True)
    _batch_norm(sd, g, f"{dec}.outconv.adapt_conv.1", mids[0] // 2, batches_tracked=True)
    conv(f"{dec}.outconv.adapt_conv.3", 1, mids[0] // 2, 3, bias=True)
    return sd
