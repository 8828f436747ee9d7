"""A1111-style prompt encoding for CLIP text encoders.

The prompt is parsed for emphasis and BREAK (pure code in core.prompt_syntax), cut into
75-token chunks that are encoded separately and concatenated, so long prompts are never
truncated. Emphasis scales each token's embedding and then restores the chunk's mean, as
A1111's "Original" emphasis does. Families choose the layer and padding; this module only
holds the mechanism they share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorastudio.core.prompt_syntax import chunk_prompt, parse_prompt_attention


@dataclass(frozen=True)
class ClipEncodeSpec:
    # 0 = last layer with the final layer norm (A1111 clip skip 1); n > 0 = n layers from the end.
    skip_layers: int = 0
    final_norm_on_skip: bool = True
    pad_token: str | None = None  # None: pad with the end token (SD 1.x CLIP-L)


def clip_chunks(tokenizer, text: str, spec: ClipEncodeSpec):
    parsed = parse_prompt_attention(text)

    def tokenize(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]

    eos = tokenizer.eos_token_id
    pad = tokenizer.convert_tokens_to_ids(spec.pad_token) if spec.pad_token else eos
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    return chunk_prompt(parsed, tokenize, bos=tokenizer.bos_token_id, eos=eos, pad=pad,
                        comma=comma if isinstance(comma, int) else None)


def encode_clip(tokenizer, text_encoder, text: str, spec: ClipEncodeSpec, *,
                want_pooled: bool = False, min_chunks: int = 1):
    """Return (hidden [1, 77*n, dim], pooled or None, n_chunks).

    The pooled output (SDXL's second encoder) is taken from the first chunk, as A1111 does.
    """
    chunks = clip_chunks(tokenizer, text, spec)
    device = text_encoder.device
    hidden_parts, pooled = [], None
    for i, chunk in enumerate(chunks):
        ids = torch.tensor([chunk.tokens], dtype=torch.long, device=device)
        out = text_encoder(ids, output_hidden_states=True)
        # hidden_states[-1] + final norm is last_hidden_state for both CLIP classes.
        z = out.hidden_states[-(spec.skip_layers + 1)]
        if spec.skip_layers == 0 or spec.final_norm_on_skip:
            z = getattr(text_encoder, "text_model", text_encoder).final_layer_norm(z)
        if want_pooled and i == 0:
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        weights = torch.tensor(chunk.weights, dtype=z.dtype, device=z.device)
        if bool((weights != 1.0).any()):
            original_mean = z.mean()
            z = z * weights.reshape(1, -1, 1)
            new_mean = z.mean()
            # A1111 restores the mean; a mean of ~0 (random test models) would divide into NaNs.
            if bool(new_mean.abs() > 1e-8):
                z = z * (original_mean / new_mean)
        hidden_parts.append(z)
    if len(hidden_parts) < min_chunks:
        empty, _, _ = encode_clip(tokenizer, text_encoder, "", spec)
        hidden_parts += [empty] * (min_chunks - len(hidden_parts))
    return torch.cat(hidden_parts, dim=1), pooled, len(chunks)


def pad_to_same_length(cond: torch.Tensor, uncond: torch.Tensor, empty: torch.Tensor):
    """Repeat the empty-prompt encoding so cond and uncond have equal chunk counts (A1111's pad_cond)."""
    while cond.shape[1] < uncond.shape[1]:
        cond = torch.cat([cond, empty], dim=1)
    while uncond.shape[1] < cond.shape[1]:
        uncond = torch.cat([uncond, empty], dim=1)
    return cond, uncond
