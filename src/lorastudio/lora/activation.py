"""Applying `<lora:name:weight>` tags to a loaded pipeline through diffusers + peft.

Adapters are loaded once per file (keyed by content hash) and then only re-weighted, so a
prompt change does not reload anything. In "fused" mode the active set is merged into the
base weights (as A1111 does) so sampling runs at the speed of the bare model; it is unmerged
before the set or the weights change.

Formats are read by diffusers' `load_lora_weights` (kohya `lora_unet_`/`lora_te*_`, diffusers /
PEFT, FLUX kohya BFL-named, `transformer.`-prefixed diffusers and ai-toolkit files). Before that,
every key must look like a LoRA weight, and the file must be made for the loaded model's family;
after it, any key diffusers could not place on a module is an error naming that key, never a
LoRA that silently does less than it should.
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


_LEFTOVER = re.compile(r"(unexpected keys|were not used|could not be (found|mapped)|Unsupported keys)", re.I)
# What diffusers lists after these phrases: the keys it could not place.
_LISTED = re.compile(r"(?:found in the model|detected|Unsupported keys[^:]*):\s*(.+)$", re.S)

# Key grammar of the LoRA formats diffusers reads. kohya: lora_unet_* / lora_te[12]_* /
# lora_transformer_* with lora_down / lora_up / alpha; diffusers, PEFT, ai-toolkit, ComfyUI:
# dotted module paths with lora_A / lora_B (optionally an adapter name), or the older lora.down /
# lora.up and attention-processor `*_lora.down` names.
_KOHYA_KEY = re.compile(r"^lora_(?:unet|te\d?|transformer)_\w+\.(?:lora_down\.weight|lora_up\.weight|alpha|"
                        r"lora_mid\.weight|dora_scale)$")
_DOTTED_KEY = re.compile(r"^[\w.]+?\.(?:lora_[AB](?:\.\w+)?\.(?:weight|bias)|(?:\w+_)?lora\.(?:down|up)\.weight|"
                         r"lora_linear_layer\.(?:down|up)\.weight|lora_magnitude_vector(?:\.\w+)?|alpha)$")
_LYCORIS = {"hada_": "LoHa", "lokr_": "LoKr", "oft_": "OFT", "ia3": "IA3", ".w_norm": "norm", ".diff": "full-diff"}


def adapter_name(lora: ActiveLora) -> str:
    return "l_" + re.sub(r"\W", "_", lora.name)[:40] + "_" + lora.short_hash


def read_lora(path: Path, *, allow_pickle: bool = False) -> dict:
    from lorastudio.core.errors import ModelFileError
    from lorastudio.models.loader import read_tensors

    try:
        sd, _ = read_tensors(path, allow_pickle=allow_pickle)
    except ModelFileError as exc:
        # PickleRefused keeps its own class (callers and the CLI tell it apart); the rest are LoRA problems.
        if type(exc) is ModelFileError:
            raise LoraError(str(exc)) from None
        raise
    return sd


def check_keys(lora: ActiveLora, keys) -> None:
    """Every key must be a LoRA weight of a known format; the first that is not is named."""
    for key in keys:
        if _KOHYA_KEY.match(key) or _DOTTED_KEY.match(key):
            continue
        kind = next((v for k, v in _LYCORIS.items() if k in key), None)
        why = (f"is a LyCORIS {kind} weight; only LoRA (lora_down/lora_up, lora_A/lora_B) files are supported"
               if kind else "is not a LoRA weight of a known format (kohya lora_unet_*/lora_te*_*.lora_down/"
                            "lora_up/alpha, or diffusers/PEFT <module>.lora_A/lora_B.weight)")
        raise LoraError(f"{lora.path}: key {key!r} of LoRA {lora.name!r} {why}")


def lora_family(shapes):
    """The family a LoRA was made for: the first in probing order (most specific first) that claims it."""
    from lorastudio.models.families.registry import families

    return next((f for f in families() if f.claims_lora(shapes)), None)


def load_adapter(pipe, family, lora: ActiveLora, state: LoraState, *, allow_pickle: bool = False) -> str:
    """Load a LoRA file as a peft adapter; every key must land on a module, or LoraError."""
    name = adapter_name(lora)
    if name in state.loaded:
        return name
    sd = read_lora(lora.path, allow_pickle=allow_pickle)
    if not sd:
        raise LoraError(f"{lora.path}: LoRA {lora.name!r} holds no tensors")
    check_keys(lora, sd)
    owner = lora_family({k: tuple(v.shape) for k, v in sd.items()})
    if owner is None:
        raise LoraError(f"{lora.path}: LoRA {lora.name!r} fits none of SD 1.x, SDXL, FLUX.1 "
                        f"(keys such as {sorted(sd)[:2]})")
    if owner.name != family.name:
        raise LoraError(f"{lora.path}: LoRA {lora.name!r} was made for {owner.title} models; the loaded model "
                        f"is {family.title}")
    keys = list(sd)
    with _captured_warnings() as warnings:
        try:
            pipe.load_lora_weights(sd, adapter_name=name)
        except (ValueError, KeyError, RuntimeError, IndexError, AttributeError) as exc:
            _delete_adapter(pipe, name)
            listed = _listed_keys(str(exc))
            if listed:
                raise LoraError(_unmapped(lora, family, listed, keys)) from None
            raise LoraError(f"{lora.path}: cannot apply LoRA {lora.name!r} to this {family.title} model: "
                            f"{str(exc)[:600]}") from None
    bad = [w for w in warnings if _LEFTOVER.search(w)]
    if bad:
        _delete_adapter(pipe, name)
        listed = _listed_keys(bad[0])
        if listed:
            raise LoraError(_unmapped(lora, family, listed, keys))
        raise LoraError(f"{lora.path}: keys of LoRA {lora.name!r} could not be mapped onto the model: {bad[0][:600]}")
    if _injected_layers(pipe, name) == 0:
        _delete_adapter(pipe, name)
        raise LoraError(f"{lora.path}: no module of this {family.title} model matched any key of LoRA {lora.name!r}")
    # Text-encoder keys that name no module are dropped without a warning: compare what the file
    # names (as diffusers reads it) with where adapters were injected.
    gaps = _uncovered(pipe, sd, name)
    if gaps:
        _delete_adapter(pipe, name)
        raise LoraError(_unmapped(lora, family, gaps, keys))
    state.loaded[name] = lora.short_hash
    return name


_OLD_LEAF = re.compile(r"^(.*?)\.(?:processor\.)?(to_q|to_k|to_v|to_out)_lora\.(?:down|up)\.weight$")
_CLIP_LEAF = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def _canonical(component: str, key: str) -> str:
    """Module path of a converted key, in the names the loaded model uses."""
    m = _OLD_LEAF.match(key)  # diffusers' attention-processor names, still produced for kohya text encoders
    if m:
        base, leaf = m.groups()
        path = f"{base}.{_CLIP_LEAF[leaf]}" if component.startswith("text_encoder") else \
            f"{base}.{'to_out.0' if leaf == 'to_out' else leaf}"
    else:
        path = _module_of(key)
    # transformers >= 5 flattens CLIPTextModel (no `text_model.` level); compare without it
    return path[len("text_model."):] if path.startswith("text_model.") else path


def _uncovered(pipe, sd: dict, name: str) -> list[str]:
    try:
        # as load_lora_weights reads it: SGM block names are mapped with the UNet's layout
        extra = {"unet_config": pipe.unet.config} if getattr(pipe, "unet", None) is not None else {}
        read = pipe.lora_state_dict(dict(sd), **extra)
    except (ValueError, KeyError, RuntimeError, IndexError):
        return []  # loading already succeeded; nothing more to learn from a second reading
    converted = read[0] if isinstance(read, tuple) else read
    gaps = []
    for comp in getattr(pipe, "_lora_loadable_modules", ["unet", "text_encoder"]):
        module = getattr(pipe, comp, None)
        if module is None:
            continue
        wanted = {_canonical(comp, k[len(comp) + 1:]) for k in converted if k.startswith(comp + ".")}
        got = {_canonical(comp, n + ".lora_A.weight") for n, m in module.named_modules() if name in getattr(m, "lora_A", {})}
        gaps += [f"{comp}.{w}.lora_A.weight" for w in sorted(wanted - got)]
    return gaps


def _listed_keys(message: str) -> list[str]:
    m = _LISTED.search(message)
    if not m:
        return []
    text = m.group(1).strip().rstrip(".")
    text = re.sub(r"^dict_keys\(\[|\]\)$", "", text)
    return [k.strip().strip("'\"") for k in text.split(",") if k.strip()]


def _norm(module: str) -> str:
    # kohya turns dots into underscores, and text-encoder paths come with or without `text_model.`
    flat = re.sub(r"[._]", "", module)
    return flat[len("textmodel"):] if flat.startswith("textmodel") else flat


def _module_of(key: str) -> str:
    key = re.sub(r"\.(lora_[AB](\.\w+)?\.(weight|bias)|(\w+_)?lora\.(down|up)\.weight|lora_linear_layer\.(down|up)\.weight|"
                 r"lora_(down|up|mid)\.weight|alpha|"
                 r"dora_scale|lora_magnitude_vector)$", "", key)
    return re.sub(r"^(lora_(unet|te\d?|transformer)_|(unet|text_encoder(_2)?|transformer|diffusion_model|"
                  r"base_model\.model)\.)", "", key)


def _unmapped(lora: ActiveLora, family, listed: list[str], file_keys: list[str]) -> str:
    """Name the file's own key for what diffusers reports under its converted name, when it can be told."""
    want = _norm(_module_of(listed[0]))
    same = [k for k in file_keys if _norm(_module_of(k)) == want]
    original = min(same, key=lambda k: k.endswith("alpha"), default=None)  # a weight rather than its alpha
    if original is not None:
        return f"{lora.path}: key {original!r} of LoRA {lora.name!r} names no module of this {family.title} model"
    return (f"{lora.path}: key {listed[0]!r} (as diffusers reads LoRA {lora.name!r}) names no module of this "
            f"{family.title} model")


