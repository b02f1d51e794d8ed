"""Datasets in S3 and GCS (Python side): the writer (local and Beam) uploads shards, indexes and the
manifest to a bucket on a real server in its own process (tests/storage.py), the index tools verify
them there, and the loader's table of the bucket equals the local copy's. Unknown URL schemes,
wrong credentials and missing buckets are refused with an error naming the URL."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from dali_video.index_tools import read_frame_index, storage
from dali_video.index_tools.__main__ import main as index_main
from dali_video.index_tools.storage import StorageError, check_path
from dali_video.loader.sampling import SplitError, load_table
from dali_video.tools.sample_data import make_folder_dataset

from .conftest import ROOT, run_module

WRITE = ("--resize", "0", "--num-shards", "3", "--workers", "2")  # as the `dataset` fixture


def _objects(url):
    """name -> bytes of every object under ``url``."""
    return {storage.name(p): storage.read(p) for p in storage.glob(url, "*")}


def _same_table(a, b):
    for column in ("shard", "frame_start", "num_frames", "height", "width", "label", "filename"):
        assert np.array_equal(getattr(a, column), getattr(b, column)), column
    assert [(s.shard_size, s.frame_table_offset, s.num_frame_rows, s.frame_table_crc) for s in a.shards] == \
        [(s.shard_size, s.frame_table_offset, s.num_frame_rows, s.frame_table_crc) for s in b.shards]


def _index_tool(capsys, *args):
    """dali-video-index in this process (it imports neither TensorFlow nor DALI): (exit code, stdout, stderr)."""
    code = index_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _check_uploaded(url, dataset, capsys):
    """The objects at ``url`` are the local dataset's files, byte for byte (no temp objects), verify
    passes there and the loader's table of the bucket equals the local one's."""
    local = {p.name: p.read_bytes() for p in Path(dataset).iterdir()}
    assert _objects(url) == local
    code, out, _ = _index_tool(capsys, "verify", url)
    assert code == 0 and out.count(": OK, ") == 3 and f"{url}/train-00002-of-00003.tfrecord: OK" in out
    assert "train-00000-of-00003.tfrecord" in _index_tool(capsys, "inspect", url)[1]
    table = load_table(url)
    _same_table(table, load_table(dataset))
    assert str(table.shards[0].path) == f"{url}/train-00000-of-00003.tfrecord.fidx"
    return local


def test_writer_uploads_the_local_bytes_verify_and_load_table_read_them_there(bucket, videos, dataset, capsys):
    url = f"{bucket.url}/k400"
    run_module("dali_video.writer", videos, url + "/", *WRITE)
    local = _check_uploaded(url, dataset, capsys)
    again = run_module("dali_video.writer", videos, url, *WRITE)  # every shard complete: only the manifest again
    assert "resuming: 3 of 3 shards already complete" in again.stderr
    assert _objects(url) == local


def test_resuming_a_complete_dataset_reads_each_frame_index_once(s3, videos):
    """A re-run over a complete dataset in a bucket: the frame index of each shard is read once (one
    GET: its header and table are in the first 64 KiB; the size check uses the listing), the shards and
    their .idx never; besides that only the folder's requests (bucket check, listings, the manifest
    read and written again)."""
    url = f"{s3.url}/k400"
    run_module("dali_video.writer", videos, url, *WRITE)
    s3.server.clear_log()
    run_module("dali_video.writer", videos, url, *WRITE)
    paths = [e["path"].split("?")[0].removeprefix(f"/{url.split('/')[2]}/k400") for e in s3.server.requests()["log"]]
    shards = [f"/train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert sorted(p for p in paths if p.startswith("/train-0")) == [s + ".fidx" for s in shards]
    assert len(paths) - len(shards) <= 5, paths


def _bytes_read(log, path) -> int:
    """Bytes the GETs of ``path`` in a proxy log asked for (a GET without a range: the whole object)."""
    total = 0
    for e in log:
        if e["method"] == "GET" and e["path"].split("?")[0] == path:
            first, _, last = e["range"].removeprefix("bytes=").partition("-") if e["range"] else ("0", "", "")
            total += (int(last) + 1 if last else storage.size(f"s3:/{path}")) - int(first)
    return total


def test_verify_reads_a_shard_once(s3, dataset, capsys):
    """verify checks every record and every frame's JPEG header in one pass over the shard."""
    url = s3.upload(dataset, "ds")
    shard = f"{url}/train-00000-of-00003.tfrecord"
    s3.server.clear_log()
    assert _index_tool(capsys, "verify", shard)[0] == 0
    read = _bytes_read(s3.server.requests()["log"], shard.removeprefix("s3:/"))
    assert (Path(dataset) / storage.name(shard)).stat().st_size <= read <= 1.05 * storage.size(shard)


