"""A throwaway S3-compatible server for tests and `deploy/farm-local.sh`: moto's server mode.

Real HTTP on 127.0.0.1, spoken to by the real s3fs/boto3 clients; no AWS account. Its
credentials are moto's placeholders, set by the caller as AWS_ACCESS_KEY_ID/SECRET.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from lorastudio.testing.postgres_server import free_port

# moto accepts any key; these names make it plain in a log that no real account is used.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self, port: int | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> str:
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).close()
                return self.url
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto's S3 server did not start on {self.url}") from None
                time.sleep(0.1)

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.url, aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                     region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"]).create_bucket(Bucket=name)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
