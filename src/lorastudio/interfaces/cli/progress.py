"""Progress bars for the terminal (tqdm), kept out of the engines."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def step_progress(total: int, desc: str = "sampling"):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    done = {"n": 0}

    def advance(batch_index: int, step: int, steps: int) -> None:
        target = batch_index * steps + step
        if target > done["n"]:
            bar.update(target - done["n"])
            done["n"] = target

    try:
        yield advance
    finally:
        bar.close()