def test_glob_lists_a_folder_in_one_request(bucket, dataset):
    """The callers (expand, load_table, the writer) have just asked isdir; glob only lists. A file or a
    missing folder has no entries."""
    url = bucket.upload(dataset, "ds")
    storage._filesystem(url).invalidate_cache()
    bucket.server.clear_log()
    assert storage.glob(url, "*.tfrecord") == [f"{url}/{p.name}" for p in sorted(Path(dataset).glob("*.tfrecord"))]
    assert len(bucket.server.requests()["log"]) == 1
    assert storage.glob(f"{url}/train-00000-of-00003.tfrecord", "*.tfrecord") == []
    assert storage.glob(f"{url}/nothing", "*") == []


def test_beam_writer_uploads_the_local_bytes(s3, videos, dataset, capsys):
    url = f"{s3.url}/k400"
    run_module("dali_video.writer", videos, url, *WRITE, "--runner", "beam")
    _check_uploaded(url, dataset, capsys)


def test_resume_rewrites_a_shard_whose_frame_index_never_arrived(s3, videos, dataset):
    url = f"{s3.url}/ds"
    run_module("dali_video.writer", videos, url, *WRITE)
    fs = storage._filesystem(url)
    fs.rm_file(f"{url}/train-00001-of-00003.tfrecord.fidx")  # as if killed between the uploads
    fs.rm_file(f"{url}/train.manifest.json")
    again = run_module("dali_video.writer", videos, url, *WRITE)
    assert "resuming: 2 of 3 shards already complete" in again.stderr
    assert _objects(url) == {p.name: p.read_bytes() for p in Path(dataset).iterdir()}


@pytest.mark.parametrize("path, problem", [
    ("http://example.com/ds", "not http: URLs"),
    ("hdfs://namenode/ds", "not hdfs: URLs"),
    ("gcs://bucket/ds", "not gcs: URLs; write gs://bucket/ds"),  # 29.14: it suggested ./gcs://bucket/ds
    ("s3a://bucket/ds", "not s3a: URLs; write s3://bucket/ds"),
    ("s3:bucket/ds", "not a valid s3:// URL"),
    ("s3:/bucket/ds", "not a valid s3:// URL"),
    ("gs:///ds", "not a valid gs:// URL"),
    ("S3://bucket/ds", "not a valid s3:// URL"),
])
def test_unknown_url_schemes_are_refused_never_taken_for_local_paths(path, problem, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=re.escape(problem)) as error:
        check_path(path)
    assert "write ./" not in str(error.value)  # a URL is no local file name
    with pytest.raises(ValueError, match=re.escape(f"{path!r}")):
        load_table(path)
    monkeypatch.chdir(tmp_path)
    assert check_path("./s3:bucket") == Path("s3:bucket")  # the way out for a local name with ':'


def test_writer_refuses_an_unknown_scheme_and_writes_nothing(videos, capsys):
    proc = run_module("dali_video.writer", videos, "s3:bucket/ds", *WRITE, check=False)
    assert proc.returncode == 1
    assert "dali-video-write: error: 's3:bucket/ds' is not a valid s3:// URL: write s3://BUCKET/PREFIX" in proc.stderr
    assert not (Path(ROOT) / "s3:bucket").exists()
    proc = run_module("dali_video.writer", "s3://bucket/videos", "out", check=False)
    assert proc.returncode == 1 and "s3://bucket/videos: the videos are read from a local folder" in proc.stderr
    code, _, err = _index_tool(capsys, "verify", "hdfs://nn/ds")
    assert code == 1 and "dali-video-index verify: error: 'hdfs://nn/ds': dali-video reads local paths" in err


