"""Rebuild the bundled CLIP BPE vocabulary (vocab.json, merges.txt) from the
bpe_simple_vocab_16e6.txt.gz that the open_clip_torch wheel ships (MIT licence).

Usage: python tools/build_clip_vocab.py path/to/bpe_simple_vocab_16e6.txt.gz src/lorastudio/models/bundled/tokenizers/clip
The ids match the openai/clip-vit-large-patch14 tokenizer (a photo of a cat -> 49406 320 1125 539 320 2368 49407).
"""
import gzip, json, sys
from pathlib import Path

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return dict(zip(bs, [chr(c) for c in cs]))

src, out = Path(sys.argv[1]), Path(sys.argv[2])
lines = gzip.open(src).read().decode("utf-8").split("\n")
merges = lines[1 : 49152 - 256 - 2 + 1]
merges = [tuple(m.split()) for m in merges]
vocab = list(bytes_to_unicode().values())
vocab = vocab + [v + "</w>" for v in vocab]
vocab += ["".join(m) for m in merges]
vocab += ["<|startoftext|>", "<|endoftext|>"]
(out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
(out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
