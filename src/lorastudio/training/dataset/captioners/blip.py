"""Natural-language captions through transformers: BLIP, BLIP-2 and Florence-2 from a local folder.

The folder is a `save_pretrained` layout (config.json, weights, processor and tokenizer files),
as Hugging Face hub snapshots of Salesforce/blip-image-captioning-* or microsoft/Florence-2-*
have it. It is read with `local_files_only`, never downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorastudio.core.errors import ModelFileError

SUPPORTED_TYPES = {"blip": None, "blip-2": None, "florence2": "<CAPTION>"}  # type -> default task prompt
# Florence-2 tasks whose answer is plain text; the others answer with boxes or polygons.
FLORENCE_CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")


class TransformersCaptioner:
    def __init__(self, folder: Path, model, processor, *, model_type: str, task_prompt: str | None,
                 max_length: int, device: str = "cpu"):
        self.folder, self.model, self.processor, self.device = folder, model, processor, device
        self.model_type, self.max_length = model_type, max_length
        self.task_prompt = task_prompt if task_prompt is not None else SUPPORTED_TYPES[model_type]

    def caption(self, image) -> str:
        import torch

        image = image.convert("RGB")
        kwargs = {"images": image, "return_tensors": "pt"}
        if self.task_prompt:
            kwargs["text"] = self.task_prompt
        inputs = self.processor(**kwargs).to(self.device)
        with torch.inference_mode():
            # Greedy decoding: the same picture always gets the same caption.
            out = self.model.generate(**inputs, max_new_tokens=self.max_length, do_sample=False, num_beams=1)
        # For the plain-text tasks, Florence-2's post-processing is exactly this: drop <s> </s>.
        return self.processor.batch_decode(out, skip_special_tokens=True)[0].strip()


def load_captioner(folder: str | Path, *, task_prompt: str | None = None, max_length: int = 40,
                   device: str = "auto") -> TransformersCaptioner:
    """Open a captioner folder; ModelFileError naming the file for a missing or foreign model."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFileError(folder, "is not a transformers captioner folder: no config.json in it")
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelFileError(config_path, f"cannot be read as JSON ({exc})") from None
    if model_type not in SUPPORTED_TYPES:
        raise ModelFileError(config_path, f"model_type {model_type!r} is not a captioner lorastudio knows "
                                          f"({', '.join(SUPPORTED_TYPES)})")
    if model_type == "florence2" and task_prompt is not None and task_prompt not in FLORENCE_CAPTION_TASKS:
        raise ModelFileError(folder, f"Florence-2 task {task_prompt!r} does not answer with a caption; use one of "
                                     f"{', '.join(FLORENCE_CAPTION_TASKS)}")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFileError(folder, f"cannot be loaded as a {model_type} captioner ({str(exc)[:300]})") from None
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    return TransformersCaptioner(folder, model, processor, model_type=model_type, task_prompt=task_prompt,
                                 max_length=max_length, device=device)
