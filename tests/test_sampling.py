"""Sampling modes against the references' own formulas.

Each reference function is re-implemented here with numpy, as its repository writes it (named per
function), and held against the reader's native plan (``dali_video_plan``, which the property test in
test_native holds equal to the Python plan) over many video lengths, shorter than a clip included.
"""
import logging
import math
import os

import numpy as np
import pytest

import dali_video
from dali_video.loader.config import ClipConfig
from dali_video.loader.sampling import PlanSpec, load_table, plan_clip
from dali_video.tools.sample_data import frame_number
from tests.test_native import native_plan

LENGTHS = [*range(1, 70), 97, 128, 129, 300, 301, 1000, 1777]
CLIP_LENS = (1, 3, 8, 16, 32)
DRAWS = 40


def frames_of(config, video, position, training):
    return native_plan(PlanSpec(config, seed=7, training=training), [video], position, with_frames=True)[1]


def draws(config, video, count=DRAWS):
    """Frame numbers of `count` training clips of one video (one per epoch)."""
    return np.array([frames_of(config, video, p, True) for p in range(count)])


def check_draws(got, low, high):
    """Every draw within [low, high] per frame, and every value of narrow ranges drawn."""
    assert ((got >= low) & (got <= high)).all()
    for i in np.flatnonzero(high - low <= 3):
        assert set(got[:, i]) == set(range(low[i], high[i] + 1)), (i, low[i], high[i])


# ---------------------------------------------------------------- segments

def slowfast_seq_bounds(num_frames, T):
    """facebookresearch/SlowFast slowfast/datasets/ssv2.py get_seq_frames: the (start, end) of each segment;
    training draws random.randint(start, end), testing takes (start + end) // 2."""
    seg_size = float(num_frames - 1) / T
    start = np.array([int(np.round(seg_size * i)) for i in range(T)])
    end = np.array([int(np.round(seg_size * (i + 1))) for i in range(T)])
    return start, end


def mmaction_tsn_train_bounds(num_frames, T):
    """open-mmlab/mmaction2 SampleFrames._get_train_clips, clip_len=1, frame_interval=1, num_clips=T:
    the range of each segment's offset (base + randint(avg)), or the fixed offsets of videos shorter
    than T, then out_of_bound_opt "loop" (np.mod)."""
    ori_clip_len = 1
    avg_interval = (num_frames - ori_clip_len + 1) // T
    if avg_interval > 0:
        base = np.arange(T) * avg_interval
        return base, base + avg_interval - 1
    ratio = (num_frames - ori_clip_len + 1.0) / T
    fixed = np.mod(np.around(np.arange(T) * ratio).astype(int), num_frames)
    return fixed, fixed


def mmaction_tsn_test(num_frames, T, twice_sample):
    """open-mmlab/mmaction2 SampleFrames._get_test_clips (clip_len=1): the middles of T segments, then with
    twice_sample their starts (a second view)."""
    avg_interval = num_frames / float(T)
    base_offsets = np.arange(T) * avg_interval
    clip_offsets = (base_offsets + avg_interval / 2.0).astype(np.int32)
    views = [clip_offsets] + ([base_offsets.astype(np.int32)] if twice_sample else [])
    return [np.mod(v, num_frames) for v in views]


@pytest.mark.parametrize("T", CLIP_LENS)
def test_segments_slowfast_rule_is_slowfasts_get_seq_frames(T):
    config = ClipConfig(clip_len=T, crop_size=8, sampling="segments")
    for n in LENGTHS:
        video = (n, 8, 8)
        start, end = slowfast_seq_bounds(n, T)
        assert frames_of(config.evaluation(), video, 0, False) == ((start + end) // 2).tolist(), n
        check_draws(draws(config, video), start, end)


@pytest.mark.parametrize("T", CLIP_LENS)
def test_segments_tsn_rule_is_mmaction2s_sample_frames(T):
    config = ClipConfig(clip_len=T, crop_size=8, sampling="segments", segment_rule="tsn", short_videos="loop")
    test = config.replace(twice_sample=True, clips_per_video=2).evaluation()
    for n in LENGTHS:
        video = (n, 8, 8)
        check_draws(draws(config, video), *mmaction_tsn_train_bounds(n, T))
        assert [frames_of(test, video, view, False) for view in (0, 1)] == [
            v.tolist() for v in mmaction_tsn_test(n, T, twice_sample=True)], n
        assert frames_of(config.evaluation(), video, 0, False) == mmaction_tsn_test(n, T, False)[0].tolist()


def test_segment_options_are_checked():
    with pytest.raises(ValueError, match=r"sampling='segments' takes one frame per segment: stride \(2\) and "
                                         r"target_fps \(None\) do not apply"):
        ClipConfig(sampling="segments", stride=2)
    with pytest.raises(ValueError, match=r"twice_sample=True needs sampling='segments' and segment_rule='tsn'"):
        ClipConfig(sampling="segments", twice_sample=True)
    with pytest.raises(ValueError, match=r"sampling must be one of \('stride', 'segments'\), got 'tsn'"):
        ClipConfig(sampling="tsn")


def test_segment_clips_read_the_planned_frames_and_meta_gives_them(dataset):
    table = load_table(dataset)
    length = dict(zip(table.filename, table.num_frames))
    for training in (True, False):
        ds = dali_video.clip_dataset(dataset, batch_size=5, clip_len=8, crop_size=16, sampling="segments",
                                     device="cpu", dtype="uint8", std=(1, 1, 1), seed=3, with_meta=True,
                                     training=training)
        for clips, _, meta in ds.take(2):
            for clip, frames, name in zip(clips.numpy(), meta["frames"].numpy(), meta["filename"].numpy()):
                assert [frame_number(f) for f in clip] == frames.tolist()
                start, end = slowfast_seq_bounds(length[os.fsdecode(name)], 8)
                if training:
                    assert ((frames >= start) & (frames <= end)).all()
                else:
                    assert frames.tolist() == ((start + end) // 2).tolist()


# ---------------------------------------------------------------- target frame rate

def slowfast_start_end(video_size, clip_size, clip_idx, num_clips_uniform, use_offset):
    """facebookresearch/SlowFast slowfast/datasets/decoder.py get_start_end_idx (testing: clip_idx >= 0)."""
    delta = max(video_size - clip_size, 0)
    if use_offset:
        if num_clips_uniform == 1:
            start_idx = math.floor(delta / 2)
        else:
            start_idx = clip_idx * math.floor(delta / (num_clips_uniform - 1))
    else:
        start_idx = delta * clip_idx / num_clips_uniform
    return start_idx, start_idx + clip_size - 1


def slowfast_temporal_sampling(num_frames, start_idx, end_idx, num_samples):
    """SlowFast decoder.py temporal_sampling (with numpy's float64 linspace for torch's float32 one)."""
    index = np.linspace(start_idx, end_idx, num_samples)
    return np.clip(index, 0, num_frames - 1).astype(np.int64)


def slowfast_clip_size(sampling_rate, num_frames, target_fps, fps):
    """SlowFast decoder.py decode: the stored frames one clip spans (at least 1, as MMAction2's)."""
    return max(1, sampling_rate * num_frames / target_fps * fps)


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.969999313354492, 12.0, 60.0])
def test_target_fps_views_are_slowfasts_get_start_end_idx_and_temporal_sampling(fps):
    for T, stride, K in ((8, 8, 10), (16, 4, 5), (4, 2, 1), (1, 1, 3), (13, 1, 2)):
        for views, use_offset in (("slowfast", False), ("slowfast_offset", True)):
            config = ClipConfig(clip_len=T, stride=stride, crop_size=8, target_fps=30.0, test_views=views,
                                clips_per_video=K)
            for n in LENGTHS:
                size = slowfast_clip_size(stride, T, 30.0, fps)
                for view in range(K):
                    want = slowfast_temporal_sampling(n, *slowfast_start_end(n, size, view, K, use_offset), T)
                    assert frames_of(config, (n, 8, 8, fps), view, False) == want.tolist(), (n, view, views)


