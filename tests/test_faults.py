"""The fault matrix: each case builds a fault and asserts what the user gets."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dali_video
from dali_video.tools.sample_data import frame_number, make_video
from dali_video.index_tools import FormatError, build, read_frame_index, verify
from dali_video.index_tools import format as fmt
from dali_video.index_tools.proto import encode_example
from dali_video.writer import EncodeOptions, VideoError, VideoSpec, encode_video

from .conftest import ROOT, run_module
from .test_loader import CPU, clips_of, numbers


def _manifest(out, split="train"):
    return json.loads((Path(out) / f"{split}.manifest.json").read_text())


def _reasons(out):
    return {f["filename"]: f["reason"] for f in _manifest(out)["failures"]}


def _names(out):
    return {n for ix in (read_frame_index(fmt.fidx_path(s)) for s in Path(out).glob("*.tfrecord"))
            for n in ix.videos["filename"]}


# ---------------------------------------------------------------- writer

def test_unreadable_and_zero_frame_videos_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "v"
    make_video(root / "c" / "ok.avi", 6)
    make_video(root / "c" / "zero.avi", 0)
    (root / "c" / "dangling.avi").symlink_to(root / "c" / "gone.avi")
    run_module("dali_video.writer", root, tmp_path / "out", "--resize", "0")
    reasons = _reasons(tmp_path / "out")
    assert "no decodable frames" in reasons["c/zero.avi"]
    assert "cannot open" in reasons["c/dangling.avi"]
    assert _names(tmp_path / "out") == {"c/ok.avi"}


def test_no_readable_input_at_all_fails_with_the_reasons(tmp_path):
    outside = tmp_path / "elsewhere" / "v.avi"
    make_video(outside, 4)
    (tmp_path / "v" / "c").mkdir(parents=True)
    (tmp_path / "v" / "c" / "link.avi").symlink_to(outside)  # leaves ROOT: refused without --follow-symlinks
    proc = run_module("dali_video.writer", tmp_path / "v", tmp_path / "out", "--resize", "0", check=False)
    assert proc.returncode == 1 and "no video to write from" in proc.stderr and "c/link.avi" in proc.stderr


def test_truncated_mp4_is_skipped_and_truncated_avi_keeps_only_whole_frames(tmp_path):
    root = tmp_path / "v"
    data = make_video(tmp_path / "m.mp4", 40).read_bytes()
    (root / "c").mkdir(parents=True)
    (root / "c" / "cut.mp4").write_bytes(data[: len(data) // 2])
    avi = make_video(tmp_path / "a.avi", 40).read_bytes()
    (root / "c" / "cut.avi").write_bytes(avi[: len(avi) // 2])
    run_module("dali_video.writer", root, tmp_path / "out", "--resize", "0")
    m = _manifest(tmp_path / "out")
    outcome = {f["filename"]: f["reason"] for f in m["failures"] + m["warnings"]}
    assert set(outcome) == {"c/cut.mp4", "c/cut.avi"}  # each one skipped or warned about, never silent
    for shard in (tmp_path / "out").glob("*.tfrecord"):
        verify(shard)
    if "c/cut.avi" in _names(tmp_path / "out"):
        clip = clips_of(tmp_path / "out", 1, batch_size=1, clip_len=5, crop_size=16, training=False)[0]
        assert numbers(clip[0]) == list(range(clip[3], clip[3] + 5))


@pytest.mark.parametrize("max_frames, warns", [(None, True), (120, True), (12, False), (5, False)])
def test_header_that_lies_about_frame_count_is_not_trusted(tmp_path, max_frames, warns):
    path = make_video(tmp_path / "v" / "c" / "lie.avi", 12)
    data = bytearray(path.read_bytes())
    for tag, offset in ((b"avih", 24), (b"strh", 40)):  # dwTotalFrames, dwLength
        i = data.index(tag)
        data[i + offset:i + offset + 4] = (500).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    out = encode_video(VideoSpec(str(path), "lie.avi", 0, "c", "train"),
                       EncodeOptions(resize_shorter=0, max_frames=max_frames))
    kept = min(12, max_frames or 12)
    assert [frame_number(__import__("cv2").imdecode(np.frombuffer(out.data[o:o + n], np.uint8), 1)[..., ::-1])
            for o, n in out.spans] == list(range(kept))
    # Fewer frames than both the header claims and max_frames keeps: the video is shorter than it says.
    assert out.warning == ("decoded 12 frames, the container header claims 500" if warns else None)


class _FakeCapture:
    """Frames of two sizes, as a stream that changes resolution mid-way."""

    def __init__(self, path):
        self.frames = [np.full((40, 60, 3), 10, np.uint8)] * 3 + [np.full((80, 120, 3), 10, np.uint8)] * 2
        self.i = 0

    def isOpened(self):
        return True

    def get(self, prop):
        return self.i * 40.0 if prop == __import__("cv2").CAP_PROP_POS_MSEC else 0

    def set(self, *a):
        return True

    def read(self):
        self.i += 1
        return (True, self.frames[self.i - 1]) if self.i <= len(self.frames) else (False, None)

    def release(self):
        pass


def test_resolution_change_mid_stream(monkeypatch, tmp_path):
    monkeypatch.setattr("dali_video.writer.encode.cv2.VideoCapture", _FakeCapture)
    path = tmp_path / "x.avi"  # an AVI container's first bytes: the writer takes only containers
    path.write_bytes(b"RIFF" + (1000).to_bytes(4, "little") + b"AVI LIST" + bytes(100))
    spec = VideoSpec(str(path), "x.avi", 0, "c", "train")
    out = encode_video(spec, EncodeOptions(resize_shorter=20))
    assert (out.meta.height, out.meta.width) == (20, 30) and len(out.spans) == 5
    with pytest.raises(VideoError, match="frame 3 is 120x80, earlier frames 60x40; pass a resize size"):
        encode_video(spec, EncodeOptions(resize_shorter=0))


def test_non_utf8_and_very_long_file_names_round_trip(tmp_path):
    root = tmp_path / "v"
    make_video(root / "c" / "plain.avi", 5)
    long_name = "l" * 240 + ".avi"
    make_video(root / "c" / long_name, 5)
    odd = os.fsencode(root / "c") + b"/caf\xe9.avi"
    shutil.copy(root / "c" / "plain.avi", odd)
    run_module("dali_video.writer", root, tmp_path / "out", "--resize", "0")
    names = _names(tmp_path / "out")
    assert f"c/{long_name}" in names and os.fsdecode(b"c/caf\xe9.avi") in names and len(names) == 3
    for shard in (tmp_path / "out").glob("*.tfrecord"):
        verify(shard)
        build(shard)  # rebuilding from the records gives the same names
        verify(shard)
    got = {c[2] for c in clips_of(tmp_path / "out", 3, batch_size=1, clip_len=2, crop_size=16, training=False)}
    assert len(got) == 3


def test_label_missing_from_class_list(tmp_path):
    root = tmp_path / "v"
    make_video(root / "cat" / "a.avi", 4)
    make_video(root / "dog" / "b.avi", 4)
    (tmp_path / "classes.txt").write_text("cat\nbird\n")
    run_module("dali_video.writer", root, tmp_path / "out", "--resize", "0", "--classes", tmp_path / "classes.txt")
    assert "class 'dog' is not in the class list" in _reasons(tmp_path / "out")["dog/b.avi"]
    assert _manifest(tmp_path / "out")["classes"] == {"0": "cat"}


def test_full_disk_stops_with_a_clear_error_and_no_partial_shard(tmp_path):
    root = tmp_path / "v"
    for i in range(4):
        make_video(root / "c" / f"{i}.avi", 60, 96, 128)
    out = tmp_path / "out"

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    proc = subprocess.run([sys.executable, "-m", "dali_video.writer", str(root), str(out), "--resize", "0", "--num-shards",
                           "2", "--workers", "1"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, preexec_fn=small_disk)
    assert proc.returncode == 1 and "dali-video-write: error:" in proc.stderr and "File too large" in proc.stderr
    assert not list(out.glob(".*.tmp"))
    for shard in out.glob("*.tfrecord"):  # what is visible is complete
        verify(shard)


@pytest.mark.slow
def test_kill_9_at_ten_moments_then_resume_is_byte_identical(tmp_path):
    root = tmp_path / "v"
    for i in range(6):
        make_video(root / "c" / f"{i}.avi", 150, 200, 280)
    ref = tmp_path / "ref"
    start = time.perf_counter()
    run_module("dali_video.writer", root, ref, "--resize", "0", "--num-shards", "6", "--workers", "1")
    seconds = time.perf_counter() - start
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dali_video.writer", str(root), str(out), "--resize", "0", "--num-shards", "6",
           "--workers", "1"]
    rng = np.random.default_rng(0)
    killed_midway = 0
    for _ in range(10):
        if rng.random() < 0.5:  # half the kills hit a run that starts from scratch
            shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.1, 0.7) * seconds)
        killed_midway += proc.poll() is None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it had finished
        proc.wait()
        for shard in out.glob("*.tfrecord"):
            if fmt.fidx_path(shard).exists():
                verify(shard)  # a finished-looking shard is whole
    assert killed_midway >= 5
    run_module(*cmd[2:])
    assert not list(out.glob(".*.tmp"))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    for p in ref.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name


# ---------------------------------------------------------------- indexes at load time

def _shard(ds):
    return sorted(Path(ds).glob("*.tfrecord"))[0]


def _load(ds, **kw):
    return dali_video.clip_pipeline(ds, batch_size=1, clip_len=2, crop_size=16, device="cpu", **kw)


def test_garbage_idx_lines_and_truncated_shard_fail_at_load(dataset_copy):
    shard = _shard(dataset_copy)
    good = fmt.idx_path(shard).read_bytes()
    fmt.idx_path(shard).write_text("0 10\nnot a line\n")
    with pytest.raises(FormatError, match=r"\.idx: line 2 is not '<offset> <size>'"):
        _load(dataset_copy)
    fmt.idx_path(shard).write_text("0 10\n5 10\n7 10\n" if good.count(b"\n") == 3 else "0 1\n")
    with pytest.raises(FormatError, match="do not match the frame index.*stale index"):
        _load(dataset_copy)
    fmt.idx_path(shard).write_bytes(good)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(FormatError, match="stale frame index: the shard is"):
        _load(dataset_copy)


def test_gzip_shard_fails_at_load_with_its_own_message(dataset_copy):
    import gzip
    shard = _shard(dataset_copy)
    shard.write_bytes(gzip.compress(shard.read_bytes()))
    with pytest.raises(FormatError, match="GZIP-compressed"):
        _load(dataset_copy)


def test_damaged_record_framing_does_not_touch_frames_but_verify_reports_it(dataset_copy):
    shard = _shard(dataset_copy)
    ix = read_frame_index(fmt.fidx_path(shard))
    data = bytearray(shard.read_bytes())
    data[ix.videos["record_offset"][0] + 2] ^= 1  # a length field: the loader never reads it
    shard.write_bytes(bytes(data))
    for clip, _, _, first in clips_of([shard], 2, batch_size=2, clip_len=3, crop_size=16):
        assert numbers(clip) == [first, first + 1, first + 2]
    with pytest.raises(FormatError, match="record 0 at byte 0: length field fails its CRC"):
        verify(shard)


def test_shard_left_empty_by_skipped_videos_loads_with_the_rest(tmp_path):
    root = tmp_path / "v"
    make_video(root / "c" / "good.avi", 8)
    (root / "c" / "bad.avi").write_text("not a video")
    run_module("dali_video.writer", root, tmp_path / "out", "--resize", "0", "--num-shards", "2", "--seed", "1")
    counts = sorted(read_frame_index(fmt.fidx_path(s)).num_videos for s in (tmp_path / "out").glob("*.tfrecord"))
    assert counts == [0, 1]
    assert {c[2] for c in clips_of(tmp_path / "out", 2, batch_size=2, clip_len=3, crop_size=16)} == {"c/good.avi"}


def test_empty_shard_file_cannot_be_indexed(tmp_path):
    (tmp_path / "e.tfrecord").write_bytes(b"")
    with pytest.raises(FormatError, match="no record holds video frames"):
        build(tmp_path / "e.tfrecord")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_idx_and_jpeg_header_parsers_raise_only_format_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("idx") / "x.idx"
    path.write_bytes(data)
    for parse in (lambda: fmt.read_idx(path), lambda: fmt.jpeg_size(data), lambda: fmt.jpeg_size(b"\xff\xd8" + data)):
        try:
            parse()
        except FormatError:
            pass


# ---------------------------------------------------------------- loader

def _write_corrupt_jpeg_shard(path):
    """A valid record (good CRCs) whose video 1 has a frame that is no JPEG at all."""
    import cv2
    from dali_video.tools.sample_data import frame_pixels
    from dali_video.index_tools.indexer import ShardIndex, VideoMeta
    index = ShardIndex("example", "frames")
    with open(path, "wb") as f:
        for v in range(3):
            jpegs = [cv2.imencode(".jpg", frame_pixels(k, 24, 32))[1].tobytes() for k in range(6)]
            if v == 1:
                jpegs[4] = b"\xff\xd8" + bytes(range(7, 250)) + b"\xff\xd9"
            data, spans = encode_example({"frames": jpegs, "class_label": [v]}, track="frames")
            index.add(f.tell(), data, spans, VideoMeta(v, f"v{v}", "", 24, 32))
            f.write(fmt.encode_record(data))
    fmt.atomic_write(fmt.idx_path(path), index.idx_bytes())
    fmt.atomic_write(fmt.fidx_path(path), index.fidx_bytes(os.path.getsize(path)))
    return path


def test_corrupt_jpeg_in_valid_record_raises_or_is_skipped_and_counted(tmp_path, capfd):
    shard = _write_corrupt_jpeg_shard(tmp_path / "c.tfrecord")
    with pytest.raises(Exception, match=r"c\.tfrecord: video 'v1' frame 4 at byte \d+: is not a valid JPEG"):
        clips_of([shard], 3, batch_size=3, clip_len=6, crop_size=16, training=False)
    ds = dali_video.clip_dataset([shard], batch_size=3, clip_len=6, crop_size=16, training=False,
                                 on_corrupt="skip", with_meta=True, **CPU)
    _, _, meta = next(iter(ds))
    assert b"v1" not in meta["filename"].numpy().tolist()
    assert meta["replaced"].numpy().tolist() == [0, 1, 0]  # v1's clip gave way to the next one
    assert "on_corrupt='skip': replacing a clip: " in capfd.readouterr().err


def test_one_video_dataset_and_batch_larger_than_dataset(tmp_path):
    make_video(tmp_path / "v" / "c" / "only.avi", 9)
    run_module("dali_video.writer", tmp_path / "v", tmp_path / "out", "--resize", "0")
    clips = clips_of(tmp_path / "out", 2, batch_size=5, clip_len=4, crop_size=16)
    assert len(clips) == 10 and {c[2] for c in clips} == {"c/only.avi"}
    assert all(numbers(c[0]) == list(range(c[3], c[3] + 4)) for c in clips)


def test_shards_of_different_resolutions_in_one_dataset(videos, dataset, tmp_path):
    run_module("dali_video.writer", videos, tmp_path / "big", "--resize", "72", "--num-shards", "1", "--split", "big")
    files = sorted(Path(dataset).glob("*.tfrecord")) + sorted((tmp_path / "big").glob("*.tfrecord"))
    table = dali_video.load_table(files)
    assert set(zip(table.height, table.width)) == {(48, 64), (72, 96)}
    for clip, *_ in clips_of(files, 5, batch_size=4, clip_len=3, crop_size=40):
        assert clip.shape == (3, 40, 40, 3)


def test_shard_removed_while_iterating_fails_naming_it(dataset_copy):
    ds = dali_video.clip_dataset(dataset_copy, batch_size=2, clip_len=2, crop_size=16, prefetch_queue_depth=1, **CPU)
    it = iter(ds)
    next(it)
    victim = _shard(dataset_copy)
    victim.unlink()
    with pytest.raises(Exception, match=f"{victim.name}: cannot read video"):
        for _ in range(20):
            next(it)


def test_the_loader_starts_no_python_threads(dataset):
    before = set(threading.enumerate())
    with dali_video.clip_pipeline(dataset, batch_size=2, clip_len=2, crop_size=16, device="cpu") as p:
        p.pipeline.run()
        assert set(threading.enumerate()) == before  # the reader runs in DALI's own (native) threads
    assert p.pipeline is None


EXIT_SCRIPT = """
import os, signal, sys, threading, time
import dali_video
ds = dali_video.clip_dataset(sys.argv[1], batch_size=2, clip_len=4, crop_size=16, device="cpu")
it = iter(ds)
next(it)
print("iterating", flush=True)
if sys.argv[2] == "sigint":
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    while True:
        next(it)
