"""Training recipes: random resized crop, scale, colour and temporal jitter, repeated clips, presets.

The plan's draws are checked statistically on the native plan (the reader's own); the pixels the
pipeline makes are checked against an independent reference: the stored JPEG decoded by OpenCV,
cropped to the window the metadata gives, resized, colour-adjusted (numpy) and flipped.
"""
import math

import numpy as np
import pytest

import dali_video
from dali_video.loader.config import RECIPES, ClipConfig, recipe
from dali_video.loader.sampling import PlanSpec
from tests.test_native import native_plan

TOLERANCE = 1.2  # of error(): pixel levels (0-255)


def error(image, want) -> float:
    """The largest of the three channels' mean absolute differences."""
    return float(np.abs(image.astype(int) - want).mean(axis=(0, 1)).max())


# DALI's color_twist, written from its definition: saturation and hue act in YIQ space (a scaling and a
# rotation of the I, Q plane), then contrast about the middle level 128 and brightness as factors.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
_YIQ_TO_RGB = np.array([[1, 0.956, 0.621], [1, -0.272, -0.647], [1, -1.107, 1.705]])


def color_twist_reference(image, brightness, contrast, saturation, hue):
    """``hue`` as a fraction of the colour circle (dali-video's metadata)."""
    a = 2 * math.pi * hue
    rotate = np.array([[1, 0, 0], [0, math.cos(a), math.sin(a)], [0, -math.sin(a), math.cos(a)]])
    m = brightness * contrast * _YIQ_TO_RGB @ rotate @ np.diag([1, saturation, saturation]) @ _RGB_TO_YIQ
    out = image.astype(np.float64) @ m.T + (128 - 128 * contrast) * brightness
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def native_plans(config: ClipConfig, video, count: int, seed: int = 3, training: bool = True):
    """The native plan of clips 0..count-1 over one video (num_frames, height, width): rows of
    (video, start, stride, y, x, h, w, flip) and the colour factors."""
    plan = PlanSpec(config, seed=seed, training=training)
    rows = np.array([native_plan(plan, [video], position) for position in range(count)])
    return rows[:, :8].astype(np.int64), rows[:, 9:]  # column 8: padding


def test_random_resized_crop_windows_fall_in_and_cover_the_ranges():
    height, width, n = 600, 800, 4000  # 4:3, so windows up to the whole frame fit the aspect range
    config = ClipConfig(clip_len=4, crop_size=224, crop_area=(0.08, 1.0), crop_aspect=(3 / 4, 4 / 3))
    plans, _ = native_plans(config, (300, height, width), n)
    y, x, h, w = plans[:, 3:7].T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= height).all() and (x + w <= width).all()
    area, aspect = h * w / (height * width), w / h
    # Rounding a side to whole pixels moves the area and aspect by at most a pixel's share.
    slack = 1 / np.minimum(h, w)
    assert (area >= 0.08 * (1 - 2 * slack)).all() and (area <= 1).all()
    assert (aspect >= 0.75 * (1 - 2 * slack)).all() and (aspect <= 4 / 3 * (1 + 2 * slack)).all()
    # Coverage: areas reach both ends; in the part of the range where every window fits, areas are
    # uniform and log-aspects too (10 bins, each within 25 % of its share; fixed seed).
    assert area.min() < 0.09 and area.max() > 0.97
    small = area < 0.5
    counts, _ = np.histogram(area[small], bins=10, range=(0.08, 0.5))
    assert (abs(counts / counts.mean() - 1) < 0.25).all(), counts
    counts, _ = np.histogram(np.log(aspect[small]), bins=10, range=(math.log(3 / 4), math.log(4 / 3)))
    assert (abs(counts / counts.mean() - 1) < 0.25).all(), counts


def test_random_resized_crop_falls_back_to_the_centre_clamped_to_the_aspect_range():
    # A whole-frame window with an aspect of 4 never fits a square frame: every clip falls back.
    config = ClipConfig(clip_len=1, crop_size=8, crop_area=(1.0, 1.0), crop_aspect=(4.0, 5.0))
    plans, _ = native_plans(config, (10, 400, 400), 50)
    assert (plans[:, 3:7] == [150, 0, 100, 400]).all()  # y, x, h, w: 400 wide, 400 / 4 high, centred


def test_scale_jitter_draws_the_shorter_side_per_clip():
    height, width = 240, 320
    config = ClipConfig(clip_len=4, crop_size=224, resize_shorter=(256, 320))
    plans, _ = native_plans(config, (300, height, width), 2000)
    y, x, h, w = plans[:, 3:7].T
    scale = 224 * height / h  # the shorter side the window was resized from
    assert (h == w).all() and scale.min() < 260 and scale.max() > 315
    assert (scale > 256 * (1 - 1 / 160)).all() and (scale < 320 * (1 + 1 / 160)).all()
    assert (y + h <= height).all() and (x + w <= width).all()


