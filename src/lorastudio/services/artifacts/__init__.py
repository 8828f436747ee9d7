"""Shared storage for run artifacts (datasets, checkpoints, LoRAs, samples, reports).

`open_artifact_store(url)`: a folder (NFS, a mounted volume) by default, or an
S3-compatible bucket (`s3://bucket/prefix`, through fsspec/s3fs).
"""

from lorastudio.services.artifacts.store import ArtifactStore, DirectoryArtifactStore, open_artifact_store

__all__ = ["ArtifactStore", "DirectoryArtifactStore", "open_artifact_store"]
