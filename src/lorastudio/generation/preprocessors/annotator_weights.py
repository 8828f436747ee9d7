"""Where a preprocessor's detector weights are, and reading them under the project's pickle rule.

The folders are those the A1111 / Forge extension and controlnet_aux fill: `models/ControlNetPreprocessor`
(Forge), its `lllyasviel/Annotators` folder (the hub layout), and, for some detectors, a per-detector
sub-folder (the extension's `annotator/downloads/<detector>`). The annotator files are mostly `.pth`
pickles: a pickle is read only when the user allows pickles (the studio's `allow_pickle`, passed down
here, never a global), and then only with torch.load(weights_only=True). A `.safetensors` file of the
same stem beside it is preferred and needs no permission. Nothing is ever downloaded.

Every detector runs its network on `AnnotatorFiles.device` (the device the studio generates on, passed
down, never a global), in float32: the maps stay the extension's. An `AnnotatorCache` (owned by the
generation engine) keeps the tensors of the last file read, so a second map with the same detector does
not read its file again (the MiDaS file is 490 MB).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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


class AnnotatorCache:
    """The tensors of the last detector file read: one entry, keyed by (path, mtime_ns, size, entry), so a
    file changed on disk is read again. Owned by whoever runs detectors repeatedly (the generation engine);
    the tensors it holds are never handed out themselves (AnnotatorFiles.read gives copies), so no network
    built from them can alter or move them."""

    def __init__(self):
        self._lock = threading.Lock()  # the API's /controlnet/detect and a generation may read at once
        self._key: tuple | None = None
        self._tensors: dict | None = None

    def tensors(self, path: Path, entry: str | None, read: Callable[[], dict]) -> dict:
        """The tensors of `path` (`entry`), from `read()` unless they are those of the last file read."""
        try:
            stat = path.stat()
        except OSError:
            return read()  # which names the file it cannot read
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, entry)
        with self._lock:  # held while reading: a second caller of the same file waits, it does not read it too
            if key != self._key:
                self._key = self._tensors = None  # the previous file's tensors go before the next is read
                self._tensors = read()
                self._key = key
            return self._tensors


@dataclass(frozen=True)
class AnnotatorFiles:
    """What a detector needs to find and read its weights: the models folder and the pickle permission;
    where its network runs (`device`); the engine's cache of the last file read, or None (read every time)."""

    models_root: Path | None = None
    allow_pickle: bool = False
    device: Any = "cpu"  # a torch device or its name
    cache: AnnotatorCache | None = None

    @property
    def folder(self) -> Path:
        """The folder a missing file is asked for in."""
        return annotator_dirs(self.models_root)[0]

    def find(self, filename: str) -> Path | None:
        return find_annotator_file(self.models_root, filename)

    def find_first(self, names: tuple[str, ...], subfolders: tuple[str, ...] = ()) -> Path | None:
        """The first of `names` (files or folders) present, in the order given, in the preprocessor folder,
        its `subfolders`, then the Annotators layout."""
        if self.models_root is None:
            return None
        top, annotators = annotator_dirs(self.models_root)
        places = [top, *(top / s for s in subfolders), annotators]
        for name in names:
            for place in places:
                if (place / name).exists():
                    return place / name
        return None

    def read(self, path: Path, entry: str | None = None) -> dict:
        """name -> tensor of one detector file; a pickle's `.safetensors` twin is read instead when present.

        `entry`: a pickle that is a checkpoint dict keeps the network's tensors under that key (res101.pth:
        'depth_model'); its `.safetensors` twin holds them flat."""
        from lorastudio.core.errors import ModelFileError
        from lorastudio.core.paths import PICKLE_EXTENSIONS
        from lorastudio.models.loader import read_tensors

        path = Path(path)
        pickled = False
        if path.suffix.lower() in PICKLE_EXTENSIONS:
            twin = path.with_suffix(".safetensors")
            if twin.is_file():
                path = twin
            elif not path.is_file():
                raise ModelFileError(path, "file not found")
            else:
                pickled = True
                self._check_pickle_allowed(path)  # before the cache: a copy read with permission needs it too

        def read() -> dict:
            tensors = self._pickled(path, entry) if pickled else read_tensors(path, allow_pickle=False)[0]
            # copies in memory of their own: a .safetensors file's tensors lie at the file's offsets, which
            # need not be 64-byte aligned, and CPU convolutions round differently (last bit) on unaligned
            # weights; fresh copies give the same map read or cached, and the cache holds memory of its own
            return {k: v.clone() for k, v in tensors.items()}

        if self.cache is None:
            return read()
        # copies, on the detector's device: a network built with assign=True takes the tensors it is given,
        # and the cached ones must stay as read
        return {k: v.to(self.device, copy=True) for k, v in self.cache.tensors(path, entry, read).items()}

    def place(self, net):
        """`net` in float32 on this detector's device, in eval mode."""
        return net.float().to(self.device).eval()

    def state_dict(self, filename: str, entry: str | None = None) -> dict:
        """The tensors of `filename` found in the preprocessor folders (`entry`: as for `read`)."""
        from lorastudio.core.errors import ModelFileError

        path = self.find(filename)
        if path is None:
            raise ModelFileError(self.folder / filename, "file not found")
        # files saved from a DataParallel model (netG.pth among them) prefix every key with "module."
        return {k.removeprefix("module."): v for k, v in self.read(path, entry).items()}

    def _check_pickle_allowed(self, path: Path) -> None:
        from lorastudio.core.errors import PickleRefused
        from lorastudio.models.loader import PICKLE_HELP

        if not self.allow_pickle:
            twin = path.with_suffix(".safetensors").name
            raise PickleRefused(path, f"{PICKLE_HELP} A copy saved as {twin} beside it is read without permission.")

    def _pickled(self, path: Path, entry: str | None = None) -> dict:
        import torch

        from lorastudio.core.errors import ModelFileError
        from lorastudio.models.loader import load_pickle_weights_only

        self._check_pickle_allowed(path)
        obj = load_pickle_weights_only(path, True)
        if entry is not None and isinstance(obj, dict) and isinstance(obj.get(entry), dict):
            obj = obj[entry]
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelFileError(path, "the pickle does not hold a dict of tensors")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    def network(self, filename: str, net_class, entry: str | None = None):
        """A `net_class()` holding the file's weights (`entry`: as for `read`), loaded strictly (every key and
        shape), float32, eval mode, on this detector's device.

        Built on the meta device and given the file's tensors, so no time goes into an initialisation
        that the weights replace (netG.pth holds 54 M parameters)."""
        import torch

        state = self.state_dict(filename, entry)
        with torch.device("meta"):
            net = net_class()
        load_state_strictly(net, state, self.find(filename), assign=True)
        return self.place(net)


def load_network(net, path: Path, files: AnnotatorFiles):
    """`net` (built by the caller: its class takes arguments) with the weights of `path`, loaded strictly
    (a file of another network is refused by name, not half-loaded), in eval mode on the detector's device."""
    net = net.to(files.device)  # first: the file's tensors are copied into it there (cached ones are there already)
    load_state_strictly(net, files.read(path), path)
    return net.eval()


def load_state_strictly(net, state: dict, path: Path, *, assign: bool = False) -> None:
    """Loads `state` into `net` with every key and shape checked; a mismatch names the file and the first
    differences (a file of another network is refused, never half-loaded)."""
    from lorastudio.core.errors import ModelFileError

    try:
        net.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelFileError(path, f"not the {type(net).__name__} weights it should hold: "
                                   f"{' '.join(first[:3])[:400]}") from None
