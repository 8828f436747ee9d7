"""The options of one publish, shared by the CLI and the HTTP API."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"


class PublishOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str = Field(..., pattern=REPO_ID, description="OWNER/NAME on the Hub")
    description: str = Field("", max_length=20_000, description="Your own words at the top of the card (any language)")
    private: bool = False
    license: str | None = Field(None, max_length=100, description="Hub licence id [the base model's]")
    base_model_id: str | None = Field(None, pattern=REPO_ID, description="Hub id of the base when the file does not tell")
    revision: str | None = Field(None, max_length=200, description="Branch to commit to [main]")
    commit_message: str | None = Field(None, max_length=500)
    to_folder: Path | None = Field(None, description="Write the repo contents here instead of uploading (dry run)")


def publish_options(data: dict | PublishOptions) -> PublishOptions:
    from lorastudio.core.params import build_model

    return build_model(PublishOptions, data)
