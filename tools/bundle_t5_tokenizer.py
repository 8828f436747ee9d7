"""Rebuild the bundled T5 tokenizer (FLUX.1 tokenizer_2) from the diffsynth 1.1.9 wheel on PyPI.

The wheel (Apache-2.0, by ModelScope's DiffSynth-Studio) ships FLUX.1's tokenizer_2 folder
byte for byte: the google/t5-v1_1-xxl SentencePiece vocabulary (32000 pieces + 100 extra ids).
Nothing is taken from a model hub; pip fetches the wheel from PyPI like any package.

Usage:
    python tools/bundle_t5_tokenizer.py [--wheel diffsynth-1.1.9-py3-none-any.whl] [--out DIR]

Checks, any of which failing stops the script before anything is written:
  1. every file's sha256 equals the one published for black-forest-labs/FLUX.1-schnell
     tokenizer_2 (and spiece.model the well-known T5 hash d60acb12...);
  2. tokenizer.json and spiece.model (read with the sentencepiece library) give the same ids;
  3. the written folder tokenizes the sentences of transformers' T5 tests
     (tests/models/t5/test_tokenization_t5.py, run against t5-base) to the ids printed there.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "diffsynth==1.1.9"
WHEEL_DIR = "diffsynth/tokenizer_configs/flux/tokenizer_2/"
PINNED = {
    "tokenizer.json": "f5dfec163765e18e270537fe896c49f5fad74db1525641d9b255a3008b999596",
    "tokenizer_config.json": "1a3d2db64215ed77854dd4208aac5f8361c1b5471cabd19c0ef1472d1a895eb0",
    "special_tokens_map.json": "7a1985a994c41886db38c719d2a3d2f40606663cc19d7c5d6a85d349320e06d2",
    "spiece.model": "d60acb128cf7b7f2536e8f38a5b18a05535c9e14c7a355904270e15b0945ea86",
}
# spiece.model stays out of the bundle: transformers 5 needs protobuf to read it and
# tokenizer.json already holds the same vocabulary (check 2 proves it).
BUNDLED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
KNOWN_IDS = {
    "A long paragraph for summarization.": [71, 307, 8986, 21, 4505, 1635, 1707, 5, 1],
    "Summary of the text.": [20698, 13, 8, 1499, 5, 1],
}
KNOWN_IDS_NO_SPECIAL = {"<pad> Today is <unk> nice day </s>": [0, 1960, 19, 2, 1245, 239, 1]}
CROSS_CHECK = [
    "a photo of an astronaut riding a horse on the moon, 4k, highly detailed",
    "Ünïcödé café naïve façade — ½ × 3 = 1.5; 東京タワー",
    "  spaced   out\ttext\nwith lines ",
]
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/lorastudio/models/bundled/tokenizers/t5"


def fetch_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), PACKAGE],
        check=True,
    )
    return next(dest.glob("diffsynth-1.1.9-*.whl"))


def read_files(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        files = {name: zf.read(WHEEL_DIR + name) for name in PINNED}
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        if digest != PINNED[name]:
            raise SystemExit(f"{wheel}:{WHEEL_DIR}{name}: sha256 {digest} is not the published {PINNED[name]}")
    return files


def cross_check(files: dict[str, bytes]) -> None:
    import sentencepiece as spm
    from tokenizers import Tokenizer

    sp = spm.SentencePieceProcessor(model_proto=files["spiece.model"])
    fast = Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
    for text in CROSS_CHECK + list(KNOWN_IDS):
        want = sp.encode(text) + [1]  # T5 appends </s> (id 1)
        got = fast.encode(text).ids
        if got != want:
            raise SystemExit(f"tokenizer.json disagrees with spiece.model on {text!r}: {got} != {want}")


def verify_folder(folder: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    for text, ids in KNOWN_IDS.items():
        if tok(text).input_ids != ids:
            raise SystemExit(f"{folder}: {text!r} -> {tok(text).input_ids}, expected {ids}")
    for text, ids in KNOWN_IDS_NO_SPECIAL.items():
        if tok(text, add_special_tokens=False).input_ids != ids:
            raise SystemExit(f"{folder}: {text!r} -> wrong ids")
    if len(tok) != 32100 or tok.convert_tokens_to_ids("<extra_id_0>") != 32099:
        raise SystemExit(f"{folder}: expected 32100 tokens with <extra_id_0> = 32099")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="a downloaded diffsynth-1.1.9 wheel (else pip downloads it)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        files = read_files(wheel)
        cross_check(files)
        staging = Path(tmp) / "t5"
        staging.mkdir()
        for name in BUNDLED:
            (staging / name).write_bytes(files[name])
        verify_folder(staging)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in BUNDLED:
            (args.out / name).write_bytes(files[name])
    print(f"wrote {', '.join(BUNDLED)} to {args.out}")


if __name__ == "__main__":
    main()
