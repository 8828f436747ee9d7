"""A1111 textual-inversion embeddings (models/embeddings) used by name in prompts.

As in A1111, an embedding is the file's stem, and it applies wherever that word appears in the
prompt or the negative prompt (case-insensitive, whole words, emphasis included). A file is read
only the first time its name appears, and its vectors become new tokens of the model's tokenizers
and rows of the text encoders' input embeddings; the prompt's occurrences of the name are replaced
by those tokens, so the ordinary prompt encoding (chunks, emphasis) handles them like words.

Formats: A1111 `.pt` (`string_to_param: {"*": [n, dim]}`), `.safetensors`/`.bin` with `emb_params`
or a single tensor (SD 1.x), and SDXL files with `clip_l` and `clip_g`. An embedding made for
another model (other width, or SD 1.x vs SDXL) is left out and its name stays plain text, as A1111
does with the embeddings it lists as skipped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from lorastudio.core.errors import ModelFileError

log = logging.getLogger(__name__)

EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")


@dataclass(frozen=True)
class LoadedEmbedding:
    name: str
    path: Path
    replacement: str  # the tokens that stand for the name in a prompt
    short_hash: str  # sha256[:12], as A1111 writes in `TI hashes`


@dataclass
class EmbeddingState:
    """Embeddings added to one loaded model (a new model starts with a new state)."""

    loaded: dict[Path, LoadedEmbedding] = field(default_factory=dict)
    skipped: dict[Path, str] = field(default_factory=dict)  # path -> why it does not fit


def read_embedding(path: Path, *, allow_pickle: bool) -> dict:
    """The file's content: {key: tensor} for safetensors, the unpickled dict for `.pt`/`.bin`."""
    from lorastudio.core.paths import PICKLE_EXTENSIONS
    from lorastudio.models.loader import load_pickle_weights_only, read_tensors

    if Path(path).suffix.lower() in PICKLE_EXTENSIONS:
        import torch

        # A1111 files written with torch < 1.12 hold a ParameterDict (A1111's own unpickler allows it too)
        data = load_pickle_weights_only(path, allow_pickle, also_allow=(torch.nn.ParameterDict,))
        if not isinstance(data, dict):
            raise ModelFileError(path, "not an embedding: the pickle holds no dict")
        return data
    return read_tensors(path, allow_pickle=allow_pickle)[0]


def vectors_for(data: dict, key: str | None, path: Path):
    """The [n, dim] vectors for one text encoder, or None when the file has none for it."""
    import torch

    if key is not None:
        value = data.get(key)
        return value if isinstance(value, torch.Tensor) else None
    if "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, dict) or len(params) != 1:
            raise ModelFileError(path, "string_to_param must hold exactly one vector set")
        value = next(iter(params.values()))
    elif "emb_params" in data:  # A1111 .safetensors
        value = data["emb_params"]
    elif len(data) == 1:  # diffusers concept files: {token: vectors}
        value = next(iter(data.values()))
    else:
        return None
    if not isinstance(value, torch.Tensor):
        return None
    return value.unsqueeze(0) if value.ndim == 1 else value


def _add_vectors(tokenizer, text_encoder, base: str, vectors) -> list[str]:
    import torch

    tokens = [f"{base}x{i}>" for i in range(vectors.shape[0])]
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if max(ids) >= text_encoder.get_input_embeddings().num_embeddings:
        # mean_resizing would draw the new rows from the global RNG; they are overwritten anyway
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[ids] = vectors.to(device=table.device, dtype=table.dtype)
    # CLIP configs with the legacy eos_token_id 2 pool at the highest token id, which is now an
    # embedding's; pooling at the real end token is the same position for every other prompt.
    text_model = getattr(text_encoder, "text_model", text_encoder)
    if getattr(text_model, "eos_token_id", None) == 2 and tokenizer.eos_token_id not in (None, 2):
        text_model.eos_token_id = tokenizer.eos_token_id
    return tokens


def load_embedding(pipe, family, entry, state: EmbeddingState, *, hash_of, allow_pickle: bool) -> LoadedEmbedding | None:
    """Add one embedding file's vectors to the model; None when it was made for another model."""
    path = entry.path
    if path in state.loaded:
        return state.loaded[path]
    if path in state.skipped:
        return None
    targets = family.textual_inversion_targets(pipe)
    if not targets:
        state.skipped[path] = f"{family.title} models take no textual-inversion embeddings"
        log.warning("embedding %s left out: %s", path, state.skipped[path])
        return None
    data = read_embedding(path, allow_pickle=allow_pickle)
    found = []
    for key, tokenizer, encoder in targets:
        vec = vectors_for(data, key, path)
        width = encoder.get_input_embeddings().embedding_dim
        if vec is None or vec.ndim != 2 or vec.shape[-1] != width:
            got = "no vectors" if vec is None else f"vectors of shape {tuple(vec.shape)}"
            state.skipped[path] = f"{got} for {key or 'the text encoder'} (width {width}) of this {family.title} model"
            break
        found.append((tokenizer, encoder, vec))
    else:
        if found and len({v.shape[0] for _, _, v in found}) != 1:
            state.skipped[path] = "different vector counts per text encoder"
    if path in state.skipped:
        log.warning("embedding %s left out: %s", path, state.skipped[path])
        return None
    base = f"<ti{len(state.loaded)}"  # lower-case ASCII: CLIP tokenizers lower-case prompts
    tokens = []
    for tokenizer, encoder, vec in found:
        tokens = _add_vectors(tokenizer, encoder, base, vec)
    loaded = LoadedEmbedding(Path(entry.name).stem, path, " ".join(tokens), hash_of(path)[:12])
    state.loaded[path] = loaded
    return loaded


def apply_embeddings(pipe, family, texts: list[str], entries, state: EmbeddingState, *, hash_of,
                     allow_pickle: bool = False) -> tuple[list[str], dict[str, str]]:
    """Replace embedding names in `texts` by their tokens; returns (texts, {name: short hash} used)."""
    by_name: dict[str, object] = {}
    for e in entries:
        by_name.setdefault(Path(e.name).stem.lower(), e)  # first folder wins, as A1111's scan order
    if not by_name:
        return texts, {}
    names = sorted(by_name, key=len, reverse=True)  # one pass, longest first: "bad-hands" before "bad"
    pattern = re.compile(r"(?<![\w])(" + "|".join(re.escape(n) for n in names) + r")(?![\w])", re.I)
    present = {m.group(1).lower() for t in texts for m in pattern.finditer(t)}
    used: dict[str, str] = {}
    replacement: dict[str, str] = {}
    for name in present:
        emb = load_embedding(pipe, family, by_name[name], state, hash_of=hash_of, allow_pickle=allow_pickle)
        if emb is not None:
            replacement[name] = emb.replacement
            used[emb.name] = emb.short_hash
    if not replacement:
        return texts, {}
    out = [pattern.sub(lambda m: replacement.get(m.group(1).lower(), m.group(0)), t) for t in texts]
    return out, dict(sorted(used.items()))


def ti_hashes_field(used: dict[str, str]) -> str | None:
    """A1111's `TI hashes` value: names lose ':' and ',' so the list can be read back."""
    if not used:
        return None
    return ", ".join(f"{n.replace(':', '').replace(',', '')}: {h}" for n, h in used.items())
