"""The native reader: its plan equals the Python reference, and damaged bytes give Python errors."""
import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dali_video
from dali_video.loader import native
from dali_video.loader.config import ClipConfig
from dali_video.loader.sampling import PlanSpec, permute, plan_clip
from dali_video.index_tools import format as fmt
from dali_video.index_tools import read_frame_index

plan_c = native.plan_function()


def native_plan(plan: PlanSpec, videos, position: int, with_frames: bool = False) -> list:
    """The native plan of clip ``position`` over videos given as (num_frames, height, width[, fps]): video,
    start, stride, y, x, h, w, flip and the colour factors (and with_frames, the frame numbers)."""
    ints = plan.as_ints()
    spec = (ctypes.c_int64 * len(ints))(*ints)
    rows = [(*v[:3], int(np.float64(v[3] if len(v) > 3 else 0.0).view(np.int64))) for v in videos]
    flat = (ctypes.c_int64 * (4 * len(videos)))(*[x for v in rows for x in v])
    out, frames = (ctypes.c_int64 * 15)(), (ctypes.c_int64 * plan.config.clip_len)()
    plan_c(spec, flat, len(videos), position, out, frames)
    fields = list(out[:9]) + list(np.array(out[9:13], np.int64).view(np.float64))
    return (fields, list(frames)) if with_frames else fields


def ranges(low, high):
    return st.one_of(st.integers(low, high), st.tuples(st.integers(low, high), st.integers(low, high)).map(sorted).map(
        tuple))


def real_range(low, high):
    return st.tuples(st.floats(low, high), st.floats(low, high)).map(sorted).map(tuple)


@st.composite
def plans(draw):
    crop = draw(st.integers(1, 64))
    area = draw(st.one_of(st.none(), real_range(1e-4, 1.0)))
    low = 1 if area else crop  # a plain crop must fit in the (resized) frame
    resize = draw(st.one_of(st.none(), ranges(low, low + 400), ranges(60000, 65535)))
    size = 1 if resize or area else crop
    side = st.one_of(st.integers(size, 4000), st.integers(size, 65535))
    fps = st.one_of(st.sampled_from([24.0, 25.0, 29.97002997002997, 30.0, 12.0]), st.floats(0.5, 240))
    videos = draw(st.lists(st.tuples(st.integers(1, 2000), side, side, fps), min_size=1, max_size=40))
    training = draw(st.booleans())
    jitter = st.tuples(*[st.floats(0, 10)] * 3, st.floats(0, 0.5))
    sampling = draw(st.sampled_from(["stride", "segments"]))
    rule = draw(st.sampled_from(["slowfast", "tsn"]))
    config = ClipConfig(clip_len=draw(st.integers(1, 128)), stride=draw(ranges(1, 8)) if sampling == "stride" else 1,
                        crop_size=crop, resize_shorter=resize, crop_area=area, crop_aspect=draw(real_range(0.01, 100)),
                        flip=draw(st.booleans()), color_jitter=draw(st.one_of(st.none(), jitter)),
                        short_videos=draw(st.sampled_from(["repeat_last", "loop", "skip"])),
                        clips_per_video=draw(st.integers(1, 5)), num_crops=draw(st.sampled_from([1, 3])),
                        sampling=sampling, segment_rule=rule,
                        twice_sample=sampling == "segments" and rule == "tsn" and draw(st.booleans()),
                        target_fps=draw(st.sampled_from([None, 30.0, 15.0, 29.97])) if sampling == "stride" else None,
                        test_views=draw(st.sampled_from(["default", "slowfast", "slowfast_offset", "mmaction"])))
    plan = PlanSpec(config if training else config.evaluation(), seed=draw(st.integers(0, 2**63 - 1)),
                    training=training, global_batch=draw(st.integers(0, 300)))
    return plan, videos, draw(st.integers(0, 2**40))


