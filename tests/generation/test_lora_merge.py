"""The in-place LoRA merge (lora/merge.py) against peft's own merge on the same layers."""

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from lorastudio.lora.merge import merge_adapters, merge_one


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(24, 40)
        self.pw = torch.nn.Conv2d(16, 12, 1)
        self.conv = torch.nn.Conv2d(12, 8, 3, padding=1)


def block_with_lora(seed: int, *, dtype=torch.float32, **config):
    torch.manual_seed(seed)
    block = Block()
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["lin", "pw", "conv"], init_lora_weights="gaussian", **config)
    block = inject_adapter_in_model(cfg, block, adapter_name="a")
    with torch.no_grad():  # lora_B starts at zero: give it values, so the merge changes something
        for name, p in block.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape) * 0.3)
    return block.to(dtype)


def layers(block):
    return {"lin": block.lin, "pw": block.pw, "conv": block.conv}


@pytest.mark.parametrize("which", ["lin", "pw", "conv"])
def test_merge_matches_peft_merge(which):
    ours, peft_side = block_with_lora(0), block_with_lora(0)
    before = layers(ours)[which].get_base_layer().weight.detach().clone()
    layers(ours)[which].scaling["a"] *= 0.7  # an adapter weight, as set_adapters applies it
    layers(peft_side)[which].scaling["a"] *= 0.7
    merge_one(layers(ours)[which], "a")
    layers(peft_side)[which].merge(adapter_names=["a"])
    got = layers(ours)[which].get_base_layer().weight
    want = layers(peft_side)[which].get_base_layer().weight
    assert not torch.equal(got, before)
    # One fused multiply-add against peft's product, scale and add: float32 rounding apart.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert layers(ours)[which].merged_adapters == ["a"]


def test_merged_forward_equals_the_unmerged_lora_forward():
    block = block_with_lora(1)
    x = torch.randn(3, 24)
    with torch.no_grad():
        live = block.lin(x)
        merge_one(block.lin, "a")
        fused = block.lin(x)  # peft skips the adapter path once the layer says it is merged
        bare = block.lin.get_base_layer()(x)
    torch.testing.assert_close(fused, live, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bare, live, rtol=1e-5, atol=1e-5)


def test_the_same_merge_twice_gives_the_same_bits():
    a, b = block_with_lora(2), block_with_lora(2)
    for blk in (a, b):
        for layer in layers(blk).values():
            merge_one(layer, "a")
    for name in ("lin", "pw", "conv"):
        assert torch.equal(layers(a)[name].get_base_layer().weight, layers(b)[name].get_base_layer().weight)


def test_bf16_on_the_cpu_goes_through_peft():
    ours, peft_side = block_with_lora(3, dtype=torch.bfloat16), block_with_lora(3, dtype=torch.bfloat16)
    merge_one(ours.lin, "a")
    peft_side.lin.merge(adapter_names=["a"])
    assert torch.equal(ours.lin.get_base_layer().weight, peft_side.lin.get_base_layer().weight)


def test_merge_adapters_records_what_it_merged():
    class Pipe:
        _merged_adapters = set()

    pipe = Pipe()
    pipe.unet = block_with_lora(4)
    pipe.text_encoder = None
    merge_adapters(pipe, ["unet", "text_encoder"], ["a", "absent"])
    assert pipe._merged_adapters == {"a"}
    assert all(layer.merged_adapters == ["a"] for layer in layers(pipe.unet).values())
    merge_adapters(pipe, ["unet"], ["a"])  # already merged: nothing added twice
    assert all(layer.merged_adapters == ["a"] for layer in layers(pipe.unet).values())