def test_wrong_credentials_fail_at_start_naming_the_url_never_the_keys(s3, videos, monkeypatch):
    url = f"{s3.url}/ds"
    secret = "wrong-secret-0123456789abcdef"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(StorageError, match=re.escape(f"{url}: cannot reach its bucket: Forbidden; check the "
                                                     "credentials (AWS_ACCESS_KEY_ID")) as e:
        load_table(url)
    assert secret not in str(e.value) and s3.env["AWS_ACCESS_KEY_ID"] not in str(e.value)
    proc = run_module("dali_video.writer", videos, url, *WRITE, check=False)
    assert proc.returncode == 1 and f"dali-video-write: error: {url}: cannot reach its bucket: Forbidden" in proc.stderr
    assert secret not in proc.stdout + proc.stderr and "frames/s" not in proc.stderr  # failed before encoding


def test_a_missing_bucket_fails_at_start_naming_the_url(bucket, videos, capsys):
    url = bucket.url.replace("://b-", "://missing-") + "/ds"
    error = f"{url}: bucket '{url.split('/')[2]}' does not exist (or is not visible to these credentials)"
    with pytest.raises(FileNotFoundError, match=re.escape(error)):
        load_table(url)
    proc = run_module("dali_video.writer", videos, url, *WRITE, check=False)
    assert proc.returncode == 1 and f"dali-video-write: error: {error}" in proc.stderr
    code, _, err = _index_tool(capsys, "verify", url)
    assert code == 1 and f"dali-video-index verify: error: {error}" in err


def test_index_build_in_a_bucket_writes_the_local_indexes(s3, dataset, capsys):
    url = f"{s3.url}/other"
    shard = "train-00001-of-00003.tfrecord"
    storage._filesystem(url).put_file(str(Path(dataset) / shard), f"{url}/{shard}")
    code, out, _ = _index_tool(capsys, "build", f"{url}/*.tfrecord")
    assert code == 0 and out.startswith(f"{url}/{shard}: ")
    assert storage.read(f"{url}/{shard}.idx") == (Path(dataset) / f"{shard}.idx").read_bytes()
    built, written = (read_frame_index(f"{where}/{shard}.fidx") for where in (url, dataset))  # the writer's has notes
    assert built.videos == written.videos and built.shard_size == written.shard_size
    assert np.array_equal(built.read_rows(0, built.num_frame_rows), written.read_rows(0, written.num_frame_rows))
    assert _index_tool(capsys, "verify", url)[0] == 0


def test_a_bucket_holds_one_dataset_replace_deletes_it_there(bucket, videos, tmp_path):
    """The writer's folder guard on a bucket prefix: another dataset is refused before an object is
    touched, --replace deletes the writer's objects (and no other) and writes the new one."""
    url = f"{bucket.url}/ds"
    run_module("dali_video.writer", videos, url, *WRITE)
    bucket.put("ds/notes.txt", b"the user's own object")
    before = _objects(url)
    others = make_folder_dataset(tmp_path / "others", videos_per_class=1, classes=("c0", "c1", "c2"), frames=(6, 6))
    proc = run_module("dali_video.writer", others, url, "--resize", "0", "--num-shards", "1", check=False)
    assert proc.returncode == 1
    assert (f"dali-video-write: error: {url} holds another dataset (splits train); this run differs:\n"
            "  train: class 0 was 'a', now 'c0' (2 class ids differ)\n") in proc.stderr
    assert _objects(url) == before
    run_module("dali_video.writer", others, url, "--resize", "0", "--num-shards", "1", "--replace")
    assert sorted(_objects(url)) == ["notes.txt", "train-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord.fidx",
                                     "train-00000-of-00001.tfrecord.idx", "train.manifest.json"]
    assert json.loads(storage.read(f"{url}/train.manifest.json"))["classes"] == {"0": "c0", "1": "c1", "2": "c2"}


def test_splits_of_a_bucket_are_read_from_its_listing(s3, dataset):
    """Split names and the missing-path message hold for a bucket as for a folder."""
    url = s3.upload(dataset, "ds")
    for p in sorted(Path(dataset).glob("train-00000-*")):  # a val shard as another tool names it
        s3.put(f"ds/{p.name.replace('train-00000-of-00003', 'kinetics-val-0')}", p.read_bytes())
    with pytest.raises(SplitError, match=re.escape(f"{url} holds the splits ['train', 'val']: pass split=")):
        load_table(url)
    assert len(load_table(url, "val")) == len(load_table(f"{dataset}/train-00000-of-00003.tfrecord"))
    _same_table(load_table(url, "train"), load_table(dataset))
    with pytest.raises(FileNotFoundError, match=re.escape(f"{url}/nothing.tfrecord: no such file or folder")):
        load_table(f"{url}/nothing.tfrecord")
