"""The fast generation mode: the picture of the exact mode within a small tolerance, sooner.

The exact mode is never touched: every lever works on a second copy of the denoiser (in the
device's fast precision, channels_last, QKV fused, optionally compiled), swapped into the
pipeline for the denoising call only and swapped back after it. So a fast request followed by an
exact one gives the exact one's pixels, bit for bit, and nothing has to be undone.

Levers, and where each is used (bench/generate.py measures each on the machine it runs on):

- lower precision: bf16 on CUDA devices that do bf16, else fp16; bf16 on CPUs with AVX512-BF16
  or AMX (oneDNN runs bf16 matmuls and convolutions natively there; elsewhere bf16 is emulated
  and slower than float32). The weights of the copy are cast once, not on every call as
  `torch.autocast` does; the denoiser's inputs are cast on the way in and its output back to the
  model's precision on the way out, so the sampler's arithmetic on the latents stays in float32.
- channels_last: oneDNN and cuDNN pick their fastest convolutions for NHWC tensors.
- fused QKV projections (diffusers `fuse_qkv_projections`): one matmul instead of three (and K, V
  of the cross-attention in one). Not used while an unfused LoRA adapter is active on the copy
  (the fused projection would bypass it); merged (fused-mode) LoRAs are in the weights it concatenates.
- regional torch.compile of the repeated blocks (diffusers `compile_repeated_blocks`): pays back
  only after many calls, and compiling on a CPU takes minutes; used where `FastLevers.compile`
  says (StudioSettings.fast_compile: "auto" compiles on CUDA only), its time reported.
- SDPA: diffusers' default attention processor on torch 2 in both modes already.
- a text-embedding cache across requests (model, prompt pair, clip skip, LoRA text-encoder
  weights, embeddings), bounded, least recently used out.
- VAE tiling above VAE_TILING_FROM_PIXELS pixels: the decoder's activations grow with the area.

The copy is rebuilt when the LoRA set changes (LoRAs are merged into, or attached to, the
original's weights first), and dropped with the model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from lorastudio.models.devices import cpu_does_bf16_fast

log = logging.getLogger(__name__)

# Above this many pixels per image the VAE decodes in tiles (diffusers' blending): a 2048² decode
# holds several GB of activations otherwise. Below it tiling changes nothing but adds seams.
VAE_TILING_FROM_PIXELS = 1024 * 1024
# Prompt pairs whose encodings are kept; one SD 1.x pair is 2 x 77 x 768 floats (~0.5 MB).
EMBEDDING_CACHE_ENTRIES = 32


@dataclass(frozen=True)
class FastLevers:
    """What the fast mode does on one device."""

    dtype: torch.dtype | None  # None: the model's own precision
    channels_last: bool = True
    fuse_qkv: bool = True
    compile: bool = False
    vae_tiling_from_pixels: int = VAE_TILING_FROM_PIXELS

    def describe(self) -> dict[str, Any]:
        return {"dtype": str(self.dtype).replace("torch.", "") if self.dtype else "model", "channels_last":
                self.channels_last, "fuse_qkv": self.fuse_qkv, "compile": self.compile,
                "vae_tiling_from_pixels": self.vae_tiling_from_pixels}


def levers_for(device: str, compile_setting: str = "auto") -> FastLevers:
    """The levers that pay on `device` (measured by bench/generate.py; see the module docstring)."""
    kind = torch.device(device).type
    if kind == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return FastLevers(dtype=dtype, compile=compile_setting != "off")
    if kind == "cpu":
        # Measured on a 2-core AVX512-BF16 CPU, full-size SD 1.5 UNet at 256 px (CPU seconds per
        # CFG call, bench/generate.py --fast-full-size): float32 12.8, bf16 copy 9.4, + channels_last
        # 8.3, + fused QKV 7.5. Compiling costs minutes that a few images do not earn back: only when asked.
        return FastLevers(dtype=torch.bfloat16 if cpu_does_bf16_fast() else None,
                          compile=compile_setting == "on")
    return FastLevers(dtype=None, channels_last=False, fuse_qkv=False, compile=compile_setting == "on")


class EmbeddingCache:
    """Encoded prompt pairs across requests, least recently used out past `max_entries`."""

    def __init__(self, max_entries: int = EMBEDDING_CACHE_ENTRIES):
        self.max_entries = max_entries
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_encode(self, key: tuple, encode):
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = encode()
        self._items[key] = value
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


# Inputs that stay as given: timesteps and positions lose integers in bf16 (999 becomes 1000), and
# the denoisers cast them to their embeddings' precision themselves.
_KEEP = frozenset({"timestep", "timesteps", "img_ids", "txt_ids", "guidance"})


def _cast_floats(value, dtype, memory_format=None):
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            return value
        value = value.to(dtype)
        if memory_format is not None and value.ndim == 4:
            value = value.contiguous(memory_format=memory_format)
        return value
    if hasattr(value, "to_tuple"):  # diffusers' output dataclasses (dicts too: checked first)
        for k in list(value.keys()):
            value[k] = _cast_floats(value[k], dtype, memory_format)
        return value
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype, memory_format) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_cast_floats(v, dtype, memory_format) for v in value)
    return value


def _has_live_adapter(module: torch.nn.Module) -> bool:
    """An unmerged, enabled peft adapter: its update runs beside the base weights."""
    return any(getattr(m, "lora_A", None) and not getattr(m, "merged", False)
               and not getattr(m, "disable_adapters", False) for m in module.modules())


@dataclass
class FastCopy:
    module: torch.nn.Module
    key: tuple
    build_s: float
    fused_qkv: bool
    compiled: bool
    compile_s: float | None = None  # the first call's extra time, once measured


@dataclass
class FastMode:
    """The fast mode's state for one loaded model (a new model gets a new one)."""

    levers: FastLevers
    embeddings: EmbeddingCache = field(default_factory=EmbeddingCache)
    copy: FastCopy | None = None
    calls: int = 0

    def encode_key(self, model, loras, extra: dict, clip_skip: int, cfg_scale: float, guidance: float) -> tuple:
        """What a prompt pair's encoding depends on besides its text."""
        te = tuple((lo.name, lo.short_hash, lo.te_weight) for lo in loras)
        return (model.sha256 or str(model.path), te, extra.get("TI hashes"), clip_skip, cfg_scale, guidance)

    def encode_cache(self, model, loras, extra: dict, params):
        """scheduled_conditioning's `cache`: (prompt, negative, encode) -> the kept or new encoding."""
        key = self.encode_key(model, loras, extra, params.clip_skip, params.cfg_scale, params.guidance)

        def cache(prompt: str, negative: str, encode):
            return self.embeddings.get_or_encode((*key, prompt, negative), encode)
        return cache

    def denoiser_copy(self, family, pipe, loras) -> FastCopy:
        original = family.denoiser(pipe)
        key = (id(original), tuple((lo.name, lo.short_hash, lo.te_weight, lo.unet_weight) for lo in loras),
               _has_live_adapter(original))  # merged into the weights, or beside them
        if self.copy is not None and self.copy.key == key:
            return self.copy
        self.copy = None  # free the old one first
        t = time.perf_counter()
        module = _cast_copy(original, self.levers.dtype)
        if self.levers.channels_last:
            module.to(memory_format=torch.channels_last)
        fused = False
        if self.levers.fuse_qkv and hasattr(module, "fuse_qkv_projections") and not _has_live_adapter(module):
            module.fuse_qkv_projections()
            fused = True
        compiled = False
        if self.levers.compile and getattr(module, "_repeated_blocks", None):
            module.compile_repeated_blocks()
            compiled = True
        _cast_io(module, original_dtype=original.dtype, dtype=self.levers.dtype,
                 memory_format=torch.channels_last if self.levers.channels_last else None)
        self.copy = FastCopy(module, key, time.perf_counter() - t, fused, compiled)
        return self.copy

    @contextlib.contextmanager
    def denoising(self, family, pipes: list, loras, pixels: int):
        """Inside: each of `pipes` denoises with the fast copy (and tiles its VAE past the threshold)."""
        fast = self.denoiser_copy(family, pipes[0], loras)
        name = family.denoiser_name
        saved = [(p, getattr(p, name)) for p in pipes]
        tiled = [p.vae for p in pipes if pixels > self.levers.vae_tiling_from_pixels
                 and hasattr(getattr(p, "vae", None), "enable_tiling") and not getattr(p.vae, "use_tiling", False)]
        t = time.perf_counter()
        try:
            for p, _ in saved:
                _set_module(p, name, fast.module)
            for vae in tiled:
                vae.enable_tiling()
            yield fast
        finally:
            for p, original in saved:
                _set_module(p, name, original)
            for vae in tiled:
                vae.disable_tiling()
        self.calls += 1
        if fast.compiled and fast.compile_s is None:
            fast.compile_s = time.perf_counter() - t
            log.info("fast mode: compiled the repeated blocks during the first call (%.1f s with that call)",
                     fast.compile_s)


