"""Model upscalers (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, ...) from the folders A1111, Forge and
ComfyUI keep them in, read by the `spandrel` library, run in overlapping tiles.

Tiling: the picture is cut into tiles of `tile` pixels; each is upscaled with `overlap` pixels of
its neighbours around it, and only its own core is kept. A convolutional network whose receptive
field fits in the overlap gives, tile by tile, what it gives on the whole picture; memory stays
that of one tile plus the 8-bit result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lorastudio.core.errors import ModelFileError, NotFound

UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "upscale_models")
UPSCALER_EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
# "4x-UltraSharp", "RealESRGAN_x2plus", "003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN"
_SCALE_IN_NAME = re.compile(r"(?:^|[^0-9a-z])(?:(\d)x(?![0-9a-z])|x(\d)(?![0-9]))", re.IGNORECASE)


@dataclass(frozen=True)
class UpscalerEntry:
    name: str  # file stem: the name A1111 lists and requests use
    path: Path
    folder: str  # which A1111 folder it came from (ESRGAN, SwinIR, ...)

    @property
    def scale_from_name(self) -> int | None:
        m = _SCALE_IN_NAME.search(self.name.replace("_", " ").replace("-", " "))
        return int(m.group(1) or m.group(2)) if m else None


def upscaler_entries(models_root: Path) -> list[UpscalerEntry]:
    out: dict[str, UpscalerEntry] = {}
    for sub in UPSCALER_FOLDERS:
        folder = Path(models_root) / sub
        if folder.is_dir():
            for p in sorted(folder.rglob("*")):
                if p.is_file() and p.suffix.lower() in UPSCALER_EXTENSIONS:
                    out.setdefault(p.stem, UpscalerEntry(p.stem, p, sub))
    return sorted(out.values(), key=lambda e: e.name.lower())


def find_upscaler(models_root: Path, name: str) -> UpscalerEntry:
    entries = upscaler_entries(models_root)
    for e in entries:
        if name in (e.name, e.path.name):
            return e
    from difflib import get_close_matches

    raise NotFound("upscaler", name, get_close_matches(name, [e.name for e in entries], n=3, cutoff=0.3))


def read_state_dict(path: Path, *, allow_pickle: bool) -> dict:
    """Tensors of an upscaler file: safetensors, or a pickle only when allowed (weights-only).

    Real-ESRGAN / BasicSR pickles keep the weights under "params_ema" (or "params"), Lightning ones
    under "state_dict": those are unwrapped, as A1111 and spandrel do."""
    from lorastudio.core.paths import PICKLE_EXTENSIONS
    from lorastudio.models.loader import load_pickle_weights_only, read_tensors

    path = Path(path)
    if path.suffix.lower() not in PICKLE_EXTENSIONS:
        return read_tensors(path, allow_pickle=False)[0]
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    obj = load_pickle_weights_only(path, allow_pickle)
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    import torch

    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise ModelFileError(path, "the pickle holds no tensors")
    return tensors


SPANDREL_INSTALL = "pip install --no-deps spandrel==0.4.2 einops"


def import_spandrel(path: Path):
    """spandrel, or an error that says what to install.

    spandrel imports torchvision (for its LaMa and RestoreFormer architectures only), so it needs
    the torchvision built for the installed torch; pip would otherwise replace torch, hence --no-deps."""
    try:
        import spandrel
    except ImportError as exc:
        import torch

        missing = getattr(exc, "name", None) or str(exc)
        raise ModelFileError(path, f"model upscalers need the spandrel library, which could not be imported "
                                   f"({missing} is missing). Install it with `{SPANDREL_INSTALL}`, and the "
                                   f"torchvision built for torch {torch.__version__} (spandrel imports it)") from None
    return spandrel


def load_upscaler(path: Path, *, allow_pickle: bool, device: str = "cpu"):
    """spandrel's ImageModelDescriptor (`.model`, `.scale`) for a file; its errors name the file."""
    sd = read_state_dict(path, allow_pickle=allow_pickle)
    spandrel = import_spandrel(path)

    try:
        desc = spandrel.ModelLoader(device=device).load_from_state_dict(sd)
    except Exception as exc:  # spandrel raises UnsupportedModelError and plain errors for damaged files
        raise ModelFileError(path, f"not an upscaling model spandrel knows: {exc}") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.scale < 1:
        raise ModelFileError(path, f"a {type(desc).__name__} ({desc.architecture.name}), not an upscaler")
    return desc.eval()


def upscale_tiled(net: Callable, image, scale: int, *, tile: int = 192, overlap: int = 16):
    """Upscale a PIL RGB picture by the network's fixed `scale` in tiles (tile <= 0: in one go)."""
    import torch
    from PIL import Image

    rgb = np.array(image.convert("RGB"))  # a writable copy: torch refuses to share read-only memory
    h, w = rgb.shape[:2]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255)
    out = np.empty((h * scale, w * scale, 3), np.uint8)
    step = tile if tile > 0 else max(h, w)
    param = next(iter(getattr(net, "parameters", lambda: iter(()))()), None)
    dev, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        for top in range(0, h, step):
            for left in range(0, w, step):
                bottom, right = min(top + step, h), min(left + step, w)
                t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
                t1, l1 = min(bottom + overlap, h), min(right + overlap, w)
                y = net(x[:, :, t0:t1, l0:l1].to(dev, dtype)).float().clamp_(0, 1)
                core = y[0, :, (top - t0) * scale:(bottom - t0) * scale, (left - l0) * scale:(right - l0) * scale]
                out[top * scale:bottom * scale, left * scale:right * scale] = (
                    core.mul(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    return Image.fromarray(out)


def model_do_upscale(desc, *, tile: int = 192, overlap: int = 16):
    """A1111's `Upscaler.do_upscale` for a loaded model: one pass at the model's own scale (the
    asked scale is reached by the caller, which repeats passes and resizes, as A1111 does)."""

    def do_upscale(image, scale: float):
        return upscale_tiled(desc.model, image, desc.scale, tile=tile, overlap=overlap)

    return do_upscale