def activate(pipe, family, loras: list[ActiveLora], state: LoraState, *, fuse: bool, allow_pickle: bool = False) -> None:
    """Make exactly `loras` active, with their weights."""
    wanted = tuple((adapter_name(lo), lo.te_weight, lo.unet_weight) for lo in loras)
    if (wanted, fuse) == state.active:
        return
    # Until the new set is complete nothing is known to be active (a refused file's deletion
    # makes peft pick another active adapter).
    state.active = ()
    if state.fused:
        pipe.unfuse_lora()
        state.fused = ()
    for lo in loras:
        load_adapter(pipe, family, lo, state, allow_pickle=allow_pickle)
    if not loras:
        if state.loaded:
            pipe.disable_lora()
        state.active = ((), fuse)
        return
    pipe.enable_lora()
    names = [w[0] for w in wanted]
    weights = [_component_weights(pipe, te, unet) for _, te, unet in wanted]
    pipe.set_adapters(names, adapter_weights=weights)
    if fuse:
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        state.fused = wanted
    state.active = (wanted, fuse)


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
    """One entry per LoRA file; the same name twice adds its weights (`<lora:a:.5><lora:a:.5>` = `<lora:a:1>`)."""
    out: dict[Path, ActiveLora] = {}
    for t in tags:
        entry = find(t.name)
        prev = out.get(entry.path)
        if prev is None:
            out[entry.path] = ActiveLora(t.name, entry.path, hash_of(entry.path), t.te_weight, t.unet_weight)
        else:
            out[entry.path] = ActiveLora(prev.name, prev.path, prev.short_hash, prev.te_weight + t.te_weight,
                                         prev.unet_weight + t.unet_weight)
    return list(out.values())
