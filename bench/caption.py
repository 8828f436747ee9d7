#!/usr/bin/env python
"""What lorastudio's WD14 tagging costs on top of calling onnxruntime directly.

The model has WD14's signature, input size (448) and tag count (9083) but almost no compute,
so the numbers measure the code around onnxruntime, not a network:

    tagger   per picture, already decoded: WD14Tagger.tag (pad, resize, BGR, run, thresholds,
             escaping) vs a minimal direct version (the same steps written inline, names
             taken as they are). overhead_ratio = lorastudio median / direct median; goal <= 1.1.
    files    a whole folder, models loaded beforehand: `caption_dataset` (folder scan, decode with
             size guard and colour handling, atomic fsync'd caption writes, frequency summary) vs
             a minimal loop (Image.open, the same inline steps, plain file write). captions_per_s
             for both; file_overhead_ratio informative; model_load_s (CSV + session) apart.

    OMP_NUM_THREADS=1 .venv/bin/python bench/caption.py [--images 40] [--repeat 3]

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def direct_tags(session, input_name, names, categories, image, size, threshold=0.35, char_threshold=0.85):
    """The inline baseline: what a script calling onnxruntime itself would do."""
    import numpy as np
    from PIL import Image

    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    square = square.resize((size, size), Image.Resampling.BICUBIC)
    x = np.asarray(square, dtype=np.float32)[:, :, ::-1][None]
    probs = session.run(None, {input_name: np.ascontiguousarray(x)})[0][0]
    keep = ((categories == 0) & (probs >= threshold)) | ((categories == 4) & (probs >= char_threshold))
    idx = np.nonzero(keep)[0]
    idx = idx[np.lexsort((-probs[idx], categories[idx] != 4))]  # characters first, then best first
    return [names[i] for i in idx]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from lorastudio.services.captioning import caption_dataset
    from lorastudio.training.dataset.autocaption import load_interrogators
    from lorastudio.testing.tiny_interrogators import write_bench_wd14
    from lorastudio.training.dataset.caption_options import CaptionOptions
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset
    from lorastudio.training.dataset.taggers.wd14 import WD14Options, load_wd14, read_tags_csv

    work = Path(tempfile.mkdtemp(prefix="lorastudio-bench-caption-"))
    model_dir = write_bench_wd14(work / "models" / "interrogators" / "wd-bench")
    pictures = draw_sticker_dataset(work / "data", n=args.images, size=512, with_captions=False)
    decoded = [Image.open(p).convert("RGB") for p in pictures]

    tagger = load_wd14(model_dir, threads=int(os.environ.get("OMP_NUM_THREADS", "1")))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    session = ort.InferenceSession(str(model_dir / "model.onnx"), sess_options=opts,
                                   providers=["CPUExecutionProvider"])
    tags = read_tags_csv(model_dir / "selected_tags.csv")
    names = [t.name for t in tags]
    categories = np.array([t.category for t in tags])
    input_name = session.get_inputs()[0].name
    options = WD14Options()

    # Same tags from both (names as in the CSV vs caption text), so the two do the same work.
    for im in decoded[:3]:
        ours = [t.name for t in tagger.tag(im, options)]
        assert ours == direct_tags(session, input_name, names, categories, im, 448), "baseline disagrees"

    def interleaved() -> tuple[list[float], list[float]]:
        # Alternating the two per picture: on a shared machine, load from other processes then
        # hits both sides alike instead of whichever loop happened to run during it.
        ours, direct = [], []
        for _ in range(args.repeat):
            for im in decoded:
                t0 = time.perf_counter()
                tagger.tag(im, options)
                t1 = time.perf_counter()
                direct_tags(session, input_name, names, categories, im, 448)
                t2 = time.perf_counter()
                ours.append(t1 - t0)
                direct.append(t2 - t1)
        return ours, direct

    interleaved()  # warm-up
    ours_t, direct_t = interleaved()

    def run_ours() -> float:
        for p in (work / "data").glob("*.txt"):
            p.unlink()
        t0 = time.perf_counter()
        caption_dataset(work / "data", CaptionOptions(tagger=str(model_dir)), models_dir=work / "models",
                        trigger="DeltamonStamp", models=loaded)
        return time.perf_counter() - t0

    def run_direct() -> float:
        for p in (work / "data").glob("*.txt"):
            p.unlink()
        t0 = time.perf_counter()
        for p in pictures:
            with Image.open(p) as im:
                rgba = im.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, (0, 0), rgba.getchannel("A"))
            found = direct_tags(session, input_name, names, categories, flat, 448)
            p.with_suffix(".txt").write_text(", ".join(["DeltamonStamp", *found]) + "\n", encoding="utf-8")
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    loaded = load_interrogators(CaptionOptions(tagger=str(model_dir)), work / "models")
    load_s = time.perf_counter() - t0
    run_ours()  # warm-up
    pairs = [(run_ours(), run_direct()) for _ in range(args.repeat)]  # interleaved, best of each
    ours_files, direct_files = min(p[0] for p in pairs), min(p[1] for p in pairs)

    shutil.rmtree(work, ignore_errors=True)
    ours_med, direct_med = statistics.median(ours_t), statistics.median(direct_t)
    result = {
        "bench": "caption", "images": args.images, "model": "wd14-signature 448px, 9083 tags, near-zero compute",
        "tagger_ms_per_image": round(ours_med * 1000, 3), "direct_ms_per_image": round(direct_med * 1000, 3),
        "overhead_ratio": round(ours_med / direct_med, 3), "goal_overhead_ratio": 1.1,
        "captions_per_s": round(args.images / ours_files, 2),
        "direct_captions_per_s": round(args.images / direct_files, 2),
        "file_overhead_ratio": round(ours_files / direct_files, 3),
        "model_load_s": round(load_s, 3),
    }
    print(f"tagger: {result['tagger_ms_per_image']} ms/picture vs direct onnxruntime {result['direct_ms_per_image']} "
          f"ms (x{result['overhead_ratio']}); folder: {result['captions_per_s']} captions/s vs "
          f"{result['direct_captions_per_s']} (x{result['file_overhead_ratio']}); model load {result['model_load_s']} s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
