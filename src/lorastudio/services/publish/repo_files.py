"""What a published repo holds, built from a version folder; the same set for an upload and
for `--to-folder`.

    <name>.safetensors                 kohya format (A1111 / Forge / ComfyUI)
    pytorch_lora_weights.safetensors   diffusers format (`pipe.load_lora_weights("OWNER/NAME")`)
    images/samples/*.png               the previews over steps, infotext kept (bytes unchanged)
    images/report.png, images/report/  the weight sweep and its pictures, infotext kept
    training_config.json               config.json with local absolute paths cut to file names
    report.json                        the LoRA report (same path cleaning)
    README.md                          the model card
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

from lorastudio.core.errors import InvalidParameter


@dataclass
class RepoFiles:
    """path in repo -> a local file (sent as is) or bytes."""

    files: dict[str, Path | bytes] = field(default_factory=dict)

    def data(self, path: str) -> bytes:
        v = self.files[path]
        return v if isinstance(v, bytes) else Path(v).read_bytes()

    def total_bytes(self) -> int:
        return sum(len(v) if isinstance(v, bytes) else Path(v).stat().st_size for v in self.files.values())


def strip_local_paths(value):
    """Absolute paths (POSIX or Windows) become their last component, recursively: the user's
    folders are nobody's business."""
    if isinstance(value, dict):
        return {k: strip_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_local_paths(v) for v in value]
    if isinstance(value, str) and value and (PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()
                                             or value.startswith("~")):
        cls: type[PurePath] = PureWindowsPath if PureWindowsPath(value).drive else PurePosixPath
        return cls(value).name
    return value


def collect(version_dir: Path) -> tuple[dict, dict | None, RepoFiles]:
    """(sanitised config, report or None, the files other than README.md)."""
    from lorastudio.services.report import read_version

    version_dir = Path(version_dir).resolve()
    config, lora = read_version(version_dir)
    diffusers = version_dir / "diffusers" / "pytorch_lora_weights.safetensors"
    if not diffusers.is_file():
        raise InvalidParameter("version_dir", str(version_dir), "no diffusers/pytorch_lora_weights.safetensors")
    out = RepoFiles()
    out.files[lora.name] = lora
    out.files["pytorch_lora_weights.safetensors"] = diffusers
    for p in sorted((version_dir / "samples").glob("*.png")):
        out.files[f"images/samples/{p.name}"] = p
    report = None
    if (version_dir / "report.json").is_file():
        report = strip_local_paths(json.loads((version_dir / "report.json").read_text(encoding="utf-8")))
        out.files["report.json"] = json.dumps(report, indent=2, ensure_ascii=False).encode()
        if (version_dir / "report.png").is_file():
            out.files["images/report.png"] = version_dir / "report.png"
        for p in sorted((version_dir / "report").glob("*.png")):
            out.files[f"images/report/{p.name}"] = p
    clean = strip_local_paths(config)
    out.files["training_config.json"] = json.dumps(clean, indent=2, ensure_ascii=False).encode()
    return clean, report, out
