"""ArtifactStore on any fsspec filesystem; made for S3-compatible buckets (AWS, MinIO) via s3fs.

Credentials come from the usual places (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the
`key` / `secret` options) and never appear in errors: only the bucket URL does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorastudio.core.atomic import atomic_path
from lorastudio.core.errors import NotFound
from lorastudio.services.artifacts.store import ArtifactStore, check_key


class FsspecArtifactStore(ArtifactStore):
    def __init__(self, url: str, *, endpoint_url: str | None = None, **storage_options: Any):
        import fsspec

        protocol, _, rest = url.partition("://")
        self.url = url.rstrip("/")
        self.base = rest.strip("/")
        if protocol == "s3" and endpoint_url:
            storage_options.setdefault("client_kwargs", {})["endpoint_url"] = endpoint_url
        # A cached instance would be shared with other stores in the process (and its listing
        # cache would hide files other machines wrote): one instance per store, no listing cache.
        self.fs = fsspec.filesystem(protocol, skip_instance_cache=True, use_listings_cache=False,
                                    **storage_options)

    def _remote(self, key: str) -> str:
        return f"{self.base}/{check_key(key)}"

    def put_file(self, local, key):
        self.fs.put_file(str(local), self._remote(key))

    def get_file(self, key, local):
        remote = self._remote(key)
        if not self.fs.isfile(remote):
            raise NotFound("artifact", f"{self.url}/{key}")
        with atomic_path(local) as tmp:
            self.fs.get_file(remote, str(tmp))
        return Path(local)

    def exists(self, key):
        return self.fs.isfile(self._remote(key))

    def size(self, key):
        return int(self.fs.size(self._existing(key)))

    def open_read(self, key):
        return self.fs.open(self._existing(key), "rb")

    def _existing(self, key: str) -> str:
        remote = self._remote(key)
        if not self.fs.isfile(remote):
            raise NotFound("artifact", f"{self.url}/{key}")
        return remote

    def list(self, prefix=""):
        base = self._remote(prefix) if prefix else self.base
        if prefix and self.fs.isfile(base):
            return [check_key(prefix)]
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        cut = len(self.base) + 1
        return sorted(p[cut:] for p in found)

    def delete(self, prefix):
        keys = self.list(prefix)
        if keys:
            self.fs.rm([self._remote(k) for k in keys])
        return len(keys)
