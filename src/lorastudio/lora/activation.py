"""Applying `<lora:name:weight>` tags to a loaded pipeline through diffusers + peft.

Adapters are loaded once per file (keyed by content hash) and then only re-weighted, so a
prompt change does not reload anything. At most `keep_loaded` adapters stay loaded beyond the
ones in use (least recently used first out, deleted with peft), so a server that sees many
LoRAs does not grow without bound. In "fused" mode the active set is merged into the base
weights (as A1111 does) so sampling runs at the speed of the bare model; before the set or the
weights change, the touched base weights are copied back from a backup taken just before the
merge, as A1111 does, so a LoRA used and then dropped leaves the model bit-exactly as it was
(subtracting the update again would not: float rounding, or an overflow, stays behind).

Formats are read by diffusers' `load_lora_weights` (kohya `lora_unet_`/`lora_te*_`, diffusers /
PEFT, FLUX kohya BFL-named, `transformer.`-prefixed diffusers and ai-toolkit files). Before that,
every key must look like a LoRA weight, and the file must be made for the loaded model's family;
after it, every module the file names (as diffusers reads it) must carry the adapter, or the
first one that does not is an error naming that key, never a LoRA that silently does less than it
should.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from lorastudio.core.errors import InvalidParameter, LoraError
from lorastudio.core.prompt_syntax import MAX_LORA_WEIGHT, LoraTag

# How many adapters stay loaded when no prompt uses them: a prompt that switches back to a recent
# LoRA does not read its file again, and memory stays bounded (a high-rank SDXL or FLUX LoRA holds
# hundreds of MB). StudioSettings.lora_cache_size passes the user's choice.
DEFAULT_KEEP_LOADED = 4


@dataclass(frozen=True)
class ActiveLora:
    name: str
    path: Path
    short_hash: str  # 12 hex digits, as A1111 writes in `Lora hashes`
    te_weight: float
    unet_weight: float


@dataclass
class LoraState:
    # adapter name -> file hash, least recently used first
    loaded: OrderedDict[str, str] = field(default_factory=OrderedDict)
    fused: tuple = ()
    active: tuple = ()
    # (parameter, its value before the merge, on the CPU) for every base weight the merge changed
    backup: list = field(default_factory=list)
    # id(parameter) -> (parameter, its value before any merge): kept from one merge to the next
    # while LoRAs stay in use, so a switch copies back and merges, without copying the base again
    # (the copy holds the parameter, so its id cannot be reused); emptied when no LoRA is in use.
    pristine: dict = field(default_factory=dict)


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
        from lorastudio.models.families.registry import families

        titles = ", ".join(f.title for f in families())
        raise LoraError(f"{lora.path}: LoRA {lora.name!r} fits none of {titles} (keys such as {sorted(sd)[:2]})")
    if owner.name != family.name:
        raise LoraError(f"{lora.path}: LoRA {lora.name!r} was made for {owner.title} models; the loaded model "
                        f"is {family.title}")
    keys = list(sd)
    try:
        pipe.load_lora_weights(sd, adapter_name=name)
    except (ValueError, KeyError, RuntimeError, IndexError, AttributeError) as exc:
        _delete_adapter(pipe, name)
        gaps = _unplaceable(pipe, family, sd)
        if gaps:
            raise LoraError(_unmapped(lora, family, gaps, keys)) from None
        raise LoraError(f"{lora.path}: cannot apply LoRA {lora.name!r} to this {family.title} model: "
                        f"{str(exc)[:600]}") from None
    if _injected_layers(pipe, name) == 0:
        _delete_adapter(pipe, name)
        raise LoraError(f"{lora.path}: no module of this {family.title} model matched any key of LoRA {lora.name!r}")
    # Keys that name no module are dropped (text encoders: without a word): compare what the file
    # names (as diffusers reads it) with where adapters were injected.
    gaps = _uncovered(pipe, family, sd, name)
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


def _converted(pipe, family, sd: dict) -> dict | None:
    """The file's keys as load_lora_weights reads them (None when diffusers cannot read it)."""
    try:
        read = pipe.lora_state_dict(dict(sd), **family.lora_state_dict_kwargs(pipe))
    except (ValueError, KeyError, RuntimeError, IndexError, AttributeError):
        return None
    return read[0] if isinstance(read, tuple) else read


def _lora_components(pipe) -> list[str]:
    # diffusers' own list of the components its LoRA loader fills (denoiser, text encoders).
    return list(pipe._lora_loadable_modules)


def _gaps(pipe, converted: dict, placed) -> list[str]:
    """Module paths the file names (per component) that `placed(component, module)` does not accept."""
    gaps = []
    for comp in _lora_components(pipe):
        module = getattr(pipe, comp, None)
        if module is None:
            continue
        wanted = {_canonical(comp, k[len(comp) + 1:]) for k in converted if k.startswith(comp + ".")}
        got = {_canonical(comp, n + ".lora_A.weight") for n, m in module.named_modules() if placed(m)}
        gaps += [f"{comp}.{w}.lora_A.weight" for w in sorted(wanted - got)]
    return gaps


def _uncovered(pipe, family, sd: dict, name: str) -> list[str]:
    """After loading: what the file names that did not receive the adapter."""
    converted = _converted(pipe, family, sd)
    if converted is None:
        return []  # loading already succeeded; nothing more to learn from a second reading
    return _gaps(pipe, converted, lambda m: name in getattr(m, "lora_A", {}))


