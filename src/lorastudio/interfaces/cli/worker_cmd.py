"""`lorastudio worker`: a process that claims jobs from a shared queue and runs them.

Registered by app.py; importing this module imports neither torch nor psycopg.
Several workers (one per accelerator, on any number of machines) and several
`serve --no-worker` API nodes share one PostgreSQL database and one storage folder.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from lorastudio.core.settings import default_models_dir


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        db: str = typer.Option(..., "--db", envvar="LORASTUDIO_DB",
                               help="Job database URL, postgresql://user@host/db (or $LORASTUDIO_DB)"),
        device: Optional[str] = typer.Option(None, help="Accelerator this worker owns: cuda | cuda:1 | cpu | mps"),
        families: Optional[str] = typer.Option(None, "--families",
                                               help="Comma-separated model families this worker takes "
                                                    "(sd1,sdxl,flux); default: all"),
        memory_mb: Optional[int] = typer.Option(None, "--memory-mb", min=0,
                                                help="Accelerator memory on offer; jobs needing more are left "
                                                     "to other workers"),
        models_dir: Optional[Path] = typer.Option(None, "--models-dir",
                                                  help="Models folder, at the same path the API nodes use "
                                                       "(default: ./models or $LORASTUDIO_MODELS_DIR)"),
        projects_dir: Optional[Path] = typer.Option(None, "--projects-dir", envvar="LORASTUDIO_PROJECTS_DIR",
                                                    help="Shared projects folder, at the same path the API "
                                                         "nodes use [projects]"),
        worker_id: Optional[str] = typer.Option(None, "--worker-id", help="Name in job records [host:pid:random]"),
        heartbeat_timeout: float = typer.Option(30.0, "--heartbeat-timeout", min=1.0,
                                                help="Seconds without a heartbeat after which a job goes back to "
                                                     "the queue (the lease)"),
        poll_interval: float = typer.Option(1.0, "--poll-interval", min=0.01,
                                            help="Seconds between looks at an empty queue"),
        artifacts: Optional[str] = typer.Option(None, "--artifacts", envvar="LORASTUDIO_ARTIFACTS",
                                                help="Artifact store for checkpoints and finished runs: "
                                                     "s3://bucket/prefix (endpoint: $LORASTUDIO_S3_ENDPOINT) "
                                                     "or a folder; lets a run resume on another machine"),
        s3_endpoint: Optional[str] = typer.Option(None, "--s3-endpoint", envvar="LORASTUDIO_S3_ENDPOINT",
                                                  help="Endpoint of an S3-compatible artifact store (MinIO...), "
                                                       "or $LORASTUDIO_S3_ENDPOINT [AWS]"),
        report: bool = typer.Option(True, "--report/--no-report", help="Write the LoRA report after each training"),
    ):
        """Claim queued jobs (that this worker can run) and run them until SIGTERM / Ctrl-C."""
        from lorastudio.core.errors import LorastudioError

        try:
            _run(db, device=device, families=families, memory_mb=memory_mb, models_dir=models_dir,
                 projects_dir=projects_dir, worker_id=worker_id, heartbeat_timeout_s=heartbeat_timeout,
                 poll_interval_s=poll_interval, artifacts_url=artifacts, s3_endpoint=s3_endpoint, report=report)
        except LorastudioError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None


def parse_families(text: str | None) -> tuple[str, ...] | None:
    from lorastudio.core.errors import InvalidParameter

    if text is None or not text.strip():
        return None
    from lorastudio.models.families.registry import families as all_families

    known = tuple(f.name for f in all_families())
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidParameter("--families", text, f"unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def _run(db: str, *, report: bool = True, device, families, memory_mb, models_dir, projects_dir, worker_id,
         heartbeat_timeout_s: float, poll_interval_s: float, artifacts_url: str | None = None,
         s3_endpoint: str | None = None) -> None:
    import logging

    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.training_jobs import make_training_handler
    from lorastudio.services.jobs import JobWorker, WorkerCapabilities, open_job_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    can_run = WorkerCapabilities(families=parse_families(families), memory_mb=memory_mb)
    values: dict = {"models_dir": models_dir or default_models_dir(os.environ), "report_after_training": report}
    for key, value in (("projects_dir", projects_dir), ("device", device)):
        if value is not None:
            values[key] = value
    settings = StudioSettings(**values)
    store = open_job_store(db, heartbeat_timeout_s=heartbeat_timeout_s)  # a bad URL fails before the imports
    # The training stack is imported here, on the main thread, before any job is claimed: a
    # first import of torch from the job thread raced other threads' lazy torch imports
    # (AttributeError on torch._C seen under load), and a job should not wait on imports.
    import accelerate  # noqa: F401
    import torch  # noqa: F401

    import lorastudio.generation.engine  # noqa: F401
    import lorastudio.models.loader  # noqa: F401
    import lorastudio.training.loop  # noqa: F401
    import lorastudio.training.sampling  # noqa: F401

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    artifacts = None
    if artifacts_url:
        from lorastudio.services.artifacts import open_artifact_store

        from lorastudio.interfaces.cli.serve_cmd import s3_options

        artifacts = open_artifact_store(artifacts_url, **s3_options(artifacts_url, s3_endpoint))
    handler = make_training_handler(settings, artifacts=artifacts)
    worker = JobWorker(store, {"training": handler}, worker_id=worker_id,
                       can_run=can_run, poll_interval_s=poll_interval_s)
    worker.start(recover=True)
    logging.getLogger("lorastudio.worker").info("worker %s ready (families=%s, device=%s)", worker.worker_id,
                                                ",".join(can_run.families or ("all",)), settings.device)
    try:
        while not stop.wait(1.0) and worker.running:
            pass
    finally:
        # A job still running stays IN_PROGRESS with our heartbeat stopped: another worker
        # takes it over after the lease, resuming from its last checkpoint.
        worker.stop(timeout=5)
        store.close()

