"""A real S3 endpoint for tests: moto's standalone server as a separate process on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

import boto3
import botocore.exceptions
import httpx

from tests.ports import free_port

ACCESS_KEY = "moorage-test"
SECRET_KEY = "moorage-test-secret"
REGION = "us-east-1"


LAUNCHER = Path(__file__).with_name("moto_launcher.py")  # moto_server with atomic conditional writes


def moto_server_binary() -> str:
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if not found:
        raise RuntimeError("moto_server not found: install the test extras (pip install -e '.[test]')")
    return found


class MotoServer:
    """Start with `start()`, stop with `stop()`; `restart()` keeps the port (for outage tests; data is lost)."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._client: Any = None
        self._client_lock = threading.Lock()

    def start(self, timeout: float = 30.0) -> None:
        if importlib.util.find_spec("moto") is None:
            raise RuntimeError("moto not found: install the test extras (pip install -e '.[test]')")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self._process = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                httpx.get(f"{self.endpoint_url}/moto-api/", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start in time")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def client(self) -> Any:
        """One boto3 client for the server's life (clients are thread-safe; making one costs ~20 ms of CPU, and the
        tests' helpers asked for one per call: ~27 CPU seconds of the suite)."""
        with self._client_lock:
            if self._client is None:
                self._client = boto3.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=REGION,
                    aws_access_key_id=ACCESS_KEY,
                    aws_secret_access_key=SECRET_KEY,
                )
            return self._client

    def new_bucket(self) -> str:
        name = f"moorage-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (keeps the long-lived server's memory small)."""
        client = self.client()
        # A server still writing (a push's work after its response: the change record that closes it) can put an
        # object between the emptying and the deletion (BucketNotEmpty, CI of e28b00a): emptied again, then.
        for attempt in range(20):
            for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
                client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            try:
                client.delete_bucket(Bucket=name)
                return
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") != "BucketNotEmpty" or attempt == 19:
                    raise

    def storage_settings(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """The `storage` section that points Moorage at a bucket of this server."""
        return {
            "backend": "s3",
            "s3": {
                "bucket": bucket,
                "endpoint_url": self.endpoint_url,
                "region": REGION,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                "path_style": True,
                "part_size": 5 * 1024 * 1024,
                **extra,
            },
        }
