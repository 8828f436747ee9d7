"""Servers the service tests talk to: S3 (moto's server, real HTTP)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server in its own process: real HTTP, real s3fs client, no AWS account."""
    from lorastudio.testing.s3_server import S3Server

    with S3Server() as server:
        yield server.url
