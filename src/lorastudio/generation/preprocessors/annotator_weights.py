"""Where a preprocessor's detector weights are, and reading them under the project's pickle rule.

The annotator files of lllyasviel/Annotators are `.pth` pickles. A pickle is read only when the
user allows pickles (the studio's `allow_pickle`, passed down here, never a global), and then
only with torch.load(weights_only=True). A `.safetensors` file of the same stem beside it is
preferred and needs no permission. Nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# models/<dir>: the extension's own folder, then the lllyasviel/Annotators layout inside it
ANNOTATOR_DIRS = ("ControlNetPreprocessor", "ControlNetPreprocessor/lllyasviel/Annotators")


def annotator_dirs(models_root) -> list[Path]:
    root = Path(models_root) if models_root else Path("models")
    return [root / d for d in ANNOTATOR_DIRS]


def find_annotator_file(models_root, filename: str) -> Path | None:
    """The file to read for `filename`: its `.safetensors` twin first, then the file itself."""
    if models_root is None:
        return None
    stem = Path(filename).stem
    for folder in annotator_dirs(models_root):
        for candidate in (folder / f"{stem}.safetensors", folder / filename):
            if candidate.is_file():
                return candidate
    return None


@dataclass(frozen=True)
class AnnotatorFiles:
    """What a detector needs to find and read its weights: the models folder and the pickle permission."""

    models_root: Path | None
    allow_pickle: bool = False

    def find(self, filename: str) -> Path | None:
        return find_annotator_file(self.models_root, filename)

    def state_dict(self, filename: str) -> dict:
        from lorastudio.core.errors import ModelFileError
        from lorastudio.models.loader import read_tensors

        path = self.find(filename)
        if path is None:
            raise ModelFileError(annotator_dirs(self.models_root)[0] / filename, "file not found")
        if path.suffix == ".safetensors":
            state = read_tensors(path, allow_pickle=False)[0]
        else:
            state = self._pickled(path)
        # files saved from a DataParallel model (netG.pth among them) prefix every key with "module."
        return {k.removeprefix("module."): v for k, v in state.items()}

    def _pickled(self, path: Path) -> dict:
        import torch

        from lorastudio.core.errors import ModelFileError, PickleRefused
        from lorastudio.models.loader import PICKLE_HELP, load_pickle_weights_only

        if not self.allow_pickle:
            twin = path.with_suffix(".safetensors").name
            raise PickleRefused(path, f"{PICKLE_HELP} A copy saved as {twin} beside it is read without permission.")
        obj = load_pickle_weights_only(path, True)
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelFileError(path, "the pickle does not hold a dict of tensors")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    def network(self, filename: str, net_class):
        """A `net_class()` holding the file's weights, loaded strictly (every key and shape), float32, eval mode.

        Built on the meta device and given the file's tensors, so no time goes into an initialisation
        that the weights replace (netG.pth holds 54 M parameters)."""
        import torch

        from lorastudio.core.errors import ModelFileError

        state = self.state_dict(filename)
        with torch.device("meta"):
            net = net_class()
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise ModelFileError(self.find(filename), f"not the {net_class.__name__} weights expected in "
                                                      f"{filename}: {' '.join(first[:3])[:400]}") from None
        return net.float().eval()
