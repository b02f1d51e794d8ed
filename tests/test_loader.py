"""dali_video on the CPU fallback: clip sampling, pixels, epochs, shards, errors, model.fit."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import dali_video
from dali_video import META_COLUMNS
from dali_video.tools.sample_data import frame_number
from dali_video.loader.config import ClipConfig
from dali_video.loader.sampling import PlanSpec, load_table, plan_clip
from dali_video.index_tools import FormatError, build, read_frame_index
from dali_video.index_tools import format as fmt

from .conftest import ROOT
from .test_index_tools import _write_tf_layout

CPU = dict(device="cpu", dtype="uint8", std=(1.0, 1.0, 1.0))


def batches(files, n, **kw):
    ds = dali_video.clip_dataset(files, with_meta=True, **{**CPU, **kw})
    return [tf.nest.map_structure(lambda t: t.numpy(), element) for element in ds.take(n)]  # labels: a dict by head


def clips_of(files, n, **kw):
    """(clip, label, filename, first_frame) for every clip of n batches."""
    return [(c, lab, os.fsdecode(name), first) for clips, labels, meta in batches(files, n, **kw)
            for c, lab, name, first in zip(clips, labels, meta["filename"], meta["first_frame"])]


def numbers(clip):
    return [frame_number(f) for f in clip]


def test_training_clips_are_contiguous_in_bounds_labelled_and_cover_each_epoch(dataset):
    table = load_table(dataset)
    frames = dict(zip(table.filename, table.num_frames))
    label = dict(zip(table.filename, table.label))
    clips = clips_of(dataset, 10, batch_size=2, clip_len=6, stride=3, crop_size=32, seed=5)
    for clip, lab, name, first in clips:
        got = numbers(clip)
        assert got == [first + 3 * i for i in range(6)], (name, got)
        assert got[-1] < frames[name]
        assert lab == label[name] == {"a": 0, "b": 1}[name[0]]
    for epoch in range(2):  # 10 videos, batch 2: 5 batches an epoch
        assert sorted(c[2] for c in clips[epoch * 10:(epoch + 1) * 10]) == sorted(frames)
    assert [c[2] for c in clips[:10]] != [c[2] for c in clips[10:]]  # a new order each epoch


def test_same_seed_same_clips_other_seed_other_clips(dataset):
    kw = dict(batch_size=4, clip_len=4, crop_size=24)
    a, b = batches(dataset, 3, seed=1, **kw), batches(dataset, 3, seed=1, **kw)
    c = batches(dataset, 3, seed=2, **kw)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[2]["first_frame"], y[2]["first_frame"])
               for x, y in zip(a, b))
    assert any(not np.array_equal(x[0], z[0]) for x, z in zip(a, c))


def reader_batches(files, n, **kw):
    """Metadata of a reader's first n batches, one row per clip (no decoding)."""
    with dali_video.clip_pipeline(files, device="cpu", output="jpegs", **kw) as p:
        clip_len = kw["clip_len"]
        return [p.pipeline.run()[1].as_array()[::clip_len] for _ in range(n)]


