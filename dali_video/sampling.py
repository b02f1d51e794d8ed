"""What to read: the video table of a dataset, and clip plans drawn from it (pure functions)."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from index_tools import FormatError, check_fresh, expand, fidx_path, idx_path, read_frame_index
from index_tools import format as fmt

log = logging.getLogger(__name__)
ShortVideos = Literal["repeat_last", "loop", "skip"]
SHORT_VIDEOS = ("repeat_last", "loop", "skip")


@dataclass(frozen=True)
class VideoTable:
    """One row per video of the dataset, in file order then record order."""

    shards: tuple  # FrameIndex per shard file
    shard: np.ndarray  # index into shards
    frame_start: np.ndarray  # row of the video's first frame in its shard's frame table
    num_frames: np.ndarray
    height: np.ndarray
    width: np.ndarray
    label: np.ndarray
    filename: np.ndarray  # str

    def __len__(self) -> int:
        return len(self.num_frames)

    def take(self, rows) -> "VideoTable":
        return VideoTable(self.shards, *(getattr(self, f)[rows] for f in
                                         ("shard", "frame_start", "num_frames", "height", "width", "label",
                                          "filename")))


def shard_files(files, split: str | None = None) -> list[Path]:
    """Shards from a glob, a list of files, or a dataset folder (optionally one split of it)."""
    if isinstance(files, (str, Path)) and Path(files).is_dir():
        shards = sorted(Path(files).glob(f"*{fmt.SHARD_SUFFIX}"))
        if split is not None:
            shards = [s for s in shards if (p := fmt.parse_shard_name(s.name)) and p[0] == split]
        splits = sorted({p[0] for s in shards if (p := fmt.parse_shard_name(s.name))})
        if split is None and len(splits) > 1:
            raise ValueError(f"{files} holds the splits {splits}: pass split=... to pick one")
        if not shards:
            raise FileNotFoundError(f"no {split or ''}*{fmt.SHARD_SUFFIX} shards in {files}")
        return shards
    return expand([files] if isinstance(files, (str, Path)) else files)


def load_table(files, split: str | None = None) -> VideoTable:
    """Read the frame index headers of every shard, checking that no index is missing or stale."""
    shards = []
    for shard in shard_files(files, split):
        for path in (idx_path(shard), fidx_path(shard)):
            if not path.exists():
                raise FormatError(f"{path}: index missing for shard {shard}; build it with: "
                                  f"dali-video-index build {shard}")
        with open(shard, "rb") as f:
            fmt.check_not_gzip(shard, f.read(2))
        index = read_frame_index(fidx_path(shard))
        check_fresh(shard, index)
        records = fmt.read_idx(idx_path(shard))
        if len(records) != index.num_records or any(
                records[r][0] != off for r, off in zip(index.videos["record"], index.videos["record_offset"])):
            raise FormatError(f"{idx_path(shard)}: {len(records)} records that do not match the frame index "
                              f"({index.num_records} records): stale index; rebuild it with: "
                              f"dali-video-index build {shard}")
        shards.append(index)

    def column(name, dtype):
        return np.array([value for ix in shards for value in ix.videos[name]], dtype=dtype)

    # The table keeps compact arrays, not the headers' per-video lists (memory at 300k videos);
    # names stay Python strings: a fixed-width array would pad every name to the longest.
    return VideoTable(
        shards=tuple(dataclasses.replace(ix, videos={}) for ix in shards),
        shard=np.repeat(np.arange(len(shards), dtype=np.int64), [ix.num_videos for ix in shards]),
        frame_start=np.concatenate([ix.frame_starts() for ix in shards]).astype(np.int64),
        num_frames=column("num_frames", np.int64), height=column("height", np.int64),
        width=column("width", np.int64), label=column("label", np.int64), filename=column("filename", object))


# ---------------------------------------------------------------- clip plans

@dataclass(frozen=True)
class ClipSpec:
    clip_len: int = 64
    stride: int = 1
    crop_size: int = 224
    resize_shorter: int | None = None
    short_videos: ShortVideos = "repeat_last"

    def __post_init__(self):
        for name in ("clip_len", "stride", "crop_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.resize_shorter is not None and (not isinstance(self.resize_shorter, (int, np.integer))
                                                or self.resize_shorter < self.crop_size):
            raise ValueError(f"resize_shorter must be None or an integer >= crop_size ({self.crop_size}), "
                             f"got {self.resize_shorter!r}")
        if self.short_videos not in SHORT_VIDEOS:
            raise ValueError(f"short_videos must be one of {SHORT_VIDEOS}, got {self.short_videos!r}")

    @property
    def span(self) -> int:
        """Frames a clip covers from its first to its last frame."""
        return (self.clip_len - 1) * self.stride + 1


def usable_videos(table: VideoTable, spec: ClipSpec) -> np.ndarray:
    """Rows of the videos a clip can be taken from; checks sizes against the crop."""
    short = table.num_frames < spec.span
    empty = table.num_frames < 1
    if empty.any():
        log.warning("%d videos have no frames and are skipped", int(empty.sum()))
    if spec.short_videos == "skip" and short.any():
        log.warning("short_videos='skip': %d of %d videos have fewer than %d frames and are skipped",
                    int(short.sum()), len(table), spec.span)
    keep = ~empty & ~(short if spec.short_videos == "skip" else False)
    shorter = np.minimum(table.height, table.width)
    small = keep & (shorter < spec.crop_size) if spec.resize_shorter is None else np.zeros_like(keep)
    if small.any():
        i = int(np.flatnonzero(small)[0])
        raise ValueError(f"video {str(table.filename[i])!r} is {table.width[i]}x{table.height[i]}, smaller than "
                         f"crop_size ({spec.crop_size}); pass resize_shorter >= {spec.crop_size} or a smaller "
                         f"crop_size")
    return np.flatnonzero(keep)


def frame_indices(num_frames: int, start: int, spec: ClipSpec) -> np.ndarray:
    """The frame numbers of a clip starting at ``start``, with the short-video policy applied."""
    idx = start + np.arange(spec.clip_len) * spec.stride
    if spec.short_videos == "loop":
        return idx % num_frames
    return np.minimum(idx, num_frames - 1)


def clip_starts(num_frames: int, spec: ClipSpec, *, rng: np.random.Generator | None,
                clips_per_video: int = 1) -> np.ndarray:
    """Training (``rng`` given): one uniformly random valid start. Evaluation: ``clips_per_video``
    evenly spaced starts (the centre for one clip)."""
    room = max(num_frames - spec.span, 0)
    if rng is not None:
        return np.array([rng.integers(0, room + 1)])
    if clips_per_video == 1:
        return np.array([room // 2])
    return np.linspace(0, room, clips_per_video).round().astype(np.int64)


def crop_windows(height: int, width: int, spec: ClipSpec, *, rng: np.random.Generator | None,
                 num_crops: int = 1) -> list[tuple[int, int, int, int, int]]:
    """``(y, x, h, w, flip)`` windows in source pixels. Training: one random window and flip;
    evaluation: the centre (1 crop) or both ends and the centre of the longer side (3 crops)."""
    scale = spec.resize_shorter / min(height, width) if spec.resize_shorter else 1.0
    rh, rw = round(height * scale), round(width * scale)  # the frame after resizing
    c = spec.crop_size
    if rng is not None:
        spots = [(int(rng.integers(0, rh - c + 1)), int(rng.integers(0, rw - c + 1)), int(rng.integers(0, 2)))]
    elif num_crops == 1:
        spots = [((rh - c) // 2, (rw - c) // 2, 0)]
    elif rh >= rw:
        spots = [(y, (rw - c) // 2, 0) for y in (0, (rh - c) // 2, rh - c)]
    else:
        spots = [((rh - c) // 2, x, 0) for x in (0, (rw - c) // 2, rw - c)]
    size = max(1, round(c / scale))  # the crop in source pixels (at least one, when upscaling)
    size_h, size_w = min(height, size), min(width, size)
    return [(min(round(y / scale), height - size_h), min(round(x / scale), width - size_w), size_h, size_w, f)
            for y, x, f in spots]


@dataclass(frozen=True)
class ClipPlan:
    """What one clip is: a video row, its frame numbers and the crop window."""

    video: int
    frames: np.ndarray
    window: tuple[int, int, int, int, int]


def epoch_plan(table: VideoTable, videos: np.ndarray, spec: ClipSpec, *, training: bool, seed: int,
               epoch: int, clips_per_video: int = 1, num_crops: int = 1) -> Iterator[ClipPlan]:
    """The clips of one epoch, drawn as they are needed (memory stays flat at any dataset size).
    Training: each video once, in a seeded random order, with a random start and window.
    Evaluation: every video in order, ``clips_per_video`` x ``num_crops`` clips."""
    if not training:
        for v in videos:
            n = int(table.num_frames[v])
            for start in clip_starts(n, spec, rng=None, clips_per_video=clips_per_video):
                for window in crop_windows(int(table.height[v]), int(table.width[v]), spec, rng=None,
                                           num_crops=num_crops):
                    yield ClipPlan(int(v), frame_indices(n, int(start), spec), window)
        return
    rng = np.random.default_rng([seed, epoch])
    for v in rng.permutation(videos):
        n = int(table.num_frames[v])
        start = int(clip_starts(n, spec, rng=rng)[0])
        window = crop_windows(int(table.height[v]), int(table.width[v]), spec, rng=rng)[0]
        yield ClipPlan(int(v), frame_indices(n, start, spec), window)