@pytest.mark.parametrize("fps", [25.0, 29.969999313354492])
def test_target_fps_training_start_is_uniform_and_frames_follow_slowfast(fps):
    """SlowFast draws start_idx = random.uniform(0, delta), a real; the plan draws an integer start."""
    for T, stride in ((8, (6, 10)), (16, 4), (1, 2)):
        config = ClipConfig(clip_len=T, stride=stride, crop_size=8, target_fps=30.0)
        for n in LENGTHS:
            plan = PlanSpec(config, seed=7, training=True)
            for p in range(DRAWS):
                fields, got = native_plan(plan, [(n, 8, 8, fps)], p, with_frames=True)
                size = slowfast_clip_size(fields[2], T, 30.0, fps)
                start = got[0]
                assert 0 <= start <= max(n - size, 0)
                assert got == slowfast_temporal_sampling(n, start, start + size - 1, T).tolist()


def test_fps_reaches_the_index_and_build_supplies_it(dataset, tmp_path):
    from dali_video.index_tools import format as fmt
    from dali_video.index_tools import verify
    from tests.conftest import run_module
    from tests.test_index_tools import _write_tf_layout

    assert (load_table(dataset).fps == 25.0).all()  # the writer stores the source's rate
    shard = _write_tf_layout(tmp_path / "tf.tfrecord", "example")
    run_module("dali_video.index_tools", "build", shard)
    kw = dict(batch_size=1, clip_len=4, crop_size=8, device="cpu", target_fps=30, output="jpegs")
    with pytest.raises(ValueError, match=rf"target_fps \(30\) needs each video's frame rate: video '' in {shard} "
                                         rf"has none in its index \(3 videos\); give their rate with: "
                                         rf"dali-video-index build --fps <rate> {shard}"):
        dali_video.clip_pipeline([shard], **kw)
    run_module("dali_video.index_tools", "build", "--fps", "30", shard)
    assert (load_table([shard]).fps == 30.0).all()
    verify(shard)  # the rate given to build, which the records lack, is no mismatch
    dali_video.clip_pipeline([shard], **kw).close()
    # An index of version 1 (no fps column) still reads, its videos' rate unknown.
    index = fmt.read_frame_index(fmt.fidx_path(shard))
    rows = index.read_rows(0, index.num_frame_rows)
    videos = {c: v for c, v in index.videos.items() if c != "fps"}
    data = fmt.encode_frame_index(shard_size=index.shard_size, num_records=index.num_records, layout=index.layout,
                                  frames_key=index.frames_key, videos={**videos, "fps": []}, rows=rows)
    header_length = int.from_bytes(data[8:12], "little")
    header = data[12:12 + header_length].decode()
    old = header.replace('"version": 2', '"version": 1').replace(', "fps": []', "")
    fmt.atomic_write(fmt.fidx_path(shard), data[:12] + old.ljust(header_length).encode() + data[12 + header_length:])
    assert fmt.read_frame_index(fmt.fidx_path(shard)).videos["fps"] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("source, resample, stored", [(25.0, None, 25.0), (25.0, 10.0, 10.0), (12.0, 30.0, 12.0),
                                                     (29.97, None, 29.969999313354492)])
def test_the_writer_stores_the_rate_of_the_frames_it_keeps(tmp_path, source, resample, stored):
    from dali_video.index_tools.indexer import describe_record
    from dali_video.tools.sample_data import make_video
    from dali_video.writer.encode import EncodeOptions, encode_video
    from dali_video.writer.sources import VideoSpec

    path = make_video(tmp_path / "v.avi", 30, fps=source)
    video = encode_video(VideoSpec(str(path), "v.avi", 0, "a", "train"), EncodeOptions(resize_shorter=0, fps=resample))
    assert video.meta.fps == stored  # resampling drops frames, never adds them; float32, as the record holds it
    assert describe_record(video.data)[3].fps == stored


