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


class TrainingProgress:
    """Shows a training run's events: a bar with step, smoothed loss, it/s and ETA; log lines above it."""

    def __enter__(self):
        self.bar = None
        return self

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.kind == "progress":
            if self.bar is None:
                self.bar = tqdm(total=event.total_steps, desc="training", unit="step", dynamic_ncols=True,
                                initial=event.step - 1)
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.loss:.4f}" if event.loss is not None else "-")
        elif event.message:
            (tqdm.write if self.bar else print)(event.message)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
