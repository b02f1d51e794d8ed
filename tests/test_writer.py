"""writer: round trip through plain TensorFlow, determinism, resume after kill, bad input."""
import json
import shutil
from pathlib import Path

import pytest
import tensorflow as tf

from dali_video.tools.sample_data import frame_number, make_video
from dali_video.index_tools import verify
from dali_video.loader.sampling import load_table
from dali_video.writer import EncodeOptions, VideoSpec, encode_video, plan_shards
from dali_video.writer.encode import RATE_TOLERANCE, frame_rate

from .conftest import run_module, with_dropped_frames


def _read_with_tensorflow(shards):
    """The seed code users have: parse_single_example with VarLenFeature(tf.string)."""
    spec = {"frames": tf.io.VarLenFeature(tf.string), "num_frames": tf.io.FixedLenFeature([], tf.int64),
            "class_label": tf.io.FixedLenFeature([], tf.int64), "class_text": tf.io.FixedLenFeature([], tf.string),
            "filename": tf.io.FixedLenFeature([], tf.string), "height": tf.io.FixedLenFeature([], tf.int64),
            "width": tf.io.FixedLenFeature([], tf.int64), "channels": tf.io.FixedLenFeature([], tf.int64)}
    for record in tf.data.TFRecordDataset([str(s) for s in shards]):
        yield tf.io.parse_single_example(record, spec)


def test_round_trip_every_frame_and_label(dataset, videos):
    shards = sorted(dataset.glob("*.tfrecord"))
    assert sum(verify(s) for s in shards) == 10
    seen = {}
    for ex in _read_with_tensorflow(shards):
        frames = tf.sparse.to_dense(ex["frames"]).numpy()
        name = ex["filename"].numpy().decode()
        assert len(frames) == ex["num_frames"].numpy()
        assert [frame_number(tf.io.decode_jpeg(f).numpy()) for f in frames] == list(range(len(frames)))
        assert tf.io.decode_jpeg(frames[0]).shape == (48, 64, 3)
        assert (ex["height"].numpy(), ex["width"].numpy(), ex["channels"].numpy()) == (48, 64, 3)
        assert ex["class_text"].numpy().decode() == name.split("/")[0]
        assert ex["class_label"].numpy() == {"a": 0, "b": 1}[name.split("/")[0]]
        seen[name] = len(frames)
    expected = {f"{p.parent.name}/{p.name}" for p in Path(videos).glob("*/*.avi")}
    assert set(seen) == expected
    manifest = json.loads((dataset / "train.manifest.json").read_text())
    assert manifest["classes"] == {"0": "a", "1": "b"} and manifest["videos"] == 10 and manifest["failures"] == []
    assert {k: v for s in manifest["shards"] for k, v in s["num_frames"].items()} == seen


