#!/usr/bin/env python
"""End-to-end training time: lorastudio against kohya sd-scripts' train_network.py, same file, same settings.

Both trainers run as child processes on the same SD 1.x single file, the same pictures (kohya's
folder layout `<dir>/1_<name>/` with .txt captions, lorastudio reads the same folder's pictures),
batch 1, rank/alpha, AdamW, fp32 (or bf16 autocast for both with --precision bf16), latents cached, UNet only, the same number of steps, and the
same LoRA layers (kohya's default `networks.lora` set; lorastudio's default `lora_modules="kohya"`).
lorastudio draws no preview unless --ours-samples (kohya draws none without --sample_every_n_steps).
The runs alternate (ours, kohya, ours, ...) so that a change of load hits both.

Each child's output is read as it arrives and timestamped here, split on both "\\r" and "\\n"
(progress bars redraw with "\\r"). Phases, for each trainer:

    load    start of the process -> the "caching latents" line (imports, model load, dataset check)
    cache   -> the first step's line, less one steady step (latents and, for lorastudio, text embeddings)
    steps   the training steps: t(step N) - t(step 1) + one steady step
    save    t(step N) -> the "saved" line (lorastudio's "saved <file>" log, kohya's "model saved.")
    sample  the saved line -> lorastudio's "done" event (its final preview, when drawn)
    exit    -> the end of the process (interpreter shutdown; for kohya: from "model saved.")
    total   wall time of the process
    s_per_step  steady step time, (t(step N) - t(step k)) / (N - k), k = min(10, N // 3)
    peak_rss_gib  the child's peak resident size (os.wait4's ru_maxrss)

Without --kohya-dir / --kohya-python only lorastudio runs (ratios are then null). The machine's load
average is printed before and after: compare only figures taken on a quiet machine. The last
line is one JSON object: per-run phases of both, medians, `ratio_total` and `ratio_step`
(lorastudio / kohya, < 1 is faster) and `kohya_commit`.

    .venv/bin/python bench/train_vs_kohya.py --ckpt SD15.safetensors --kohya-dir ~/sd-scripts \\
        --kohya-python ~/sd-scripts/.venv/bin/python [--steps 30] [--resolution 64] [--runs 2]
    .venv/bin/python bench/train_vs_kohya.py --full-size-ckpt /tmp/sd15-random.safetensors ...
        (writes a random-weight SD 1.5-shaped single file there first, if absent)
    .venv/bin/python bench/train_vs_kohya.py --tiny   (the tiny test model; lorastudio only unless kohya is given)
    ... --precision bf16                  (both trainers in bf16 autocast; default: both float32)
    ... --precision no --ours-precision auto   (kohya's CPU default against lorastudio's default)

kohya's setup on these machines (venv, offline tokenizer, torchvision fix): ../shared/kohya-side-by-side.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRIGGER = "DeltamonStamp"
EVENT = "lorastudio-event "
_KOHYA_STEP = re.compile(r"steps:.*?\|\s*(\d+)/(\d+)")
_OURS_STEP = re.compile(r"^" + EVENT + r"progress (\d+)/(\d+)")


# --- the world ----------------------------------------------------------------------------------------
def full_size_sd15_pipeline():
    """SD 1.5's architecture (UNet 860M, CLIP ViT-L/14 text encoder, the SD VAE) with random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorastudio.models.formats.sd_config_inference import SD1_SCHEDULER
    from lorastudio.testing.tiny_sd import tiny_clip_tokenizer

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=512)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                      projection_dim=768))
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tiny_clip_tokenizer(), unet=unet,
                                   scheduler=PNDMScheduler.from_config(SD1_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def make_world(base: Path, args) -> tuple[Path, Path]:
    """models root holding the checkpoint (a link when given), and kohya's dataset layout."""
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    models = base / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Lora").mkdir()
    ckpt = models / "Stable-diffusion" / "base.safetensors"
    if args.tiny:
        save_sd1_single_file(tiny_sd1_pipeline(0), ckpt)
    else:
        source = Path(args.ckpt or args.full_size_ckpt)
        if args.full_size_ckpt and not source.exists():
            print(f"writing a random-weight SD 1.5-shaped single file to {source}", flush=True)
            save_sd1_single_file(full_size_sd15_pipeline(), source)
        os.symlink(source.resolve(), ckpt)
    data = base / "data" / f"1_{TRIGGER}"
    draw_sticker_dataset(data, n=args.images, trigger=TRIGGER, seed=0, size=args.resolution)
    for png in data.glob("*.png"):  # kohya reads .txt captions beside the pictures; write them when absent
        txt = png.with_suffix(".txt")
        if not txt.exists():
            txt.write_text(TRIGGER, encoding="utf-8")
    return models, data


def kohya_tokenizer_dir(base: Path) -> Path:
    """kohya's offline tokenizer folder (<dir>/openai_clip-vit-large-patch14/) from the bundled CLIP vocabulary."""
    from lorastudio.testing.tiny_sd import CLIP_VOCAB_DIR

    tok = base / "tokenizer" / "openai_clip-vit-large-patch14"
    tok.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(Path(CLIP_VOCAB_DIR) / name, tok / name)
    (tok / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
    (tok / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}))
    return tok.parent


