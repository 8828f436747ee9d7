"""Where a detector's weights are found, and how they are read (safetensors freely, pickles only when allowed).

The folders are those the A1111 / Forge extension and controlnet_aux fill: `models/ControlNetPreprocessor`
(Forge), its `lllyasviel/Annotators` (the hub layout), and a per-detector sub-folder (the extension's
`annotator/downloads/<detector>`). lorastudio never downloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AnnotatorFiles:
    """What a preprocessor needs to find and read its weights: passed down from the studio's settings."""

    models_root: Path | None = None
    allow_pickle: bool = False

    @property
    def folder(self) -> Path:
        return (Path(self.models_root) if self.models_root else Path("models")) / "ControlNetPreprocessor"

    def find(self, names: tuple[str, ...], subfolders: tuple[str, ...] = ()) -> Path | None:
        """The first of `names` (files or folders) present in the preprocessor folders, in the order given."""
        places = [self.folder, *(self.folder / s for s in subfolders), self.folder / "lllyasviel" / "Annotators"]
        for name in names:
            for place in places:
                if (place / name).exists():
                    return place / name
        return None


def safetensors_twin(path: Path) -> Path | None:
    twin = path.with_suffix(".safetensors")
    return twin if twin != path and twin.is_file() else None


def read_annotator_weights(path: Path, *, allow_pickle: bool) -> dict:
    """The tensors of a detector file. A `.safetensors` file of the same stem is read instead when present
    (no permission needed); a pickle is refused unless allowed, then read with weights_only=True only."""
    import torch

    from lorastudio.core.errors import ModelFileError
    from lorastudio.core.paths import PICKLE_EXTENSIONS
    from lorastudio.models.loader import load_pickle_weights_only, read_tensors

    path = Path(path)
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        twin = safetensors_twin(path)
        if twin is None:
            if not path.is_file():
                raise ModelFileError(path, "file not found")
            obj = load_pickle_weights_only(path, allow_pickle)
            if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
                obj = obj["state_dict"]
            if not isinstance(obj, dict):
                raise ModelFileError(path, "the pickle does not hold a dict of tensors")
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        path = twin
    return read_tensors(path, allow_pickle=False)[0]