def test_target_fps_clips_read_the_planned_frames(dataset):
    table = load_table(dataset)
    length = dict(zip(table.filename, table.num_frames))
    ds = dali_video.clip_dataset(dataset, batch_size=5, clip_len=6, stride=2, crop_size=16, target_fps=30,
                                 test_views="slowfast", clips_per_video=2, device="cpu", dtype="uint8",
                                 std=(1, 1, 1), seed=3, with_meta=True, training=False)
    for b, (clips, _, meta) in enumerate(ds.take(2)):
        for i, (clip, frames, name) in enumerate(zip(clips.numpy(), meta["frames"].numpy(), meta["filename"].numpy())):
            assert [frame_number(f) for f in clip] == frames.tolist()
            n, view = length[os.fsdecode(name)], (b * 5 + i) % 2
            size = slowfast_clip_size(2, 6, 30.0, 25.0)
            assert frames.tolist() == slowfast_temporal_sampling(n, *slowfast_start_end(n, size, view, 2, False),
                                                                 6).tolist()



@pytest.mark.parametrize("fps", [None, 12.0, 15.0, 25.0, 29.969999313354492, 60.0])
def test_a_clips_extent_is_the_frames_it_reads(fps):
    """A video of exactly the extent's frames ends on the clip's last frame; one frame fewer and the clip
    reads past its end (so "loop" wraps its last frame to frame 0)."""
    from dali_video.loader.sampling import clip_extent

    for T, stride in ((1, 3), (2, 1), (3, 4), (8, 12), (12, 12), (16, 5), (13, 7)):
        config = ClipConfig(clip_len=T, stride=stride, crop_size=8, target_fps=fps and 30.0, short_videos="loop")
        if fps is None:
            want = (T - 1) * stride + 1
        else:  # the last of the frames SlowFast's temporal_sampling spreads over the clip size, from frame 0
            want = 1 if T == 1 else int(np.floor(np.linspace(0, slowfast_clip_size(stride, T, 30.0, fps) - 1, T)[-1])) + 1
        assert clip_extent(config, stride, fps or 0.0) == want, (T, stride)
        assert frames_of(config, (want, 8, 8, fps or 0.0), 0, False)[-1] == want - 1
        if want > 1:
            assert frames_of(config, (want - 1, 8, 8, fps or 0.0), 0, False)[-1] == 0


def test_target_fps_short_videos_loop_back_to_the_first_frame():
    for n, fps in ((20, 25.0), (7, 15.0), (40, 60.0)):
        config = ClipConfig(clip_len=8, stride=10, crop_size=8, target_fps=60.0, short_videos="loop")
        read = np.floor(np.linspace(0, slowfast_clip_size(10, 8, 60.0, fps) - 1, 8)).astype(np.int64)
        assert read[-1] >= n  # the clip is longer than the video
        for training in (True, False):
            assert frames_of(config, (n, 8, 8, fps), 0, training) == (read % n).tolist(), (n, training)


def test_target_fps_decides_short_videos_on_each_videos_own_rate(dataset, caplog):
    import dataclasses
    import logging

    from dali_video.loader.config import resolve
    from dali_video.loader.sampling import usable_videos

    table = load_table(dataset)  # 25 fps
    n = table.num_frames
    skip = ClipConfig(clip_len=8, stride=10, crop_size=16, target_fps=60.0, short_videos="skip")
    with caplog.at_level(logging.WARNING, logger="dali_video"):
        rows = usable_videos(table, skip)  # 8 frames over 10 * 8 / 60 * 25 = 33.3 stored frames
    assert 0 < len(rows) < len(table) and rows.tolist() == np.flatnonzero(n >= 33).tolist()
    assert caplog.text.count(f"{int((n < 33).sum())} of {len(table)} videos are shorter than the clip span (33 "
                             f"frames: clip_len 8, stride 10, target_fps 60 at 25 fps); short_videos='skip': they "
                             f"are skipped") == 1
    # Each video by its own rate: at 12.5 fps a clip reads 16 frames, at 50 fps 66.
    rates = np.where(np.arange(len(table)) % 2, 50.0, 12.5)
    mixed = dataclasses.replace(table, fps=rates)
    assert usable_videos(mixed, skip).tolist() == np.flatnonzero(n >= np.where(rates == 50.0, 66, 16)).tolist()
    longest = int(n.max())
    with pytest.raises(ValueError, match=rf"every video is shorter than the clip span \(66 frames: clip_len 8, stride "
                                         rf"20, target_fps 60 at 25 fps\): the nearest to fit, '\S+', has {longest} "
                                         rf"frames of the 66 its clips read; pass a smaller clip_len or stride"):
        usable_videos(table, skip.replace(stride=20))
    # The docs' Mixture recipe (x3d_m: 16 frames 5 apart at 30 fps) over videos of 68 frames at 15 fps: 40 read.
    caplog.clear()
    footage = dataclasses.replace(table, num_frames=np.full(len(table), 68), fps=np.full(len(table), 15.0))
    with caplog.at_level(logging.WARNING, logger="dali_video"):
        assert len(usable_videos(footage, resolve("x3d_m", True, dict(clip_len=16, crop_size=16)))) == len(table)
    assert "shorter" not in caplog.text


# ---------------------------------------------------------------- test views