@settings(max_examples=2000, deadline=None)
@given(plans())
def test_native_plan_equals_the_python_reference(case):
    plan, videos, position = case
    num_frames, heights, widths, fps = zip(*videos)
    ref = plan_clip(plan, num_frames, heights, widths, position, fps)
    fields, frames = native_plan(plan, videos, position, with_frames=True)
    assert fields == [ref.video, ref.start, ref.stride, *ref.window[:4], ref.window[4], ref.padding, *ref.color]
    assert frames == ref.frames.tolist()
    n, height, width, _ = videos[ref.video]
    assert all(0 <= f < n for f in frames)
    y, x, h, w, _ = ref.window  # a window of at least a pixel, inside the frame
    assert 1 <= h <= height and 1 <= w <= width and 0 <= y <= height - h and 0 <= x <= width - w


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), key=st.integers(0, 2**64 - 1))
def test_permute_is_a_bijection(n, key):
    assert sorted(permute(x, n, key) for x in range(n)) == list(range(n))


def test_training_epochs_visit_each_video_once_in_a_new_order():
    plan = PlanSpec(ClipConfig(clip_len=4, crop_size=8), seed=11, training=True)
    videos = [(50, 16, 16)] * 97
    orders = [[native_plan(plan, videos, e * 97 + j)[0] for j in range(97)] for e in range(3)]
    assert all(sorted(o) == list(range(97)) for o in orders)
    assert orders[0] != orders[1] != orders[2]


# ---------------------------------------------------------------- damaged bytes into the operator

def _run_all(files, batches=4):
    """Read every clip of the dataset a few times over; return the metadata."""
    with dali_video.clip_pipeline(files, batch_size=5, clip_len=6, crop_size=16, device="cpu", training=False,
                                  output="jpegs", seed=0) as p:
        return [p.pipeline.run()[1].as_array() for _ in range(batches)]


@pytest.fixture(scope="module")
def pristine(dataset, tmp_path_factory):
    shard = sorted(Path(dataset).glob("*.tfrecord"))[0]
    out = tmp_path_factory.mktemp("pristine")
    for path in (shard, fmt.idx_path(shard), fmt.fidx_path(shard)):
        shutil.copy(path, out)
    return out / shard.name


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["frame table", "shard"]), where=st.floats(0, 1, exclude_max=True),
       flips=st.lists(st.integers(1, 255), min_size=1, max_size=8))
def test_damaged_frame_table_or_shard_gives_an_error_naming_the_file(pristine, tmp_path, target, where, flips):
    for path in pristine.parent.iterdir():
        shutil.copy(path, tmp_path)
    shard = tmp_path / pristine.name
    index = read_frame_index(fmt.fidx_path(shard))
    path, start = (fmt.fidx_path(shard), index.frame_table_offset) if target == "frame table" else (shard, 0)
    data = bytearray(path.read_bytes())
    at = start + int(where * (len(data) - start))
    for k, value in enumerate(flips):
        data[min(at + k, len(data) - 1)] ^= value
    path.write_bytes(bytes(data))
    try:
        _run_all([shard])  # a flip can land where no planned frame lies: then nothing is wrong
    except RuntimeError as e:
        assert f"{shard}" in str(e) and ("frame" in str(e) or "cannot read" in str(e)), str(e)


def _copy(pristine, into):
    for path in pristine.parent.iterdir():
        shutil.copy(path, into)
    return into / pristine.name


def test_truncated_or_removed_shard_and_skipped_clips(pristine, tmp_path):
    shard = _copy(pristine, tmp_path)
    with dali_video.clip_pipeline([shard], batch_size=2, clip_len=4, crop_size=16, device="cpu", output="jpegs",
                                  seed=0) as p:
        p.pipeline.run()
        shard.unlink()
        with pytest.raises(RuntimeError, match=f"{shard}: cannot read video .*: No such file or directory"):
            for _ in range(5):  # batches read ahead before the removal still come out
                p.pipeline.run()
    index = read_frame_index(fmt.fidx_path(_copy(pristine, tmp_path)))
    middle = index.frame_starts()[-1] + index.videos["num_frames"][-1] // 2  # in the last video's centre clip
    last = index.read_rows(int(middle), 1)[0]
    kw = dict(batch_size=5, clip_len=6, crop_size=16, device="cpu", training=False, output="jpegs", seed=0)
    for on_corrupt in ("raise", "skip"):
        shard = _copy(pristine, tmp_path)
        with dali_video.clip_pipeline([shard], on_corrupt=on_corrupt, **kw) as p:
            with open(shard, "r+b") as f:  # truncated after start-up: a planned frame runs past the end
                f.truncate(int(last["offset"]) + 10)
            if on_corrupt == "raise":
                with pytest.raises(RuntimeError, match=r"frame \d+ at byte \d+: lies past the end of the shard"):
                    for _ in range(5):
                        p.pipeline.run()
            else:
                meta = np.concatenate([p.pipeline.run()[1].as_array() for _ in range(2)])
                assert meta[:, dali_video.META_COLUMNS.index("replaced")].max() >= 1  # the damaged last video gave way to the next one


