"""Settings of an automatic captioning run (`dataset caption`, `train --caption auto`).

Pure pydantic, no model code: `TrainingConfig` embeds it, so `config.json` records which
tagger and captioner wrote the captions and with which thresholds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lorastudio.training.dataset.config import DEFAULT_MAX_PIXELS
from lorastudio.training.dataset.taggers.wd14 import WD14Options

CaptionMode = Literal["tags", "caption", "both"]


class CaptionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    tagger: str | None = Field(None, description="WD14 tagger folder, or a name under models/interrogators/")
    captioner: str | None = Field(None, description="transformers captioner folder (BLIP), or a name under "
                                                    "models/interrogators/")
    mode: CaptionMode | None = Field(None, description="tags | caption | both [what the given models allow]")
    prefix: str | None = Field(None, description="Text put first, as written [the escaped trigger word]")
    suffix: str | None = Field(None, description="Text put last, as written")
    overwrite: bool = Field(False, description="Replace caption files that already exist")
    wd14: WD14Options = Field(default_factory=WD14Options)
    task_prompt: str | None = Field(None, description="Text the captioner continues (BLIP conditional captioning)")
    max_length: int = Field(40, ge=4, le=512, description="Most tokens the captioner writes")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=64 * 64, description="Decompression-bomb guard")

    @model_validator(mode="after")
    def _models(self) -> "CaptionOptions":
        mode = self.resolved_mode()
        if mode in ("tags", "both") and not self.tagger:
            raise ValueError(f"mode {mode!r} needs a tagger (--tagger)")
        if mode in ("caption", "both") and not self.captioner:
            raise ValueError(f"mode {mode!r} needs a captioner (--captioner)")
        return self

    def resolved_mode(self) -> CaptionMode | None:
        if self.mode is not None:
            return self.mode
        if self.tagger and self.captioner:
            return "both"
        if self.tagger:
            return "tags"
        if self.captioner:
            return "caption"
        return None