def test_temporal_jitter_stays_in_range_and_in_bounds():
    config = ClipConfig(clip_len=50, stride=(4, 6), crop_size=8)
    for frames in (300, 260, 100):  # long enough for every stride, only some, none
        plans, _ = native_plans(config, (frames, 16, 16), 3000, seed=frames)
        start, stride = plans[:, 1], plans[:, 2]
        assert set(stride.tolist()) == {4, 5, 6}
        assert (start >= 0).all() and ((start + 49 * stride < frames) | (start == 0)).all()
    evaluation = native_plans(config.evaluation(), (300, 16, 16), 5, training=False)[0]
    assert evaluation[:, 2].tolist() == [5] * 5  # the middle stride


def test_colour_jitter_factors_cover_their_ranges():
    config = ClipConfig(clip_len=1, crop_size=8, color_jitter=(0.4, 0.2, 1.5, 0.1))
    _, color = native_plans(config, (10, 16, 16), 3000)
    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.8, 1.2), (0.0, 2.5), (-0.1, 0.1)]):
        got = color[:, k]
        assert lo - 1e-6 <= got.min() < lo + 0.02 * (hi - lo) and hi - 0.02 * (hi - lo) < got.max() <= hi + 1e-6
    assert (native_plans(ClipConfig(clip_len=1, crop_size=8), (10, 16, 16), 5)[1] == [1, 1, 1, 0]).all()


def test_repeated_clips_of_a_video_are_adjacent_and_differ():
    config = recipe("mvit")  # 2 clips per video per epoch
    plans, color = native_plans(config, (300, 240, 320), 40)
    pairs = plans.reshape(20, 2, 8)
    assert (pairs[:, 0, 0] == pairs[:, 1, 0]).all()
    differ = [(a[1:] != b[1:]).any() or (ca != cb).any() for a, b, ca, cb in
              zip(pairs[:, 0], pairs[:, 1], color[0::2], color[1::2])]
    assert all(differ)


def test_presets_are_valid_and_overridable(dataset):
    assert set(RECIPES) >= {"slowfast", "mvit", "movinet"}
    assert recipe("slowfast").resize_shorter == (256, 320) and recipe("slowfast", training=False).num_crops == 3
    steps = dali_video.steps_per_epoch(dataset, batch_size=2, recipe="mvit")  # 10 videos x 2 clips
    assert steps == 10
    assert dali_video.steps_per_epoch(dataset, batch_size=2, recipe="mvit", clips_per_video=1) == 5
    assert dali_video.steps_per_epoch(dataset, batch_size=2, recipe="slowfast", training=False) == 5 * 10 * 3
    evaluation = ClipConfig(stride=(4, 6), resize_shorter=(256, 320), crop_area=(0.5, 1), color_jitter=(1, 1, 1, 0.5))
    assert evaluation.evaluation() == ClipConfig(stride=5, resize_shorter=256, flip=False)
    # numpy values are fine, and the config stays hashable
    assert hash(ClipConfig(clip_len=np.int64(8), mean=np.zeros(3), crop_area=(np.float32(0.5), 1.0)))


# ---------------------------------------------------------------- pixels against an independent reference

