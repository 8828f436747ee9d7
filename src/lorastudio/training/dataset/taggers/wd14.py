"""The WD14 tagger (SmilingWolf's wd-v1-4-* / wd-*-v3 family) through onnxruntime.

The model folder has the layout kohya's `tag_images_by_wd14_tagger.py` and the A1111 tagger
extension use: `model.onnx` (input `[batch, size, size, 3]`, BGR, 0-255 float, NHWC; output
`[batch, n_tags]` sigmoid probabilities) and `selected_tags.csv` (`tag_id,name,category,count`;
category 9 = rating, 4 = character, 0 = general). The preprocessing must match the one the
models were trained with, or the probabilities drift: alpha onto white, pad to a square on
white (picture centred), resize to the input size with bicubic, RGB -> BGR, float32 0..255.
That is SmilingWolf's own demo code; kohya's script pads the same way but resizes with OpenCV
(INTER_AREA down, LANCZOS4 up), so its probabilities can differ from these in the third decimal.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from lorastudio.core.errors import ModelFileError
from lorastudio.core.prompt_syntax import escape_prompt_text

CATEGORY_GENERAL = 0
CATEGORY_CHARACTER = 4
CATEGORY_RATING = 9
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
TAGS_COLUMNS = ("tag_id", "name", "category", "count")
# Kaomoji tags whose underscores are part of the face; SmilingWolf's own demo keeps them as they are.
KAOMOJIS = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
                      "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})


class WD14Options(BaseModel):
    """How probabilities become tags. Defaults are SmilingWolf's demo values."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    general_threshold: float = Field(0.35, ge=0.0, le=1.0)
    character_threshold: float = Field(0.85, ge=0.0, le=1.0)
    keep_rating: bool = Field(False, description="Keep the rating tags (general, sensitive, ...)")
    replace_underscores: bool = True
    escape_brackets: bool = Field(True, description="Write ( ) as \\( \\) so that A1111 reads them literally")
    blacklist: tuple[str, ...] = Field((), description="Tags never written (as in the CSV or with spaces)")
    whitelist: tuple[str, ...] = Field((), description="When given, only these tags are written")
    max_tags: int | None = Field(None, ge=1, le=1000, description="Most tags per picture, best first")


@dataclass(frozen=True)
class Tag:
    name: str  # as in selected_tags.csv
    category: int


@dataclass(frozen=True)
class ScoredTag:
    text: str  # as written into the caption
    name: str
    category: int
    probability: float


class WD14Tagger:
    """One loaded model; `tag(image)` gives the caption tags, `probabilities(image)` the raw output."""

    def __init__(self, folder: Path, session, tags: list[Tag], size: int, input_name: str):
        self.folder, self.session, self.tags, self.size, self.input_name = folder, session, tags, size, input_name
        self.categories = np.array([t.category for t in tags], dtype=np.int64)

    @property
    def model_path(self) -> Path:
        return _model_file(self.folder)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.size)

    def probabilities(self, image: Image.Image) -> np.ndarray:
        """The model's output for one picture: one probability per row of selected_tags.csv."""
        batch = self.preprocess(image)[None]
        return np.asarray(self.session.run(None, {self.input_name: batch})[0][0], dtype=np.float32)

    def tag(self, image: Image.Image, options: WD14Options | None = None) -> list[ScoredTag]:
        return select_tags(self.probabilities(image), self.tags, options or WD14Options(), self.categories)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """`[size, size, 3]` float32 BGR 0..255: alpha onto white, padded square on white, bicubic."""
    if image.mode in ("RGBA", "LA", "PA", "P", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, (0, 0), rgba.getchannel("A"))
        image = flat
    elif image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(square, dtype=np.float32)[:, :, ::-1])


