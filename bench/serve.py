#!/usr/bin/env python
"""What the HTTP server costs on top of the engine, and what a running training costs txt2img.

Three measurements of the same txt2img request (prompt, --steps, --size, one image, fixed seed):

    inproc   GenerationEngine.txt2img in this process (save=False), --requests times
    http     POST /sdapi/v1/txt2img to a real `python -m lorastudio.interfaces.api` process on
             127.0.0.1 (sequential, one keep-alive connection), --requests times
    training the same HTTP request while POST /v1/trainings runs a real training job in that
             server (requests are served between training steps, through the worker's
             priority lane); skipped with the reason if the training never reaches IN_PROGRESS

Reported per phase: p50 / p95 / mean latency (ms) and requests per second (= requests / wall
time). overhead_ratio = http p50 / inproc p50 (1.0 = free; includes JSON, base64 PNG encoding,
the hop to the worker thread). The last line of output is one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py [--models-dir DIR] [--requests 30]

Without --models-dir a tiny random SD 1.x checkpoint is written to a temporary models folder
(so the numbers measure the server, not a model). Both the bench process and the server get
--threads torch threads (default 1: on a shared small CPU more threads mostly fight).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a red circle on a white background"


def stats(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"n": len(ordered), "p50_ms": round(pick(0.5) * 1000, 1), "p95_ms": round(pick(0.95) * 1000, 1),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 1), "req_per_s": round(len(ordered) / wall, 2)}


def timed(fn, n: int) -> tuple[list[float], float]:
    out = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out, time.perf_counter() - start


def tiny_models(folder: Path) -> Path:
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline

    (folder / "Stable-diffusion").mkdir(parents=True)
    save_sd1_single_file(tiny_sd1_pipeline(0), folder / "Stable-diffusion" / "tiny.safetensors")
    return folder


def dataset(folder: Path, n: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        rgb = (np.random.RandomState(i).rand(64, 64, 3) * 255).astype("uint8")
        Image.fromarray(rgb).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a picture")
    return folder


def measure_inproc(models: Path, work: Path, args) -> dict:
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    engine = GenerationEngine(StudioSettings(models_dir=models, outdir=work / "outputs", device=args.device,
                                             include_bundled=False))
    params = {"prompt": PROMPT, "steps": args.steps, "width": args.size, "height": args.size,
              "seed": 1234, "sampler": "Euler", "model": args.model}
    engine.txt2img(params, save=False)  # load + warm up
    lat, wall = timed(lambda: engine.txt2img(params, save=False), args.requests)
    return stats(lat, wall)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path)
    ap.add_argument("--model", default=None, help="checkpoint name (default: the first one)")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-steps", type=int, default=100000, help="long enough to outlast the measurement")
    return ap.parse_args(argv)


@contextlib.contextmanager
def server_process(models: Path, work: Path, args):
    """`python -m lorastudio.interfaces.api` on a free port; yields its base URL, stops it after."""
    import httpx

    port = free_port()
    log = open(work / "server.log", "wb")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "lorastudio.interfaces.api", "--host", "127.0.0.1",
                               "--port", str(port), "--models-dir", str(models), "--outdir", str(work / "out"),
                               "--projects-dir", str(work / "projects"), "--device", args.device],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(base + "/sdapi/v1/samplers", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
        log.close()


def measure_during_training(http, call, work: Path, args, base_model: str, http_p50_ms: float) -> dict:
    """The same requests while a training runs in the server's queue."""
    ds = dataset(work / "projects" / "bench-data")
    sub = http.post("/v1/trainings", json={"images": str(ds), "trigger": "zzbench", "base": base_model,
                                           "steps": args.train_steps, "resolution": 64, "rank": 4})
    if sub.status_code != 202:
        return {"skipped": f"submit refused: {sub.status_code} {sub.text[:300]}"}
    rid = sub.json()["request_id"]
    status, deadline = {}, time.monotonic() + 300
    while time.monotonic() < deadline:
        status = http.get(f"/v1/trainings/{rid}/status").json()
        if status["status"] != "IN_QUEUE" and (status.get("step") or status["status"] != "IN_PROGRESS"):
            break
        time.sleep(0.2)
    if status.get("status") != "IN_PROGRESS":
        reason = status.get("reason") or status.get("status")
        return {"skipped": f"training did not run: {reason}"[:500]}
    before = status.get("step") or 0
    lat, wall = timed(call, args.requests)
    after = http.get(f"/v1/trainings/{rid}/status").json()
    during = stats(lat, wall)
    http.put(f"/v1/trainings/{rid}/cancel")
    return {**during, "training_steps_during": (after.get("step") or 0) - before,
            "slowdown_p50": round(during["p50_ms"] / http_p50_ms, 3)}


def main(argv=None) -> int:
    args = parse_args(argv)

    import gc

    import httpx
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lorastudio-bench-serve-"))
    models = args.models_dir or tiny_models(work / "models")
    request = {"prompt": PROMPT, "negative_prompt": "", "steps": args.steps,
               "width": args.size, "height": args.size, "seed": 1234, "sampler_name": "Euler", "batch_size": 1}
    result: dict = {"device": args.device, "torch_threads": args.threads, "steps": args.steps, "size": args.size,
                    "requests": args.requests}

    result["inproc"] = measure_inproc(models, work, args)
    gc.collect()  # the server below loads its own copy of the model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    with server_process(models, work, args) as base, httpx.Client(base_url=base, timeout=600) as http:
        if args.model:
            http.post("/sdapi/v1/options", json={"sd_model_checkpoint": args.model}).raise_for_status()

        def call():
            r = http.post("/sdapi/v1/txt2img", json=request)
            r.raise_for_status()

        first_model = http.get("/sdapi/v1/sd-models").json()[0]["title"]
        call()  # load + warm up
        lat, wall = timed(call, args.requests)
        result["http"] = stats(lat, wall)
        result["overhead_ratio"] = round(result["http"]["p50_ms"] / result["inproc"]["p50_ms"], 3)
        result["training"] = measure_during_training(http, call, work, args, args.model or first_model,
                                                     result["http"]["p50_ms"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
