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


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's byte-level alphabet (the one BART's tokenizer uses): every byte gets a printable
    # character, so a vocabulary of the 256 symbols alone can spell any text.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_florence2(folder: str | Path, seed: int = 0, image_size: int = 64) -> Path:
    """Tiny random Florence-2 (transformers' native classes) in the `save_pretrained` layout:
    a byte-level BART tokenizer without merges, a 4-stage DaViT of one block each."""
    import json

    import torch
    from transformers import BartConfig, BartTokenizer, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<image>"]
    vocab = {t: i for i, t in enumerate(specials + list(_bytes_to_unicode().values()))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = BartTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessorPil(size={"height": image_size, "width": image_size}, do_center_crop=False,
                                            crop_size={"height": image_size, "width": image_size})
    # Strides 4*2*2*2 = 32: (image_size/32)^2 patch tokens plus one pooled token.
    image_processor.image_seq_length = (image_size // 32) ** 2 + 1
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    text = BartConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=128,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)
    vision = Florence2VisionConfig(depths=(1, 1, 1, 1), embed_dim=(8, 16, 16, 32), num_heads=(1, 2, 2, 4),
                                   num_groups=(1, 2, 2, 4), window_size=2, projection_dim=32, drop_path_rate=0.0)
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    # A random model tends to end at once; never ending early makes the caption non-empty.
    model.generation_config.min_new_tokens = 4
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_tiny_blip2(folder: str | Path, seed: int = 0, image_size: int = 32, num_query_tokens: int = 4) -> Path:
    """Tiny random BLIP-2 (ViT + Q-Former + OPT, transformers' own classes) in the `save_pretrained`
    layout of Salesforce/blip2-opt-*: a byte-level GPT-2 tokenizer without merges, as OPT's is."""
    import json

    import torch
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig,
                              Blip2VisionConfig, BlipImageProcessor, GPT2Tokenizer, OPTConfig)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "</s>", "<unk>"]  # OPT's ids: pad 0 here, </s> both bos and eos
    vocab = {t: i for i, t in enumerate(specials + list(_bytes_to_unicode().values()))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), bos_token="</s>",
                              eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                               num_query_tokens=num_query_tokens)  # adds the <image> token
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    text = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, word_embed_proj_dim=32, num_hidden_layers=1,
                     ffn_dim=37, num_attention_heads=2, max_position_embeddings=128, pad_token_id=0,
                     bos_token_id=vocab["</s>"], eos_token_id=vocab["</s>"])
    vision = Blip2VisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                               image_size=image_size, patch_size=8)
    qformer = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                                 encoder_hidden_size=32)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=num_query_tokens, image_token_index=image_token)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    # A random model tends to end at once (BLIP-2 hands generation to the OPT model, which does not
    # see a min_new_tokens set here): a zero output row for the end token keeps greedy decoding
    # writing, so the caption is not empty.
    with torch.no_grad():
        model.get_output_embeddings().weight[vocab["</s>"]].zero_()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
