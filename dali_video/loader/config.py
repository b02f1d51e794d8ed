"""What a clip is: one frozen, validated config, and published training recipes as named instances of it.

Pure Python: the plan (``sampling``) and the pipeline both read a :class:`ClipConfig`.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

ShortVideos = Literal["repeat_last", "loop", "skip"]
SAMPLINGS = ("stride", "segments")
SEGMENT_RULES = ("slowfast", "tsn")
TEST_VIEWS = ("default", "slowfast", "slowfast_offset", "mmaction")
MAX_INT = 65535  # sizes, strides and counts: JPEG's own limit; keeps the plan's products inside int64
SHORT_VIDEOS = ("repeat_last", "loop", "skip")
DTYPES = ("float32", "float16", "uint8")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _int_range(name: str, value, low: int, why: str = "") -> tuple[int, int]:
    """An int, or a (low, high) pair of ints, as a pair; the error names the keyword and the range."""
    pair = (value, value) if _is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(_is_int(v) for v in pair) or not low <= pair[0] <= pair[1] <= MAX_INT:
        raise ValueError(f"{name} must be an integer in [{low}, {MAX_INT}]{why} or a (low, high) pair of them with "
                         f"low <= high, got {value!r}")
    return int(pair[0]), int(pair[1])


def _reals(name: str, value, n: int, low: float, high: float, what: str) -> tuple[float, ...]:
    """n finite reals in [low, high] (NaN fails every comparison); the error names the keyword and range."""
    values = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else ()
    if len(values) != n or not all(_is_real(v) and low <= v <= high for v in values) or (
            n == 2 and values[0] > values[1]):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ClipConfig:
    """What the loader makes of each clip; every random value is drawn once per clip (the same for all
    its frames) from the seeded, seekable clip plan.

    clip_len: frames per clip (T).
    stride: step between a clip's frames: an int, or ``(low, high)`` drawn per clip (temporal jitter).
    crop_size: side of the square crops the model gets.
    resize_shorter: resize frames so the shorter side has this length before cropping: an int, or
        ``(low, high)`` drawn per clip (scale jitter); None keeps the stored size.
    crop_area, crop_aspect: random resized crop: a window of ``crop_area`` (a fraction of the frame's
        area, uniform) and ``crop_aspect`` (width / height, log-uniform), tried up to 10 times, else
        the centre crop of the whole frame clamped to ``crop_aspect``; then resized to ``crop_size``.
        None (default): a ``crop_size`` window at a random spot.
    flip: flip half the clips horizontally (training).
    color_jitter: ``(brightness, contrast, saturation, hue)``: factors drawn per clip, uniform in
        ``[max(0, 1 - x), 1 + x]`` for the first three and ``[-hue, hue]`` (a fraction of the colour
        circle, at most 0.5) for hue; applied with DALI's ``color_twist``. None: off.
    short_videos: videos shorter than the frames a clip reads (at the largest stride; with target_fps at
        the video's own rate) repeat their last frame, loop, or are skipped.
    clips_per_video: training: K differently drawn clips of each video per epoch, next to each other
        (repeated augmentation); evaluation: K evenly spaced clips.
    num_crops: evaluation crops per clip: 1 (centre) or 3 (both ends and the middle of the longer side).
    dtype, mean, std: "float32"/"float16" give ``(pixel - mean) / std`` (pixel units, 0-255); "uint8"
        the pixels as they are.
    sampling: "stride" (T frames ``stride`` apart from one start) or "segments" (the video cut into T
        segments, one frame from each; ``stride`` must stay 1).
    segment_rule: with segments, "slowfast" (SlowFast's ssv2.py get_seq_frames) or "tsn" (MMAction2's
        SampleFrames with clip_len=1, as TSN and TSM); ``twice_sample``: "tsn" evaluation views alternate
        between the segments' middles and their starts (MMAction2's twice_sample; use clips_per_video=2).
    target_fps: the clip spans ``stride * T`` frames at this rate (SlowFast's decoder.py): each video's
        stored ``fps`` decides how many of its frames that is. None: frames as stored.
    test_views: where evaluation views start and where three crops lie: "default", or as "slowfast",
        "slowfast_offset" (MViTv2's configs) or "mmaction" draw them (README, Sampling).
    flip_label_pairs: ``((a, b), ...)``: a flipped clip of label a gets label b and the reverse
        (Something-Something's left/right classes).

    Evaluation (``training=False``) reads :meth:`evaluation`'s fixed view of the same config. Integers
    are at most 65535; ``crop_aspect`` lies in [0.01, 100], ``crop_area`` in [0.0001, 1], jitter in [0, 10].
    """

    clip_len: int = 64
    stride: int | tuple[int, int] = 1
    crop_size: int = 224
    resize_shorter: int | tuple[int, int] | None = None
    crop_area: tuple[float, float] | None = None
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    color_jitter: tuple[float, float, float, float] | None = None
    short_videos: ShortVideos = "repeat_last"
    clips_per_video: int = 1
    num_crops: int = 1
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    sampling: Literal["stride", "segments"] = "stride"
    segment_rule: Literal["slowfast", "tsn"] = "slowfast"
    twice_sample: bool = False
    target_fps: float | None = None
    test_views: Literal["default", "slowfast", "slowfast_offset", "mmaction"] = "default"
    flip_label_pairs: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        for name in ("clip_len", "crop_size", "clips_per_video"):
            if not _is_int(getattr(self, name)) or not 1 <= getattr(self, name) <= MAX_INT:
                raise ValueError(f"{name} must be an integer in [1, {MAX_INT}], got {getattr(self, name)!r}")
        _int_range("stride", self.stride, 1)
        if self.resize_shorter is not None:
            if self.crop_area:
                _int_range("resize_shorter", self.resize_shorter, 1)
            else:  # a plain crop must fit in the resized frame
                _int_range("resize_shorter", self.resize_shorter, self.crop_size,
                           " (crop_size; with a crop_area, any size)")
        # Bounded ranges: float32 carries them to the reader, and the plan's exp converges on them.
        reals = {"crop_aspect": _reals("crop_aspect", self.crop_aspect, 2, 0.01, 100.0,
                                       "a (low, high) pair with low <= high, both in [0.01, 100]"),
                 "mean": _reals("mean", self.mean, 3, -1e6, 1e6, "3 finite values (pixel units)"),
                 "std": _reals("std", self.std, 3, 1e-6, 1e6, "3 finite values > 0 (pixel units)")}
        if self.crop_area is not None:
            reals["crop_area"] = _reals("crop_area", self.crop_area, 2, 1e-4, 1.0,
                                        "a (low, high) pair with low <= high, both in [0.0001, 1]")
        if self.color_jitter is not None:
            what = "(brightness, contrast, saturation, hue), each in [0, 10] and hue <= 0.5"
            reals["color_jitter"] = _reals("color_jitter", self.color_jitter, 4, 0.0, 10.0, what)
            if reals["color_jitter"][3] > 0.5:
                raise ValueError(f"color_jitter must be {what}, got {self.color_jitter!r}")
        if self.target_fps is not None:
            reals["target_fps"] = _reals("target_fps", (self.target_fps,), 1, 1e-3, 1e4, "a frame rate in "
                                         "[0.001, 10000] or None")[0]
        for name, allowed in (("short_videos", SHORT_VIDEOS), ("num_crops", (1, 3)), ("dtype", DTYPES),
                              ("sampling", SAMPLINGS), ("segment_rule", SEGMENT_RULES), ("test_views", TEST_VIEWS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("flip", "twice_sample"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.sampling == "segments" and (self.strides != (1, 1) or self.target_fps is not None):
            raise ValueError(f"sampling='segments' takes one frame per segment: stride ({self.stride!r}) and "
                             f"target_fps ({self.target_fps!r}) do not apply; leave them at 1 and None")
        if self.twice_sample and (self.sampling, self.segment_rule) != ("segments", "tsn"):
            raise ValueError(f"twice_sample=True needs sampling='segments' and segment_rule='tsn' (MMAction2's "
                             f"TSN test views), got {self.sampling!r} and {self.segment_rule!r}")
        pairs = self.flip_label_pairs
        if not isinstance(pairs, (tuple, list)) or not all(
                isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) and 0 <= v < 2**31 for v in p)
                for p in pairs) or len({v for p in pairs for v in p}) != 2 * len(pairs):
            raise ValueError(f"flip_label_pairs must be (a, b) pairs of labels in [0, 2**31), each label in one "
                             f"pair only, got {pairs!r}")
        object.__setattr__(self, "flip_label_pairs", tuple((int(a), int(b)) for a, b in pairs))
        for name in ("stride", "resize_shorter"):  # lists become tuples: the config stays hashable and frozen
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name, value in reals.items():
            object.__setattr__(self, name, value)

    @property
    def strides(self) -> tuple[int, int]:
        return _int_range("stride", self.stride, 1)

    @property
    def resize_range(self) -> tuple[int, int]:
        """(low, high) shorter side, (0, 0) without resizing."""
        return (0, 0) if self.resize_shorter is None else _int_range("resize_shorter", self.resize_shorter, 1)

    @property
    def resizes(self) -> bool:
        """Whether crop windows are resized to ``crop_size`` (else a window is the crop)."""
        return self.resize_shorter is not None or self.crop_area is not None

    def evaluation(self) -> "ClipConfig":
        """The fixed view evaluation reads: the middle stride, the smallest scale (with a random resized
        crop, at least the crop size), centre (or three) crops, no flip, no colour jitter."""
        lo, hi = self.strides
        low = self.resize_range[0]
        resize = max(low, self.crop_size) if self.crop_area else low or None  # the centre crop must fit
        return dataclasses.replace(self, stride=(lo + hi) // 2, resize_shorter=resize, crop_area=None,
                                   color_jitter=None, flip=False)

    def replace(self, **options) -> "ClipConfig":
        """A copy with ``options`` changed; unknown names raise a TypeError that lists the known ones."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"unknown clip option(s) {unknown}; the options are: {', '.join(OPTIONS)}")
        return dataclasses.replace(self, **options)


OPTIONS = tuple(f.name for f in dataclasses.fields(ClipConfig))
ClipSpec = ClipConfig  # the name of dali-video 0.1's clip options (the same fields, and more now)
_KINETICS_MEAN, _KINETICS_STD = (0.45 * 255,) * 3, (0.225 * 255,) * 3
_IMAGENET_MEAN, _IMAGENET_STD = (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)
_SLOWFAST_NORM = dict(mean=_KINETICS_MEAN, std=_KINETICS_STD)  # slowfast/config/defaults.py DATA.MEAN, DATA.STD
_IMAGENET_NORM = dict(mean=_IMAGENET_MEAN, std=_IMAGENET_STD)


def _x3d(frames: int, rate: int, scales: tuple[int, int], crop: int, test_crop: int):
    """X3D (facebookresearch/SlowFast configs/Kinetics/X3D_*.yaml: NUM_FRAMES, SAMPLING_RATE,
    TRAIN_JITTER_SCALES, TRAIN_CROP_SIZE, TEST_CROP_SIZE for NUM_SPATIAL_CROPS 3; slowfast/config/defaults.py:
    TARGET_FPS 30, TEST.NUM_ENSEMBLE_VIEWS 10; slowfast/datasets/kinetics.py tests at the shorter side
    TEST_CROP_SIZE with 3 crops; decoder.py places the views: test_views "slowfast")."""
    clip = dict(clip_len=frames, stride=rate, target_fps=30.0, **_SLOWFAST_NORM)
    return (ClipConfig(crop_size=crop, resize_shorter=scales, **clip),
            ClipConfig(crop_size=test_crop, resize_shorter=test_crop, clips_per_video=10, num_crops=3,
                       test_views="slowfast", **clip))

# Training and testing views of each recipe (values from the recipes' own configs, cited per preset).
RECIPES: dict[str, tuple[ClipConfig, ClipConfig]] = {
    # SlowFast R50 8x8 (facebookresearch/SlowFast: configs/Kinetics/SLOWFAST_8x8_R50.yaml, NUM_FRAMES 32,
    # SAMPLING_RATE 2; slowfast/config/defaults.py: TRAIN_JITTER_SCALES [256, 320], TRAIN_CROP_SIZE 224,
    # TEST_CROP_SIZE 256, MEAN 0.45, STD 0.225, TEST.NUM_ENSEMBLE_VIEWS 10, TEST.NUM_SPATIAL_CROPS 3).
    "slowfast": (ClipConfig(clip_len=32, stride=2, crop_size=224, resize_shorter=(256, 320), mean=_KINETICS_MEAN,
                            std=_KINETICS_STD),
                 ClipConfig(clip_len=32, stride=2, crop_size=256, resize_shorter=256, clips_per_video=10,
                            num_crops=3, mean=_KINETICS_MEAN, std=_KINETICS_STD)),
    # MViTv2-S 16x4 (facebookresearch/SlowFast: configs/Kinetics/MVITv2_S_16x4.yaml: NUM_FRAMES 16,
    # SAMPLING_RATE 4, TRAIN_CROP_SIZE 224, TRAIN_JITTER_SCALES_RELATIVE [0.08, 1.0] and
    # TRAIN_JITTER_ASPECT_RELATIVE [0.75, 1.3333] (a random resized crop of the frame), AUG.COLOR_JITTER 0.4,
    # AUG.NUM_SAMPLE 2 (there the copies share their frames; here each draws its own start). SlowFast's
    # Kinetics loader reads COLOR_JITTER only for ImageNet (its video colour changes come from RandAugment,
    # not a loader's): the preset applies 0.4 to brightness, contrast and saturation per clip. Testing:
    # TEST_CROP_SIZE 224 at the shorter side TRAIN_JITTER_SCALES[0] = 256 with one spatial crop
    # (slowfast/datasets/kinetics.py), TEST.NUM_ENSEMBLE_VIEWS 5, NUM_SPATIAL_CROPS 1).
    "mvit": (ClipConfig(clip_len=16, stride=4, crop_size=224, crop_area=(0.08, 1.0), crop_aspect=(0.75, 4 / 3),
                        color_jitter=(0.4, 0.4, 0.4, 0.0), clips_per_video=2, mean=_KINETICS_MEAN,
                        std=_KINETICS_STD),
             ClipConfig(clip_len=16, stride=4, crop_size=224, resize_shorter=256, clips_per_video=5, num_crops=1,
                        mean=_KINETICS_MEAN, std=_KINETICS_STD)),
    # MoViNet-A2 (tensorflow/models: official/projects/movinet/configs/yaml/movinet_a2_k600_8x8.yaml:
    # feature_shape [50, 224, 224, 3], temporal_stride 5, random_stride_range 1 (official/vision/dataloaders/
    # video_input.py draws it with tf.random.uniform, upper bound excluded: 4 or 5), aug_min_area_ratio 0.08,
    # aug_max_area_ratio 1.0, aug_min_aspect_ratio 0.5, aug_max_aspect_ratio 2.0; eval: 1 clip x 1 crop,
    # min_image_size 256 (official/vision/configs/video_classification.py); pixels in [0, 1]).
    "movinet": (ClipConfig(clip_len=50, stride=(4, 5), crop_size=224, crop_area=(0.08, 1.0), crop_aspect=(0.5, 2.0)),
                ClipConfig(clip_len=50, stride=5, crop_size=224, resize_shorter=256)),
    # TSM on Something-Something V2 (mit-han-lab/temporal-shift-module: README / scripts: --num_segments 8;
    # ops/dataset.py TSNDataSet._sample_indices / _get_val_indices: TSN segments (there videos shorter than
    # 8 frames give frame 0, here MMAction2's rounding); main.py: flip=False for 'something'; ops/models.py:
    # input_size 224, scale_size 224 * 256 // 224 = 256, ImageNet mean/std; validation GroupScale(256),
    # GroupCenterCrop(224), 1 clip. Its GroupMultiScaleCrop (fixed scales [1, .875, .75, .66]) is not
    # drawn here: training takes a 224 window of the frame at shorter side 256).
    "tsm_ssv2": (ClipConfig(clip_len=8, sampling="segments", segment_rule="tsn", crop_size=224, resize_shorter=256,
                            flip=False, **_IMAGENET_NORM),
                 ClipConfig(clip_len=8, sampling="segments", segment_rule="tsn", crop_size=224, resize_shorter=256,
                            flip=False, **_IMAGENET_NORM)),
    # TimeSformer on Kinetics-400 (facebookresearch/TimeSformer: configs/Kinetics/TimeSformer_divST_8x32_224.yaml:
    # NUM_FRAMES 8, SAMPLING_RATE 32, TRAIN_JITTER_SCALES [256, 320], TRAIN_CROP_SIZE 224, TEST_CROP_SIZE 224,
    # TEST.NUM_ENSEMBLE_VIEWS 1, NUM_SPATIAL_CROPS 3; timesformer/config/defaults.py: TARGET_FPS 30, MEAN 0.45,
    # STD 0.225; timesformer/datasets/kinetics.py: 3 crops at the shorter side TEST_CROP_SIZE).
    "timesformer_k400": (ClipConfig(clip_len=8, stride=32, target_fps=30.0, crop_size=224, resize_shorter=(256, 320),
                                    **_SLOWFAST_NORM),
                         ClipConfig(clip_len=8, stride=32, target_fps=30.0, crop_size=224, resize_shorter=224,
                                    num_crops=3, test_views="slowfast", **_SLOWFAST_NORM)),
    # TimeSformer on SSv2 (facebookresearch/TimeSformer: configs/SSv2/TimeSformer_divST_8_224.yaml: NUM_FRAMES 8,
    # TRAIN_JITTER_SCALES [256, 320] (INV_UNIFORM_SAMPLE: there the scale's inverse is uniform), TRAIN_CROP_SIZE 224,
    # TEST_CROP_SIZE 224, RANDOM_FLIP False, NUM_ENSEMBLE_VIEWS 1, NUM_SPATIAL_CROPS 3; timesformer/datasets/
    # ssv2.py get_seq_frames: segment_rule "slowfast").
    "timesformer_ssv2": (ClipConfig(clip_len=8, sampling="segments", crop_size=224, resize_shorter=(256, 320),
                                    flip=False, **_SLOWFAST_NORM),
                         ClipConfig(clip_len=8, sampling="segments", crop_size=224, resize_shorter=224, num_crops=3,
                                    flip=False, test_views="slowfast", **_SLOWFAST_NORM)),
    # VideoMAE ViT-B fine-tuning on Kinetics-400 (MCG-NJU/VideoMAE: scripts/kinetics/videomae_vit_base_patch16_224_
    # tubemasking_ratio_0.9_epoch_1600/finetune.sh: --num_frames 16 --sampling_rate 4 --num_sample 2
    # --input_size 224 --short_side_size 224 --test_num_segment 5 --test_num_crop 3; kinetics.py _aug_frame:
    # random resized crop scale [0.08, 1.0], ratio [0.75, 1.3333], flip, ImageNet mean/std. Its loader spreads
    # the 16 frames over 64 with linspace and, in testing, places views on the strided frames; here stride 4).
    "videomae_k400": (ClipConfig(clip_len=16, stride=4, crop_size=224, crop_area=(0.08, 1.0),
                                 crop_aspect=(0.75, 1.3333), clips_per_video=2, **_IMAGENET_NORM),
                      ClipConfig(clip_len=16, stride=4, crop_size=224, resize_shorter=224, clips_per_video=5,
                                 num_crops=3, **_IMAGENET_NORM)),
    # VideoMAE ViT-B fine-tuning on SSv2 (MCG-NJU/VideoMAE: scripts/ssv2/videomae_vit_base_patch16_224_tubemasking_
    # ratio_0.9_epoch_2400/finetune.sh: --num_frames 16 --num_sample 2 --short_side_size 224 --test_num_segment 2
    # --test_num_crop 3; ssv2.py: TSN segments (len(vr) // num_segment; videos shorter than 16 frames give
    # frame 0 there), random resized crop [0.08, 1.0] x [0.75, 1.3333] without flip for SSV2; testing: the
    # segments' middles and starts (views 1 and 0 there), 3 crops along the longer side at shorter side 224).
    "videomae_ssv2": (ClipConfig(clip_len=16, sampling="segments", segment_rule="tsn", crop_size=224,
                                 crop_area=(0.08, 1.0), crop_aspect=(0.75, 1.3333), flip=False, clips_per_video=2,
                                 **_IMAGENET_NORM),
                      ClipConfig(clip_len=16, sampling="segments", segment_rule="tsn", twice_sample=True, crop_size=224,
                                 resize_shorter=224, clips_per_video=2, num_crops=3, flip=False, **_IMAGENET_NORM)),
    "x3d_xs": _x3d(4, 12, (182, 228), 160, 182),
    "x3d_s": _x3d(13, 6, (182, 228), 160, 182),
    "x3d_m": _x3d(16, 5, (256, 320), 224, 256),
    "x3d_l": _x3d(16, 5, (356, 446), 312, 356),
    # MViTv2-S on SSv2 (facebookresearch/SlowFast: configs/SSv2/MVITv2_S_16x4.yaml: NUM_FRAMES 16,
    # TRAIN_JITTER_SCALES [256, 320] (INV_UNIFORM_SAMPLE), TRAIN_CROP_SIZE 224, TEST_CROP_SIZE 224, RANDOM_FLIP
    # False, AUG.NUM_SAMPLE 1, TEST.NUM_ENSEMBLE_VIEWS 1, NUM_SPATIAL_CROPS 3; slowfast/datasets/ssv2.py
    # get_seq_frames: segment_rule "slowfast"; its RandAugment, random erasing and mixup act on the decoded batch).
    "mvit_ssv2": (ClipConfig(clip_len=16, sampling="segments", crop_size=224, resize_shorter=(256, 320), flip=False,
                             **_SLOWFAST_NORM),
                  ClipConfig(clip_len=16, sampling="segments", crop_size=224, resize_shorter=224, num_crops=3,
                             flip=False, test_views="slowfast", **_SLOWFAST_NORM)),
}


DEFAULT = "default"  # the recipe name of ClipConfig()'s clips, where a name is taken (a Mixture, --mix)
# Fields that only evaluation (training=False) reads: training draws its clips and crops at random.
EVALUATION_ONLY = ("test_views", "num_crops", "twice_sample")


def check_recipe(recipe_or_config) -> None:
    """Raise ValueError unless ``recipe_or_config`` is None or "default" (ClipConfig()'s clips), a preset's
    name or a ClipConfig."""
    if not (recipe_or_config is None or isinstance(recipe_or_config, ClipConfig) or _is_name(recipe_or_config)):
        raise _recipe_error(recipe_or_config)


def _is_name(name) -> bool:
    return isinstance(name, str) and (name == DEFAULT or name in RECIPES)


def _recipe_error(value) -> ValueError:
    return ValueError(f"recipe must be {DEFAULT!r}, one of {tuple(RECIPES)} or a ClipConfig, got {value!r}")


def recipe(name: str, *, training: bool = True) -> ClipConfig:
    """A named preset's training (or testing) view; see :data:`RECIPES` for the values and their sources.
    "default" names ClipConfig()'s clips."""
    if not _is_name(name):
        raise _recipe_error(name)
    return ClipConfig() if name == DEFAULT else RECIPES[name][0 if training else 1]


def resolve(recipe_or_config, training: bool, options: dict) -> ClipConfig:
    """The config a loader reads: a preset (by name, its training or testing view) or a ClipConfig, with
    ``options`` (ClipConfig fields) overriding it; evaluation reads its fixed view. Options that only
    evaluation reads (:data:`EVALUATION_ONLY`), given for training, are said to be ignored (a WARNING)."""
    check_recipe(recipe_or_config)
    base = recipe(recipe_or_config, training=training) if isinstance(recipe_or_config, str) else \
        recipe_or_config or ClipConfig()
    config = base.replace(**options)
    if training and (unread := tuple(k for k in EVALUATION_ONLY if k in options and options[k] != getattr(base, k))):
        _say_unread(unread)
    return config if training else config.evaluation()


@functools.cache
def _say_unread(names: tuple) -> None:
    log.warning("%s: read by evaluation (training=False) only; training=True draws its clips and crops at random "
                "and ignores %s", ", ".join(names), "it" if len(names) == 1 else "them")
