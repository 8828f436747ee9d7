"""`lorastudio worker`: a process that claims jobs from a shared queue and runs them.

Registered by app.py; importing this module imports neither torch nor psycopg.
Several workers (one per accelerator, on any number of machines) and several
`serve --no-worker` API nodes share one PostgreSQL database and one storage folder.
"""

from __future__ import annotations

import os
import signal
import threading

import typer

from lorastudio.core.settings import default_models_dir, default_projects_dir
from lorastudio.interfaces.cli.options_from_model import GroupedCommand, model_fields_for_cli, with_model_options

WORKER_STUDIO_FIELDS = ("models_dir", "projects_dir", "device", "dtype", "allow_pickle", "report_after_training")


def worker_option_fields():
    """The worker's options: how it joins the farm, then the studio settings a training uses."""
    from lorastudio.core.settings import PROJECTS_DIR_SHOWN, StudioSettings, WorkerSettings

    return (("farm", model_fields_for_cli(WorkerSettings, group="Farm")),
            ("studio", model_fields_for_cli(StudioSettings, include=WORKER_STUDIO_FIELDS,
                                            group="Models and outputs", shown_defaults=PROJECTS_DIR_SHOWN)))


def register(app: typer.Typer) -> None:
    @app.command(cls=GroupedCommand)
    @with_model_options(*worker_option_fields())
    def worker(farm: dict = None, studio: dict = None):
        """Claim queued jobs (that this worker can run) and run them until SIGTERM / Ctrl-C.

        Models and projects must be at the same paths as on the API nodes (a shared folder), or
        --artifacts names the store that carries runs between machines."""
        from lorastudio.core.errors import LorastudioError
        from lorastudio.core.params import build_model
        from lorastudio.core.settings import StudioSettings, WorkerSettings

        studio.setdefault("models_dir", default_models_dir(os.environ))
        studio.setdefault("projects_dir", default_projects_dir(os.environ))
        try:
            _run(build_model(WorkerSettings, farm), build_model(StudioSettings, studio))
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


def _run(options, settings) -> None:
    import logging

    from lorastudio.interfaces.api.training_jobs import make_training_handler
    from lorastudio.services.jobs import JobWorker, WorkerCapabilities, open_job_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    can_run = WorkerCapabilities(families=parse_families(options.families), memory_mb=options.memory_mb)
    # A bad URL fails here, before the slow imports.
    store = open_job_store(options.db, heartbeat_timeout_s=options.heartbeat_timeout)
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
    if options.artifacts:
        from lorastudio.interfaces.cli.serve_cmd import s3_options
        from lorastudio.services.artifacts import open_artifact_store

        artifacts = open_artifact_store(options.artifacts, **s3_options(options.artifacts, options.s3_endpoint))
    handler = make_training_handler(settings, artifacts=artifacts)
    worker = JobWorker(store, {"training": handler}, worker_id=options.worker_id,
                       can_run=can_run, poll_interval_s=options.poll_interval)
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

