"""Publishing from the HTTP API: a finished training (POST /v1/trainings/{request_id}/publish)
or any version folder under the projects folder (POST /v1/publish).

The Hub token is the server's own (HF_TOKEN or huggingface_hub's stored login) unless the request
carries one (`token`, as the web page's Publish form sends it once): that one is used for this
upload only, never stored, logged, echoed in an error or sent back, and the job database never
sees either.
"""

from __future__ import annotations

import os

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from lorastudio.interfaces.api.security import resolve_inside
from lorastudio.interfaces.api.training_routes import RequestId, _state
from lorastudio.services.publish.options import REPO_ID

router = APIRouter(tags=["publish"])


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(..., pattern=REPO_ID, description="OWNER/NAME on the Hub")
    description: str = Field("", max_length=20_000)
    private: bool = False
    license: str | None = Field(None, max_length=100)
    base_model_id: str | None = Field(None, pattern=REPO_ID)
    revision: str | None = Field(None, max_length=200)
    commit_message: str | None = Field(None, max_length=500)
    dry_run: bool = Field(False, description="Answer with the files and the card; upload nothing")
    token: SecretStr | None = Field(None, max_length=400, description="A Hugging Face token for this upload only "
                                    "(never stored or logged) [the server's HF_TOKEN or stored login]")


class VersionPublishBody(PublishBody):
    version_dir: str = Field(..., max_length=1000, description="projects/<p>/versions/<v>, relative to the "
                                                               "projects folder")


@router.post("/v1/trainings/{request_id}/publish")
async def publish_training(request: Request, request_id: RequestId, body: PublishBody):
    state = _state(request)
    job = await run_in_threadpool(state.store.get, request_id)
    if job.status.value != "COMPLETED":
        return JSONResponse(status_code=409, content={
            "detail": f"training {request_id} is {job.status.value}, not COMPLETED"})
    vdir = resolve_inside((job.result or {}).get("version_dir", ""), [state.projects_root], field="version_dir")
    return await run_in_threadpool(_publish, vdir, body)


@router.post("/v1/publish")
async def publish_version(request: Request, body: VersionPublishBody):
    state = _state(request)
    vdir = resolve_inside(body.version_dir, [state.projects_root], field="version_dir", base=state.projects_root)
    return await run_in_threadpool(_publish, vdir, body)


def _publish(vdir: Path, body: PublishBody) -> dict[str, Any]:
    from lorastudio.services.publish.options import publish_options
    from lorastudio.services.publish.publish import endpoint_from_env, prepare, publish

    options = publish_options(body.model_dump(exclude={"dry_run", "token", "version_dir"}))
    if body.dry_run:
        files, card = prepare(vdir, options)
        return {"repo": options.repo, "files": sorted(files.files), "total_bytes": files.total_bytes(), "card": card}
    token = body.token.get_secret_value() if body.token is not None else None
    result = publish(vdir, options, token=token or None, endpoint=endpoint_from_env(os.environ))
    return {"repo": result.repo, "files": result.files, "total_bytes": result.total_bytes, "commit_url": result.url}
