"""Out-of-memory failures, told in the user's terms instead of a torch traceback."""

from __future__ import annotations

GENERATE_HINT = ("lower --width/--height or --batch-size, close other programs using the device, "
                 "or run on the CPU with --device cpu")
TRAIN_HINT = "lower --batch-size or --resolution, or close other programs using the device"

# What torch says when an allocation fails: CUDA / MPS (torch.OutOfMemoryError, a RuntimeError) and
# the CPU allocator ("DefaultCPUAllocator: can't allocate memory").
_SIGNS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def out_of_memory_message(exc: BaseException, hint: str) -> str | None:
    """The message to print when `exc` is an allocation failure; None for any other error."""
    if isinstance(exc, MemoryError):
        detail = "the process ran out of memory"
    elif isinstance(exc, RuntimeError) and (type(exc).__name__ == "OutOfMemoryError"
                                            or any(s in str(exc) for s in _SIGNS)):
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
    else:
        return None
    return f"out of memory ({detail[:300]}): {hint}"