def mmaction_test_offsets(num_frames, clip_len, frame_interval, num_clips):
    """open-mmlab/mmaction2 SampleFrames._get_test_clips, 3D case without target_fps (test mode:
    ori_clip_len = (clip_len - 1) * frame_interval + 1), then out_of_bound_opt "loop"."""
    ori_clip_len = (clip_len - 1) * frame_interval + 1
    max_offset = max(num_frames - ori_clip_len, 0)
    if num_clips > 1:
        offset_between = max_offset / float(num_clips - 1)
        clip_offsets = np.round(np.arange(num_clips) * offset_between)
    else:
        clip_offsets = np.array([max_offset // 2])
    inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    return np.mod(inds, num_frames).astype(np.int64)


def test_mmaction_views_are_mmaction2s_test_clips():
    for T, stride, K in ((8, 8, 10), (32, 2, 4), (16, 4, 1), (1, 1, 3), (5, 3, 2)):
        config = ClipConfig(clip_len=T, stride=stride, crop_size=8, clips_per_video=K, test_views="mmaction",
                            short_videos="loop")
        for n in LENGTHS:
            want = mmaction_test_offsets(n, T, stride, K)
            assert [frames_of(config, (n, 8, 8), v, False) for v in range(K)] == want.tolist(), (n, T, K)


def slowfast_uniform_crop(height, width, size, spatial_idx):
    """SlowFast slowfast/datasets/cv2_transform.py (and transform.py) uniform_crop: (y, x) of the window."""
    y_offset = int(math.ceil((height - size) / 2))
    x_offset = int(math.ceil((width - size) / 2))
    if height > width:
        if spatial_idx == 0:
            y_offset = 0
        elif spatial_idx == 2:
            y_offset = height - size
    else:
        if spatial_idx == 0:
            x_offset = 0
        elif spatial_idx == 2:
            x_offset = width - size
    return y_offset, x_offset


def mmaction_three_crop(height, width, size):
    """open-mmlab/mmaction2 mmaction/datasets/transforms/processing.py ThreeCrop (the crop spans the shorter
    side): (y, x) of the left, right and middle (or top, down, middle) windows."""
    if size == height:
        w_step = (width - size) // 2
        return [(0, 0), (0, 2 * w_step), (0, w_step)]
    h_step = (height - size) // 2
    return [(0, 0), (2 * h_step, 0), (h_step, 0)]


def mmaction_center_crop(height, width, size):
    """MMAction2 processing.py CenterCrop: (y, x)."""
    return (height - size) // 2, (width - size) // 2


SIZES = [(h, w) for h in (16, 17, 31, 48, 64, 65, 101) for w in (16, 17, 31, 48, 64, 65, 101)]


def windows(views, crops, height, width, size):
    config = ClipConfig(clip_len=2, crop_size=size, num_crops=crops, test_views=views)
    plan = PlanSpec(config, seed=0, training=False)
    return [tuple(native_plan(plan, [(10, height, width)], c)[3:7]) for c in range(crops)]


def test_slowfast_views_crop_as_slowfasts_uniform_crop():
    for height, width in SIZES:
        for size in {min(height, width), 16, min(height, width) - 1}:
            for views in ("slowfast", "slowfast_offset"):
                want = [(*slowfast_uniform_crop(height, width, size, i), size, size) for i in range(3)]
                assert windows(views, 3, height, width, size) == want, (height, width, size)
                assert windows(views, 1, height, width, size) == want[1:2]


def test_mmaction_views_crop_as_mmaction2s_three_crop_and_center_crop():
    for height, width in SIZES:
        size = min(height, width)
        want = [(*yx, size, size) for yx in mmaction_three_crop(height, width, size)]
        assert windows("mmaction", 3, height, width, size) == want, (height, width)
        for size in {size, 16, size - 1}:
            assert windows("mmaction", 1, height, width, size) == [(*mmaction_center_crop(height, width, size),
                                                                    size, size)]


# ---------------------------------------------------------------- left and right

@pytest.mark.parametrize("layout", ["frames", "clips"])
def test_flipped_clips_get_the_paired_label(dataset, layout):
    table = load_table(dataset)
    label = dict(zip(table.filename, table.label))
    ds = dali_video.clip_dataset(dataset, batch_size=5, clip_len=2, crop_size=16, device="cpu", seed=1,
                                 with_meta=True, flip_label_pairs=[(0, 1)], layout=layout)
    flips = []
    for _, labels, meta in ds.take(4):
        for got, flip, name in zip(labels.numpy(), meta["flip"].numpy(), meta["filename"].numpy()):
            assert got == (1 - label[os.fsdecode(name)] if flip else label[os.fsdecode(name)])
            flips.append(flip)
    assert 0 < sum(flips) < len(flips)


def test_flip_label_pairs_are_checked():
    with pytest.raises(ValueError, match=r"flip_label_pairs must be \(a, b\) pairs of labels in \[0, 2\*\*31\), each "
                                         r"label in one pair only, got \(\(1, 2\), \(2, 3\)\)"):
        ClipConfig(flip_label_pairs=((1, 2), (2, 3)))


# ---------------------------------------------------------------- presets against their sources

SLOWFAST_DEFAULTS = dict(TARGET_FPS=30, NUM_ENSEMBLE_VIEWS=10, MEAN=0.45, STD=0.225)  # slowfast/config/defaults.py
TIMESFORMER_DEFAULTS = dict(TARGET_FPS=30, MEAN=0.45, STD=0.225)  # TimeSformer timesformer/config/defaults.py
SLOWFAST_FAMILY = {  # DATA.* and TEST.* of each config file
    # facebookresearch/SlowFast configs/Kinetics/X3D_XS.yaml, X3D_S.yaml, X3D_M.yaml, X3D_L.yaml
    "x3d_xs": dict(SLOWFAST_DEFAULTS, NUM_FRAMES=4, SAMPLING_RATE=12, TRAIN_JITTER_SCALES=[182, 228],
                   TRAIN_CROP_SIZE=160, TEST_CROP_SIZE=182, NUM_SPATIAL_CROPS=3),
    "x3d_s": dict(SLOWFAST_DEFAULTS, NUM_FRAMES=13, SAMPLING_RATE=6, TRAIN_JITTER_SCALES=[182, 228],
                  TRAIN_CROP_SIZE=160, TEST_CROP_SIZE=182, NUM_SPATIAL_CROPS=3),
    "x3d_m": dict(SLOWFAST_DEFAULTS, NUM_FRAMES=16, SAMPLING_RATE=5, TRAIN_JITTER_SCALES=[256, 320],
                  TRAIN_CROP_SIZE=224, TEST_CROP_SIZE=256, NUM_SPATIAL_CROPS=3),
    "x3d_l": dict(SLOWFAST_DEFAULTS, NUM_FRAMES=16, SAMPLING_RATE=5, TRAIN_JITTER_SCALES=[356, 446],
                  TRAIN_CROP_SIZE=312, TEST_CROP_SIZE=356, NUM_SPATIAL_CROPS=3),
    # facebookresearch/TimeSformer configs/Kinetics/TimeSformer_divST_8x32_224.yaml
    "timesformer_k400": dict(TIMESFORMER_DEFAULTS, NUM_FRAMES=8, SAMPLING_RATE=32, TRAIN_JITTER_SCALES=[256, 320],
                             TRAIN_CROP_SIZE=224, TEST_CROP_SIZE=224, NUM_ENSEMBLE_VIEWS=1, NUM_SPATIAL_CROPS=3),
    # facebookresearch/TimeSformer configs/SSv2/TimeSformer_divST_8_224.yaml (ssv2.py: get_seq_frames)
    "timesformer_ssv2": dict(TIMESFORMER_DEFAULTS, NUM_FRAMES=8, TRAIN_JITTER_SCALES=[256, 320], TRAIN_CROP_SIZE=224,
                             TEST_CROP_SIZE=224, RANDOM_FLIP=False, NUM_ENSEMBLE_VIEWS=1, NUM_SPATIAL_CROPS=3),
    # facebookresearch/SlowFast configs/SSv2/MVITv2_S_16x4.yaml (slowfast/datasets/ssv2.py: get_seq_frames)
    "mvit_ssv2": dict(SLOWFAST_DEFAULTS, NUM_FRAMES=16, TRAIN_JITTER_SCALES=[256, 320], TRAIN_CROP_SIZE=224,
                      TEST_CROP_SIZE=224, RANDOM_FLIP=False, NUM_SAMPLE=1, NUM_ENSEMBLE_VIEWS=1, NUM_SPATIAL_CROPS=3),
}
IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
VIDEOMAE = {  # MCG-NJU/VideoMAE scripts/{kinetics,ssv2}/videomae_vit_base_patch16_224_*/finetune.sh arguments,
    # kinetics.py / ssv2.py _aug_frame: scl [0.08, 1.0], asp [0.75, 1.3333], random_horizontal_flip False for SSV2
    "videomae_k400": dict(num_frames=16, sampling_rate=4, num_sample=2, input_size=224, short_side_size=224,
                          test_num_segment=5, test_num_crop=3, scale=[0.08, 1.0], ratio=[0.75, 1.3333], flip=True),
    "videomae_ssv2": dict(num_frames=16, num_sample=2, input_size=224, short_side_size=224, test_num_segment=2,
                          test_num_crop=3, scale=[0.08, 1.0], ratio=[0.75, 1.3333], flip=False),
}
# mit-han-lab/temporal-shift-module: --num_segments 8 (README's SSv2 command), ops/models.py input_size 224 and
# scale_size 224 * 256 // 224, ImageNet input_mean/input_std; main.py: flip=False for 'something'
TSM = dict(num_segments=8, input_size=224, scale_size=224 * 256 // 224, flip=False)


def views(name):
    from dali_video.loader.config import resolve

    return resolve(name, True, {}), resolve(name, False, {})


@pytest.mark.parametrize("name", sorted(SLOWFAST_FAMILY))
def test_slowfast_family_presets_equal_their_configs(name):
    src, (train, test) = SLOWFAST_FAMILY[name], views(name)
    segments = "SAMPLING_RATE" not in src  # SSv2 datasets take one frame per segment
    for view in (train, test):
        assert view.clip_len == src["NUM_FRAMES"]
        assert (view.sampling, view.segment_rule) == (("segments", "slowfast") if segments else ("stride", "slowfast"))
        assert view.strides == ((1, 1) if segments else (src["SAMPLING_RATE"],) * 2)
        assert view.target_fps == (None if segments else src["TARGET_FPS"])
        assert view.mean == (src["MEAN"] * 255,) * 3 and view.std == (src["STD"] * 255,) * 3
    assert train.resize_range == tuple(src["TRAIN_JITTER_SCALES"]) and train.crop_size == src["TRAIN_CROP_SIZE"]
    assert train.flip == src.get("RANDOM_FLIP", True) and train.clips_per_video == src.get("NUM_SAMPLE", 1)
    assert test.resize_range == (src["TEST_CROP_SIZE"],) * 2 and test.crop_size == src["TEST_CROP_SIZE"]
    assert (test.clips_per_video, test.num_crops) == (src["NUM_ENSEMBLE_VIEWS"], src["NUM_SPATIAL_CROPS"])
    assert test.test_views == "slowfast" and not test.flip


@pytest.mark.parametrize("name", sorted(VIDEOMAE))
def test_videomae_presets_equal_their_scripts(name):
    src, (train, test) = VIDEOMAE[name], views(name)
    ssv2 = "sampling_rate" not in src
    for view in (train, test):
        assert view.clip_len == src["num_frames"] and view.crop_size == src["input_size"]
        assert (view.sampling, view.segment_rule) == (("segments", "tsn") if ssv2 else ("stride", "slowfast"))
        assert view.strides == (1, 1) if ssv2 else (src["sampling_rate"],) * 2
        assert np.allclose(view.mean, np.array(IMAGENET["mean"]) * 255)
        assert np.allclose(view.std, np.array(IMAGENET["std"]) * 255)
    assert train.crop_area == tuple(src["scale"]) and train.crop_aspect == tuple(src["ratio"])
    assert train.flip == src["flip"] and train.clips_per_video == src["num_sample"]
    assert test.resize_range == (src["short_side_size"],) * 2
    assert (test.clips_per_video, test.num_crops) == (src["test_num_segment"], src["test_num_crop"])
    assert test.twice_sample == ssv2  # ssv2.py's two test segments: the segments' middles and starts


def test_tsm_preset_equals_the_tsm_repository():
    train, test = views("tsm_ssv2")
    for view in (train, test):
        assert (view.clip_len, view.sampling, view.segment_rule) == (TSM["num_segments"], "segments", "tsn")
        assert view.crop_size == TSM["input_size"] and view.resize_range == (TSM["scale_size"],) * 2
        assert np.allclose(view.mean, np.array(IMAGENET["mean"]) * 255)
    assert train.flip == TSM["flip"] and (test.clips_per_video, test.num_crops) == (1, 1)


def test_every_preset_reads_on_the_cpu(dataset):
    from dali_video.loader.config import RECIPES, recipe

    for name in RECIPES:
        for training in (True, False):
            small = dict(clip_len=4, crop_size=16)
            if recipe(name, training=training).resize_shorter is not None:
                small["resize_shorter"] = 16
            with dali_video.clip_pipeline(dataset, batch_size=2, recipe=name, training=training, device="cpu",
                                          seed=0, output="jpegs", **small) as p:
                p.pipeline.run()


# ---------------------------------------------------------------- mixtures

@pytest.mark.parametrize("weights", [(1,), (1, 1), (3, 1, 2), (5, 3, 7, 1), (1, 9), (2, 4)])
def test_mixture_schedule_holds_exact_proportions_in_any_window_of_its_period(weights):
    from dali_video.loader.sampling import mix_slots

    slots = mix_slots(weights)
    period = len(slots)
    assert period == sum(weights)
    endless = slots * 3
    for start in range(2 * period):  # any window of one period, wherever it starts
        window = endless[start:start + period]
        assert [window.count(d) for d in range(len(weights))] == list(weights)


def mixture_clips(mixture, batches, batch_size=6, **kw):
    """(dataset, label, filename, frames) of every clip of `batches` batches."""
    ds = dali_video.clip_dataset(mixture, batch_size=batch_size, crop_size=16, device="cpu", dtype="uint8",
                                 std=(1, 1, 1), seed=9, with_meta=True, **kw)
    mixture_clips.loader = ds._dali_video_loader
    return [(int(d), int(lab), os.fsdecode(name), tuple(f)) for _, labels, meta in ds.take(batches)
            for d, lab, name, f in zip(meta["dataset"].numpy(), labels.numpy(), meta["filename"].numpy(),
                                       meta["frames"].numpy())]


def test_mixture_reads_each_dataset_by_its_recipe_in_the_schedule(dataset):
    from dali_video.loader.sampling import Mixture, mix_slots

    table = load_table(dataset)
    length, label = dict(zip(table.filename, table.num_frames)), dict(zip(table.filename, table.label))
    segments = ClipConfig(clip_len=4, sampling="segments")
    mixture = Mixture([(dataset, segments, 2), (dataset, ClipConfig(clip_len=4, stride=3), 1)])
    clips = mixture_clips(mixture, 4)
    assert [d for d, *_ in clips] == mix_slots((2, 1)) * 8  # 24 clips: the schedule, period after period
    loader = mixture_clips.loader  # the Python reference: MixPlan.locate, then the dataset's own plan
    first = np.cumsum([0, *loader.plan.counts])
    for position, (d, *_, frames) in enumerate(clips):
        part, q, _ = loader.plan.locate(position)
        rows = slice(first[part], first[part + 1])
        ref = plan_clip(loader.plan.parts[part], loader.table.num_frames[rows], loader.table.height[rows],
                        loader.table.width[rows], q)
        assert part == d and tuple(ref.frames) == frames
    for d, lab, name, frames in clips:
        assert lab == label[name] + 2 * d  # labels 0, 1 of the first dataset, then 2, 3
        if d == 0:
            start, end = slowfast_seq_bounds(length[name], 4)
            assert all(a <= f <= b for f, a, b in zip(frames, start, end)), frames
        else:
            assert list(frames) == [frames[0] + 3 * t for t in range(4)]
    assert dali_video.steps_per_epoch(mixture, batch_size=6, crop_size=16) == -(-3 * 10 // 6)  # 10 periods: both epochs


def test_mixture_resumes_and_shares_batches_as_one_reader(dataset):
    from dali_video.loader.sampling import Mixture

    mixture = Mixture([(dataset, ClipConfig(clip_len=4, sampling="segments"), 1), (dataset, ClipConfig(clip_len=4), 2)],
                      labels=[{0: 5, 1: 6}, {0: 7, 1: 8}])
    whole = mixture_clips(mixture, 4)
    assert {lab for _, lab, *_ in whole} <= {5, 6, 7, 8}
    assert mixture_clips(mixture, 2, initial_clip=12) == whole[12:]
    halves = [mixture_clips(mixture, 4, 3, shard_id=r, num_shards=2) for r in (0, 1)]
    assert [c for k in range(4) for h in halves for c in h[3 * k:3 * k + 3]] == whole


def test_mixture_recipes_must_agree_on_the_output():
    from dali_video.loader.sampling import Mixture

    with pytest.raises(ValueError, match=r"Mixture datasets 0 and 1 differ in clip_len: the recipes must agree on "
                                         r"clip_len, crop_size, dtype, mean, std"):
        dali_video.steps_per_epoch(Mixture([("a", ClipConfig(clip_len=4), 1), ("b", ClipConfig(clip_len=8), 1)]),
                                   batch_size=2)
    with pytest.raises(ValueError, match=r"Mixture takes \[\(files, recipe, weight\), ...\] with integer weights"):
        Mixture([("a", None, 0.5)])


def test_evaluation_options_given_for_training_are_said_to_be_ignored(caplog):
    """29.14: test_views with training=True was ignored silently."""
    from dali_video.loader.config import _say_unread, resolve

    _say_unread.cache_clear()  # said once per process
    with caplog.at_level(logging.WARNING, logger="dali_video"):
        resolve("slowfast", True, dict(test_views="mmaction", num_crops=3, clip_len=4))
        resolve("slowfast", False, dict(test_views="mmaction", num_crops=3))  # evaluation reads them
        resolve("slowfast", True, dict(num_crops=1, clip_len=8))  # the training view's own value: no news
    assert [r.getMessage() for r in caplog.records] == [
        "test_views, num_crops: read by evaluation (training=False) only; training=True draws its clips and crops "
        "at random and ignores them"]


def test_mixture_checks_its_recipes_when_built_and_takes_default(dataset):
    """29.9: "default" (as --mix DATA:default:W names it) was refused, and only when a loader read it."""
    from dali_video.loader.sampling import Mixture

    with pytest.raises(ValueError, match=r"Mixture dataset 1: recipe must be 'default', one of \('slowfast', .*\) "
                                         r"or a ClipConfig, got 'resnet'"):
        Mixture([(dataset, None, 1), (dataset, "resnet", 1)])
    mixed = Mixture([(dataset, "default", 1), (dataset, ClipConfig(), 1)])
    assert dali_video.steps_per_epoch(mixed, batch_size=2, clip_len=4, crop_size=16) == \
        dali_video.steps_per_epoch(Mixture([(dataset, None, 1)] * 2), batch_size=2, clip_len=4, crop_size=16)
    assert dali_video.recipe("default", training=False) == ClipConfig()


def test_mixture_swaps_flipped_labels_by_each_datasets_own_pairs(dataset):
    # Shared labels overlap (both datasets map 0->0, 1->1); only dataset 0's recipe pairs them, so a
    # flipped clip of dataset 1 keeps its label (one global map once swapped it too).
    from dali_video.loader.sampling import Mixture

    table = load_table(dataset)
    label = dict(zip(table.filename, table.label))
    config = ClipConfig(clip_len=2, crop_size=16)
    mixture = Mixture([(dataset, config.replace(flip_label_pairs=[(0, 1)]), 1), (dataset, config, 1)],
                      labels=[{0: 0, 1: 1}, {0: 0, 1: 1}])
    ds = dali_video.clip_dataset(mixture, batch_size=6, device="cpu", seed=3, with_meta=True)
    loader = ds._dali_video_loader
    first, flips = np.cumsum([0, *loader.plan.counts]), {0: [], 1: []}
    for b, (_, labels, meta) in enumerate(ds.take(4)):
        for i, (got, flip, d, name) in enumerate(zip(labels.numpy(), meta["flip"].numpy(), meta["dataset"].numpy(),
                                                     meta["filename"].numpy())):
            part, q, _ = loader.plan.locate(6 * b + i)  # the Python reference plan of this clip
            rows = slice(first[part], first[part + 1])
            ref = plan_clip(loader.plan.parts[part], loader.table.num_frames[rows], loader.table.height[rows],
                            loader.table.width[rows], q)
            assert (d, flip) == (part, ref.window[4])
            own = label[os.fsdecode(name)]
            assert got == (1 - own if flip and d == 0 else own)
            flips[int(d)].append(flip)
    assert all(0 < sum(f) < len(f) for f in flips.values())  # both datasets flip some clips, not all


def mixture_select(mixture, **options):
    from dali_video.loader.dataset import _configs, _select

    return _select(mixture, _configs(mixture, None, True, dict(clip_len=2, crop_size=16, **options)), training=True,
                   split=None, shard_id=0, num_shards=1, seed=0, global_batch=0)


def test_mixture_flip_pairs_that_the_labels_cannot_map_are_refused(dataset):
    from dali_video.loader.sampling import Mixture

    pairs = ClipConfig(flip_label_pairs=[(1, 2)])
    with pytest.raises(ValueError, match=r"Mixture labels: dataset 0 \(.*\) has flip_label_pairs label 2, which its "
                                         r"mapping lacks; map it too or drop the pair"):
        mixture_select(Mixture([(dataset, pairs, 1), (dataset, None, 1)], labels=[{0: 0, 1: 1}, {0: 2, 1: 3}]))
    with pytest.raises(ValueError, match=r"Mixture labels: dataset 0 \(.*\) has flip_label_pairs label 2, which is "
                                         r"beyond its largest label 1 and would become another dataset's label"):
        mixture_select(Mixture([(dataset, pairs, 1), (dataset, None, 1)]))
    with pytest.raises(ValueError, match=r"Mixture labels: dataset 1 \(.*\): in the shared labels, flip_label_pairs "
                                         r"must be \(a, b\) pairs"):  # the mapping joins two pairs
        mixture_select(Mixture([(dataset, None, 1), (dataset, ClipConfig(flip_label_pairs=[(0, 5), (1, 6)]), 1)],
                               labels=[{0: 0, 1: 1}, {0: 0, 1: 0, 5: 2, 6: 3}]))


@pytest.mark.parametrize("shared", [2**31, -2**31 - 1, 1.5])
def test_mixture_shared_labels_must_fit_the_readers_int32(dataset, shared):
    from dali_video.loader.sampling import Mixture

    mixture = Mixture([(dataset, None, 1), (dataset, None, 1)], labels=[{0: 0, 1: 1}, {0: 2, 1: shared}])
    with pytest.raises(ValueError, match=rf"Mixture labels: dataset 1 \(.*\) label 1 maps to shared label "
                                         rf"{shared}, not an integer in the reader's int32 range \[-2\*\*31, 2\*\*31\)"):
        mixture_select(mixture)
    mixture_select(Mixture(mixture.parts, labels=[{0: 0, 1: 1}, {0: 2, 1: 2**31 - 1}]))  # the largest fits


def test_a_label_beyond_int32_is_refused_naming_the_video(dataset):
    import dataclasses

    from dali_video.loader.dataset import _configs, _reader_args, _select

    plan, table, videos = _select(dataset, _configs(dataset, None, True, dict(clip_len=2, crop_size=16)),
                                  training=True, split=None, shard_id=0, num_shards=1, seed=0, global_batch=0)
    label = table.label.copy()
    label[videos[1]] = 2**31
    with pytest.raises(ValueError, match=rf"video '{table.filename[videos[1]]}' in .* has label 2147483648, beyond "
                                         r"the reader's int32 range \[-2\*\*31, 2\*\*31\)"):
        _reader_args(dataclasses.replace(table, label=label), videos, plan, shard_id=0, num_shards=1, initial_clip=0,
                     on_corrupt="raise")


def test_train_takes_a_mixture_and_the_new_presets(dataset):
    import json

    from tests.conftest import run_module

    # 29.9: recipes of other mean/std are told the options that set them for all, which the CLI now has
    mix = ("--mix", f"{dataset}:tsm_ssv2:2", "--mix", f"{dataset}:default:1", "--cpu", "--epochs", "1",
           "--steps-per-epoch", "2", "--batch-size", "3", "--clip-len", "4", "--crop-size", "32")
    proc = run_module("dali_video.train_input", *mix, check=False)
    assert proc.returncode == 1 and ("dali-video-train: error: Mixture datasets 0 and 1 differ in mean, std: the "
                                     "recipes must agree on clip_len, crop_size, dtype, mean, std (pass them as "
                                     "keywords to set them for all; dali-video-train: --clip-len, --crop-size, "
                                     "--mean, --std)") in proc.stderr
    proc = run_module("dali_video.train_input", *mix, "--mean", "0,0,0", "--std", "255,255,255")
    # two datasets of 2 classes, labels one after the other; the recipes as given (it said "recipe default")
    assert "clip 4x32x32, 4 classes, recipes tsm_ssv2, default" in proc.stdout
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["epoch"] == 1 and line["clip"] == 6


@pytest.mark.parametrize("damage", [dict(parts=[1, 2, 3]), dict(mix_slots=[0, 5]), dict(part_videos=[10, 3]),
                                    dict(mix_slots=[0, 0]), dict(flip_label_pairs=[0, 1], flip_pair_datasets=[2]),
                                    dict(flip_label_pairs=[0, 1], flip_pair_datasets=[0, 1])])
def test_malformed_mixture_arguments_fail_cleanly(dataset, damage):
    from dali_video.loader.dataset import _configs, _reader_args, _select
    from dali_video.loader.pipeline import Graph, clip_pipeline
    from dali_video.loader.sampling import Mixture

    mixture = Mixture([(dataset, ClipConfig(clip_len=2, crop_size=16), 1)] * 2)
    plan, table, videos = _select(mixture, _configs(mixture, None, True, {}), training=True, split=None, shard_id=0,
                                  num_shards=1, seed=0, global_batch=0)
    reader = {**_reader_args(table, videos, plan, shard_id=0, num_shards=1, initial_clip=0, on_corrupt="raise"),
              **damage}
    pipe = clip_pipeline(reader, Graph(device="cpu"), batch_size=2, output="jpegs")
    pipe.build()  # the reader says what is wrong at its first run (DALI's TF plugin aborts on a failed build)
    with pytest.raises(RuntimeError, match="dali-video clip reader: "):
        pipe.run()


def test_mixture_dataset_is_a_metadata_column_in_the_per_clip_layout_too(dataset):
    # layout "clips" (the GPU path's graph, run on the CPU) emits per-clip metadata rows, no TensorFlow map:
    # meta["dataset"] must come from the reader's own column there.
    from dali_video.loader.sampling import Mixture, mix_slots

    config = ClipConfig(clip_len=2, crop_size=16)
    mixture = Mixture([(dataset, config, 2), (dataset, config.replace(stride=2), 1)])
    with dali_video.clip_pipeline(mixture, batch_size=6, device="cpu", layout="clips", seed=0) as p:
        for _ in range(2):
            _, labels, meta, _ = (np.asarray(o.as_tensor()) for o in p.pipeline.run())
            assert meta[:, dali_video.META_COLUMNS.index("dataset")].tolist() == mix_slots((2, 1)) * 2
            assert meta[:, dali_video.META_COLUMNS.index("padding")].tolist() == [0] * 6


def test_mixture_arguments_without_a_mixture_fail_cleanly(dataset):
    # part_videos without parts once made the reader copy from an empty vector (a segfault at build).
    from dali_video.loader.dataset import _configs, _reader_args, _select
    from dali_video.loader.pipeline import Graph, clip_pipeline

    configs = _configs(dataset, None, True, dict(clip_len=2, crop_size=16))
    plan, table, videos = _select(dataset, configs, training=True, split=None, shard_id=0, num_shards=1, seed=0,
                                  global_batch=0)
    reader = {**_reader_args(table, videos, plan, shard_id=0, num_shards=1, initial_clip=0, on_corrupt="raise"),
              "part_videos": [1]}
    pipe = clip_pipeline(reader, Graph(device="cpu"), batch_size=2, output="jpegs")
    pipe.build()
    with pytest.raises(RuntimeError, match="dali-video clip reader: the mixture arguments disagree in length"):
        pipe.run()


def test_target_fps_without_rates_names_a_shard_in_a_bucket_too(dataset):
    import dataclasses

    from dali_video.loader.sampling import usable_videos

    table = load_table(dataset)
    url = "s3://bucket/ds/" + os.path.basename(str(table.shards[0].path))  # as the storage layer gives it
    table = dataclasses.replace(table, fps=np.zeros_like(table.fps),
                                shards=(dataclasses.replace(table.shards[0], path=url), *table.shards[1:]))
    shard = url[:-len(".fidx")]
    with pytest.raises(ValueError, match=f"in {shard} has none in its index .* build --fps <rate> {shard}"):
        usable_videos(table, ClipConfig(clip_len=2, crop_size=16, target_fps=30.0))


def test_an_unlabelled_video_stays_unlabelled_in_an_offset_mixture(dataset):
    from dali_video.loader.sampling import Mixture, shared_labels

    table = load_table(dataset)
    offset = int(table.label.max()) + 1
    first, second = shared_labels(Mixture([(dataset, None, 1), (dataset, None, 1)]), [table, table])
    assert (first(0), second(0), second(offset - 1)) == (0, offset, 2 * offset - 1)
    assert second(-1) == -1  # not offset - 1, the first dataset's last class
