"""What to read: the video table of a dataset, and clip plans drawn from it (pure functions)."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    empty = (table.num_frames < 1) | (np.minimum(table.height, table.width) < 1)
    if empty.any():
        log.warning("%d videos have no frames, or no frame size in their index, and are skipped (check them "
                    "with: dali-video-index inspect)", int(empty.sum()))
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


# The clip plan. One specification, two implementations: ``plan_clip`` below (the reference, for
# tests and tools) and ``plan_clip`` in native/clip_reader.cc (the reader); a property test holds
# them equal. Integer arithmetic only, modulo 2**64 where noted, so both agree bit for bit.
#
#   mix(x)      splitmix64's finaliser (mod 2**64); hash(h, v) = mix(h ^ mix(v))
#   uniform(h, m) = (h * m) >> 64, an integer in [0, m);   rdiv(a, b) = (2a + b) // (2b)  (a/b, halves up)
#   permute(x, n, key): a 4-round Feistel network on 2*half bits (the least half with 4**half >= n;
#       round r: L, R = R, L ^ (hash(hash(key, r), R) & (2**half - 1))), repeated while the result >= n.
#
# The clips form one endless sequence, epoch after epoch, whatever the number of readers: with n usable
# videos, K = clips_per_video and C = num_crops, an epoch holds N = n*K (training) or n*K*C (evaluation)
# clips; clip p is item j = p % N of epoch e = p // N. Reader r of R with batch size B reads positions
# initial_clip + k*B*R + r*B + i for its k-th batch, so any clip is found in O(1) from (seed, e, j).
#   training:   video = permute(j // K, n, hash(hash(seed, 1), e)); draws = hash(hash(hash(seed, 2), e), j)
#               start = uniform(hash(draws, 1), room + 1) with room = max(frames - span, 0)
#               y', x', flip = uniform(hash(draws, 2), rh - c + 1), uniform(hash(draws, 3), rw - c + 1),
#               uniform(hash(draws, 4), 2)
#   evaluation: video = j // (K*C), clip = j // C % K, crop = j % C; start = room // 2 for K = 1, else
#               rdiv(clip * room, K - 1); y', x' centred, or for C = 3 at 0, middle, end of the longer side.
# (rh, rw) is the frame after resizing its shorter side s to R: (rdiv(h*R, s), rdiv(w*R, s)); without
# resizing the frame itself. The window in stored pixels: size = max(1, rdiv(c*s, R)) (c without resizing),
# h = min(height, size), w = min(width, size), y = min(rdiv(y'*s, R), height - h), likewise x.
# Frame t of the clip is start + t*stride, taken modulo the frame count ("loop") or capped at the last
# frame ("repeat_last").

_M64 = (1 << 64) - 1
SHORT_CODES = {"repeat_last": 0, "loop": 1, "skip": 2}


def _mix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _hash(h: int, v: int) -> int:
    return _mix(h ^ _mix(v & _M64))


def _uniform(h: int, m: int) -> int:
    return (h * m) >> 64


def _rdiv(a: int, b: int) -> int:
    return (2 * a + b) // (2 * b)


def permute(x: int, n: int, key: int) -> int:
    """A keyed bijection of ``range(n)`` (see the specification above)."""
    half = 1
    while 4 ** half < n:
        half += 1
    mask = (1 << half) - 1
    while True:
        left, right = x >> half, x & mask
        for r in range(4):
            left, right = right, left ^ (_hash(_hash(key, r), right) & mask)
        x = (left << half) | right
        if x < n:
            return x


@dataclass(frozen=True)
class PlanSpec:
    """Everything a clip plan depends on besides the video table."""

    clip: ClipSpec
    seed: int
    training: bool
    clips_per_video: int = 1
    num_crops: int = 1

    def items_per_epoch(self, num_videos: int) -> int:
        return num_videos * self.clips_per_video * (1 if self.training else self.num_crops)

    def steps_per_epoch(self, num_videos: int, global_batch_size: int) -> int:
        """Global batches that cover an epoch once (the last one runs into the next epoch)."""
        return -(-self.items_per_epoch(num_videos) // global_batch_size)

    def as_ints(self) -> list[int]:
        """The order of ``struct Spec`` in clip_reader.cc."""
        c = self.clip
        return [self.seed, int(self.training), c.clip_len, c.stride, c.crop_size, c.resize_shorter or 0,
                SHORT_CODES[c.short_videos], self.clips_per_video, self.num_crops]


@dataclass(frozen=True)
class ClipPlan:
    """What one clip is: a row of the videos planned over, its first frame, frame numbers and window."""

    video: int
    start: int
    frames: np.ndarray
    window: tuple[int, int, int, int, int]  # y, x, h, w, flip (in stored pixels)


def plan_clip(plan: PlanSpec, num_frames, heights, widths, position: int) -> ClipPlan:
    """Clip ``position`` of the endless clip sequence over the videos whose sizes are given."""
    s, c = plan.clip, plan.clip.crop_size
    n, k, crops = len(num_frames), plan.clips_per_video, plan.num_crops
    items = plan.items_per_epoch(n)
    epoch, j = divmod(position, items)
    seed = plan.seed & _M64
    if plan.training:
        video, clip, crop = permute(j // k, n, _hash(_hash(seed, 1), epoch)), 0, 0
    else:
        video, clip, crop = j // (k * crops), j // crops % k, j % crops
    draws = _hash(_hash(_hash(seed, 2), epoch), j)
    frames, height, width = int(num_frames[video]), int(heights[video]), int(widths[video])
    room = max(frames - s.span, 0)
    if plan.training:
        start = _uniform(_hash(draws, 1), room + 1)
    else:
        start = room // 2 if k == 1 else _rdiv(clip * room, k - 1)
    r, shorter = s.resize_shorter or 0, min(height, width)
    rh, rw = (_rdiv(height * r, shorter), _rdiv(width * r, shorter)) if r else (height, width)
    if plan.training:
        y, x = _uniform(_hash(draws, 2), rh - c + 1), _uniform(_hash(draws, 3), rw - c + 1)
        flip = _uniform(_hash(draws, 4), 2)
    else:
        y, x, flip = (rh - c) // 2, (rw - c) // 2, 0
        if crops == 3:
            spot = (0, (max(rh, rw) - c) // 2, max(rh, rw) - c)[crop]
            y, x = (spot, x) if rh >= rw else (y, spot)
    size = max(1, _rdiv(c * shorter, r)) if r else c
    h, w = min(height, size), min(width, size)
    if r:
        y, x = min(_rdiv(y * shorter, r), height - h), min(_rdiv(x * shorter, r), width - w)
    idx = start + np.arange(s.clip_len) * s.stride
    idx = idx % frames if s.short_videos == "loop" else np.minimum(idx, frames - 1)
    return ClipPlan(video, start, idx, (y, x, h, w, flip))