def _set_module(pipe, name: str, module) -> None:
    # Plain attribute assignment: DiffusionPipeline.__setattr__ would also rewrite its config entry.
    object.__setattr__(pipe, name, module)


def _cast_copy(module: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """A deep copy whose floating parameters and buffers are made in `dtype` directly (no full
    float32 copy on the way)."""
    memo: dict[int, Any] = {}
    if dtype is not None:
        for p in module.parameters():
            if p.is_floating_point():
                memo[id(p)] = torch.nn.Parameter(p.detach().to(dtype, copy=True), requires_grad=False)
        for b in module.buffers():
            if b.is_floating_point():
                memo[id(b)] = b.detach().to(dtype, copy=True)
    clone = copy.deepcopy(module, memo)
    clone.requires_grad_(False)
    return clone


def _cast_io(module: torch.nn.Module, *, original_dtype, dtype, memory_format) -> None:
    """Inputs into the copy's precision and layout; the output back to the model's precision."""
    if dtype is None and memory_format is None:
        return
    in_dtype = dtype or original_dtype

    def pre(_mod, args, kwargs):
        args = tuple(a if i == 1 else _cast_floats(a, in_dtype, memory_format) for i, a in enumerate(args))
        kwargs = {k: v if k in _KEEP else _cast_floats(v, in_dtype, memory_format) for k, v in kwargs.items()}
        return args, kwargs

    def post(_mod, _args, _kwargs, output):
        return _cast_floats(output, original_dtype, torch.contiguous_format)

    module.register_forward_pre_hook(pre, with_kwargs=True)
    module.register_forward_hook(post, with_kwargs=True)