# --- running a child and timing its lines -----------------------------------------------------------------
def timed_run(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[list[tuple[float, str]], float, float, int]:
    """(timestamped lines, wall seconds, peak RSS GiB, exit code) of one child process."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    lines: list[tuple[float, str]] = []
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536) if sel.select(timeout=1.0) else None
        if chunk == b"":
            break
        if chunk is None:
            continue
        now = time.monotonic() - start
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        lines += [(now, p.decode("utf-8", "replace")) for p in parts if p.strip()]
    if buf.strip():
        lines.append((time.monotonic() - start, buf.decode("utf-8", "replace")))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    return lines, wall, usage.ru_maxrss / 1024**2, rc


def phases(lines: list[tuple[float, str]], wall: float, *, step_re: re.Pattern, cache_re: re.Pattern,
           saved_re: re.Pattern, steps: int, done_re: re.Pattern | None = None) -> dict:
    first_seen: dict[int, float] = {}
    t_cache = t_saved = t_done = None
    for t, line in lines:
        m = step_re.search(line)
        if m and int(m[1]) >= 1:
            first_seen.setdefault(int(m[1]), t)
        if t_cache is None and cache_re.search(line):
            t_cache = t
        if t_saved is None and saved_re.search(line):
            t_saved = t
        if t_done is None and done_re is not None and done_re.search(line):
            t_done = t
    if steps not in first_seen or 1 not in first_seen or t_cache is None:
        raise RuntimeError(f"could not find the phases in the output (steps seen: {sorted(first_seen)[:5]}..., "
                           f"cache line: {t_cache is not None}); last lines:\n"
                           + "\n".join(line for _, line in lines[-15:]))
    k = max(1, min(10, steps // 3))
    k = min(first_seen, key=lambda s: abs(s - k))
    steady = (first_seen[steps] - first_seen[k]) / max(1, steps - k)
    t_saved = wall if t_saved is None else t_saved
    t_done = t_saved if t_done is None else t_done  # no preview phase: the rest is the exit
    return {"load": round(t_cache, 2), "cache": round(first_seen[1] - t_cache - steady, 2),
            "steps": round(first_seen[steps] - first_seen[1] + steady, 2),
            "save": round(t_saved - first_seen[steps], 2), "sample": round(t_done - t_saved, 2),
            "exit": round(wall - t_done, 2), "total": round(wall, 2), "s_per_step": round(steady, 4)}


# --- the two trainers ---------------------------------------------------------------------------------------
def ours_child(config_json: str) -> None:
    """Run lorastudio's train() and print each event with a marker line the parent times."""
    from lorastudio.training.api import train

    def show(e):
        if e.kind == "progress":
            print(f"{EVENT}progress {e.step}/{e.total_steps}", flush=True)
        else:
            print(f"{EVENT}{e.kind} {(e.message or '').splitlines()[0] if e.message else ''}", flush=True)

    train(json.loads(config_json), on_event=show)


def run_ours(args, models: Path, data: Path, projects: Path, n: int) -> dict:
    cfg = dict(images=str(data), trigger=TRIGGER, base="base", models_dir=str(models), projects_dir=str(projects),
               project=f"run{n}", steps=args.steps, resolution=[args.resolution], rank=args.rank, alpha=args.alpha,
               lr=1e-4, batch_size=1, seed=1, mixed_precision=args.ours_precision or args.precision, optimizer="adamw", train_text_encoder=False,
               gradient_checkpointing=False, lora_modules=args.lora_modules, samples=bool(args.ours_samples),
               install_lora=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(args.threads)}
    lines, wall, rss, rc = timed_run([sys.executable, __file__, "--ours-child", json.dumps(cfg)], env)
    if rc != 0:
        raise RuntimeError("lorastudio run failed:\n" + "\n".join(line for _, line in lines[-30:]))
    out = phases(lines, wall, step_re=_OURS_STEP, cache_re=re.compile(r"^" + EVENT + r"log caching latents"),
                 saved_re=re.compile(r"^" + EVENT + r"log saved "), done_re=re.compile(r"^" + EVENT + r"done"),
                 steps=args.steps)
    return out | {"peak_rss_gib": round(rss, 2)}


def run_kohya(args, ckpt: Path, data: Path, tok: Path, out_dir: Path) -> dict:
    cmd = [args.kohya_python, "train_network.py", "--pretrained_model_name_or_path", str(ckpt),
           "--tokenizer_cache_dir", str(tok), "--train_data_dir", str(data.parent), "--caption_extension", ".txt",
           "--resolution", str(args.resolution), "--network_module", "networks.lora", "--network_dim", str(args.rank),
           "--network_alpha", str(args.alpha), "--network_train_unet_only", "--optimizer_type", "AdamW",
           "--learning_rate", "1e-4", "--train_batch_size", "1", "--max_train_steps", str(args.steps),
           "--mixed_precision", args.precision, "--save_precision", "float", "--cache_latents", "--sdpa", "--seed", "1",
           "--max_data_loader_n_workers", "0", "--output_dir", str(out_dir), "--output_name", "k"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    lines, wall, rss, rc = timed_run(cmd, env, cwd=Path(args.kohya_dir))
    if rc != 0:
        raise RuntimeError("kohya run failed:\n" + "\n".join(line for _, line in lines[-30:]))
    out = phases(lines, wall, step_re=_KOHYA_STEP, cache_re=re.compile(r"caching latents", re.I),
                 saved_re=re.compile(r"model saved", re.I), steps=args.steps)
    return out | {"peak_rss_gib": round(rss, 2)}


def kohya_commit(kohya_dir: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", kohya_dir, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def median_phases(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]} if runs else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="an SD 1.x single .safetensors file")
    src.add_argument("--full-size-ckpt", help="path of a random-weight SD 1.5-shaped file (written when absent)")
    src.add_argument("--tiny", action="store_true", help="the tiny test model (checks the bench itself)")
    src.add_argument("--ours-child", help=argparse.SUPPRESS)
    ap.add_argument("--kohya-dir", help="a kohya-ss/sd-scripts checkout")
    ap.add_argument("--kohya-python", help="the Python of kohya's environment")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=1, help="runs of each trainer, alternated")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of both children")
    ap.add_argument("--lora-modules", default="kohya", choices=("kohya", "attention"))
    ap.add_argument("--precision", default="no", choices=("no", "bf16"),
                    help="mixed precision of both trainers (kohya: --mixed_precision)")
    ap.add_argument("--ours-precision", choices=("auto", "no", "bf16"),
                    help="lorastudio's precision when it differs from --precision (auto: its default for the device)")
    ap.add_argument("--ours-samples", action="store_true", help="lorastudio draws its final preview")
    args = ap.parse_args()
    if args.ours_child:
        ours_child(args.ours_child)
        return
    if bool(args.kohya_dir) != bool(args.kohya_python):
        ap.error("--kohya-dir and --kohya-python go together")

    load_before = os.getloadavg()
    ours_runs, kohya_runs = [], []
    with tempfile.TemporaryDirectory(prefix="train_vs_kohya_") as tmp:
        base = Path(tmp)
        models, data = make_world(base, args)
        tok = kohya_tokenizer_dir(base) if args.kohya_dir else None
        for n in range(args.runs):
            ours = run_ours(args, models, data, base / "projects", n)
            ours_runs.append(ours)
            print(f"lorastudio run {n + 1}: {ours}", flush=True)
            if args.kohya_dir:
                kohya = run_kohya(args, (models / "Stable-diffusion" / "base.safetensors").resolve(), data, tok,
                                  base / f"kohya{n}")
                kohya_runs.append(kohya)
                print(f"kohya      run {n + 1}: {kohya}", flush=True)
    ours_m, kohya_m = median_phases(ours_runs), median_phases(kohya_runs)
    result = {
        "bench": "train_vs_kohya", "steps": args.steps, "resolution": args.resolution, "images": args.images,
        "rank": args.rank, "alpha": args.alpha, "threads": args.threads, "lora_modules": args.lora_modules,
        "precision": args.precision, "ours_precision": args.ours_precision or args.precision,
        "ours_samples": bool(args.ours_samples), "model": "tiny" if args.tiny else str(args.ckpt or args.full_size_ckpt),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "ours": ours_runs, "kohya": kohya_runs, "ours_median": ours_m, "kohya_median": kohya_m,
        "ratio_total": round(ours_m["total"] / kohya_m["total"], 3) if kohya_m else None,
        "ratio_step": round(ours_m["s_per_step"] / kohya_m["s_per_step"], 3) if kohya_m else None,
        "kohya_commit": kohya_commit(args.kohya_dir) if args.kohya_dir else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
