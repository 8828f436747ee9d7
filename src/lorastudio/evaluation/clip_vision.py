"""A CLIP vision encoder from `models/clip_vision/` (where ComfyUI keeps them) as an ImageScorer.

A model is a transformers folder (config.json + weights + preprocessor_config.json), loaded
offline with `local_files_only`; the first such folder in name order is used. Single-file
ComfyUI checkpoints (`clip_vision/*.safetensors` without a config) are not read: without the
config their architecture is a guess.
"""

from __future__ import annotations

from pathlib import Path

from lorastudio.evaluation.report import ImageScorer


def find_clip_vision(models_dir: Path) -> Path | None:
    folder = Path(models_dir) / "clip_vision"
    if not folder.is_dir():
        return None
    for sub in sorted(folder.iterdir()):
        if (sub / "config.json").is_file():
            return sub
    return None


def clip_scorer(folder: Path, device: str = "cpu") -> ImageScorer:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True).to(device).eval()
    processor = CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)

    def embed(images) -> "torch.Tensor":
        rgb = [_on_white(im) for im in images]
        with torch.no_grad():
            pixels = processor(images=rgb, return_tensors="pt")["pixel_values"].to(device)
            emb = model(pixel_values=pixels).image_embeds.float()
        return torch.nn.functional.normalize(emb, dim=-1)

    def best_match(gens, refs):
        sims = embed(gens) @ embed(refs).T
        return [float(v) for v in sims.max(dim=1).values]

    def pairwise(a, b):
        return [float(v) for v in (embed(a) * embed(b)).sum(dim=-1)]

    return ImageScorer("clip", f"cosine similarity of CLIP vision embeddings ({folder.name}, "
                       "CLIPVisionModelWithProjection.image_embeds); best match among the training pictures, "
                       "mean over images", best_match, pairwise)


def _on_white(img):
    from PIL import Image

    # The training stickers are transparent; the generated images are opaque on white.
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")