def test_readers_share_each_global_batch_and_cover_each_epoch_once(dataset):
    kw = dict(clip_len=3, crop_size=16, seed=7)
    global_batches = {}
    for readers in (1, 2, 3):
        parts = [reader_batches(dataset, 4, batch_size=6 // readers, shard_id=r, num_shards=readers, **kw)
                 for r in range(readers)]
        global_batches[readers] = [np.concatenate([part[k] for part in parts]) for k in range(4)]
    for readers in (2, 3):  # the same global batches, whatever the number of readers
        assert all(np.array_equal(a, b) for a, b in zip(global_batches[1], global_batches[readers]))
    sequence = np.concatenate(global_batches[1])
    video = META_COLUMNS.index("video")
    for epoch in range(2):  # 10 videos: each epoch visits every video once, in a new order
        assert sorted(sequence[epoch * 10:(epoch + 1) * 10, video]) == list(range(10))
    assert list(sequence[:10, video]) != list(sequence[10:20, video])
    # More readers than shard files or videos: each still gets its share.
    parts = [reader_batches(dataset, 2, batch_size=1, shard_id=r, num_shards=11, **kw) for r in range(11)]
    first = np.concatenate([part[0] for part in parts])
    assert sorted(first[:10, video]) == list(range(10))
    assert dali_video.steps_per_epoch(dataset, batch_size=1, num_shards=11, clip_len=3, crop_size=16) == 1


def test_initial_clip_resumes_the_exact_sequence(dataset):
    kw = dict(clip_len=3, crop_size=16, seed=3)
    straight = np.concatenate(reader_batches(dataset, 6, batch_size=4, **kw))
    resumed = np.concatenate(reader_batches(dataset, 3, batch_size=4, initial_clip=12, **kw))
    assert np.array_equal(straight[12:], resumed)
    two = [reader_batches(dataset, 3, batch_size=2, shard_id=r, num_shards=2, initial_clip=8, **kw)
           for r in range(2)]
    assert np.array_equal(np.concatenate([np.concatenate([a, b]) for a, b in zip(*two)]), straight[8:20])


def source_frame(files, name, k):
    """Frame k of video ``name``, decoded from the shard (RGB)."""
    table = load_table(files)
    v = list(table.filename).index(name)
    index = table.shards[table.shard[v]]
    row = index.read_rows(int(table.frame_start[v]) + k, 1)[0]
    with open(index.path.with_suffix(""), "rb") as f:
        f.seek(int(row["offset"]))
        return cv2.imdecode(np.frombuffer(f.read(int(row["length"])), np.uint8), cv2.IMREAD_COLOR_RGB)


def test_crop_and_flip_are_the_same_for_all_frames_of_a_clip(dataset):
    windows = []
    for clip, _, name, first in clips_of(dataset, 3, batch_size=4, clip_len=6, crop_size=32, seed=0):
        found = set()
        for t, frame in enumerate(clip):
            source = source_frame(dataset, name, first + t).astype(int)
            frame = frame.astype(int)
            errors = {}
            for y in range(48 - 32 + 1):
                for x in range(64 - 32 + 1):
                    window = source[y:y + 32, x:x + 32]
                    for flip in (0, 1):
                        errors[y, x, flip] = np.abs(frame - (window[:, ::-1] if flip else window)).mean()
            exact = {w for w, e in errors.items() if e == 0}  # flat rows can match at several y
            assert exact, (name, first + t)
            found = exact if t == 0 else found & exact
        assert found, name  # one window and flip reproduce every frame of the clip
        windows.append(found)
    assert {f for w in windows for *_, f in w} == {0, 1}  # both flipped and unflipped clips occur
    assert len({frozenset((x, f) for _, x, f in w) for w in windows}) > 2  # windows differ between clips


def test_uint8_output_is_exactly_the_decoded_pixels(dataset):
    shard = sorted(Path(dataset).glob("*.tfrecord"))[0]
    index = read_frame_index(fmt.fidx_path(shard))
    data = shard.read_bytes()
    starts = index.frame_starts()
    for clip, _, name, first in clips_of([shard], 1, batch_size=3, clip_len=5, crop_size=32, training=False):
        v = index.videos["filename"].index(name)
        y, x = (48 - 32) // 2, (64 - 32) // 2
        for t in range(5):
            row = index.read_rows(int(starts[v]) + first + t, 1)[0]
            jpeg = data[row["offset"]:row["offset"] + row["length"]]
            expected = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR_RGB)[y:y + 32, x:x + 32]
            assert np.array_equal(clip[t], expected)


def test_evaluation_centres_clips_and_crops(dataset):
    table = load_table(dataset)
    frames = dict(zip(table.filename, table.num_frames))
    clips = clips_of(dataset, 5, batch_size=2, clip_len=8, crop_size=32, training=False)
    for clip, _, name, first in clips[:10]:
        assert first == (frames[name] - 8) // 2
        red = clip[..., 0].astype(int).mean(axis=(0, 1))
        assert red[0] < red[-1]  # never flipped
    assert [c[2] for c in clips[:10]] == list(table.filename)  # in order, once each
    windows = batches(dataset, 1, batch_size=3, clip_len=4, crop_size=32, training=False, num_crops=3)[0][2]
    assert windows["window"].tolist() == [[8, 0, 32, 32], [8, 16, 32, 32], [8, 32, 32, 32]]
    multi = clips_of(dataset, 3, batch_size=6, clip_len=4, crop_size=32, training=False, clips_per_video=2,
                     num_crops=3)
    name = multi[0][2]
    assert [c[2] for c in multi[:6]] == [name] * 6
    assert [c[3] for c in multi[:6]] == [0] * 3 + [frames[name] - 4] * 3


