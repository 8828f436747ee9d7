"""bench/train_vs_kohya.py: its phase reader, and its lorastudio half end to end on the tiny model.

kohya's half needs kohya's checkout and environment (a bench, not a test); its output reader is
checked here on lines shaped like its progress bar (tqdm redraws with carriage returns).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_vs_kohya.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_vs_kohya", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kohya_phases_from_progress_bar_lines(bench):
    lines = [(1.0, "loading model"), (20.0, "caching latents."), (22.0, "prepare optimizer"),
             (23.0, "steps:   0%|          | 0/30 [00:00<?, ?it/s]")]
    # step n first shows at 25 + 1.5 (n - 1); tqdm redraws the same step with a new postfix
    for n in range(1, 31):
        t = 25.0 + 1.5 * (n - 1)
        lines += [(t, f"steps:  {n * 3}%|#| {n}/30 [00:{n:02d}<00:10, 1.50s/it]"),
                  (t + 0.2, f"steps:  {n * 3}%|#| {n}/30 [00:{n:02d}<00:10, 1.50s/it, avr_loss=0.1]")]
    lines += [(68.5 + 1.2, "model saved.")]
    out = bench.phases(lines, 72.0, step_re=bench._KOHYA_STEP, cache_re=re.compile("caching latents", re.I),
                       saved_re=re.compile("model saved", re.I), steps=30)
    assert out["s_per_step"] == pytest.approx(1.5)
    assert out["load"] == 20.0
    assert out["cache"] == pytest.approx(25.0 - 20.0 - 1.5)
    assert out["steps"] == pytest.approx(1.5 * 29 + 1.5)
    assert out["save"] == pytest.approx(1.2)
    assert out["sample"] == 0 and out["exit"] == pytest.approx(72.0 - 69.7)
    assert out["total"] == 72.0


def test_missing_phase_is_an_error_naming_what_was_seen(bench):
    with pytest.raises(RuntimeError, match="could not find the phases"):
        bench.phases([(1.0, "steps: | 1/3 [")], 2.0, step_re=bench._KOHYA_STEP, cache_re=re.compile("caching"),
                     saved_re=re.compile("saved"), steps=3)


def test_lorastudio_half_runs_and_reports_json(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--steps", "2", "--images", "1", "--threads", "1",
                           "--resolution", "32"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kohya"] == [] and result["ratio_total"] is None and result["kohya_commit"] is None
    run = result["ours"][0]
    assert set(run) == {"load", "cache", "steps", "save", "sample", "exit", "total", "s_per_step", "peak_rss_gib"}
    assert run["s_per_step"] > 0 and run["steps"] > 0 and run["load"] > 0 and run["peak_rss_gib"] > 0
    # the phases cover the run: their sum is its wall time (rounding of each phase to 0.01 s aside)
    parts = sum(run[k] for k in ("load", "cache", "steps", "save", "sample", "exit"))
    assert parts == pytest.approx(run["total"], abs=0.1)
    assert result["load_average_before"] and result["lora_modules"] == "kohya"


def test_kohya_options_go_together():
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--kohya-dir", "/nonexistent"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--kohya-python" in proc.stderr
