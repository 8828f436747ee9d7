"""LoRA layers on the denoiser and text encoders, through peft."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LoraNetwork:
    modules: dict[str, torch.nn.Module]  # component name -> peft-wrapped module
    rank: int
    alpha: float

    def trainable_parameters(self, component: str) -> list[torch.nn.Parameter]:
        return [p for p in self.modules[component].parameters() if p.requires_grad]

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        from peft import get_peft_model_state_dict

        return {name: {k: v.detach().to("cpu", torch.float32).contiguous()
                       for k, v in get_peft_model_state_dict(_unwrap(m)).items()}
                for name, m in self.modules.items()}

    def load_state_dicts(self, sds: dict[str, dict[str, torch.Tensor]]) -> None:
        from peft import set_peft_model_state_dict

        for name, sd in sds.items():
            result = set_peft_model_state_dict(_unwrap(self.modules[name]), sd)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise RuntimeError(f"checkpoint keys for {name} not in the network: {unexpected[:5]}")


def add_lora(modules: dict[str, torch.nn.Module], targets: dict[str, list[str]], *, rank: int, alpha: float,
             dropout: float) -> LoraNetwork:
    """Freeze each module and add a LoRA adapter named "default" on its target layers."""
    from peft import LoraConfig

    wrapped = {}
    for name, module in modules.items():
        module.requires_grad_(False)
        cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                         target_modules=targets[name])
        module.add_adapter(cfg)
        # LoRA weights train in fp32 even when the base runs in half precision.
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        wrapped[name] = module
    return LoraNetwork(wrapped, rank, alpha)


def _unwrap(m):
    return getattr(m, "module", m)