@pytest.mark.parametrize("policy", ["repeat_last", "loop", "skip"])
def test_short_video_policies(dataset, policy):
    table = load_table(dataset)
    frames = dict(zip(table.filename, table.num_frames))
    clip_len = 30  # longer than some videos (20-40 frames)
    short = {n for n, f in frames.items() if f < clip_len}
    assert short and short != set(frames)
    clips = clips_of(dataset, 3, batch_size=4, clip_len=clip_len, crop_size=16, short_videos=policy, seed=0)
    seen = set()
    for clip, _, name, first in clips:
        seen.add(name)
        n = frames[name]
        got = numbers(clip)
        if name not in short:
            assert got == list(range(first, first + clip_len))
        elif policy == "repeat_last":
            assert got == [min(i, n - 1) for i in range(clip_len)]
        else:
            assert got == [i % n for i in range(clip_len)]
    if policy == "skip":
        assert not seen & short
    else:
        assert seen & short


def test_resize_shorter_then_crop(dataset):
    clips = clips_of(dataset, 1, batch_size=2, clip_len=3, crop_size=40, resize_shorter=40, training=False,
                     device="cpu", dtype="float32", std=(255, 255, 255))
    for clip, _, _, first in clips:
        assert clip.shape == (3, 40, 40, 3) and clip.dtype == np.float32 and 0 <= clip.min() and clip.max() <= 1
        assert numbers((clip * 255).round()) == [first, first + 1, first + 2]


def test_loads_tensorflow_written_layouts(tmp_path):
    for layout in ("example", "sequence_example", "frame_features"):
        shard = _write_tf_layout(tmp_path / f"{layout}.tfrecord", layout, videos=4, frames=10)
        build(shard)
        for clip, label, name, first in clips_of([shard], 2, batch_size=2, clip_len=4, crop_size=16, seed=0):
            assert numbers(clip) == list(range(first, first + 4))
            assert label in (0, 1, 2, 3)


