"""Progress bars for the terminal (tqdm), kept out of the engines.

On a terminal the bar redraws in place and stays as one line when done. When stderr is not a
terminal (a log file, a pipe, CI) redraws would pile up as text, so the bar draws nowhere
while it runs and its last line is written once at the end.
"""

from __future__ import annotations

import io
import sys
from contextlib import contextmanager


def _bar(**kwargs):
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(leave=True, dynamic_ncols=True, file=None if tty else io.StringIO(), **kwargs), tty


def _close(bar, tty: bool, failed: bool = False) -> None:
    bar.close()
    if not tty and not failed:  # after an error, the error line says what happened, not a stale bar
        print(str(bar), file=sys.stderr)


@contextmanager
def step_progress(total: int, desc: str = "sampling"):
    bar, tty = _bar(total=total, desc=desc, unit="step")
    done = {"n": 0}

    def advance(batch_index: int, step: int, steps: int) -> None:
        target = batch_index * steps + step
        if target > done["n"]:
            bar.update(target - done["n"])
            done["n"] = target

    try:
        yield advance
    except BaseException:
        _close(bar, tty, failed=True)
        raise
    _close(bar, tty)


class TrainingProgress:
    """Shows a training run's events: a bar with step, smoothed loss, it/s and ETA; log lines above it."""

    def __enter__(self):
        self.bar = None
        self.tty = True
        return self

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.kind == "progress":
            if self.bar is None:
                self.bar, self.tty = _bar(total=event.total_steps, desc="training", unit="step",
                                          initial=event.step - 1)
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.loss:.4f}" if event.loss is not None else "-")
        elif event.message:
            (tqdm.write if self.bar is not None and self.tty else print)(event.message)

    def __exit__(self, exc_type, *exc):
        if self.bar is not None:
            _close(self.bar, self.tty, failed=exc_type is not None)
        return False
