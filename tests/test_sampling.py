"""Sampling modes against the references' own formulas.

Each reference function is re-implemented here with numpy, as its repository writes it (named per
function), and held against the reader's native plan (``dali_video_plan``, which the property test in
test_native holds equal to the Python plan) over many video lengths, shorter than a clip included.
"""
import math
import os

import numpy as np
import pytest

import dali_video
from dali_video.loader.config import ClipConfig
from dali_video.loader.sampling import PlanSpec, load_table
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