@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    """4 videos of 30 frames, 96x128, whose red rises left to right and green top to bottom (so a
    window's place, size and flip show in its pixels); blue says the frame."""
    import cv2

    from tests.conftest import run_module

    root = tmp_path_factory.mktemp("gradients")
    yy, xx = np.mgrid[0:96, 0:128]
    (root / "videos" / "c").mkdir(parents=True)
    for v in range(4):
        out = cv2.VideoWriter(str(root / "videos" / "c" / f"g{v}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (128, 96))
        for k in range(30):
            rgb = np.stack([xx * 255 // 127, yy * 255 // 95, np.full_like(xx, 20 + 7 * k)], -1).astype(np.uint8)
            out.write(rgb[..., ::-1].copy())
        out.release()
    run_module("dali_video.writer", root / "videos", root / "data", "--resize", "0", "--num-shards", "1", "--quality", "95")
    return root / "data"


def _stored_frame(table, video: int, frame: int) -> np.ndarray:
    import cv2

    from dali_video.index_tools import fidx_path, read_frame_index

    shard = table.shards[table.shard[video]].path.with_suffix("")  # NAME.tfrecord.fidx -> NAME.tfrecord
    row = read_frame_index(fidx_path(shard)).read_rows(int(table.frame_start[video]) + frame, 1)[0]
    with open(shard, "rb") as f:
        f.seek(int(row["offset"]))
        data = f.read(int(row["length"]))
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def reference_frame(table, meta_row, crop: int, resizes: bool) -> np.ndarray:
    """The stored JPEG (OpenCV), cut to the window, resized, colour-adjusted and flipped as meta says."""
    import cv2

    col = {name: i for i, name in enumerate(dali_video.META_COLUMNS)}
    y, x, h, w = meta_row[col["crop_y"]:col["crop_w"] + 1]
    image = _stored_frame(table, int(meta_row[col["video"]]), int(meta_row[col["frame"]]))[y:y + h, x:x + w]
    if resizes:
        image = cv2.resize(image, (crop, crop), interpolation=cv2.INTER_LINEAR if h < crop else cv2.INTER_AREA)
    color = meta_row[col["brightness"]:col["hue"] + 1].astype(np.int32).view(np.float32)
    image = color_twist_reference(image, *color)
    return image[:, ::-1] if meta_row[col["flip"]] else image


@pytest.mark.parametrize("layout", ["frames", "clips"])
@pytest.mark.parametrize("options", [
    dict(recipe="slowfast"),  # scale jitter: the shorter side drawn in [256, 320], then the crop
    dict(recipe="mvit"),  # random resized crop, colour jitter, two clips per video
    dict(recipe="movinet"),  # random resized crop with a wide aspect range, stride jitter
    dict(recipe="mvit", color_jitter=(0.5, 0.5, 0.9, 0.1)),  # hue too
    dict(recipe="slowfast", training=False),  # 3 crops along the longer side at short side 256
])
def test_every_frame_is_its_source_window_resized_flipped_and_coloured_as_meta_says(gradients, options, layout):
    kw = dict(clip_len=4, crop_size=48, dtype="uint8", mean=(0, 0, 0), std=(1, 1, 1))
    if options.get("training") is False:
        kw.update(crop_size=64, resize_shorter=80, clips_per_video=2)
    with dali_video.clip_pipeline(gradients, batch_size=4, device="cpu", seed=5, layout=layout,
                                  **{**kw, **options}) as p:
        config, T = p.plan.config, p.plan.config.clip_len
        errors, flips, colored = [], 0, 0
        for _ in range(3):
            out = [np.asarray(o.as_tensor()) for o in p.pipeline.run()]
            images, meta = out[0], out[1]
            if layout == "clips":  # one meta row per clip, and each clip's frame numbers
                meta = np.repeat(out[2], T, axis=0)
                meta[:, dali_video.META_COLUMNS.index("frame")] = out[3].reshape(-1)
                images = images.reshape(-1, *images.shape[2:])
            for image, row in zip(images, meta):
                want = reference_frame(p.table, row, config.crop_size, config.resizes)
                assert image.shape == want.shape == (config.crop_size, config.crop_size, 3)
                errors.append(error(image, want))
                flips += int(row[dali_video.META_COLUMNS.index("flip")])
                colored += int(row[dali_video.META_COLUMNS.index("brightness")] != np.float32(1).view(np.int32))
    # Decoders and resampling filters differ by a little; a window 2 pixels off, a missed flip or a
    # missed colour change costs far more (test_the_pixel_check_sees_a_shifted_window_...).
    assert max(errors) < TOLERANCE, sorted(errors)[-5:]
    if options.get("training", True):
        assert 0 < flips < len(errors)  # both kinds seen
        assert colored == (len(errors) if config.color_jitter else 0)


def test_the_pixel_check_sees_a_shifted_window_a_missed_flip_or_colour(gradients):
    col = dali_video.META_COLUMNS.index
    with dali_video.clip_pipeline(gradients, batch_size=8, device="cpu", seed=5, recipe="mvit", clip_len=1,
                                  crop_size=48, dtype="uint8", mean=(0, 0, 0), std=(1, 1, 1)) as p:
        images, meta = (np.asarray(o.as_tensor()) for o in p.pipeline.run())
    for image, row in zip(images, meta):
        assert error(image, reference_frame(p.table, row, 48, True)) < TOLERANCE
        shifted, flipped, plain = row.copy(), row.copy(), row.copy()
        x, w = row[col("crop_x")], row[col("crop_w")]
        shifted[col("crop_x")] = x + 2 if x + w + 2 <= 128 else x - 2  # 2 pixels sideways
        flipped[col("flip")] = 1 - row[col("flip")]
        plain[col("brightness"):col("hue") + 1] = np.array([1, 1, 1, 0], np.float32).view(np.int32)
        for wrong in (shifted, flipped, plain):
            assert error(image, reference_frame(p.table, wrong, 48, True)) > TOLERANCE


@pytest.mark.parametrize("options", [dict(recipe="slowfast"), dict(recipe="mvit"),
                                     dict(recipe="movinet", crop_aspect=(0.3, 3.0), color_jitter=(0.2, 0.3, 0.4, 0.5)),
                                     dict(recipe="slowfast", training=False)])
def test_the_reader_reads_what_the_reference_plans(gradients, options):
    # Through DALI's own arguments (float32 values, int vectors), not the C function the property test calls.
    from dali_video.loader.sampling import plan_clip

    col = dali_video.META_COLUMNS.index
    with dali_video.clip_pipeline(gradients, batch_size=4, device="cpu", seed=9, output="meta", layout="clips",
                                  **options) as p:
        t, v = p.table, p.videos
        for k in range(3):
            for i, row in enumerate(np.asarray(p.pipeline.run()[0].as_tensor())):
                ref = plan_clip(p.plan, t.num_frames[v], t.height[v], t.width[v], k * 4 + i)
                assert row[col("video")] == v[ref.video] and row[col("frame")] == ref.frames[0]
                assert list(row[col("crop_y"):col("flip") + 1]) == list(ref.window)
                assert row[col("stride")] == ref.stride
                assert list(row[col("brightness"):col("hue") + 1]) == list(np.array(ref.color, np.float32).view(np.int32))
                assert row[col("padding")] == ref.padding
