"""The A1111 models-root layout, so users can point at the folders they already have."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelsRoot:
    """`root` is the `models` folder of an A1111 / Forge install (or our own)."""

    root: Path

    @classmethod
    def at(cls, path: str | Path) -> "ModelsRoot":
        p = Path(path).expanduser().resolve()
        # Accept the webui folder itself as well as its `models` folder.
        if not (p / "Stable-diffusion").is_dir() and (p / "models" / "Stable-diffusion").is_dir():
            p = p / "models"
        return cls(p)

    @property
    def checkpoints(self) -> Path:
        return self.root / "Stable-diffusion"

    @property
    def lora(self) -> Path:
        return self.root / "Lora"

    @property
    def vae(self) -> Path:
        return self.root / "VAE"

    @property
    def text_encoders(self) -> Path:
        # Forge keeps FLUX's clip_l / t5xxl here.
        return self.root / "text_encoder"

    @property
    def embeddings(self) -> list[Path]:
        # A1111 keeps embeddings beside `models`, Forge and we keep them inside.
        return [self.root / "embeddings", self.root.parent / "embeddings"]

    @property
    def hash_cache(self) -> Path:
        return self.root / ".lorastudio-hashes.json"

    def ensure(self) -> "ModelsRoot":
        for d in (self.checkpoints, self.lora, self.vae, self.root / "embeddings"):
            d.mkdir(parents=True, exist_ok=True)
        return self
