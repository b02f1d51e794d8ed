"""The native reader on shards in S3: a moto server in its own process, behind tests/fault_proxy.py
(own process too) that logs every request and injects faults. The dataset is written locally and
uploaded; the reader's shard paths are replaced by their URLs (the Python side's URL support is
tested apart). DALI's S3 client is made once per process, so every test here shares one endpoint."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import dali_video
from dali_video.loader import dataset as dataset_module

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

BUCKET = "clips"
SECRET = "sEcReT-never-in-errors"
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


@pytest.fixture(scope="module")
def s3(dataset):
    """The dataset's files in s3://clips/ds/ on moto, behind the proxy; yields the proxy's URL."""
    port = _free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fault_proxy.py")), str(port)],
                             stdout=subprocess.PIPE, text=True)
    try:
        _wait(f"http://127.0.0.1:{port}/", moto)
        url = f"http://127.0.0.1:{proxy.stdout.readline().strip()}"
        env = dict(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY=SECRET,
                   AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket=BUCKET)
        for path in Path(dataset).iterdir():
            client.upload_file(str(path), BUCKET, f"ds/{path.name}")
        yield client
    finally:
        for k, v in locals().get("saved", {}).items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        proxy.kill()
        moto.kill()
        proxy.wait()
        moto.wait()


def _proxy(path: str, method="GET", body=None) -> dict:
    url = os.environ["AWS_ENDPOINT_URL"] + path
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=10) as r:
        return json.loads(r.read() or b"{}")


def faults(delay=0.0, fault=None, count=0, match=".tfrecord"):
    _proxy("/__faults__", "POST", dict(delay=delay, fault=fault, count=count, match=match))


def requests() -> dict:
    return _proxy("/__log__")


def clear_log():
    _proxy("/__log__", "DELETE")


@pytest.fixture
def from_bucket(monkeypatch):
    """Make the reader read each shard from s3://clips/PREFIX/NAME instead of its local path."""
    real = dataset_module._reader_args

    def use(prefix="ds"):
        def args(*a, **k):
            reader = real(*a, **k)
            return {**reader, "shards": [f"s3://{BUCKET}/{prefix}/{Path(s).name}" for s in reader["shards"]]}
        monkeypatch.setattr(dataset_module, "_reader_args", args)
    return use


def _batches(files, n, **kw):
    with dali_video.clip_pipeline(files, **{**KW, **kw}) as p:
        return [[[np.array(x).tobytes() for x in t] for t in p.pipeline.run()] for _ in range(n)]


def _shard_gets(log):
    return [r for r in log if r["method"] == "GET" and not r["path"].endswith(".fidx")]


def test_clips_from_s3_are_the_local_clips_one_ranged_get_each(s3, dataset, from_bucket):
    local = _batches(dataset, 3)
    from_bucket()
    faults()
    clear_log()
    assert _batches(dataset, 3) == local
    log = requests()["log"]
    assert not [r for r in log if r["method"] != "GET"]  # no HEAD: the sizes came with the arguments
    fidx = [r for r in log if r["path"].endswith(".fidx")]
    assert len(fidx) == len({r["path"] for r in fidx}) <= 3  # each shard's frame index read once
    gets = _shard_gets(log)
    assert all(r["range"] and r["status"] == 206 for r in gets)
    # One GET per clip: 3 batches of 4 clips, and the batches DALI read ahead.
    assert len(gets) % 4 == 0 and 3 <= len(gets) // 4 <= 6, len(gets)


@pytest.mark.parametrize("fault", ["503", "500", "reset", "truncate"])
def test_transient_faults_are_retried_by_the_client(s3, dataset, from_bucket, fault):
    local = _batches(dataset, 2)
    from_bucket()
    faults(fault=fault, count=3)
    clear_log()
    assert _batches(dataset, 2) == local
    log = requests()["log"]
    assert sum(r["fault"] == fault for r in log) == 3, log


def test_added_latency_is_hidden_by_requests_in_flight(s3, dataset, from_bucket):
    from_bucket()
    faults(delay=0.03)
    clear_log()
    start = time.perf_counter()
    _batches(dataset, 4, batch_size=32, num_threads=32)
    took = time.perf_counter() - start
    figures = requests()
    faults()
    gets = len(_shard_gets(figures["log"]))
    print(f"{gets} GETs at 30 ms each in {took:.2f} s; most in flight: {figures['most_in_flight']}")
    assert figures["most_in_flight"] >= 16


def test_object_shorter_than_its_index_or_replaced_fails_naming_it(s3, dataset, from_bucket):
    shard = sorted(Path(dataset).glob("*.tfrecord"))[0]
    data = shard.read_bytes()
    s3.put_object(Bucket=BUCKET, Key=f"short/{shard.name}", Body=data[:len(data) // 3])
    for path in Path(dataset).iterdir():
        if path != shard:
            s3.upload_file(str(path), BUCKET, f"short/{path.name}")
    from_bucket("short")
    faults()
    # A range past the end is refused (InvalidRange, not retried); one running past it comes back short.
    with pytest.raises(RuntimeError, match=rf"s3://{BUCKET}/short/{shard.name}: video '[^']+' frame \d+ at byte \d+: "
                                           r"(reading bytes \[\d+, \d+\) failed: InvalidRange|short read: bytes "
                                           r"\[\d+, \d+\) wanted, the shard ends at byte \d+)") as e:
        _batches(dataset, 6, training=False)
    assert SECRET not in str(e.value)
    # Replaced while reading: the same size, other bytes.
    for path in Path(dataset).iterdir():
        s3.upload_file(str(path), BUCKET, f"swap/{path.name}")
    from_bucket("swap")
    with dali_video.clip_pipeline(dataset, **{**KW, "training": False}) as p:
        p.pipeline.run()
        s3.put_object(Bucket=BUCKET, Key=f"swap/{shard.name}", Body=bytes(b ^ 0x5A for b in data))
        with pytest.raises(RuntimeError, match=rf"s3://{BUCKET}/swap/{shard.name}: video '[^']+' frame \d+ at byte "
                                               r"\d+: fails its CRC32C"):
            for _ in range(10):
                p.pipeline.run()