def test_missing_and_stale_indexes_say_how_to_rebuild(dataset_copy):
    shard = sorted(Path(dataset_copy).glob("*.tfrecord"))[0]
    fmt.fidx_path(shard).rename(str(shard) + ".bak")
    with pytest.raises(FormatError, match="index missing for shard .* dali-video-index build"):
        dali_video.clip_pipeline(dataset_copy, batch_size=1, clip_len=2, device="cpu")
    Path(str(shard) + ".bak").rename(fmt.fidx_path(shard))
    with open(shard, "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(FormatError, match="stale frame index.*dali-video-index build"):
        dali_video.clip_pipeline(dataset_copy, batch_size=1, clip_len=2, device="cpu")


def test_corrupt_frame_names_shard_video_and_frame(dataset_copy):
    shard = sorted(Path(dataset_copy).glob("*.tfrecord"))[0]
    index = read_frame_index(fmt.fidx_path(shard))
    data = bytearray(shard.read_bytes())
    for row in index.read_rows(0, index.num_frame_rows):
        data[int(row["offset"]) + int(row["length"]) // 2] ^= 0xFF  # every frame of the shard
    shard.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"tfrecord: video '.*' frame \d+ at byte \d+: fails its CRC32C"):
        batches([shard], 1, batch_size=1, clip_len=2, crop_size=16)


def test_arguments_are_validated_with_allowed_values(dataset):
    cases = [(dict(clip_len=0), r"clip_len must be an integer in \[1, 65535\], got 0"),
             (dict(stride=-1), r"stride must be an integer in \[1, 65535\]"),
             (dict(device="tpu"), r"device must be one of \('auto', 'gpu', 'cpu'\)"),
             (dict(dtype="int7"), "dtype must be one of"),
             (dict(short_videos="pad"), "short_videos must be one of"),
             (dict(crop_size=100), "smaller than crop_size \\(100\\); pass resize_shorter"),
             (dict(resize_shorter=50, crop_size=64), r"resize_shorter must be an integer in \[64, 65535\] \(crop_size"),
             (dict(resize_shorter=(300, 256)), r"resize_shorter must be .* low <= high, got \(300, 256\)"),
             (dict(resize_shorter=2**32 + 20), r"resize_shorter must be an integer in \[16, 65535\]"),
             (dict(stride=(3, 1)), r"stride must be .* low <= high, got \(3, 1\)"),
             (dict(clips_per_video=2**32 + 2), r"clips_per_video must be an integer in \[1, 65535\]"),
             (dict(crop_area=(0, 1)), r"crop_area must be a \(low, high\) pair .* in \[0.0001, 1\], got \(0, 1\)"),
             (dict(crop_area=(0.5, 1.2)), r"crop_area .* got \(0.5, 1.2\)"),
             (dict(crop_aspect=(2, 0.5)), r"crop_aspect must be a \(low, high\) pair with low <= high"),
             (dict(crop_aspect=(1, float("inf"))), r"crop_aspect .* both in \[0.01, 100\], got \(1, inf\)"),
             (dict(color_jitter=(0.4, -0.1, 0, 0)), r"color_jitter must be .* each in \[0, 10\] .* got \(0.4, -0.1, 0, 0\)"),
             (dict(color_jitter=(0, 0, 0, 0.7)), r"hue <= 0.5"),
             (dict(color_jitter=(float("nan"), 0, 0, 0)), r"color_jitter must be"),
             (dict(std=(float("nan"), 1, 1)), r"std must be 3 finite values > 0"),
             (dict(flip=1), r"flip must be True or False, got 1"),
             (dict(recipe="resnet"),
              r"recipe must be 'default', one of \('slowfast', 'mvit', 'movinet', .*\) or a ClipConfig"),
             (dict(num_crops=2), r"num_crops must be one of \(1, 3\)"),
             (dict(layout="tiles"), r"layout must be one of \('auto', 'frames', 'clips'\)"),
             (dict(hw_decoder_load=1.5), r"hw_decoder_load must be in \[0, 1\]"),
             (dict(num_shards=2), "readers that share a clip sequence need the same seed")]
    with pytest.raises(TypeError, match=r"unknown clip option\(s\) \['crop'\]; the options are: clip_len, stride"):
        dali_video.clip_pipeline(dataset, batch_size=2, crop=3)
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            dali_video.clip_pipeline(dataset, batch_size=2, **{"device": "cpu", "clip_len": 4, "crop_size": 16, **kw})


def test_model_fit_runs_on_the_dataset(dataset):
    ds = dali_video.clip_dataset(dataset, batch_size=2, clip_len=4, crop_size=32, device="cpu", seed=0)
    clips, labels = next(iter(ds))
    assert clips.shape == (2, 4, 32, 32, 3) and clips.dtype == tf.float32 and labels.shape == (2,)
    assert ds.element_spec[0].shape == (2, 4, 32, 32, 3)
    model = tf.keras.Sequential([tf.keras.layers.Input((4, 32, 32, 3)), tf.keras.layers.Conv3D(4, 3),
                                 tf.keras.layers.GlobalAveragePooling3D(), tf.keras.layers.Dense(2)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps = dali_video.steps_per_epoch(dataset, batch_size=2, clip_len=4, crop_size=32)
    assert steps == 5
    history = model.fit(ds, epochs=2, steps_per_epoch=steps, verbose=0, shuffle=False)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import dali_video
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
ds = dali_video.distribute(strategy, sys.argv[1], global_batch_size=4, clip_len=3, crop_size=16,
                           with_meta=True, device="cpu", dtype="uint8", std=(1, 1, 1))
names = [set(), set()]
it = iter(ds)
for _ in range(2):  # 8 clips of the first epoch (10 videos): shared out without overlap
    clips, _, meta = next(it)
    assert [c.shape for c in strategy.experimental_local_results(clips)] == [(2, 3, 16, 16, 3)] * 2
    for r, value in enumerate(strategy.experimental_local_results(meta["filename"])):
        names[r] |= {n.decode() for n in value.numpy()}
print(sorted(names[0]), sorted(names[1]))
assert len(names[0]) == len(names[1]) == 4 and not names[0] & names[1], names
print("replicas disjoint")
"""


def test_mirrored_strategy_replicas_share_each_global_batch(dataset):
    proc = subprocess.run([sys.executable, "-c", MIRRORED, str(dataset)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert "replicas disjoint" in proc.stdout, proc.stdout + proc.stderr[-3000:]


@pytest.mark.parametrize("where", ["dali", "tensorflow"])
def test_float_output_is_normalised_per_channel(dataset, where):
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    kw = dict(batch_size=2, clip_len=3, crop_size=32, training=False, device="cpu", seed=0, normalize_in=where)
    raw = next(iter(dali_video.clip_dataset(dataset, dtype="uint8", **kw)))[0].numpy().astype(np.float32)
    for dtype, tol in (("float32", 1e-5), ("float16", 2e-2)):
        got = next(iter(dali_video.clip_dataset(dataset, dtype=dtype, mean=mean, std=std, **kw)))[0].numpy()
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got.astype(np.float32), (raw - mean) / np.array(std), atol=tol, rtol=tol)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 400), clip_len=st.integers(1, 64), stride=st.integers(1, 4), jitter=st.integers(0, 3),
       policy=st.sampled_from(["repeat_last", "loop"]), h=st.integers(16, 300), w=st.integers(16, 300),
       crop=st.integers(1, 16), resize=st.sampled_from([None, 16, 40, (16, 40)]),
       area=st.sampled_from([None, (0.08, 1.0), (0.5, 0.5)]), seed=st.integers(0, 2**63 - 1),
       training=st.booleans(), clips=st.integers(1, 5), crops=st.sampled_from([1, 3]),
       position=st.integers(0, 10**12))
def test_planned_clips_and_windows_are_always_valid(n, clip_len, stride, jitter, policy, h, w, crop, resize, area,
                                                    seed, training, clips, crops, position):
    config = ClipConfig(clip_len=clip_len, stride=(stride, stride + jitter), crop_size=crop, resize_shorter=resize,
                        crop_area=area, short_videos=policy, clips_per_video=clips, num_crops=crops)
    plan = PlanSpec(config if training else config.evaluation(), seed=seed, training=training)
    clip = plan_clip(plan, [n, n + 7], [h, h], [w, w], position)
    idx, frames = clip.frames, (n, n + 7)[clip.video]
    assert stride <= clip.stride <= stride + jitter if training else clip.stride == stride + jitter // 2
    assert len(idx) == clip_len and idx.min() >= 0 and idx.max() < frames
    if frames >= (clip_len - 1) * clip.stride + 1:  # long enough: contiguous with the stride, never clamped
        assert (np.diff(idx) == clip.stride).all()
    y, x, wh, ww, flip = clip.window
    assert 0 <= y and y + wh <= h and 0 <= x and x + ww <= w and wh > 0 and ww > 0 and flip in (0, 1)
    if not plan.config.resizes:  # else the window is whatever resizes to the crop
        assert (wh, ww) == (crop, crop)


@pytest.mark.parametrize("kw", [dict(dtype="uint8", std=(1, 1, 1)), dict(normalize_in="tensorflow"),
                                dict(normalize_in="dali", mean=(10, 20, 30), std=(2, 4, 8)),
                                dict(resize_shorter=40, crop_size=40, training=False, dtype="uint8")])
def test_clip_layout_gives_the_frame_layouts_pixels_and_meta(dataset, kw):
    """The GPU's graph (T decoders, fn.stack, DALI emits the final elements), run on the CPU."""
    kw = {**dict(batch_size=3, clip_len=4, crop_size=32, device="cpu", seed=4, with_meta=True), **kw}
    frames = dali_video.clip_dataset(dataset, layout="frames", **kw)
    clips = dali_video.clip_dataset(dataset, layout="clips", **kw)
    for a, b in zip(frames.take(2), clips.take(2)):
        assert a[0].dtype == b[0].dtype and a[0].shape == b[0].shape == (3, 4, kw["crop_size"], kw["crop_size"], 3)
        np.testing.assert_allclose(a[0].numpy().astype(float), b[0].numpy().astype(float), atol=1e-5)
        assert np.array_equal(a[1], b[1]) and all(np.array_equal(a[2][k], b[2][k]) for k in b[2])
        assert set(a[2]) == set(b[2])  # frame numbers per clip too (pipeline.regroup)


def test_distribute_places_replicas_on_the_strategys_devices(dataset, monkeypatch):
    import dali_video.loader.dataset as module

    made = []
    monkeypatch.setattr(module, "clip_dataset", lambda files, **kw: made.append(kw) or tf.data.Dataset.range(1))

    class Strategy:  # MirroredStrategy(["/gpu:2", "/gpu:3"]) as far as distribute() looks
        num_replicas_in_sync = 2

        class extended:
            worker_devices = ("/job:localhost/replica:0/task:0/device:GPU:2",
                              "/job:localhost/replica:0/task:0/device:GPU:3")

            @staticmethod
            def _in_multi_worker_mode():
                return False

        def distribute_datasets_from_function(self, fn, options=None):
            return [fn(tf.distribute.InputContext(2, r, 2)) for r in range(2)]

    dali_video.distribute(Strategy(), dataset, global_batch_size=8, seed=1)
    assert [(k["device_id"], k["shard_id"], k["num_shards"], k["batch_size"]) for k in made] == [(2, 0, 2, 4), (3, 1, 2, 4)]
    assert made[0]["num_threads"] == max(1, dali_video.usable_cores() // 2) and made[0]["seed"] == made[1]["seed"] == 1
    # One worker process per host driving both GPUs, two such workers: replica 2w+i on GPU i of worker w.
    made.clear()
    monkeypatch.setattr(module, "usable_gpus", lambda: (2, ""))  # as on a host with two GPUs
    dali_video.distribute(Strategy(), dataset, global_batch_size=8, seed=1, per_worker=True)
    assert [(k["device_id"], k["shard_id"], k["num_shards"], k["batch_size"], k["host_output"]) for k in made] == [
        (2, 0, 4, 2, True), (3, 1, 4, 2, True), (2, 2, 4, 2, True), (3, 3, 4, 2, True)]
    # A dataset in a bucket: each pipeline's threads leave room for its reader's read-ahead threads.
    made.clear()
    monkeypatch.setattr(module, "usable_cores", lambda: 224)
    dali_video.distribute(Strategy(), "s3://bucket/ds", global_batch_size=8, seed=1)
    assert made[0]["num_threads"] == module.pipeline_threads(224, 2, io_threads=module.BUCKET_IO_THREADS) == 46


def test_videos_without_a_frame_size_are_skipped_not_divided_by(dataset, caplog):
    from dali_video.loader.sampling import usable_videos

    table = load_table(dataset)
    broken = dataclasses.replace(table, height=np.where(np.arange(len(table)) == 3, 0, table.height))
    spec = ClipConfig(clip_len=4, crop_size=32, resize_shorter=40)
    assert 3 not in usable_videos(broken, spec) and len(usable_videos(broken, spec)) == len(table) - 1
    assert "no frame size in their index" in caplog.text


def test_gpu_datasets_need_the_clip_layout_and_seeds_fit_64_bits(dataset):
    with pytest.raises(ValueError, match="layout='frames' needs device='cpu'"):
        dali_video.clip_dataset(dataset, batch_size=2, clip_len=4, crop_size=32, device="gpu", layout="frames")
    with pytest.raises(ValueError, match="seed must be below 2\\*\\*63"):
        dali_video.clip_pipeline(dataset, batch_size=2, clip_len=4, crop_size=32, device="cpu", seed=2**63)


def _fake_gpus(monkeypatch, buses, visible, details=None, split=None):
    """A host whose CUDA devices (ordinals under CUDA_VISIBLE_DEVICES) have PCI bus ``buses``; TensorFlow
    sees physical GPUs 0..n-1 and was restricted to ``visible`` (``tf.config.set_visible_devices``);
    ``details`` gives each physical GPU's device details, ``split`` its virtual devices."""
    from dali_video.loader import gpu

    physical = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(len(buses))]
    monkeypatch.setattr(gpu, "cuda_pci_bus_ids", lambda: list(buses))
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: physical)
    monkeypatch.setattr(tf.config, "get_visible_devices", lambda kind=None: [physical[i] for i in visible])
    monkeypatch.setattr(tf.config, "get_logical_device_configuration",
                        lambda d: [None] * (split or {}).get(physical.index(d), 0) or None)
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda d: {"device_name": "GPU", **(details or {}).get(physical.index(d), {})})
    return gpu.dali_device_id


def test_dali_decodes_on_the_cuda_device_behind_tensorflows_logical_gpu(monkeypatch):
    buses = ["0000:1A:00.0", "0000:3B:00.0", "0000:5E:00.0", "0000:88:00.0"]
    # A process that kept GPUs 2 and 3 (one per process on an 8-GPU host, say): TF's /gpu:0 is CUDA's 2.
    mapped = _fake_gpus(monkeypatch, buses, visible=[2, 3])
    assert [mapped(0), mapped(1)] == [2, 3]
    with pytest.raises(ValueError, match=r"device_id 2 is none of TensorFlow's 2 visible GPUs"):
        mapped(2)
    # Matched by PCI bus id where TensorFlow's details give it (nvidia-smi's 8-digit domain too).
    mapped = _fake_gpus(monkeypatch, buses, visible=[1], details={1: {"pci_bus_id": "00000000:88:00.0"}})
    assert mapped(0) == 3
    mapped = _fake_gpus(monkeypatch, buses[:2], visible=[1], details={1: {"pci_bus_id": "0000:88:00.0"}})
    with pytest.raises(ValueError, match=r"TensorFlow's GPU 0 \(/physical_device:GPU:1, PCI bus 0000:88:00.0\) is "
                                         r"none of the CUDA devices this process sees \(0000:1A:00.0, 0000:3B:00.0\)"):
        mapped(0)
    # GPU 2 split into two virtual devices: logical GPUs 0 and 1 are both CUDA's 2, logical 2 is CUDA's 3.
    mapped = _fake_gpus(monkeypatch, buses, visible=[2, 3], split={2: 2})
    assert [mapped(0), mapped(1), mapped(2)] == [2, 2, 3]


def test_clip_dataset_gives_dali_the_cuda_device(monkeypatch, dataset):
    from dali_video.loader import dataset as module

    _fake_gpus(monkeypatch, ["0000:1A:00.0", "0000:3B:00.0", "0000:5E:00.0"], visible=[2])
    monkeypatch.setattr(module, "_device", lambda device: "gpu")
    built = {}

    def clip_pipeline(files, **kw):
        built.update(kw)
        raise StopIteration

    monkeypatch.setattr(module, "clip_pipeline", clip_pipeline)
    with pytest.raises(StopIteration):
        dali_video.clip_dataset(dataset, batch_size=2, clip_len=4, crop_size=32, device="gpu", device_id=0)
    assert built["device_id"] == 2  # TensorFlow's /gpu:0, CUDA's device 2


def test_cuda_pci_bus_ids_are_asked_of_the_driver_in_cuda_order(monkeypatch):
    """libcuda faked: CUDA_VISIBLE_DEVICES=5,2 on the host makes the driver list those two, in that order."""
    import ctypes

    from dali_video.loader import gpu

    buses = [b"0000:88:00.0", b"0000:3B:00.0"]

    class Driver:
        def cuDeviceGetCount(self, count):
            count._obj.value = len(buses)
            return 0

        def cuDeviceGet(self, device, ordinal):
            device._obj.value = 100 + ordinal  # a handle, not the ordinal
            return 0

        def cuDeviceGetPCIBusId(self, text, size, device):
            text.value = buses[device.value - 100]
            return 0

    monkeypatch.setattr(gpu, "usable_gpus", lambda: (len(buses), ""))
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver())
    assert gpu.cuda_pci_bus_ids() == ["0000:88:00.0", "0000:3B:00.0"]


def test_a_dataset_made_inside_a_tf_function_leaves_later_datasets_working(dataset):
    # The filenames tensor is shared by every dataset of a table: one made in a graph belongs to that
    # graph only, and must not be handed to the next dataset (it raised there).
    kw = dict(batch_size=2, clip_len=2, crop_size=16, with_meta=True, seed=0, **CPU)

    @tf.function(autograph=False)
    def first_names():
        return dali_video.clip_dataset(dataset, **kw).take(1).get_single_element()[2]["filename"]

    held = dali_video.load_table(dataset)  # the table (and its tensors) outlive the graph's dataset
    in_graph = first_names().numpy()
    eager = next(iter(dali_video.clip_dataset(dataset, **kw)))[2]["filename"].numpy()
    assert list(in_graph) == list(eager) and set(eager) <= {n.encode() for n in held.filename}
