"""A stand-in for the job worker's context: the surface the training handler uses, recording logs.

Tests call `make_training_handler(...)(job, RecordingJobContext())` to run the queue's handler
without a worker thread or a database.
"""

from __future__ import annotations

import threading


class RecordingJobContext:
    def __init__(self):
        self.logs: list[tuple[str, str]] = []
        self.lease_lost = threading.Event()

    def progress(self, **fields):
        pass

    def log(self, message, level="INFO"):
        self.logs.append((level, message))

    def cancelled(self):
        return False

    def yield_point(self):
        return 0