def _unplaceable(pipe, family, sd: dict) -> list[str]:
    """After a refused load: what the file names that is no module of the model at all."""
    import torch

    converted = _converted(pipe, family, sd)
    if converted is None:
        return []
    return _gaps(pipe, converted, lambda m: isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding))
                 or hasattr(m, "base_layer"))


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


def activate(pipe, family, loras: list[ActiveLora], state: LoraState, *, fuse: bool, allow_pickle: bool = False,
             keep_loaded: int = DEFAULT_KEEP_LOADED) -> None:
    """Make exactly `loras` active, with their weights; keep at most `keep_loaded` others loaded."""
    wanted = tuple((adapter_name(lo), lo.te_weight, lo.unet_weight) for lo in loras)
    for name, *_ in wanted:
        if name in state.loaded:
            state.loaded.move_to_end(name)
    if (wanted, fuse) == state.active:
        return
    # Until the new set is complete nothing is known to be active (a refused file's deletion
    # makes peft pick another active adapter).
    state.active = ()
    if state.fused:
        restore_fused(pipe, state)
    for lo in loras:
        load_adapter(pipe, family, lo, state, allow_pickle=allow_pickle)
        state.loaded.move_to_end(adapter_name(lo))
    _evict(pipe, state, keep_loaded, in_use={w[0] for w in wanted})
    if not loras:
        state.pristine = {}
        if state.loaded:
            pipe.disable_lora()
        state.active = ((), fuse)
        return
    pipe.enable_lora()
    names = [w[0] for w in wanted]
    weights = [_component_weights(pipe, te, unet) for _, te, unet in wanted]
    pipe.set_adapters(names, adapter_weights=weights)
    if fuse:
        from lorastudio.lora.merge import merge_adapters

        state.backup = _backup_merged(pipe, names, state.pristine)
        state.fused = wanted  # before the merge: one that fails half-way is restored all the same
        merge_adapters(pipe, _lora_components(pipe), names)
    state.active = (wanted, fuse)


def _backup_merged(pipe, names: list[str], pristine: dict) -> list:
    """The base weights and biases a merge of `names` will change, copied to the CPU (as A1111 keeps
    them), or taken from `pristine` where an earlier merge copied them (and the restore put them back)."""
    out = []
    names = set(names)
    for comp in _lora_components(pipe):
        module = getattr(pipe, comp, None)
        if module is None:
            continue
        for m in module.modules():
            if not names & set(getattr(m, "lora_A", {})) or not hasattr(m, "get_base_layer"):
                continue
            for p in m.get_base_layer().parameters(recurse=False):
                kept = pristine.get(id(p))
                if kept is None or kept[0] is not p:
                    kept = pristine[id(p)] = (p, p.detach().to("cpu", copy=True))
                out.append(kept)
    return out


def restore_fused(pipe, state: LoraState) -> None:
    """Put back the exact base weights saved before the merge."""
    import torch

    # Only peft's and diffusers' record of what is merged is cleared: unfuse_lora would compute
    # every update again to subtract it (half the time of a switch) from weights that the backup
    # overwrites just after.
    for comp in _lora_components(pipe):
        module = getattr(pipe, comp, None)
        for m in module.modules() if module is not None else ():
            if getattr(m, "merged_adapters", None):
                m.merged_adapters = []
    pipe._merged_adapters = set()
    with torch.no_grad():
        for param, saved in state.backup:
            param.data.copy_(saved)
    state.backup = []
    state.fused = ()


def _evict(pipe, state: LoraState, keep_loaded: int, in_use: set[str]) -> None:
    """Delete the least recently used adapters not in use until at most `keep_loaded` others remain."""
    idle = [n for n in state.loaded if n not in in_use]
    for name in idle[:max(0, len(idle) - keep_loaded)]:
        _delete_adapter(pipe, name)
        del state.loaded[name]


def _component_weights(pipe, te: float, unet: float):
    if te == unet:
        return unet
    comps = {}
    for comp in _lora_components(pipe):
        comps[comp] = te if comp.startswith("text_encoder") else unet
    return comps


def _injected_layers(pipe, name: str) -> int:
    count = 0
    for comp in _lora_components(pipe):
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
    """One entry per LoRA file; the same name twice adds its weights (`<lora:a:.5><lora:a:.5>` = `<lora:a:1>`).

    The summed weights obey the same bound as one tag (prompt_syntax.MAX_LORA_WEIGHT)."""
    out: dict[Path, ActiveLora] = {}
    for t in tags:
        entry = find(t.name)
        prev = out.get(entry.path)
        if prev is None:
            out[entry.path] = ActiveLora(t.name, entry.path, hash_of(entry.path), t.te_weight, t.unet_weight)
        else:
            out[entry.path] = ActiveLora(prev.name, prev.path, prev.short_hash, prev.te_weight + t.te_weight,
                                         prev.unet_weight + t.unet_weight)
    for lo in out.values():
        for w in (lo.te_weight, lo.unet_weight):
            if not abs(w) <= MAX_LORA_WEIGHT:
                raise InvalidParameter("prompt", f"<lora:{lo.name}>", f"LoRA weights of {lo.name!r} add up to {w:g}; "
                                       f"the limit is ±{MAX_LORA_WEIGHT:g}")
    return list(out.values())