def test_output_is_identical_for_any_worker_count(videos, dataset, tmp_path):
    run_module("dali_video.writer", videos, tmp_path, "--resize", "0", "--num-shards", "3", "--workers", "1")
    names = sorted(p.name for p in dataset.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (tmp_path / name).read_bytes() == (dataset / name).read_bytes(), name


def test_plan_is_pure_and_covers_every_video():
    specs = [VideoSpec(f"/v/{i}", f"{i}", i % 3, "c", "train") for i in range(17)]
    a, b = plan_shards(specs, {"train": 4}, seed=3), plan_shards(specs[::-1], {"train": 4}, seed=3)
    assert a == b
    assert sorted(v.filename for p in a for v in p.videos) == sorted(s.filename for s in specs)
    assert [len(p.videos) for p in a] == [4, 4, 4, 5]
    assert a != plan_shards(specs, {"train": 4}, seed=4)


def test_resize_fps_and_max_frames(tmp_path):
    path = make_video(tmp_path / "v.avi", 50, 60, 80, fps=25)
    spec = VideoSpec(str(path), "v.avi", 0, "x", "train")
    out = encode_video(spec, EncodeOptions(resize_shorter=30, fps=12.5, max_frames=10))
    assert (out.meta.height, out.meta.width) == (30, 40)
    frames = [tf.io.decode_jpeg(out.data[o:o + n]).numpy() for o, n in out.spans]
    assert [frame_number(f) for f in frames] == list(range(0, 20, 2))


def test_the_rate_comes_from_the_frames_timestamps_where_the_header_disagrees(tmp_path):
    # 10 coded frames, each followed by 5 dropped ones: the header says 60 frames at 15 fps, the frames
    # lie 0.4 s apart (2.5 fps); as a video of 68 frames over 29.5 s whose header claims 444 at 15 fps.
    path = with_dropped_frames(make_video(tmp_path / "v" / "c" / "vfr.avi", 10, fps=15), 5)
    out = encode_video(VideoSpec(str(path), "c/vfr.avi", 0, "c", "train"), EncodeOptions(resize_shorter=0))
    assert [frame_number(tf.io.decode_jpeg(out.data[o:o + n]).numpy()) for o, n in out.spans] == list(range(10))
    report = ("decoded 10 frames, the container header claims 60; the frames' timestamps give 2.5 fps (10 frames "
              "over 3.6 s), the container header 15 fps: their rate is used (stored 2.5 fps)")
    assert (out.meta.fps, out.warning) == (2.5, report)
    proc = run_module("dali_video.writer", tmp_path / "v", tmp_path / "out", "--resize", "0")
    assert f"warning c/vfr.avi: {report}" in proc.stdout
    assert load_table(tmp_path / "out").fps.tolist() == [2.5]
    # Resampling keeps at most the frames' own rate.
    assert encode_video(VideoSpec(str(path), "c/vfr.avi", 0, "c", "train"),
                        EncodeOptions(resize_shorter=0, fps=10)).meta.fps == 2.5


def test_the_header_rate_stands_within_the_tolerance():
    stamps = lambda fps, n=30: [i * 1000 / fps for i in range(n)]  # noqa: E731
    assert RATE_TOLERANCE == 0.05
    for measured in (25.0, 25 * 1.049, 25 * 0.951):
        assert frame_rate(25.0, stamps(measured)) == (25.0, None)
    for measured in (25 * 1.051, 25 * 0.949, 2.5):
        fps, note = frame_rate(25.0, stamps(measured))
        assert fps == pytest.approx(measured) and "the container header 25 fps: their rate is used" in note
    assert frame_rate(0.0, stamps(12.0))[0] == pytest.approx(12.0)  # a header without a rate
    assert frame_rate(25.0, [40.0]) == frame_rate(25.0, [40.0, 40.0]) == (25.0, None)  # nothing to measure


def test_kinetics_csv_trims_full_videos_and_finds_trimmed_clips(tmp_path):
    root = tmp_path / "videos"
    make_video(root / "full" / "abc.avi", 100, fps=10)  # 10 s
    make_video(root / "clips" / "xyz_000002_000004.avi", 20, fps=10)
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "run,abc,3,5,train\njump,xyz,2,4,train\nrun,missing,0,10,train\n"
                   "run,abc,30,40,train\njump,xyz,2,4,train\n")
    proc = run_module("dali_video.writer", root, tmp_path / "out", "--kinetics", csv, "--resize", "0")
    assert "3 skipped" in proc.stdout
    manifest = json.loads((tmp_path / "out" / "train.manifest.json").read_text())
    reasons = {f["filename"]: f["reason"] for f in manifest["failures"]}
    assert "no video missing_000000_000010.mp4" in reasons["missing_000000_000010"]
    assert "segment [30, 40)" in reasons["abc_000030_000040.mp4"]
    assert "duplicate of" in reasons["xyz_000002_000004"]
    shards = sorted((tmp_path / "out").glob("*.tfrecord"))
    got = {ex["filename"].numpy().decode(): [frame_number(tf.io.decode_jpeg(f).numpy())
                                              for f in tf.sparse.to_dense(ex["frames"]).numpy()]
           for ex in _read_with_tensorflow(shards)}
    assert got["abc_000003_000005.mp4"] == list(range(30, 50))
    assert got["xyz_000002_000004.mp4"] == list(range(20))
    assert manifest["classes"] == {"0": "jump", "1": "run"}


