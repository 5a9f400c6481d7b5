"""A real S3 server for the tests: versitygw with its posix backend.

versitygw (github.com/versity/versitygw, built by ``hack/build-test-binaries.sh
versitygw``) serves the S3 API from a plain directory: each top-level directory is a
bucket, each file an object, metadata in extended attributes. It signs and checks
requests like S3 (SigV4 only), answers S3's error codes, and does multipart uploads,
ranged GETs, conditional requests and presigned URLs, so the object store code runs
against the protocol it meets in production rather than a mock of it.

What it answers differently from AWS, measured with boto3 against v1.8.0:

- An unknown access key is ``XAdminUserNotFound`` with HTTP 404 (AWS:
  ``InvalidAccessKeyId``, 403), so a HEAD with a wrong key id looks like a missing
  object; a wrong secret is ``SignatureDoesNotMatch``, 403, as on AWS.
- Only SigV4. botocore presigns S3 URLs with SigV2 unless the client's config says
  ``signature_version="s3v4"`` (its requests are SigV4 either way), and versitygw
  answers a SigV2 URL with 400 ``InvalidRequest``; ``client()`` sets it.
- Bucket lifecycle configuration is ``NotImplemented`` on the posix backend.

The server keeps its port and data directory across ``stop()``/``start()``, so a test
can take the object store away and bring it back with the data it held.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from harness.envtest import ToolNotFoundError, find_tool, free_port
from harness.process import ManagedProcess, http_ok

#: The path versitygw answers ``200 OK`` on without authentication (``--health``).
HEALTH_PATH = "/health"


class S3ServerError(RuntimeError):
    """versitygw did not start, or exited."""


class S3Server:
    """versitygw on a free loopback port, over a directory of its own.

    Args:
        workdir: holds ``data/`` (the buckets) and ``versitygw.log``; a temporary
            directory, removed by ``close()``, when not given. Its filesystem must
            support extended attributes (ext4, xfs and btrfs do).
        region: the region the server signs for; clients must use the same one.
        startup_timeout: seconds the server may take to answer its health check.
        host: the address it listens on: loopback, or an address of a bridge the tests
            created (the real node's, so that pods reach it).
    """

    def __init__(
        self,
        workdir: Optional[os.PathLike[str] | str] = None,
        *,
        region: str = "us-east-1",
        startup_timeout: float = 30.0,
        host: str = "127.0.0.1",
    ) -> None:
        try:
            self.binary = find_tool("versitygw")
        except ToolNotFoundError as exc:
            raise ToolNotFoundError(f"versitygw is not built: run hack/build-test-binaries.sh versitygw ({exc})") from None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubescribe-s3-"))
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "versitygw.log"
        self.region = region
        self.startup_timeout = startup_timeout
        self.host = host  # loopback; the real node's tests pass its bridge address, which pods reach
        # Chosen once: a restart comes back where the clients already point.
        self.port = free_port()
        # Random per server, shaped like AWS keys (20 and 40 characters), so a test
        # cannot pass by accident with credentials that leaked in from elsewhere.
        self.access_key = "KS" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.process: Optional[ManagedProcess] = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> "S3Server":
        """Start the server (again) and return once it answers its health check."""
        if self.running:
            return self
        # The root credentials go through the environment, not argv, so they do not
        # show in `ps`; inherited VGW_* settings would change what the tests run against.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VGW_", "ROOT_ACCESS_KEY", "ROOT_SECRET"))}
        env.update(ROOT_ACCESS_KEY=self.access_key, ROOT_SECRET_KEY=self.secret_key)
        self.process = ManagedProcess(
            "versitygw",
            [self.binary, f"--port={self.host}:{self.port}", f"--region={self.region}",
             f"--health={HEALTH_PATH}", "posix", str(self.data_dir)],
            self.log_path,
            env=env,
            error=S3ServerError,
        )
        self.process.start()

        self.process.wait_ready(lambda: http_ok(self.endpoint + HEALTH_PATH), timeout=self.startup_timeout,
                                interval=0.05, description=f"versitygw on {self.endpoint}")
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then wait); the port and the data stay for ``start()``."""
        if self.process is not None:
            self.process.stop()

    def close(self) -> None:
        """Stop the server and remove its working directory if it made one."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ----------------------------------------------------------------- clients

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a child process's SDK at this server.

        boto3 addresses buckets by path on an IP endpoint by itself, so no more is
        needed for requests; a process that presigns URLs still needs
        ``signature_version="s3v4"`` in its client config (see the module docstring).
        """
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def client(self, *, access_key: Optional[str] = None, secret_key: Optional[str] = None) -> Any:
        """A boto3 S3 client for this server (other credentials for negative tests).

        Two attempts at most: botocore's default of several retries with backoff would
        turn a test of an outage into a wait.
        """
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=access_key if access_key is not None else self.access_key,
            aws_secret_access_key=secret_key if secret_key is not None else self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 2}),
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` and return the name."""
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Abort the bucket's multipart uploads, delete its objects, then the bucket."""
        s3 = self.client()
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=name):
            for upload in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=name)


def bucket_name(hint: str) -> str:
    """A unique, valid bucket name (3-63 of ``[a-z0-9-]``) starting from ``hint``."""
    base = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-") or "test"
    return f"{base}-{secrets.token_hex(4)}"


__all__ = ["HEALTH_PATH", "S3Server", "S3ServerError", "bucket_name"]