"""


@pytest.mark.parametrize("how", ["exit", "sigint"])
def test_interpreter_exit_and_ctrl_c_do_not_hang(dataset, how):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT), str(dataset), how], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=120)
    assert "iterating" in proc.stdout
    # Ctrl-C ends the program as Python does (exit by SIGINT after the traceback), without hanging.
    assert proc.returncode == (0 if how == "exit" else -signal.SIGINT), proc.stderr[-2000:]
    if how == "sigint":
        assert "KeyboardInterrupt" in proc.stderr


def test_nothing_is_ever_unpickled():
    for package in ("dali_video",):
        for path in Path(ROOT, package).rglob("*.py"):
            text = path.read_text()
            assert "import pickle" not in text and "allow_pickle=True" not in text, path


def test_a_decoder_that_kills_its_process_becomes_a_reported_failure():
    from dali_video.writer.sources import Failure
    from dali_video.writer.write import encode_all

    from .crashy import work
    tasks = [("ok", i) for i in range(5)] + [("boom", 5)] + [("ok", i) for i in range(6, 12)]
    results = list(encode_all(tasks, workers=2, fn=work))
    assert len(results) == 12
    assert results[5] == Failure("boom", "the decoder crashed on this file (its process died)")
    assert results[:5] + results[6:] == [i * 10 for i in range(5)] + [i * 10 for i in range(6, 12)]


@pytest.mark.parametrize("io_threads", [0, 2])
@pytest.mark.parametrize("kind, what", [("bad_alloc", "std::bad_alloc"), ("int", "an exception of an unknown type")])
def test_no_exception_on_the_readers_threads_ends_the_process(dataset, monkeypatch, io_threads, kind, what):
    """The reader's test_throw argument throws at one clip (on its own io threads, or in DALI's)."""
    from dali_video.loader import dataset as loader

    args = loader._reader_args
    monkeypatch.setattr(loader, "_reader_args", lambda *a, **k: {**args(*a, **k), "test_throw_at": 5,
                                                                 "test_throw": kind})
    with pytest.raises(dali_video.ReaderError, match=rf"dali-video clip reader: \S+\.tfrecord: video '[^']+': cannot "
                                                     rf"read the clip: {what}"):
        with dali_video.reader_errors(), dali_video.clip_pipeline(dataset, batch_size=2, clip_len=2, crop_size=16,
                                                                  device="cpu", output="jpegs",
                                                                  io_threads=io_threads) as p:
            for _ in range(4):
                p.pipeline.run()
