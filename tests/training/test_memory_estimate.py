"""The training memory estimate: pure arithmetic, checked against sums done by hand."""

from __future__ import annotations

import pytest

from lorastudio.training.memory_estimate import estimate_memory, lora_parameter_count, parameter_count


def test_lora_parameters_are_counted_on_attention_projections_only():
    shapes = {"down.attn1.to_q.weight": (8, 4),  # 2 * (8 + 4) = 24
              "down.attn1.norm.weight": (8,),  # a norm: not wrapped
              "down.attn1.to_out.0.bias": (8,),  # a bias: not wrapped
              "single.attn.qkv.weight": (24, 8),  # 2 * (24 + 8) = 64
              "ff.net.2.weight": (16, 8),  # feed-forward: left out
              "conv.weight": (4, 4, 1, 1)}
    assert lora_parameter_count(shapes, rank=2) == 24 + 64
    assert lora_parameter_count(shapes, rank=4) == 2 * (24 + 64)
    assert parameter_count(shapes.values()) == 32 + 8 + 8 + 192 + 128 + 16


def test_each_term_of_the_estimate():
    est = estimate_memory(params=1000, lora_params=100, dtype="float16", optimizer="adamw", batch_size=2,
                          resolution=1024, native_size=512, gradient_checkpointing=False)
    assert est.weights_bytes == 2000  # 2 bytes per parameter
    assert est.lora_bytes == 800  # float32 weights + gradients
    assert est.optimizer_bytes == 800  # AdamW: two float32 moments
    assert est.activations_bytes == 2000 * 2 * 4  # batch 2, four times the native pixels
    assert est.total_bytes == 2000 + 800 + 800 + 16000
    kept = estimate_memory(params=1000, lora_params=100, dtype="float32", optimizer="adamw8bit", batch_size=1,
                           resolution=512, native_size=512, gradient_checkpointing=True)
    assert (kept.weights_bytes, kept.optimizer_bytes, kept.activations_bytes) == (4000, 200, 1000)
    with pytest.raises(ValueError, match="optimizer"):
        estimate_memory(params=1, lora_params=1, dtype="float32", optimizer="sgd", batch_size=1, resolution=8,
                        native_size=8, gradient_checkpointing=False)
    with pytest.raises(ValueError, match="dtype"):
        estimate_memory(params=1, lora_params=1, dtype="int8", optimizer="adamw", batch_size=1, resolution=8,
                        native_size=8, gradient_checkpointing=False)
