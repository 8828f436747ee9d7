"""An estimate of the memory a LoRA training needs, from the settings and the base's tensor shapes
alone (no weights loaded): frozen weights + LoRA weights, gradients and optimizer states +
activations. Pure arithmetic, so the page can show it before anything runs.

It is an estimate, not a measurement: allocator overhead, CUDA context and framework caches come
on top, and the activation term is a rule of thumb (below).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

# Bytes of state per trainable parameter that each optimizer keeps (its own storage, in float32
# unless said): AdamW two moments; 8-bit AdamW the same two in one byte each (bitsandbytes, block
# statistics neglected); Lion one momentum; Prodigy AdamW's two plus its initial copy and the
# distance estimate's accumulator; Adafactor factored second moments (about one value per row and
# column, far below one per parameter, counted as a tenth).
OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "adamw8bit": 2.0, "lion": 4.0, "prodigy": 16.0, "adafactor": 0.4}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Rule of thumb for the activations kept for the backward pass: at the model's native size and
# batch 1, about as many bytes as its weights in the compute precision (SD 1.5 at 512 px: ~2 GB of
# activations for ~2 GB of fp16 weights, as kohya users report). They grow with the pixels per
# step; gradient checkpointing keeps roughly a quarter of them.
ACTIVATIONS_PER_WEIGHT_BYTE = 1.0
CHECKPOINTING_KEEPS = 0.25


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int  # the frozen base (every component: training loads them all)
    lora_bytes: int  # LoRA weights + their gradients, float32
    optimizer_bytes: int
    activations_bytes: int
    total_bytes: int
    lora_params: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def lora_parameter_count(shapes: Mapping[str, tuple[int, ...]], rank: int) -> int:
    """rank × (in + out) for every 2-D attention projection weight of the checkpoint: the layers a
    LoRA wraps in every family (to_q/k/v/out, qkv and proj); feed-forward layers are left out."""
    total = 0
    for key, shape in shapes.items():
        if len(shape) == 2 and key.endswith(".weight") and "attn" in key and "norm" not in key:
            total += rank * (shape[0] + shape[1])
    return total


def parameter_count(shapes: Iterable[tuple[int, ...]]) -> int:
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


def estimate_memory(*, params: int, lora_params: int, dtype: str, optimizer: str, batch_size: int,
                    resolution: int, native_size: int, gradient_checkpointing: bool) -> MemoryEstimate:
    """Bytes a run needs. `params`: every tensor of the base; `dtype`: the compute precision the
    weights are loaded in; `resolution` / `native_size`: the training side and the model's own."""
    if params < 0 or lora_params < 0 or batch_size < 1 or resolution < 1 or native_size < 1:
        raise ValueError("params, lora_params >= 0; batch_size, resolution, native_size >= 1")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(DTYPE_BYTES)}")
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"optimizer {optimizer!r}: expected one of {sorted(OPTIMIZER_STATE_BYTES)}")
    weights = params * DTYPE_BYTES[dtype]
    lora = lora_params * 4 * 2  # float32 weights and their gradients
    optimizer_bytes = int(lora_params * OPTIMIZER_STATE_BYTES[optimizer])
    pixels = batch_size * (resolution / native_size) ** 2
    activations = int(weights * ACTIVATIONS_PER_WEIGHT_BYTE * pixels
                      * (CHECKPOINTING_KEEPS if gradient_checkpointing else 1.0))
    return MemoryEstimate(weights_bytes=weights, lora_bytes=lora, optimizer_bytes=optimizer_bytes,
                          activations_bytes=activations, total_bytes=weights + lora + optimizer_bytes + activations,
                          lora_params=lora_params)
