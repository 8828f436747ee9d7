"""Subject masks for masked-loss training: `<image>.mask.png` beside each picture.

A mask is 8-bit grey, the picture's size: white = subject (the loss counts), black = background
(the loss ignores it). Pictures with transparency already carry their mask in the alpha
channel, which is used as it is. Others go through a local background-removal model of the
rembg family (u2net.onnx, u2netp.onnx, u2net_human_seg.onnx, isnet-anime.onnx,
isnet-general-use.onnx) run with onnxruntime directly, with rembg's pre- and post-processing:
resize to the model's input (Lanczos), divide by the picture's maximum, normalise per channel,
NCHW; first output min-max scaled to 0..1, resized back (Lanczos).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lorastudio.core.atomic import atomic_path
from lorastudio.core.errors import ModelFileError

MASK_SUFFIX = ".mask.png"
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# rembg normalises the isnet models with mean 0.5 and std 1.0 instead of ImageNet's statistics.
_ISNET = ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))


def mask_path_for(image: str | Path) -> Path:
    image = Path(image)
    return image.with_name(image.stem + MASK_SUFFIX)


def is_mask_file(name: str) -> bool:
    return name.lower().endswith(MASK_SUFFIX)


@dataclass
class SegmentationModel:
    path: Path
    session: object
    input_name: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preprocess(self, image: Image.Image) -> np.ndarray:
        im = image.convert("RGB").resize((self.size, self.size), Image.Resampling.LANCZOS)
        arr = np.asarray(im, dtype=np.float32)
        arr = arr / max(float(arr.max()), 1e-6)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])

    def predict(self, image: Image.Image) -> Image.Image:
        """The mask (mode L, the picture's size) for an RGB picture."""
        pred = np.asarray(self.session.run(None, {self.input_name: self.preprocess(image)})[0], np.float32)[0, 0]
        lo, hi = float(pred.min()), float(pred.max())
        pred = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
        small = Image.fromarray((pred * 255).astype(np.uint8), "L")
        return small.resize(image.size, Image.Resampling.LANCZOS)


def resolve_segmentation_model(name_or_path: str, models_dir: str | Path, u2net_home: str | Path | None = None) -> Path:
    """A .onnx path as given, or a bare name looked up in models/rembg/ and rembg's own folder
    ($U2NET_HOME, default ~/.u2net), where rembg users already keep these files."""
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given
    if len(given.parts) == 1:
        from lorastudio.core.paths import ModelsRoot

        homes = [ModelsRoot.at(models_dir).root / "rembg",
                 Path(u2net_home or Path.home() / ".u2net").expanduser()]  # rembg's folder ($U2NET_HOME, read by the CLI)
        names = [name_or_path] if name_or_path.endswith(".onnx") else [name_or_path + ".onnx", name_or_path]
        for home in homes:
            for n in names:
                if (home / n).is_file():
                    return home / n
        raise ModelFileError(given, "--model: no such file here, in " + " or ".join(str(h) for h in homes)
                                    + " (nothing is downloaded; copy u2net.onnx / isnet-anime.onnx there)")
    raise ModelFileError(given, "--model: no such file")


def load_segmentation_model(path: str | Path) -> SegmentationModel:
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "no such model file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are untyped
        raise ModelFileError(path, f"cannot be loaded by onnxruntime ({str(exc).strip()[:300]})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(inputs[0].shape) if inputs else []
    ok = (len(inputs) == 1 and len(shape) == 4 and shape[1] == 3 and isinstance(shape[2], int)
          and shape[2] == shape[3])
    out = list(outputs[0].shape) if outputs else []
    if not ok or len(out) != 4 or out[1] != 1:
        raise ModelFileError(path, f"takes {shape} and gives {out}, not a u2net-style segmentation model's "
                                   "[1, 3, size, size] -> [1, 1, size, size]")
    stats = _ISNET if path.name.lower().startswith("isnet") else _IMAGENET
    return SegmentationModel(path, session, inputs[0].name, int(shape[2]), *stats)


@dataclass(frozen=True)
class MaskResult:
    image: Path
    mask: Path
    source: str  # "alpha" | "model" | "kept" (a mask file was there and overwrite is off)


def make_mask(image_path: Path, model: SegmentationModel | None, *, overwrite: bool = False,
              max_pixels: int | None = None) -> MaskResult:
    """Write `<image>.mask.png` from the picture's alpha, else from the model."""
    from lorastudio.training.dataset.images import DEFAULT_MAX_PIXELS, load_training_image

    target = mask_path_for(image_path)
    if target.exists() and not overwrite:
        return MaskResult(image_path, target, "kept")
    prepared = load_training_image(image_path, (255, 255, 255), min_size=0,
                                   max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    if prepared.mask is not None:
        mask, source = prepared.mask, "alpha"
    elif model is not None:
        mask, source = model.predict(prepared.rgb), "model"
    else:
        raise ModelFileError(image_path, "has no transparency, and no segmentation model was given (--model)")
    with atomic_path(target) as tmp:
        mask.save(tmp, format="PNG")
    return MaskResult(image_path, target, source)


def read_mask(path: Path, size: tuple[int, int]) -> Image.Image:
    """A mask file as mode L at `size` (width, height); a mask of another size is resized."""
    with Image.open(path) as im:
        im.load()
        mask = im.convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    return mask