def select_tags(probs: np.ndarray, tags: list[Tag], options: WD14Options,
                categories: np.ndarray | None = None) -> list[ScoredTag]:
    """Characters first, then general tags, each best first; thresholds, lists and max_tags applied.

    `categories` (one int per tag) may be passed precomputed; the thresholds are applied with
    numpy so that only the few tags above them are looked at one by one.
    """
    probs = np.asarray(probs, dtype=np.float32)
    cats = categories if categories is not None else np.fromiter((t.category for t in tags), np.int64, len(tags))
    threshold = np.where(cats == CATEGORY_CHARACTER, options.character_threshold, options.general_threshold)
    keep = (cats != CATEGORY_RATING) & (probs >= threshold)
    if options.keep_rating and (cats == CATEGORY_RATING).any():
        # Ratings are one choice among four: kept, only the most likely one is written.
        ratings = np.nonzero(cats == CATEGORY_RATING)[0]
        keep[ratings[int(np.argmax(probs[ratings]))]] = True
    black = {_plain(t) for t in options.blacklist}
    white = {_plain(t) for t in options.whitelist}
    picked: list[ScoredTag] = []
    for i in np.nonzero(keep)[0].tolist():
        tag = tags[i]
        if black or white:
            plain = _plain(tag.name)
            if plain in black or (white and plain not in white):
                continue
        picked.append(ScoredTag(_caption_text(tag.name, options), tag.name, tag.category, float(probs[i])))
    rank = {CATEGORY_RATING: 0, CATEGORY_CHARACTER: 1}
    picked.sort(key=lambda s: (rank.get(s.category, 2), -s.probability, s.name))
    if options.max_tags is not None:
        picked = picked[: options.max_tags]
    return picked


def _plain(name: str) -> str:
    return name.strip().replace("_", " ").lower() if name.strip() not in KAOMOJIS else name.strip()


def _caption_text(name: str, options: WD14Options) -> str:
    text = name
    if options.replace_underscores and name not in KAOMOJIS:
        text = name.replace("_", " ")
    if options.escape_brackets:
        # Only ( ) [ ] \ carry meaning in an A1111 prompt; escaping is A1111's own rule.
        text = escape_prompt_text(text)
    return text


def _model_file(folder: Path) -> Path:
    candidate = folder / MODEL_FILE
    if candidate.is_file():
        return candidate
    onnx = sorted(folder.glob("*.onnx"))
    if len(onnx) == 1:
        return onnx[0]
    if not onnx:
        raise ModelFileError(folder, f"is not a WD14 tagger folder: no {MODEL_FILE} in it")
    raise ModelFileError(folder, f"holds several .onnx files ({', '.join(p.name for p in onnx)}) and no "
                                 f"{MODEL_FILE}; keep one model per folder")


def read_tags_csv(path: Path) -> list[Tag]:
    """Rows of selected_tags.csv, in file order (the order of the model's outputs)."""
    if not path.is_file():
        raise ModelFileError(path, f"missing: a WD14 tagger folder needs {TAGS_FILE} beside its model")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in TAGS_COLUMNS[1:3] if c not in (reader.fieldnames or [])]
            if missing:
                raise ModelFileError(path, f"has columns {reader.fieldnames}; expected {', '.join(TAGS_COLUMNS)}")
            tags = []
            for line, row in enumerate(reader, start=2):
                try:
                    tags.append(Tag(name=row["name"], category=int(row["category"])))
                except (TypeError, ValueError):
                    raise ModelFileError(path, f"line {line}: category {row.get('category')!r} is not a "
                                               "number") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ModelFileError(path, f"cannot be read as a CSV file ({exc})") from None
    if not tags:
        raise ModelFileError(path, "lists no tags")
    return tags


def load_wd14(folder: str | Path, *, threads: int | None = None) -> WD14Tagger:
    """Open a WD14 tagger folder; raises ModelFileError naming the file for every problem."""
    import onnxruntime as ort

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(folder, "no such tagger folder")
    model = _model_file(folder)
    tags = read_tags_csv(folder / TAGS_FILE)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(model), sess_options=opts, providers=_providers(ort))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
        raise ModelFileError(model, f"cannot be loaded by onnxruntime ({str(exc).strip()[:300]})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(inputs[0].shape) if inputs else []
    if len(inputs) != 1 or len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
        raise ModelFileError(model, f"takes input {shape}, not a WD14 tagger's [batch, size, size, 3] "
                                    "(a model for another task?)")
    out_shape = list(outputs[0].shape)
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != len(tags)):
        raise ModelFileError(model, f"gives output {out_shape}, but {TAGS_FILE} lists {len(tags)} tags; "
                                    "the CSV belongs to another model")
    return WD14Tagger(folder, session, tags, int(shape[1]), inputs[0].name)


def _providers(ort) -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
