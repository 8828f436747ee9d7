"""Applying `<lora:name:weight>` tags to a loaded pipeline through diffusers + peft.

Adapters are loaded once per file (keyed by content hash) and then only re-weighted, so a
prompt change does not reload anything. In "fused" mode the active set is merged into the
base weights (as A1111 does) so sampling runs at the speed of the bare model; it is unmerged
before the set or the weights change.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lorastudio.core.errors import LoraError
from lorastudio.core.prompt_syntax import LoraTag


@dataclass(frozen=True)
class ActiveLora:
    name: str
    path: Path
    short_hash: str  # 12 hex digits, as A1111 writes in `Lora hashes`
    te_weight: float
    unet_weight: float


@dataclass
class LoraState:
    loaded: dict[str, str] = field(default_factory=dict)  # adapter name -> file hash
    fused: tuple = ()
    active: tuple = ()


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextmanager
def _captured_warnings():
    handler = _Capture()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler.messages
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


_LEFTOVER = re.compile(r"(unexpected keys|were not used|could not be (found|mapped))", re.I)


def adapter_name(lora: ActiveLora) -> str:
    return "l_" + re.sub(r"\W", "_", lora.name)[:40] + "_" + lora.short_hash


def load_adapter(pipe, family, lora: ActiveLora, state: LoraState) -> str:
    """Load a LoRA file as a peft adapter; every key must land on a module, or LoraError."""
    from safetensors.torch import load_file

    from lorastudio.core.safetensors_header import read_header

    name = adapter_name(lora)
    if name in state.loaded:
        return name
    header = read_header(lora.path)
    shapes = {k: tuple(t.shape) for k, t in header.tensors.items()}
    if not family.claims_lora(shapes):
        raise LoraError(f"{lora.path}: LoRA {lora.name!r} was not made for {family.title} models")
    sd = load_file(str(lora.path))
    with _captured_warnings() as warnings:
        try:
            pipe.load_lora_weights(sd, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise LoraError(f"{lora.path}: cannot apply LoRA {lora.name!r} to this {family.title} model: {exc}") from None
    bad = [w for w in warnings if _LEFTOVER.search(w)]
    if not bad and _injected_layers(pipe, name) == 0:
        bad = ["no module of the model matched any key of the file"]
    if bad:
        _delete_adapter(pipe, name)
        raise LoraError(f"{lora.path}: keys of LoRA {lora.name!r} could not be mapped onto the model: {bad[0][:600]}")
    state.loaded[name] = lora.short_hash
    return name


def activate(pipe, family, loras: list[ActiveLora], state: LoraState, *, fuse: bool) -> None:
    """Make exactly `loras` active, with their weights."""
    wanted = tuple((adapter_name(lo), lo.te_weight, lo.unet_weight) for lo in loras)
    if wanted == state.active:
        return
    if state.fused:
        pipe.unfuse_lora()
        state.fused = ()
    for lo in loras:
        load_adapter(pipe, family, lo, state)
    if not loras:
        if state.loaded:
            pipe.disable_lora()
        state.active = ()
        return
    pipe.enable_lora()
    names = [w[0] for w in wanted]
    weights = [_component_weights(pipe, te, unet) for _, te, unet in wanted]
    pipe.set_adapters(names, adapter_weights=weights)
    if fuse:
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        state.fused = wanted
    state.active = wanted


def _component_weights(pipe, te: float, unet: float):
    if te == unet:
        return unet
    comps = {}
    for comp in getattr(pipe, "_lora_loadable_modules", ["unet", "text_encoder"]):
        comps[comp] = te if comp.startswith("text_encoder") else unet
    return comps


def _injected_layers(pipe, name: str) -> int:
    count = 0
    for comp in getattr(pipe, "_lora_loadable_modules", ["unet", "text_encoder"]):
        module = getattr(pipe, comp, None)
        if module is None:
            continue
        count += sum(1 for m in module.modules() if name in getattr(m, "lora_A", {}))
    return count


def _delete_adapter(pipe, name: str) -> None:
    try:
        pipe.delete_adapters([name])
    except (ValueError, KeyError, AttributeError):
        pass


def tags_to_active(tags: list[LoraTag], find, hash_of) -> list[ActiveLora]:
    out = []
    for t in tags:
        entry = find(t.name)
        out.append(ActiveLora(t.name, entry.path, hash_of(entry.path), t.te_weight, t.unet_weight))
    return out
