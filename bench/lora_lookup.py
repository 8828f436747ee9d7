#!/usr/bin/env python
"""Resolving `<lora:name:w>` tags with 2,000 files in models/Lora (no torch, no model).

Every request's tags go through Catalog.find_lora and the infotext hash (lora_hash_for_infotext with
the catalog's hash cache), as GenerationEngine._activate_loras does. The tree: --files small
.safetensors files (a header and 8 bytes of tensor data), half at the top of models/Lora, half in
20 subfolders (A1111 users keep LoRAs in folders per base model / character). Tags name
files by stem (A1111's names), at the top and in subfolders. One warm-up pass (it fills
the hash cache and the scan cache, as the first request does; the folder is then left alone
for 2 s, the window in which the catalog rescans a just-changed folder), then --rounds passes over --tags
tags; the time per tag is the median of the passes. Then files are added and removed, and
looked up at once, to check the scan cache sees changes (a stale cache fails the run).

Last line: one JSON object. Goal: ms_per_tag <= 1.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--tags", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from safetensors.numpy import save_file
    import numpy as np

    from lorastudio.core.hashes import lora_hash_for_infotext
    from lorastudio.core.paths import ModelsRoot
    from lorastudio.models.catalog import Catalog

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        lora = root / "Lora"
        names = []
        for i in range(args.files):
            sub = lora if i % 2 == 0 else lora / f"set{i % 20:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            save_file({"w": np.full((2,), i, np.float32)}, str(sub / f"lora{i:04d}.safetensors"))
            names.append(f"lora{i:04d}")
        catalog = Catalog(ModelsRoot.at(root), include_bundled=False)
        rng = random.Random(0)
        tags = [rng.choice(names) for _ in range(args.tags)]

        def one_pass() -> float:
            start = time.perf_counter()
            for t in tags:
                entry = catalog.find_lora(t)
                lora_hash_for_infotext(entry.path, catalog.hashes)
            return (time.perf_counter() - start) / len(tags) * 1000

        first = one_pass()
        # The catalog does not reuse a scan of a folder changed in the last 2 s (mtime ticks are coarse):
        # a LoRA folder is normally older than that.
        time.sleep(2.1)
        one_pass()
        per_tag = []
        for _ in range(args.rounds):
            per_tag.append(one_pass())
        for r in range(2):  # then changes must be seen at once
            new = lora / "set05" / f"added{r}.safetensors"
            save_file({"w": np.zeros((2,), np.float32)}, str(new))
            assert catalog.find_lora(f"added{r}").path == new, "the scan cache missed an added file"
        (lora / "set05" / "added0.safetensors").unlink()
        try:
            catalog.find_lora("added0")
            raise AssertionError("the scan cache kept a removed file")
        except Exception as exc:  # NotFound
            assert type(exc).__name__ == "NotFound", exc
    print(json.dumps({"bench": "lora_lookup", "files": args.files, "tags": args.tags,
                      "first_pass_ms_per_tag": round(first, 3), "ms_per_tag": round(statistics.median(per_tag), 4),
                      "goal_ms_per_tag": 1.0}))


if __name__ == "__main__":
    main()
