"""dali-video-bench: inputs checked before anything runs, failures in the exit status, every layout in tf.data,
a time-bounded GPU check."""
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.request import urlopen

import numpy as np
import pytest

from dali_video.index_tools import build
from dali_video.index_tools import format as fmt
from dali_video.loader.gpu import usable_gpus
from dali_video.tools.bench import bench, proxy, systems
from dali_video.tools.bench.proxy import proxy_log
from dali_video.tools.sample_data import frame_number

from .test_index_tools import _write_tf_layout


def train_and_val(dataset, folder):
    """The dataset's shards as the train split, and a copy of its first shard as the val split."""
    folder.mkdir()
    for path in dataset.glob("*.tfrecord*"):
        shutil.copy(path, folder)
    first = sorted(dataset.glob("*.tfrecord"))[0]
    val = folder / fmt.shard_name("val", 0, 1)
    for path in (fmt.idx_path, fmt.fidx_path, lambda p: p):
        shutil.copy(path(first), path(val))
    return folder


def test_bad_inputs_stop_the_bench_before_anything_runs(dataset, tmp_path, capsys, monkeypatch):
    data = train_and_val(dataset, tmp_path / "data")
    out = tmp_path / "out"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.com")  # no proxy in front of a remote store
    cases = [([str(data)], "holds the splits"),
             ([str(tmp_path / "dat")], f"{tmp_path / 'dat'} does not exist"),
             ([str(data), "--split", "test"], "no shards of split 'test'"),
             ([str(data), "--split", "train", "--crop-size", "100"], "smaller than crop_size \\(100\\)"),
             ([str(data), "--split", "train", "--crop-size", "32", "--longer", str(tmp_path)],
              f"no shards of split .train. in {tmp_path}"),
             (["s3://bucket/ds", "--latency-ms", "30"], "--latency-ms is added by the bench's proxy, which sits in "
              "front of a local store: set AWS_ENDPOINT_URL=http://127.0.0.1:PORT"),
             ([str(data), "--latency-ms", "0", "30"],
              "--latency-ms is added to a bucket's requests; .* is a local path"),
             ([str(data), "--threads", "0"], "--threads \\(0\\) must be at least 1"),
             (["s3://bucket/ds", "--latency-ms", "0", "0"], "--latency-ms \\(0 0\\) must be different values")]
    for args, message in cases:
        assert bench.main([*args, "--out", str(out), "--quick"]) == 2
        err = capsys.readouterr().err
        assert re.search(f"dali-video-bench: error: .*{message}", err), err
    assert not out.exists()  # nothing ran, nothing written


def test_a_failed_system_makes_the_bench_fail_naming_it(dataset, tmp_path, monkeypatch, capsys):
    def measure(data, system, **kw):  # every system fails, as on a folder no loader can read
        return {"error": f"ValueError: {system} cannot read {data[0]}"}

    monkeypatch.setattr(bench, "measure", measure)
    assert bench.main([str(dataset), "--out", str(tmp_path), "--quick", "--batches", "2", "--crop-size", "32"]) == 1
    err = capsys.readouterr().err
    assert "measurements failed" in err and "dali_video: ValueError: dali_video cannot read" in err
    assert "tfdata: ValueError: tfdata cannot read" in err
    assert not (tmp_path / "bench.png").exists()  # no blank chart