@pytest.mark.parametrize("keep_crc", [True, False])
def test_huge_lengths_and_offsets_in_the_frame_table_are_refused(pristine, tmp_path, keep_crc):
    for path in pristine.parent.iterdir():
        shutil.copy(path, tmp_path)
    shard = tmp_path / pristine.name
    index = read_frame_index(fmt.fidx_path(shard))
    rows = index.read_rows(0, index.num_frame_rows).copy()
    rows["length"][:] = 2**32 - 1
    rows["offset"][0] = 2**63
    if keep_crc:  # the table's CRC fails, before any row is used
        with open(fmt.fidx_path(shard), "r+b") as f:
            f.seek(index.frame_table_offset)
            f.write(rows.tobytes())
        message = rf"{shard}\.fidx: the frame table fails its CRC32C .* rebuild it with: dali-video-index build"
    else:  # the CRC rewritten to match: each row is bounded by the shard
        fmt.fidx_path(shard).write_bytes(fmt.encode_frame_index(
            shard_size=index.shard_size, num_records=index.num_records, layout=index.layout,
            frames_key=index.frames_key, videos=index.videos, rows=rows, notes=index.notes))
        message = r"frame \d+ at byte \d+: lies past the end of the shard .* rebuild"
    with pytest.raises(RuntimeError, match=message):
        _run_all([shard], 1)


def test_the_library_is_named_by_its_source_and_dali_version(tmp_path, monkeypatch):
    built = native.library_path(native._sanitize())
    assert built.exists() and native.load() == built
    assert {f.name for f in native.SOURCES} == {"clip_reader.cc", "plan.h", "checks.h", "read.h", "storage.h",
                                                  "table.h", "iterators.h"}
    for i, source in enumerate(native.SOURCES):  # a changed source or header needs a new build
        copy = tmp_path / source.name
        copy.write_text(source.read_text() + "\n// changed\n")
        monkeypatch.setattr(native, "SOURCES", (*native.SOURCES[:i], copy, *native.SOURCES[i + 1:]))
        assert native.library_path(native._sanitize()) != built, source.name
        monkeypatch.undo()


GOOD = (0, 0, 5, 48, 64, 1, 0, 0, 100, 0)  # shard, row, frames, height, width, label, table row, record start, end,
# first (a segment's first frame in its video)
OUT_OF_RANGE = "video 0: its shard, row, size, label, fps or first frame is out of range"


@pytest.mark.parametrize("shard_row, video, names, message", [
    ((0, 10, 0, 1000), GOOD, b"a", ""),
    ((0, 10, 0, 1000), (7, *GOOD[1:]), b"a", OUT_OF_RANGE),
    ((0, 10, 0, 1000), (0, 0, 5, 0, 64, *GOOD[5:]), b"a", OUT_OF_RANGE),
    ((0, 10, 0, 1000), (0, 2, *GOOD[2:9], 3), b"a", OUT_OF_RANGE),  # a first frame before its video's first row
    ((0, 10, 0, 1000), (0, 2, *GOOD[2:9], 2), b"a", ""),
    ((0, 10, 0, 1000), (0, 8, *GOOD[2:]), b"a", r"video 0's frames lie past the frame table's 10 rows"),
    ((0, 10, 0, 1000), (*GOOD[:7], 900, 1100, 0), b"a", r"video 0's record lies outside the shard's 1000 bytes"),
    ((0, 10, 0, 1000), GOOD, b"a\nb", "the videos' names disagree with the videos"),
    ((-1, 10, 0, 1000), GOOD, b"a", "a shard's frame table is out of range")])
