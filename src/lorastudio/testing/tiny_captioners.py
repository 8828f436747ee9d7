"""Tiny random BLIP captioner written in the real `save_pretrained` layout, for tests.

config.json + model.safetensors + preprocessor/tokenizer files, as a hub snapshot of
Salesforce/blip-image-captioning-base has them, with a 40-word WordPiece vocabulary.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "picture", "of", "red", "blue", "cat", "dog", "sticker", "smiling", "waving", "(", ")", "hat",
         "on", "the", "with", "and", "yellow", "round", "creature", "background", "white", "green", "small"]


def write_tiny_blip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, bos_token="[DEC]")
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = dict(vocab_size=len(vocab), hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
                num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=64,
                bos_token_id=vocab.index("[DEC]"), pad_token_id=0, sep_token_id=vocab.index("[SEP]"))
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                  image_size=image_size, patch_size=8, projection_dim=32)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
