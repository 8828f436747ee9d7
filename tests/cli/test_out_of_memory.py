"""An allocation failure is told in the user's terms (the README's Troubleshooting quotes it)."""

from __future__ import annotations

import pytest

from lorastudio.interfaces.cli.memory import GENERATE_HINT, TRAIN_HINT, out_of_memory_message


def test_a_real_cpu_allocation_failure_becomes_our_message():
    import torch

    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)  # what the CPU allocator raises when memory runs out
    message = out_of_memory_message(info.value, GENERATE_HINT)
    assert message.startswith("out of memory (") and "can't allocate memory" in message
    assert message.endswith("lower --width/--height or --batch-size, close other programs using the device, "
                            "or run on the CPU with --device cpu")


def test_cuda_out_of_memory_and_memory_error_are_recognised():
    import torch

    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity")
    assert out_of_memory_message(cuda, TRAIN_HINT) == (
        "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity): "
        "lower --batch-size or --resolution, or close other programs using the device")
    assert out_of_memory_message(MemoryError(), TRAIN_HINT).startswith("out of memory (the process ran out of memory)")


def test_other_errors_are_not_taken_for_memory():
    assert out_of_memory_message(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), GENERATE_HINT) is None
    assert out_of_memory_message(ValueError("out of memory"), GENERATE_HINT) is None
