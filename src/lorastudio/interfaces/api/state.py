"""Everything one app instance owns: engine, job queue, its worker thread, options, progress.

Two apps in one process (tests do this) share nothing. The engine is only ever called on the
worker thread, the accelerator's owner: generation requests go through the worker's priority
lane, so they run between jobs or at a training job's yield points, never next to a step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import unquote

from lorastudio.core.errors import InvalidParameter, NotFound
from lorastudio.core.limits import check_path
from lorastudio.core.settings import StudioSettings
from lorastudio.interfaces.api.options import OptionsStore
from lorastudio.interfaces.api.progress import GenerationProgress
from lorastudio.interfaces.api.security import resolve_inside

log = logging.getLogger(__name__)
T = TypeVar("T")

_SEP = re.compile(r"[\\/]+")


@dataclass(frozen=True)
class ApiLimits:
    max_body_bytes: int = 64 * 1024 * 1024  # JSON bodies (base64 images included)
    max_upload_bytes: int = 2 * 1024**3  # training dataset zips
    max_image_bytes: int = 48 * 1024 * 1024
    max_image_pixels: int = 8192 * 8192
    # steps × width × height × images per request; None = only GenerationParams' own bounds.
    max_generation_work: int | None = None
    max_unzipped_bytes: int = 8 * 1024**3


class ApiState:
    def __init__(self, settings: StudioSettings, *, engine=None, store=None, limits: ApiLimits | None = None,
                 webhook_hosts: Sequence[str] = (), dataset_roots: Sequence[Path] = (), train_fn=None,
                 poll_interval_s: float = 0.5, run_worker: bool = True, artifacts=None):
        self.settings = settings
        self.limits = limits or ApiLimits()
        if engine is None:
            from lorastudio.generation.engine import GenerationEngine

            engine = GenerationEngine(settings)
        self.engine = engine
        self.outputs_root = Path(settings.outdir).resolve()
        self.projects_root = Path(settings.projects_dir).resolve()
        self.uploads_root = self.projects_root / ".lorastudio" / "uploads"
        self.dataset_roots = [self.projects_root, *(Path(p).resolve() for p in dataset_roots)]
        self.webhook_hosts = tuple(webhook_hosts)
        if store is None:
            from lorastudio.services.jobs import SqliteJobStore

            store = SqliteJobStore(self.projects_root / ".lorastudio" / "jobs.sqlite3")
            self._owns_store = True
        else:
            self._owns_store = False
        self.store = store
        # True when runs travel through a store of their own (S3, another folder): an uploaded
        # dataset then goes there too, for a worker that does not share this node's disk.
        self.artifacts_shared = artifacts is not None
        if artifacts is None:
            from lorastudio.services.artifacts import DirectoryArtifactStore

            # A worker in this process, or on a shared folder mounted at the same path, writes its
            # runs where keys under the projects folder find them.
            artifacts = DirectoryArtifactStore(self.projects_root)
        self.artifacts = artifacts
        self.options = OptionsStore(self.outputs_root)
        self.progress = GenerationProgress(self._interrupt_engine)
        self._train_fn = train_fn
        # False: an API node of a farm (`serve --no-worker`); it queues, `lorastudio worker`
        # processes elsewhere run the jobs, and nothing here touches an accelerator.
        self.run_worker = run_worker
        self._poll_interval_s = poll_interval_s
        self._worker = None
        self._worker_lock = threading.Lock()
        self._notifier = None
        self._lora_meta: dict[tuple[str, int, int], dict] = {}

    # --- the worker ----------------------------------------------------------------------------
    @property
    def worker(self):
        if not self.run_worker:
            from fastapi import HTTPException

            raise HTTPException(503, "this API node only queues jobs (--no-worker); it runs no generation")
        with self._worker_lock:
            if self._worker is None:
                from lorastudio.interfaces.api.training_jobs import WebhookNotifier, make_training_handler
                from lorastudio.services.jobs import JobWorker

                handler = make_training_handler(self.settings, train_fn=self._train_fn,
                                                artifacts=self.artifacts if self.artifacts_shared else None)
                self._worker = JobWorker(self.store, {"training": handler}, poll_interval_s=self._poll_interval_s)
                # Recovery happens here: jobs left IN_PROGRESS by a dead server go back to the queue.
                self._worker.start(recover=True)
                if self.webhook_hosts:
                    self._notifier = WebhookNotifier(self.store, self.projects_root / ".lorastudio" / "webhooks",
                                                     self.webhook_hosts)
                    self._notifier.start()
            return self._worker

    def start(self) -> None:
        if self.run_worker:
            _ = self.worker
            return
        with self._worker_lock:
            if self.webhook_hosts and self._notifier is None:
                from lorastudio.interfaces.api.training_jobs import WebhookNotifier

                self._notifier = WebhookNotifier(self.store, self.projects_root / ".lorastudio" / "webhooks",
                                                 self.webhook_hosts)
                self._notifier.start()

    def wake_worker(self) -> None:
        """Look for work now (after a submit); a no-op where the workers are other processes."""
        if self.run_worker:
            self.worker.wake()

    def stop(self, timeout: float = 10.0) -> None:
        with self._worker_lock:
            worker, self._worker = self._worker, None
            notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.stop()
        if worker is not None:
            self._interrupt_engine()
            worker.stop(timeout)
        if self._owns_store:
            self.store.close()

    async def on_device(self, fn: Callable[[], T]) -> T:
        """Run fn on the worker thread, at the next gap between jobs or training steps."""
        return await asyncio.wrap_future(self.worker.run_priority(fn))

    def _interrupt_engine(self) -> None:
        interrupt = getattr(self.engine, "interrupt", None)
        if interrupt is not None:
            interrupt()

    # --- models a client may name ----------------------------------------------------------------
    @property
    def catalog(self):
        return self.engine.catalog

    def checkpoint_roots(self) -> list[Path]:
        from lorastudio.models.catalog import BUNDLED_DIR

        roots = [self.catalog.root.checkpoints]
        if getattr(self.catalog, "include_bundled", False):
            roots.append(BUNDLED_DIR)
        return roots

    def checkpoint_entry(self, ref: str, field: str):
        """The catalog entry a client means by `ref`: a title, name, stem, short hash, or a path
        inside the checkpoints folder. The catalog alone would open any existing path."""
        ref = ref.strip()
        path = self._path_like(ref, self.checkpoint_roots(), field, base=self.catalog.root.checkpoints)
        return self.catalog.find_checkpoint(str(path) if path is not None else ref)

    def vae_name(self, ref: str | None, field: str) -> str | None:
        if ref in (None, "", "Automatic", "None"):
            return None
        path = self._path_like(ref, [self.catalog.root.vae], field, base=self.catalog.root.vae)
        entry = self.catalog.find_vae(str(path) if path is not None else ref)
        return entry.name

    @staticmethod
    def _path_like(ref: str, roots: list[Path], field: str, *, base: Path) -> Path | None:
        if "\x00" in ref:
            raise InvalidParameter(field, ref, "a NUL byte is not allowed in a model reference")
        if any(".." in _SEP.split(form) for form in (ref, unquote(unquote(unquote(ref))))):
            raise InvalidParameter(field, ref, "'..' is not allowed in a model reference")
        try:
            check_path(ref)  # a 300-byte name makes the exists() below fail with ENAMETOOLONG
        except ValueError as exc:
            raise InvalidParameter(field, ref, str(exc)) from None
        p = Path(ref)
        if p.is_absolute() or ref.startswith("~") or p.exists():
            return resolve_inside(ref, roots, field=field, base=base)
        return None

    def cached_sha256(self, path: Path) -> str | None:
        """The sha256 if already known; listing never hashes gigabytes (A1111 does not either)."""
        try:
            return self.catalog.hashes.lookup(path, "sha256")
        except OSError:
            return None

    def checkpoint_title(self, entry) -> str:
        """A1111's title: `name [short hash]` once the hash is known, else just the name."""
        sha = self.cached_sha256(entry.path) if entry.kind == "file" else None
        return f"{entry.name} [{sha[:10]}]" if sha else entry.name

    def current_checkpoint_title(self) -> str | None:
        chosen = self.options.get("sd_model_checkpoint")
        if chosen:
            return chosen
        try:
            return self.checkpoint_title(self.catalog.default_checkpoint(allow_pickle=self.settings.allow_pickle))
        except NotFound:
            return None

    # --- LoRA / embedding headers -------------------------------------------------------------------
    def lora_metadata(self, path: Path) -> dict[str, Any]:
        try:
            st = path.stat()
        except OSError:
            return {}
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._lora_meta:
            header = safetensors_header(path) if path.suffix == ".safetensors" else None
            meta = header.metadata if header is not None else {}
            self._lora_meta[key] = {k: _maybe_json(v) for k, v in meta.items()}
        return self._lora_meta[key]

    def forget_lora_metadata(self) -> None:
        self._lora_meta.clear()

    def check_generation_work(self, steps: int, width: int, height: int, images: int) -> None:
        limit = self.limits.max_generation_work
        if limit is not None and steps * width * height * images > limit:
            raise InvalidParameter("steps", steps, f"steps × width × height × images = "
                                   f"{steps * width * height * images} is over this server's limit of {limit}")


def safetensors_header(path: Path):
    """The validated header of a .safetensors file (read without torch), or None if unusable."""
    from lorastudio.core.errors import ModelFileError
    from lorastudio.core.safetensors_header import read_header

    try:
        return read_header(path)
    except ModelFileError:
        return None


def _maybe_json(value: Any) -> Any:
    # kohya stores nested metadata (tag frequencies, dataset dirs) as JSON strings; A1111 decodes them.
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
