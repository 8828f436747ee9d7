#!/usr/bin/env python
"""Would caching a single file's converted layout pay? Loading the file (from_single_file: map it,
rename and reshape its keys) against loading a diffusers copy of the same pipeline (what a cache of
the converted layout would hold: from_pretrained), against reading the file's bytes.

The bench writes the diffusers copy itself (pipe.save_pretrained, timed: the cost a first load
would pay to fill such a cache), then alternates the two loads --rounds times in this process
(imports done once, before), each followed by one pass over every UNet weight (the first touch of
memory-mapped tensors is paid there, not in the load). `read_s` reads every byte of the file in
8 MiB blocks (warm page cache: no root here to drop it). Wall and CPU (process_time) seconds, medians.

    .venv/bin/python bench/load_cache.py --tiny              (the tiny test model: checks the bench)
    .venv/bin/python bench/load_cache.py --full-size-ckpt /tmp/sd15-random.safetensors
        (writes a random-weight SD 1.5-shaped single file there first, if absent)
    .venv/bin/python bench/load_cache.py --ckpt SD15.safetensors

The last line is `load_cache {json}`: convert_s, cached_s, touch_*_s, read_s, write_cache_s,
ratio_cached_vs_convert (< 1: a cache would help) and ratio_convert_vs_read, with the load average.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def read_seconds(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(8 << 20):
            pass
    return time.perf_counter() - t0


def timed(load) -> tuple[float, float, float]:
    """(wall, cpu) of load(), then the wall time of one pass over every UNet weight."""
    gc.collect()
    t, c = time.perf_counter(), time.process_time()
    pipe = load()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    t = time.perf_counter()
    sum(float(p.detach().sum()) for p in pipe.unet.parameters())
    touch = time.perf_counter() - t
    del pipe
    return wall, cpu, touch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="an SD 1.x / SDXL single .safetensors file")
    src.add_argument("--full-size-ckpt", help="path of a random-weight SD 1.5-shaped file (written when absent)")
    src.add_argument("--tiny", action="store_true", help="the tiny test model")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from lorastudio.core.paths import ModelsRoot
    from lorastudio.models.load_options import load_options
    from lorastudio.models.loader import detect_family, open_checkpoint
    from lorastudio.testing.tiny_sd import save_sd1_single_file

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="load_cache_") as tmp:
        models = Path(tmp) / "models"
        (models / "Stable-diffusion").mkdir(parents=True)
        ckpt = models / "Stable-diffusion" / "base.safetensors"
        if args.tiny:
            from lorastudio.testing.tiny_sd import tiny_sd1_pipeline

            save_sd1_single_file(tiny_sd1_pipeline(0), ckpt)
        else:
            source = Path(args.ckpt or args.full_size_ckpt)
            if args.full_size_ckpt and not source.exists():
                import importlib.util

                spec = importlib.util.spec_from_file_location("train_vs_kohya", ROOT / "bench" / "train_vs_kohya.py")
                world = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(world)
                print(f"writing a random-weight SD 1.5-shaped single file to {source}", flush=True)
                save_sd1_single_file(world.full_size_sd15_pipeline(), source)
            os.symlink(source.resolve(), ckpt)
        options = load_options(ModelsRoot.at(models), device="cpu", dtype="float32")
        st_path, header = open_checkpoint(ckpt, options)
        shapes = {n: tuple(t.shape) for n, t in header.tensors.items()}
        family = detect_family(ckpt, shapes.keys())
        copy = Path(tmp) / "converted"

        def convert():
            return family.load_checkpoint(st_path, shapes, dict(header.metadata), options)

        def cached():
            return family.load_folder(copy, options)

        pipe = convert()  # warm-up: imports, page cache
        t = time.perf_counter()
        pipe.save_pretrained(str(copy), safe_serialization=True)
        write_s = time.perf_counter() - t
        del pipe
        cached()
        runs: dict[str, list[tuple[float, float, float]]] = {"convert": [], "cached": []}
        for r in range(args.rounds):
            for name, load in (("convert", convert), ("cached", cached)):
                runs[name].append(timed(load))
                print(f"round {r + 1} {name}: wall {runs[name][-1][0]:.2f}s cpu {runs[name][-1][1]:.2f}s "
                      f"touch {runs[name][-1][2]:.2f}s", flush=True)
        read_s = statistics.median(read_seconds(ckpt) for _ in range(3))
        file_bytes = ckpt.resolve().stat().st_size

    def med(name: str, k: int) -> float:
        return round(statistics.median(x[k] for x in runs[name]), 3)

    result = {"model": "tiny" if args.tiny else str(args.ckpt or args.full_size_ckpt),
              "file_gib": round(file_bytes / 2**30, 3), "rounds": args.rounds,
              "convert_s": med("convert", 0), "cached_s": med("cached", 0),
              "convert_cpu_s": med("convert", 1), "cached_cpu_s": med("cached", 1),
              "touch_convert_s": med("convert", 2), "touch_cached_s": med("cached", 2),
              "read_s": round(read_s, 3), "write_cache_s": round(write_s, 3),
              "ratio_cached_vs_convert": round(med("cached", 0) / med("convert", 0), 3),
              "ratio_convert_vs_read": round(med("convert", 0) / read_s, 2),
              "ratio_cached_vs_read": round(med("cached", 0) / read_s, 2),
              "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    print("load_cache " + json.dumps(result))


if __name__ == "__main__":
    main()