def test_malformed_video_tables_are_refused(pristine, shard_row, video, names, message):
    from dali_video.loader.native.table import video_table

    def make():
        return [shard_row], [video], [25.0], names, [[]]

    key = f"test-{shard_row}-{video}-{names}"
    if not message:
        assert video_table(key, [str(pristine)], make).key == key
        return
    with pytest.raises(ValueError, match=f"dali-video clip reader: .*{message}"):
        video_table(key, [str(pristine)], make)


@pytest.mark.parametrize("ids", [[[-2, 0]], [[0, 2**31]]])
def test_a_video_table_with_a_class_id_out_of_range_is_refused(pristine, ids):
    from dali_video.loader.native.table import video_table

    with pytest.raises(ValueError, match="dali-video clip reader: video 0: a class id of its label heads is out"):
        video_table(f"test-ids-{ids}", [str(pristine)], lambda: ([(0, 10, 0, 1000)], [GOOD], [25.0], b"a", ids))


def test_a_reader_without_its_video_table_fails_cleanly():
    from dali_video.loader.pipeline import Graph, clip_pipeline
    from dali_video.loader.native.table import NativeTable

    class Gone(NativeTable):
        def __init__(self):
            self.key, self.shards = "no-such-table", []

    reader = dict(table=Gone(), plan_seed=0, training=True, clip_len=2, crop_size=16)
    pipe = clip_pipeline(reader, Graph(device="cpu"), batch_size=2, output="jpegs")
    pipe.build()  # builds: DALI's TF plugin ends the process on a pipeline that fails to build
    with pytest.raises(RuntimeError, match="dali-video clip reader: no video table 'no-such-table' in this process"):
        pipe.run()


# A pipeline serialized, its table gone with its Python objects, then built by DALI's TF dataset (as
# tf.data service or a saved graph would in another process): an error, not the process's end.
_ORPHAN = '''
import gc, sys
import tensorflow as tf
import dali_video
from nvidia.dali.plugin import tf as dali_tf
p = dali_video.clip_pipeline(sys.argv[1], batch_size=2, clip_len=2, crop_size=16, device="cpu", output="meta")
orphan = p.pipeline
orphan._dali_video_table = None  # the table's last hold
del p
gc.collect()
with tf.device("/cpu:0"):
    ds = dali_tf.DALIDataset(pipeline=orphan, batch_size=4, output_dtypes=tf.int32, output_shapes=(4, 16),
                             device_id=None)
try:
    next(iter(ds))
except Exception as e:
    print(type(e).__name__, str(e).count("no video table"))
'''


