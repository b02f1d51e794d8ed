"""The writer on Apache Beam (and on any engine, through write_shard): the local writer's bytes."""
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dali_video.tools.sample_data import make_folder_dataset
from dali_video.writer import EncodeOptions, WriteError, from_folder, plan_dataset, write_manifests, write_shard

from .conftest import ROOT, run_module

OPTIONS = ("--resize", "0", "--num-shards", "6")
BEAM = ("--runner", "beam", "--workers", "2")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """12 videos and one that is not a video, so that a shard reports a skipped file."""
    root = make_folder_dataset(tmp_path_factory.mktemp("beam_videos"), videos_per_class=6, frames=(40, 60),
                               height=96, width=128)
    (root / "a" / "a_bad.mp4").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def local(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_module("dali_video.writer", videos, out, *OPTIONS, "--workers", "2")
    return out


def _assert_same_files(out, ref):
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(p.name for p in Path(ref).iterdir())
    for p in Path(ref).iterdir():
        assert (Path(out) / p.name).read_bytes() == p.read_bytes(), p.name


def test_beam_with_two_workers_writes_the_local_bytes_and_reports_the_bad_video(videos, local, tmp_path):
    proc = run_module("dali_video.writer", videos, tmp_path, *OPTIONS, *BEAM)
    _assert_same_files(tmp_path, local)
    manifest = json.loads((tmp_path / "train.manifest.json").read_text())
    assert [f["filename"] for f in manifest["failures"]] == ["a/a_bad.mp4"]
    assert manifest["failures"][0]["reason"].startswith("not a video: text, not a video container (")
    assert "skipped a/a_bad.mp4: not a video: text" in proc.stdout
    assert manifest["videos"] == 12 and len(manifest["shards"]) == 6
    assert "beam metrics: frames_written=%d, shards_written=6, videos_skipped=1, videos_written=12" \
        % manifest["frames"] in proc.stderr


def test_killed_beam_run_resumes_keeping_finished_shards(videos, local, tmp_path):
    cmd = [sys.executable, "-m", "dali_video.writer", str(videos), str(tmp_path), *OPTIONS, *BEAM]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("*.fidx")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Beam workers and their decoder processes
    proc.wait()
    done = [p.name.removesuffix(".fidx") for p in tmp_path.glob("*.fidx")]
    assert 0 < len(done) < 6, "the kill must fall between the first shard and the last"
    finished = {n: (tmp_path / n).stat() for shard in done for n in (shard, shard + ".idx", shard + ".fidx")}
    assert not (tmp_path / "train.manifest.json").exists()
    run_module(*cmd[2:])
    _assert_same_files(tmp_path, local)
    for name, before in finished.items():  # kept, not written again
        after = (tmp_path / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name


def test_beam_on_error_fail_stops_with_the_videos_error(videos, tmp_path):
    proc = run_module("dali_video.writer", videos, tmp_path, *OPTIONS, *BEAM, "--on-error", "fail", check=False)
    assert proc.returncode == 1
    assert "dali-video-write: error: the Beam pipeline failed: " in proc.stderr
    assert "a_bad.mp4: not a video: text, not a video container (" in proc.stderr.splitlines()[-1]
    assert "(pass --on-error skip to skip such videos)" in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "train.manifest.json").exists()


def test_write_shard_mapped_by_any_executor_in_any_order_gives_the_local_bytes(videos, local, tmp_path):
    specs, failures = from_folder(videos, "train")
    plan = plan_dataset(specs, tmp_path, EncodeOptions(resize_shorter=0), input_failures=failures, num_shards=6)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda s: write_shard(s, plan.out_dir, plan.opts), plan.shards[::-1]))
    with pytest.raises(WriteError, match="5 planned shards have no result"):
        write_manifests(plan, results[:1])
    write_manifests(plan, results)
    _assert_same_files(tmp_path, local)
    assert not any(r.reused for r in results)
    assert all(write_shard(s, plan.out_dir, plan.opts).reused for s in plan.shards)