def test_seconds_times_dali_video_about_that_long_and_saves_its_rates(dataset, tmp_path, capsys):
    assert bench.main([str(dataset), "--out", str(tmp_path), "--quick", "--device", "cpu", "--seconds", "2",
                       "--crop-size", "32", "--clip-len", "8", "--batch-size", "2"]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["device"] == "cpu" and results["seconds"] == 2
    assert set(results["systems"]) == {"dali_video"}  # with --quick, only what a GPU check needs
    r = results["systems"]["dali_video"]
    # At least the seconds asked (batches of 2 clips of 8 48x64 frames take ms; no upper bound: a loaded
    # machine may take longer for the last batch, and timing is the bench's figure, not a test's).
    assert r["seconds"] >= 2 and r["batches"] > 1, r
    assert r["clips_per_s"] == pytest.approx(r["batches"] * 2 / r["seconds"])
    assert r["frames_per_s"] == pytest.approx(r["clips_per_s"] * 8)
    assert f"{'dali_video':22} {r['clips_per_s']:9.1f} {r['frames_per_s']:10.0f}" in capsys.readouterr().out


@pytest.mark.skipif(usable_gpus()[0] > 0, reason="needs a host without a usable GPU")
def test_device_gpu_without_a_gpu_stops_the_bench(dataset, tmp_path, capsys):
    message = r"--device gpu but this host has no usable GPU \(.+\); pass --device cpu"
    assert bench.main([str(dataset), "--out", str(tmp_path / "out"), "--device", "gpu", "--crop-size", "32"]) == 2
    assert re.search(f"dali-video-bench: error: {message}", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["example", "frame_features", "sequence_example"])
def test_the_tfdata_baseline_reads_every_layout_the_loader_reads(tmp_path, layout):
    shard = _write_tf_layout(tmp_path / fmt.shard_name("train", 0, 1), layout)  # videos of 12, 13, 14 frames
    build(shard)
    clips, labels = next(iter(systems.tfdata_dataset([shard], 6, 5, 16)))
    assert clips.shape == (6, 5, 16, 16, 3) and set(labels.numpy()) <= {0, 1, 2}
    for clip in clips.numpy():
        got = [frame_number(np.round(np.asarray(f) * 255)) for f in clip]
        assert got == list(range(got[0], got[0] + 5)), got  # contiguous frames of one video


def test_on_a_bucket_the_bench_counts_one_get_of_the_clips_own_bytes_per_clip(s3, dataset, tmp_path, monkeypatch,
                                                                              capsys):
    """dali-video-bench on s3://, its counting proxy in front of moto (the tests' fault proxy bypassed):
    dali-video's reader sends one ranged GET of about the clip's own bytes per clip, and the table has the
    baselines' rows beside it."""
    url = s3.upload(dataset, "ds")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.server.endpoint)
    assert bench.main([url, "--out", str(tmp_path), "--quick", "--seconds", "2", "--clip-len", "8", "--crop-size",
                       "32", "--batch-size", "8", "--threads", "8"]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["latency"]["0"]
    assert set(rows) == {"dali_video", "dali_tfrecord", "tfdata"}  # --quick: the readers only
    ours = rows["dali_video"]
    assert ours["requests_per_clip"] <= 1.05 and ours["x_clip"] <= 1.1, ours
    assert ours["batches"] >= 5 and 1 <= ours["most_in_flight"] <= 8, ours
    # A clip from DALI's TFRecord reader or tf.data costs its whole record.
    assert all(rows[s]["x_clip"] > 2 and rows[s]["clips_per_s"] > 0 for s in ("dali_tfrecord", "tfdata")), rows
    table = capsys.readouterr().out
    for system in rows:
        assert re.search(rf"^   0 ms  {system} +\d+\.\d +\d\.\d{{3}} ", table, re.M), table
    assert f"in front of {s3.server.endpoint} (AWS_ENDPOINT_URL)" in table


def test_against_a_remote_store_the_counted_columns_say_not_measured():
    """No proxy in front of a remote store: its rows give clips/s and say the rest was not measured."""
    from dali_video.tools.bench import bucket

    assert bucket._row("30", "dali_video", {"clips_per_s": 12.5}).split() == \
        ["30", "ms", "dali_video", "12.5", "n/m", "n/m", "n/m", "n/m"]
    counted = {"clips_per_s": 12.5, "requests_per_clip": 1.0, "store_bytes_per_clip": 3e5, "x_clip": 1.01,
               "most_in_flight": 8}
    assert bucket._row("30", "dali_video", counted).split()[3:] == ["12.5", "1.000", "0.300", "1.01", "8"]


class _Store(BaseHTTPRequestHandler):
    """A store for the bench's proxy to stand in front of: ``GET /N`` answers N bytes, 1 MiB at a time."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        size = int(self.path.strip("/"))
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        for start in range(0, size, 1 << 20):
            self.wfile.write(b"x" * min(1 << 20, size - start))

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _local_store(host: str):
    """A :class:`_Store` listening on ``host`` in this process: its endpoint URL."""
    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    try:
        store = Server((host, 0), _Store)
    except OSError as e:
        pytest.skip(f"cannot listen on {host}: {e}")
    threading.Thread(target=store.serve_forever, daemon=True).start()
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{store.server_address[1]}"
    finally:
        store.shutdown()
        store.server_close()


@contextlib.contextmanager
def _bench_proxy(endpoint: str):
    """The bench's proxy (proxy.py, in its own process) in front of ``endpoint``: (its URL, its pid)."""
    proc = subprocess.Popen([sys.executable, proxy.__file__, endpoint.rsplit(":", 1)[1]], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{proc.stdout.readline().strip()}", proc.pid
    finally:
        proc.stdin.close()
        proxy.stop(proc)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_bench_proxy_forwards_to_the_local_endpoint_it_accepted(host, monkeypatch):
    """counting_proxy sits in front of every endpoint local_endpoint() takes for local, IPv6 loopback
    included, and counts what it forwards."""
    from dali_video.tools.bench import bucket

    with _local_store(host) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        with bucket.counting_proxy("s3") as url:
            with urlopen(f"{url}/5", timeout=10) as answer:
                assert answer.read() == b"xxxxx"
            # The proxy logs an answer as ended after its last byte went out, which the client may
            # have read first: wait for that, a bounded while.
            deadline = time.monotonic() + 10
            while (log := proxy_log(url)["log"]) and log[-1]["status"] is None and time.monotonic() < deadline:
                time.sleep(0.01)
    assert [(r["method"], r["path"], r["status"], r["bytes"]) for r in log] == [("GET", "/5", 200, 5)]


def test_the_bench_proxy_streams_an_answer_rather_than_holding_it():
    """A large object comes through the proxy as the store sends it: the proxy's memory does not grow
    by its size, and the answer's bytes are counted."""
    size = 128 << 20
    with _local_store("127.0.0.1") as endpoint:
        with _bench_proxy(endpoint) as (url, pid):
            with urlopen(f"{url}/{size}", timeout=60) as answer:
                got = sum(len(chunk) for chunk in iter(lambda: answer.read(1 << 20), b""))
            with open(f"/proc/{pid}/status") as f:
                peak_mb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
            log = proxy_log(url)["log"]
    assert got == size and [r["bytes"] for r in log] == [size], log
    assert peak_mb < 64, f"the proxy's peak memory: {peak_mb:.0f} MB for an answer of {size >> 20} MiB"


def test_the_bench_proxy_counts_the_bytes_sent_while_timing_not_those_of_the_requests_that_came_then():
    """The bench clears the log when timing starts and reads it when timing ends, requests in flight at
    both (the readers read ahead): the bytes it counts are those the store sent in between, the
    requests those that came in between."""
    with _local_store("127.0.0.1") as endpoint:
        with _bench_proxy(endpoint) as (url, _):
            proxy.set_delay(url, 1.0)
            before = threading.Thread(target=lambda: urlopen(f"{url}/1000", timeout=10).read())
            before.start()
            while proxy_log(url)["most_in_flight"] == 0:  # it came before timing started
                time.sleep(0.01)
            proxy_log(url, clear=True)
            before.join()  # its answer is sent while timing
            after = threading.Thread(target=lambda: urlopen(f"{url}/2000", timeout=10).read())
            after.start()
            while not proxy_log(url)["log"]:  # it came while timing, its answer is sent after
                time.sleep(0.01)
            log = proxy_log(url)
            after.join()
    assert (log["bytes"], [r["path"] for r in log["log"]]) == (1000, ["/2000"]), log


def test_the_bench_proxy_answers_502_naming_a_store_that_does_not_answer(monkeypatch):
    """Nothing listening at the endpoint: the client gets an answer that says so, not a closed connection."""
    from urllib.error import HTTPError

    from dali_video.tools.bench import bucket

    with _local_store("127.0.0.1") as endpoint:
        pass  # its port is free again
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with bucket.counting_proxy("s3") as url:
        with pytest.raises(HTTPError) as e:
            urlopen(f"{url}/5", timeout=10)
        assert e.value.code == 502
        assert re.fullmatch(rf"the bench's proxy got no answer from the store at 127\.0\.0\.1:{endpoint.rsplit(':', 1)[1]}: "
                            r".*Connection refused.*", e.value.read().decode())
        assert [r["status"] for r in proxy_log(url)["log"]] == [502]


def test_the_bench_proxy_refuses_a_chunked_request_body_and_its_controls_skip_http_proxy(monkeypatch):
    """A chunked body it would not forward whole is refused (411), not passed on empty; and the bench's
    own calls to its proxy go straight to it even where http_proxy names another."""
    import http.client

    with _local_store("127.0.0.1") as endpoint:
        with _bench_proxy(endpoint) as (url, _):
            monkeypatch.setenv("http_proxy", "http://192.0.2.1:3128")  # nothing answers there
            monkeypatch.delenv("no_proxy", raising=False)
            proxy.set_delay(url, 0)
            conn = http.client.HTTPConnection(*url.split("//")[1].split(":"), timeout=10)
            conn.request("PUT", "/5", body=iter([b"ab", b"cd"]), encode_chunked=True)
            assert conn.getresponse().status == 411
            assert proxy_log(url)["log"] == []  # nothing went to the store


def test_scale_makes_a_kinetics_shaped_dataset_and_measures_start_up_and_memory(tmp_path, capsys):
    from dali_video.loader.sampling import load_table

    assert bench.main(["scale", "--out", str(tmp_path), "--videos", "60", "--frames", "8", "--shards", "3",
                       "--readers", "2", "--clips", "16", "--epochs", "2"]) == 0
    table = load_table(tmp_path / "data")
    assert len(table) == 60 and set(table.num_frames) == {8} and len(table.shards) == 3
    results = json.loads((tmp_path / "scale.json").read_text())
    readers = results["readers"]["readers"]
    assert len(readers) == 2 and all(0 < r["startup_s"] <= r["first_batch_s"] for r in readers), readers
    assert len(results["epochs"]["rss_mb"]) == 2
    out = capsys.readouterr().out
    assert "reader 2: clip_dataset" in out and "epoch 2 -> 2" in out, out
    assert bench.main(["scale", "--out", str(tmp_path), "--epochs", "1"]) == 2  # checked before anything is made


def test_the_bench_modules_share_code_through_one_home_not_each_others_privates():
    import ast
    from pathlib import Path

    for path in Path(bench.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [a.name for a in node.names]
                if path.name != "__main__.py":  # the entry point runs bench.main; nothing else imports it back
                    assert node.module != "bench" and "bench" not in names, f"{path.name} imports bench.py"
                assert not [n for n in names if n.startswith("_")], f"{path.name} borrows {names} of {node.module}"
