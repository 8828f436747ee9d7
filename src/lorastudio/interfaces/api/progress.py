"""The A1111 `shared.state` of one app instance: what /progress, /interrupt and /skip see."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any, Callable


class GenerationProgress:
    """Written by the worker thread while it generates, read by request handlers."""

    def __init__(self, interrupt_engine: Callable[[], None]):
        self._lock = threading.Lock()
        self._interrupt_engine = interrupt_engine
        self._reset()

    def _reset(self) -> None:
        self.job = ""
        self.job_count = 0
        self.job_no = 0
        self.sampling_step = 0
        self.sampling_steps = 0
        self.interrupted = False
        self.skipped = False
        self.job_timestamp = "0"
        self.time_start: float | None = None
        self.current_image = None
        self.task_id: str | None = None

    # --- worker side -------------------------------------------------------------------------
    def begin(self, job_count: int, steps: int, task_id: str | None = None) -> None:
        with self._lock:
            self._reset()
            self.job = "txt2img"
            self.job_count = job_count
            self.sampling_steps = steps
            self.task_id = task_id
            self.time_start = time.time()
            self.job_timestamp = datetime.now().strftime("%Y%m%d%H%M%S")

    def on_step(self, batch: int, step: int, steps: int) -> None:
        with self._lock:
            self.job_no, self.sampling_step, self.sampling_steps = batch, step, steps
            stop = self.interrupted or self.skipped
        if stop:
            # The engine clears its own flag when a call starts; a request that arrived just
            # before that would be lost, so it is re-raised at every step while it stands.
            self._interrupt_engine()

    def batch_done(self, batch: int, last_image) -> bool:
        """Record a finished batch; True if generation should go on to the next one."""
        with self._lock:
            self.job_no = batch + 1
            self.sampling_step = 0
            self.current_image = last_image
            self.skipped = False
            return not self.interrupted

    def end(self) -> None:
        with self._lock:
            self.job = ""
            self.job_count = 0
            self.job_no = 0
            self.sampling_step = 0
            self.current_image = None
            self.time_start = None

    # --- request side ------------------------------------------------------------------------
    def interrupt(self) -> None:
        with self._lock:
            busy = self.job_count > 0
            if busy:
                self.interrupted = True
        if busy:
            self._interrupt_engine()

    def skip(self) -> None:
        with self._lock:
            busy = self.job_count > 0
            if busy:
                self.skipped = True
        if busy:
            self._interrupt_engine()

    @property
    def was_interrupted(self) -> bool:
        with self._lock:
            return self.interrupted

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            state = {
                "skipped": self.skipped,
                "interrupted": self.interrupted,
                "stopping_generation": False,
                "job": self.job,
                "job_count": self.job_count,
                "job_timestamp": self.job_timestamp,
                "job_no": self.job_no,
                "sampling_step": self.sampling_step,
                "sampling_steps": self.sampling_steps,
            }
            if self.job_count == 0 or self.time_start is None:
                return {"progress": 0.0, "eta_relative": 0.0, "state": state, "image": None}
            # A1111's formula: a small head start so the ETA is defined from the first poll.
            progress = 0.01 + self.job_no / self.job_count
            if self.sampling_steps > 0:
                progress += self.sampling_step / self.sampling_steps / self.job_count
            progress = min(progress, 1.0)
            elapsed = time.time() - self.time_start
            eta = elapsed / progress - elapsed
            return {"progress": progress, "eta_relative": eta, "state": state, "image": self.current_image}
