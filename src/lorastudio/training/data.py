"""Training items -> batches of latents and captions, with on-disk caches.

Latents are cached per (image content, bucket, background, VAE) and text embeddings per
(caption, text encoders, clip skip), so a change of any of these recomputes only what it
touches. The data order of every epoch is a pure function of (seed, epoch): resuming needs
only the step counter, and two runs with one seed see the same batches.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lorastudio.core.atomic import atomic_write_bytes
from lorastudio.training.dataset.buckets import fit_to_bucket
from lorastudio.training.dataset.captions import augment_caption
from lorastudio.training.dataset.images import file_digest, load_training_image
from lorastudio.training.dataset.masks import mask_path_for, read_mask

CACHE_FORMAT = "1"


@dataclass(frozen=True)
class Item:
    image_path: Path
    caption: str
    width: int
    height: int
    repeats: int
    regularisation: bool = False


def epoch_batches(items: list[Item], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices per batch for one epoch; every batch holds one bucket size only.

    Regularisation pictures fill as many places as the training pictures (repeats counted),
    as kohya does: cycled when there are fewer, a different subset each epoch when there are
    more. Each bucket's share is fixed, so every epoch has the same number of batches.
    """
    rng = random.Random(f"{seed}:{epoch}")
    by_bucket: dict[tuple[int, int], list[int]] = defaultdict(list)
    reg_pools: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        (reg_pools if it.regularisation else by_bucket)[(it.width, it.height)].extend([i] * it.repeats)
    if reg_pools:
        n_train = sum(len(v) for v in by_bucket.values())
        n_reg = sum(len(v) for v in reg_pools.values())
        for key in sorted(reg_pools):
            pool = reg_pools[key]
            want = round(n_train * len(pool) / n_reg)
            # Which ones an epoch sees comes from the seed and the epoch only; this
            # bucket's own counter keeps the cycle going across epochs.
            order = random.Random(f"{seed}:reg:{key}").sample(pool, len(pool))
            start = epoch * want
            by_bucket[key].extend(order[(start + j) % len(order)] for j in range(want))
    batches: list[list[int]] = []
    for key in sorted(by_bucket):
        idx = by_bucket[key]
        rng.shuffle(idx)
        batches += [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    return batches


def step_caption(item: Item, seed: int, step: int, index_in_batch: int, *, dropout: float, shuffle: bool,
                 keep_tokens: int) -> str:
    rng = random.Random(f"{seed}:{step}:{index_in_batch}:caption")
    return augment_caption(item.caption, rng, dropout=dropout, shuffle=shuffle, keep_tokens=keep_tokens)


def image_tensor(item: Item, background) -> tuple[torch.Tensor, torch.Tensor | None]:
    from lorastudio.training.dataset.buckets import Bucket

    # The dataset check already accepted this file; size and bomb limits were applied there.
    prepared = load_training_image(item.image_path, background=tuple(background), min_size=0, verify=False,
                                   max_pixels=10**12)
    bucket = Bucket(item.width, item.height, max(item.width, item.height))
    rgb = fit_to_bucket(prepared.rgb, bucket)
    arr = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    mask = None
    alpha = prepared.mask
    mask_file = mask_path_for(item.image_path)
    if mask_file.is_file():
        # A subject mask written by `dataset mask` (or by hand, kohya's layout) wins over alpha.
        alpha = read_mask(mask_file, prepared.rgb.size)
    if alpha is not None:
        m = np.asarray(fit_to_bucket(alpha, bucket), dtype=np.float32) / 255.0
        mask = torch.from_numpy(m)[None]
    return pixels, mask


# Pixels per batched VAE call when latents are cached: one 1024x1024 picture, or 256 of 64x64.
VAE_BATCH_PIXELS = 1024 * 1024


class LatentCache:
    def __init__(self, folder: Path, model_id: str, background):
        self.folder = folder / "latents"
        self.model_id = model_id
        self.background = tuple(background)
        self.memory: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def key(self, item: Item) -> str:
        raw = f"{CACHE_FORMAT}|{file_digest(item.image_path)}|{item.width}x{item.height}|{self.background}|{self.model_id}"
        mask_file = mask_path_for(item.image_path)
        if mask_file.is_file():
            raw += f"|mask:{file_digest(mask_file)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def fill(self, items: list[Item], encode, on_progress=None) -> None:
        """Encode every item once (from disk when cached); `encode(pixels[B,3,H,W]) -> latents[B,C,h,w]`.

        Pictures of the same bucket size are encoded together, up to VAE_BATCH_PIXELS per call: one
        batched VAE call costs far less than as many single ones (SD 1.5's VAE, 8 pictures at 64 px
        on 2 CPU cores: 0.25-0.28x the time), and the cap keeps the activations no larger than
        those of one 1024 px picture."""
        from safetensors.torch import load_file
        from safetensors.torch import save as st_save

        done = 0
        by_size: dict[tuple[int, int], list[tuple[int, Path]]] = {}
        for i, item in enumerate(items):
            path = self.folder / f"{self.key(item)}.safetensors"
            if path.exists():
                data = load_file(str(path))
                self.memory[i] = (data["latent"], data.get("mask"))
                done += 1
                if on_progress:
                    on_progress(done, len(items))
            else:
                by_size.setdefault((item.width, item.height), []).append((i, path))
        for (w, h), pending in by_size.items():
            per_call = max(1, VAE_BATCH_PIXELS // (w * h))
            for start in range(0, len(pending), per_call):
                chunk = pending[start:start + per_call]
                loaded = [image_tensor(items[i], self.background) for i, _ in chunk]
                latents = encode(torch.stack([px for px, _ in loaded])).detach().to("cpu", torch.float32)
                for (i, path), (_, mask), latent in zip(chunk, loaded, latents):
                    latent = latent.clone(memory_format=torch.contiguous_format)  # its own storage, not a view of the batch
                    lmask = None
                    if mask is not None:
                        lmask = torch.nn.functional.interpolate(mask[None], size=latent.shape[-2:], mode="area")[0]
                        lmask = lmask.contiguous()
                    tensors = {"latent": latent} | ({"mask": lmask} if lmask is not None else {})
                    atomic_write_bytes(path, st_save(tensors))
                    self.memory[i] = (latent, lmask)
                    done += 1
                    if on_progress:
                        on_progress(done, len(items))

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        latents = torch.stack([self.memory[i][0] for i in indices])
        masks = [self.memory[i][1] for i in indices]
        if all(m is None for m in masks):
            return latents, None
        full = [m if m is not None else torch.ones_like(latents[0, :1]) for m in masks]
        return latents, torch.stack(full)


class TextCache:
    """Caption -> conditioning tensors (a dict), in memory and on disk."""

    def __init__(self, folder: Path, model_id: str):
        self.folder = folder / "text"
        self.model_id = model_id
        self.memory: dict[str, dict[str, torch.Tensor]] = {}

    def get(self, caption: str, encode) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file
        from safetensors.torch import save as st_save

        hit = self.memory.get(caption)
        if hit is not None:
            return hit
        key = hashlib.sha256(f"{CACHE_FORMAT}|{self.model_id}|{caption}".encode()).hexdigest()[:32]
        path = self.folder / f"{key}.safetensors"
        if path.exists():
            value = load_file(str(path))
        else:
            value = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encode([caption]).items()}
            value = {k: v[0] for k, v in value.items()}
            atomic_write_bytes(path, st_save(value))
        self.memory[caption] = value
        return value
