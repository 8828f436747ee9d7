"""Where a preprocessor's detector weights are found, and how they are read.

The files are lllyasviel/Annotators' (mostly .pth pickles), in `models/ControlNetPreprocessor` or
its `lllyasviel/Annotators` folder (the controlnet_aux layout). A `.safetensors` file of the same
stem is preferred and needs no permission; a pickle is read only when the studio allows pickles,
and then with torch.load(weights_only=True). Nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorastudio.core.errors import ModelFileError, PickleRefused

ANNOTATOR_FOLDERS = ("ControlNetPreprocessor", "ControlNetPreprocessor/lllyasviel/Annotators")


@dataclass(frozen=True)
class AnnotatorSource:
    """Where detector weights come from and whether pickles may be read (the studio's allow_pickle)."""

    models_root: Path | None = None
    allow_pickle: bool = False

    def folder(self) -> Path:
        return Path(self.models_root) / ANNOTATOR_FOLDERS[0] if self.models_root else Path("models") / ANNOTATOR_FOLDERS[0]

    def find(self, filename: str) -> Path | None:
        """The file (its .safetensors twin first) in either folder, or None."""
        if self.models_root is None:
            return None
        folders = [Path(self.models_root) / f for f in ANNOTATOR_FOLDERS]
        twin = Path(filename).stem + ".safetensors"
        for name in (twin, filename):
            for folder in folders:
                if (folder / name).is_file():
                    return folder / name
        return None

    def read(self, path: Path) -> dict:
        """name -> tensor of a detector file."""
        import torch

        from lorastudio.models.loader import PICKLE_HELP, load_pickle_weights_only

        path = Path(path)
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if not self.allow_pickle:
            raise PickleRefused(path, f"{PICKLE_HELP} Or put {path.stem}.safetensors (the same tensors) next to it: "
                                      f"it is read without that permission.")
        obj = load_pickle_weights_only(path, True)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
        if not tensors:
            raise ModelFileError(path, "holds no tensors (expected a state dict)")
        return tensors


def load_network(net, path: Path, source: AnnotatorSource):
    """`net` with the file's weights, strictly (a file of another network is refused by name), in eval mode."""
    state = source.read(path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelFileError(path, f"not the {type(net).__name__} weights it should hold: "
                                   f"{' '.join(first[:3])[:400]}") from None
    return net.eval()