def test_a_pipeline_built_without_its_video_table_in_tensorflow_is_an_error_not_an_abort(dataset):
    from .conftest import ROOT

    done = subprocess.run([sys.executable, "-c", _ORPHAN, str(dataset)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:][1] != "0" and "Error" in done.stdout, done.stdout


def test_skip_gives_up_when_every_clip_is_damaged(pristine, tmp_path):
    shard = _copy(pristine, tmp_path)
    index = read_frame_index(fmt.fidx_path(shard))
    data = bytearray(shard.read_bytes())
    for row in index.read_rows(0, index.num_frame_rows):
        data[int(row["offset"]) + int(row["length"]) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with dali_video.clip_pipeline([shard], batch_size=2, clip_len=4, crop_size=16, device="cpu", output="jpegs",
                                  seed=0, on_corrupt="skip") as p:
        with pytest.raises(RuntimeError, match=rf"on_corrupt='skip' gave up after {index.num_videos} damaged clips"):
            p.pipeline.run()


def _jpegs(files, batches, **kw):
    """``batches`` batches of the reader's JPEG bytes and metadata."""
    with dali_video.clip_pipeline(files, **{**dict(batch_size=3, clip_len=4, crop_size=16, device="cpu",
                                                   output="jpegs", seed=5), **kw}) as p:
        return [[np.array(x).tobytes() for out in p.pipeline.run() for x in out] for _ in range(batches)]


@pytest.mark.parametrize("training", [True, False])
def test_reading_ahead_changes_no_clip(dataset, training):
    # io_threads reads the next batches' clips ahead (for buckets); the clips are those read without it.
    kw = dict(training=training, num_shards=2, shard_id=1)
    assert _jpegs(dataset, 7, io_threads=5, **kw) == _jpegs(dataset, 7, io_threads=0, **kw)


def test_reading_ahead_reports_and_skips_damaged_clips_alike(pristine, tmp_path):
    shard = _copy(pristine, tmp_path)
    index = read_frame_index(fmt.fidx_path(shard))
    middle = index.frame_starts()[1] + index.videos["num_frames"][1] // 2  # in the second video's centre clip
    row = index.read_rows(int(middle), 1)[0]
    data = bytearray(shard.read_bytes())
    data[int(row["offset"]) + int(row["length"]) // 2] ^= 0xFF  # its CRC fails
    shard.write_bytes(bytes(data))
    kw = dict(training=False, batch_size=5, clip_len=6)
    errors = []
    for io_threads in (0, 4):
        with pytest.raises(RuntimeError, match=r"frame \d+ at byte \d+") as e:
            _jpegs([shard], 4, io_threads=io_threads, **kw)
        errors.append(re.search(r"\S+: video .*", str(e.value)).group(0))
    assert errors[0] == errors[1]
    skipped = [_jpegs([shard], 4, io_threads=n, on_corrupt="skip", **kw) for n in (0, 4)]
    assert skipped[0] == skipped[1]


_NO_THREADS = """
import resource, sys
import dali_video
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
p = dali_video.clip_pipeline(sys.argv[1], batch_size=2, clip_len=4, crop_size=16, device="cpu", output="jpegs",
                             seed=1, io_threads=128, num_threads=1)
# 300 MiB more address space: not the 128 thread stacks of 8 MiB (as a container's pids limit refuses threads)
resource.setrlimit(resource.RLIMIT_AS, (vm + (300 << 20), resource.RLIM_INFINITY))
try:
    with p:
        p.pipeline.run()
except RuntimeError as e:
    print(e)
"""


def test_io_threads_that_cannot_start_give_an_error_not_an_abort(dataset):
    # ReadAhead's constructor starts its threads one by one: one that fails to start must not leave the
    # started ones joinable (std::terminate: the whole training process aborts, no Python error).
    proc = subprocess.run([sys.executable, "-c", _NO_THREADS, str(dataset)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The reader's error, at its first run; or, said at once, before DALI's own threads fail to start too.
    assert "cannot start io_threads (128) threads" in proc.stdout + proc.stderr, proc.stdout + proc.stderr[-2000:]


def test_io_threads_out_of_range_are_refused(dataset):
    for bad in (-1, 129, 2**32 + 2):
        with pytest.raises(ValueError, match="io_threads must be"):
            dali_video.clip_pipeline(dataset, batch_size=2, clip_len=4, crop_size=16, device="cpu", io_threads=bad)


_ROUTED = """
import sys
import dali_video
from dali_video.loader import native
p = dali_video.clip_pipeline(sys.argv[1], batch_size=2, clip_len=4, crop_size=16, device="cpu", output="jpegs", seed=1)
print(native.route_tf_iterators())  # DALI's TF plugin is not loaded: nothing routed
from nvidia.dali.plugin import tf
print(native.route_tf_iterators(), native.route_tf_iterators())
with p:
    p.pipeline.run()  # DALI's own pipelines do not pass there
it = iter(dali_video.clip_dataset(sys.argv[1], batch_size=2, clip_len=4, crop_size=16, device="cpu", seed=1))
next(it)
del it
print("read")
"""


def test_tf_iterators_are_routed_once_the_tf_plugin_is_loaded(dataset):
    # native/iterators.h: DALI's TF plugin's daliPipelineBuild/Destroy pass through the reader, which
    # closes a deleted iterator's readers (tests/test_storage_reader.py: a store that hangs).
    proc = subprocess.run([sys.executable, "-c", _ROUTED, str(dataset)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == ["False", "True True", "read"], proc.stdout
