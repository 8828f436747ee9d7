"""The `training` job kind: what the worker runs for POST /v1/trainings, and webhooks after it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from lorastudio.core.settings import StudioSettings

log = logging.getLogger(__name__)


def make_training_handler(settings: StudioSettings, *, train_fn: Callable | None = None, artifacts=None):
    """The `training` job handler. artifacts: an ArtifactStore that receives every checkpoint and
    the finished run, and from which a resumed run fetches checkpoints this machine lacks."""
    projects_root = Path(settings.projects_dir).resolve()
    uploads_root = projects_root / ".lorastudio" / "uploads"

    def handle(job, ctx) -> dict[str, Any]:
        from lorastudio.services.jobs import JobCancelled
        from lorastudio.services.lora_install import install_trained_lora
        from lorastudio.training.config import training_config
        from lorastudio.training.events import TrainingStopped
        from lorastudio.training.project import project_name, version_dir

        train = train_fn
        if train is None:
            from lorastudio.training.api import train

        data = dict(job.payload["config"])
        local_upload = _fetch_upload(job, data, artifacts, projects_root, ctx)
        project = project_name(data.get("project"), data["trigger"])
        # The version is fixed on the first run and kept in the job's progress (which survives a
        # restart), so a resumed run continues the same folder instead of starting "the next free".
        version = data.get("version") or job.progress.get("version")
        if version is None:
            version = version_dir(projects_root, project, None, resume=False).root.name
        ctx.progress(project=project, version=version)
        vdir = version_dir(projects_root, project, version, resume=True)
        prefix = f"{project}/versions/{version}"
        if artifacts is not None and job.attempts > 0:
            from lorastudio.services.artifacts.runs import pull_checkpoints

            fetched = pull_checkpoints(artifacts, prefix, vdir.checkpoints)
            if fetched:
                ctx.log(f"fetched {len(fetched)} checkpoint(s) of {prefix} from the artifact store")
        # A run killed before its first checkpoint has left its folder (dataset copy, caches) but no
        # checkpoint: it continues that folder too (resume starts at step 0 when there is none).
        interrupted_before = job.attempts > 0 and vdir.root.is_dir() and any(vdir.root.iterdir())
        # This worker's own projects folder: the same path as the API node's on a shared folder,
        # a local one when an artifact store carries the runs between machines.
        data.update(project=project, version=version, resume=bool(data.get("resume")) or interrupted_before,
                    projects_dir=str(projects_root))
        config = training_config(data)
        if interrupted_before:
            ctx.log(f"resuming {project}/{version} from its last checkpoint (run {job.attempts + 1})")

        def on_event(ev) -> None:
            kind = getattr(ev, "kind", "")
            if kind == "progress":
                fields = {"step": ev.step, "total_steps": ev.total_steps}
                if ev.loss is not None:
                    fields["loss"] = float(ev.loss)
                if getattr(ev, "eta_s", None) is not None:
                    fields["eta_s"] = float(ev.eta_s)
                ctx.progress(**fields)
            elif kind == "log":
                ctx.log(ev.message)
            elif kind in ("sample", "checkpoint"):
                ctx.log(f"{kind} at step {ev.step}: {ev.path}" if ev.path else f"{kind} at step {ev.step}")
                if ev.path:
                    if kind == "checkpoint" and artifacts is not None:
                        from lorastudio.services.artifacts.runs import push_checkpoint

                        push_checkpoint(artifacts, prefix, Path(ev.path))
                    ctx.progress(**{f"last_{kind}": str(ev.path)})
            elif kind == "done":
                ctx.log(ev.message or "training done")

        try:
            result = train(config, on_event, should_stop=ctx.cancelled, yield_point=ctx.yield_point)
            try:
                installed = install_trained_lora(config, result)
            except OSError as exc:  # the run succeeded; its files stay downloadable
                installed = None
                ctx.log(f"the LoRA was not copied into the models folder: {exc}", "WARNING")
            if installed is not None:
                ctx.log(f"installed as {installed.path}; use it with {installed.tag}")
        except TrainingStopped:
            raise JobCancelled(job.id) from None
        finally:
            # An uploaded dataset is copied into the version folder by train; the upload itself
            # is kept only while a run may still need it: after a crash (no finally runs) or
            # when another process took the job over.
            upload = job.payload.get("upload_dir")
            if upload and not ctx.lease_lost.is_set() and Path(upload).resolve().is_relative_to(uploads_root):
                shutil.rmtree(upload, ignore_errors=True)
            if local_upload is not None and not ctx.lease_lost.is_set():
                shutil.rmtree(local_upload, ignore_errors=True)
                artifacts.delete(job.payload["upload_key"])
        if settings.report_after_training:
            _write_report(result, settings, ctx)
        if artifacts is not None:  # after the report: the store gets the run as GET /files serves it
            from lorastudio.services.artifacts.runs import push_run

            ctx.log(f"uploaded {len(push_run(artifacts, prefix, vdir.root))} file(s) of {prefix} to the artifact store")
        payload = result_payload(result, projects_root)
        if installed is not None:
            payload.update(installed_lora=str(installed.path), lora_tag=installed.tag)
        return payload

    return handle


def _fetch_upload(job, data: dict[str, Any], artifacts, projects_root: Path, ctx) -> Path | None:
    """An uploaded dataset the API node put in the artifact store (it kept no copy): fetched into
    this worker's projects folder, and `images` pointed there. Returns the local folder."""
    key = job.payload.get("upload_key")
    if not key or artifacts is None:
        return None
    from lorastudio.services.artifacts.store import check_key

    local = projects_root / check_key(key)
    images = local / Path(data["images"]).relative_to(job.payload["upload_dir"])
    if not images.is_dir():  # a worker that resumes the job on this machine has it already
        staging = local.with_name(local.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        artifacts.get_dir(key, staging)
        shutil.rmtree(local, ignore_errors=True)
        staging.rename(local)
        files = sum(1 for f in local.rglob("*") if f.is_file())
        ctx.log(f"fetched the uploaded dataset ({files} files) from the artifact store")
    data["images"] = str(images)
    return local


def _write_report(result, settings: StudioSettings, ctx) -> None:
    """The LoRA report after the run; a failure is logged, never fatal: the LoRA is saved."""
    from lorastudio.core.errors import LorastudioError
    from lorastudio.services.report import summary_line, write_report

    try:
        report = write_report(result.version_dir, settings, say=ctx.log)
    except (LorastudioError, OSError) as exc:
        ctx.log(f"report not written: {exc}", "WARNING")
        return
    ctx.log(summary_line(report))


def result_payload(result, projects_root: Path) -> dict[str, Any]:
    """What GET /result serves: files by a public name -> their path (only these can be downloaded).

    `keys` names each file by its path under the projects folder, which is also its key in the
    artifact store (runs.run_prefix): an API node on another machine serves it from there.
    """
    files: dict[str, str] = {}
    keys: dict[str, str] = {}

    def add(path: Path | None, name: str | None = None) -> str | None:
        if path is None:
            return None
        path = Path(path).resolve()
        if not path.is_file() or not path.is_relative_to(projects_root):
            return None
        name = name or path.name
        while name in files:
            name = f"{path.stem}-{len(files)}{path.suffix}"
        files[name] = str(path)
        keys[name] = path.relative_to(projects_root).as_posix()
        return name

    lora = add(result.lora_path)
    config = add(result.config_path, "config.json")
    diffusers_dir = getattr(result, "diffusers_lora_dir", None)
    diffusers = add(Path(diffusers_dir) / "pytorch_lora_weights.safetensors", "diffusers_lora_weights.safetensors") \
        if diffusers_dir else None
    samples = [n for n in (add(p) for p in (result.samples or [])) if n]
    report = add(Path(result.version_dir) / "report.json")
    report_grid = add(Path(result.version_dir) / "report.png")
    return {
        "lora": lora,
        "config": config,
        "diffusers_lora": diffusers,
        "samples": samples,
        "report": report,
        "report_grid": report_grid,
        "files": files,
        "keys": keys,
        "version_dir": str(result.version_dir),
        "steps": getattr(result, "steps", None),
        "final_loss": getattr(result, "final_loss", None),
    }


class WebhookNotifier:
    """POSTs a finished training's status to its webhook_url, once, even across restarts and
    across the several API nodes of a farm that all watch one database.

    It watches the store instead of hooking into the worker, because the job is only COMPLETED
    once the worker has stored the result, after the handler returned. Each call is claimed in
    the job database first (JobStore.claim_delivery), so of several nodes exactly one makes it;
    a node that dies between its claim and the call is replaced after stale_after_s.
    """

    def __init__(self, store, marker_dir: Path, allowed_hosts: Sequence[str], *, interval_s: float = 1.0,
                 timeout_s: float = 10.0, stale_after_s: float | None = None, owner: str | None = None):
        self.store = store
        # Read only: where versions before the database claim recorded the calls they made.
        self.marker_dir = Path(marker_dir)
        self.allowed_hosts = tuple(allowed_hosts)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        # Well past one call's timeout: a live owner is never overtaken mid-call.
        self.stale_after_s = stale_after_s if stale_after_s is not None else max(60.0, 6 * timeout_s)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._settled: set[str] = set()  # jobs whose webhook is done (by this node or another)
        self._retry_at: dict[str, float] = {}  # jobs another node holds: look again after its claim ages
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="training-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll_once()
            except Exception:
                log.warning("webhook poll failed", exc_info=True)

    def poll_once(self) -> int:
        """Make the calls this node wins; returns how many."""
        sent = 0
        now = time.monotonic()
        for job in self.store.list(kind="training"):
            url = job.payload.get("webhook_url")
            if not url or not job.status.is_terminal or job.id in self._settled or self._retry_at.get(job.id, 0) > now:
                continue
            if (self.marker_dir / f"{job.id}.sent").exists():
                self._settled.add(job.id)
                continue
            if not self.store.claim_delivery(job.id, "webhook", self.owner, self.stale_after_s):
                self._retry_at[job.id] = now + self.stale_after_s
                continue
            try:
                self._post(job, url)
            except ValueError as exc:  # InvalidParameter: the host is no longer allowed
                self.store.append_log(job.id, "WARNING", f"webhook not sent: {exc}")
            self.store.finish_delivery(job.id, "webhook", self.owner)
            self._settled.add(job.id)
            self._retry_at.pop(job.id, None)
            sent += 1
        return sent

    def _post(self, job, url: str) -> None:
        import urllib.error

        from lorastudio.interfaces.api.security import check_webhook_url

        check_webhook_url(url, self.allowed_hosts)  # the allowlist may have shrunk since submission
        body = {"request_id": job.id, "status": job.status.value, "error": job.error,
                "result": job.result if job.status.value == "COMPLETED" else None}
        request = urllib.request.Request(url, data=json.dumps(body, default=str).encode(), method="POST",
                                         headers={"content-type": "application/json"})
        # No redirects (they would lead to a host nobody allowed) and no proxy from the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                response.read(1024)
        except (urllib.error.URLError, OSError) as exc:
            self.store.append_log(job.id, "WARNING", f"webhook {url} failed: {exc}")
        else:
            self.store.append_log(job.id, "INFO", f"webhook {url} notified")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