def test_bad_videos_are_skipped_and_reported_or_stop_the_run(tmp_path):
    root = tmp_path / "videos"
    make_video(root / "good" / "ok.avi", 10)
    (root / "good" / "empty.mp4").write_bytes(b"")
    (root / "good" / "text.mp4").write_text("this is not a video")
    whole = make_video(tmp_path / "t.avi", 30).read_bytes()
    (root / "good" / "truncated.avi").write_bytes(whole[:len(whole) // 3])
    proc = run_module("dali_video.writer", root, tmp_path / "out", "--resize", "0")
    manifest = json.loads((tmp_path / "out" / "train.manifest.json").read_text())
    reasons = {f["filename"]: f["reason"] for f in manifest["failures"]}
    assert set(reasons) >= {"good/empty.mp4", "good/text.mp4"}
    assert all(reasons.values()) and "skipped good/text.mp4" in proc.stdout
    names = {ex["filename"].numpy().decode() for ex in _read_with_tensorflow((tmp_path / "out").glob("*.tfrecord"))}
    assert "good/ok.avi" in names and not names & set(reasons)
    # A truncated file either decodes its intact frames (and says so) or is skipped with a reason.
    assert "good/truncated.avi" in names | set(reasons)
    proc = run_module("dali_video.writer", root, tmp_path / "out2", "--resize", "0", "--on-error", "fail", check=False)
    assert proc.returncode == 1 and "dali-video-write: error:" in proc.stderr and "--on-error skip" in proc.stderr
    assert not list((tmp_path / "out2").glob("*.tfrecord*"))


def test_csv_paths_may_not_escape_the_root(tmp_path):
    root = tmp_path / "root"
    make_video(root / "v.avi", 5)
    make_video(tmp_path / "outside.avi", 5)
    (root / "link.avi").symlink_to(tmp_path / "outside.avi")
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\nv.avi,cat\n../outside.avi,cat\nlink.avi,dog\n")
    run_module("dali_video.writer", root, tmp_path / "out", "--csv", csv, "--resize", "0")
    reasons = {f["filename"]: f["reason"] for f in
               json.loads((tmp_path / "out" / "train.manifest.json").read_text())["failures"]}
    assert "escapes the dataset root" in reasons["../outside.avi"]
    assert "escapes the dataset root" in reasons["link.avi"]
    run_module("dali_video.writer", root, tmp_path / "out2", "--csv", csv, "--resize", "0", "--follow-symlinks")
    reasons = {f["filename"] for f in json.loads((tmp_path / "out2" / "train.manifest.json").read_text())["failures"]}
    assert reasons == {"../outside.avi"}


def test_rerun_with_other_options_is_refused_and_replace_rewrites(videos, tmp_path):
    run_module("dali_video.writer", videos, tmp_path, "--resize", "0", "--num-shards", "2")
    first = {p.name: p.read_bytes() for p in tmp_path.glob("*.tfrecord")}
    proc = run_module("dali_video.writer", videos, tmp_path, "--resize", "0", "--num-shards", "2", "--quality", "50",
                      check=False)
    assert proc.returncode == 1 and "train: quality was 90, now 50\npass --replace" in proc.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.tfrecord")} == first
    run_module("dali_video.writer", videos, tmp_path, "--resize", "0", "--num-shards", "2", "--quality", "50",
               "--replace")
    second = {p.name: p.read_bytes() for p in tmp_path.glob("*.tfrecord")}
    assert first.keys() == second.keys() and all(first[k] != second[k] for k in first)
    assert all(verify(s) for s in tmp_path.glob("*.tfrecord"))


def test_a_resumed_run_writes_a_missing_idx_again(videos, dataset, tmp_path):
    # A shard whose DALI index (.idx) is gone is not complete: resuming writes it again, as the loader
    # needs it, rather than keeping the shard and listing it in the manifest.
    out = tmp_path / "ds"
    shutil.copytree(dataset, out)
    idx = sorted(out.glob("*.tfrecord.idx"))[1]
    idx.unlink()
    run_module("dali_video.writer", videos, out, "--resize", "0", "--num-shards", "3", "--workers", "1")
    assert idx.read_bytes() == (dataset / idx.name).read_bytes()
