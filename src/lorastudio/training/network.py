"""LoRA layers on the denoiser and text encoders, through peft."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch


@dataclass
class LoraNetwork:
    modules: dict[str, torch.nn.Module]  # component name -> peft-wrapped module
    rank: int
    alpha: float
    # component -> {module path: (rank, alpha)} of layers trained at another rank (kohya's conv_dim)
    overrides: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)

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
            missing = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k]
            if missing:
                # A checkpoint of another layer set (e.g. from before kohya's set became the default)
                # would otherwise resume with some layers silently starting afresh.
                raise RuntimeError(f"the checkpoint has no weights for {len(missing)} LoRA layers of {name} "
                                   f"(first: {missing[0]}); it was trained with another layer set: resume with "
                                   f"the lora_modules / conv_dim it was started with (lora_modules='attention' "
                                   f"for runs from before kohya's set was the default)")


@dataclass(frozen=True)
class LoraTargets:
    """The layers of one component that get LoRA: `names` at the network's rank, `convs` (3x3) at conv_rank."""

    names: list[str]
    convs: list[str] = field(default_factory=list)


def kohya_rule_targets(module: torch.nn.Module, rule, *, conv: bool) -> LoraTargets:
    """Resolve a family's `KohyaLoraRule` against a model, as kohya's networks/lora.py selects: every
    Linear / 1x1 Conv2d inside the rule's blocks; with `conv`, every Linear / Conv2d inside its conv
    blocks too (3x3 convs at the conv rank)."""
    names: list[str] = []
    convs: list[str] = []
    seen: set[str] = set()
    groups = [(rule.blocks, False)] + ([(rule.conv_blocks, True)] if conv else [])
    for classes, with_convs in groups:
        for block_name, block in module.named_modules():
            if type(block).__name__ not in classes:
                continue
            for child_name, child in block.named_modules():
                full = f"{block_name}.{child_name}" if block_name else child_name
                if not child_name or full in seen:
                    continue
                if isinstance(child, torch.nn.Linear) or (isinstance(child, torch.nn.Conv2d)
                                                          and tuple(child.kernel_size) == (1, 1)):
                    names.append(full)
                elif isinstance(child, torch.nn.Conv2d) and with_convs:
                    convs.append(full)
                else:
                    continue
                seen.add(full)
    return LoraTargets(names, convs)


def lora_targets(family, modules: dict[str, torch.nn.Module], config) -> dict[str, list[str] | LoraTargets]:
    """Per component: kohya's default layer set (config.lora_modules "kohya", with LoCon when
    config.conv_dim is set) where the family states kohya's rule, else its attention-only set."""
    attention = family.lora_targets()
    rules = family.kohya_lora_rules() if config.lora_modules == "kohya" else {}
    if config.conv_dim is not None and not any(rules.get(n) and rules[n].conv_blocks for n in modules):
        from lorastudio.core.errors import InvalidParameter

        raise InvalidParameter("conv_dim", str(config.conv_dim), "this model family has no 3x3 convolutions to train")
    return {name: (kohya_rule_targets(module, rules[name], conv=config.conv_dim is not None)
                   if name in rules else attention[name])
            for name, module in modules.items()}


def add_lora(modules: dict[str, torch.nn.Module], targets: dict[str, list[str] | LoraTargets], *, rank: int,
             alpha: float, dropout: float, conv_rank: int | None = None, conv_alpha: float | None = None) -> LoraNetwork:
    """Freeze each module and add a LoRA adapter named "default" on its target layers.

    targets: peft target_modules (layer name suffixes), or `LoraTargets` of full layer paths whose
    3x3 convolutions train at conv_rank / conv_alpha (kohya's conv_dim / conv_alpha)."""
    from peft import LoraConfig

    wrapped = {}
    overrides: dict[str, dict[str, tuple[int, float]]] = {}
    for name, module in modules.items():
        module.requires_grad_(False)
        spec = targets[name]
        extra: dict = {}
        if isinstance(spec, LoraTargets):
            target_modules = spec.names + spec.convs
            if spec.convs:
                if conv_rank is None or conv_alpha is None:
                    raise ValueError(f"{name}: 3x3 convolutions are targeted without a conv rank and alpha")
                # peft matches these keys as patterns at the end of a layer path; full paths (dots
                # escaped) select exactly these layers.
                extra = {"rank_pattern": {re.escape(c): conv_rank for c in spec.convs},
                         "alpha_pattern": {re.escape(c): conv_alpha for c in spec.convs}}
                overrides[name] = {c: (conv_rank, conv_alpha) for c in spec.convs}
        else:
            target_modules = list(spec)
        if not target_modules:
            raise ValueError(f"{name}: no layer matches the LoRA targets")
        cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                         target_modules=target_modules, **extra)
        module.add_adapter(cfg)
        # LoRA weights train in fp32 even when the base runs in half precision.
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        wrapped[name] = module
    return LoraNetwork(wrapped, rank, alpha, overrides)


def _unwrap(m):
    return getattr(m, "module", m)
