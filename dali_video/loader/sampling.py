"""What to read: the video table of a dataset, and clip plans drawn from it (pure functions)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
import math

import numpy as np

from ..index_tools import (FormatError, check_fresh, expand, fidx_path, idx_path, read_frame_index, read_segments,
                           segments_path)
from ..index_tools import format as fmt
from ..index_tools import storage

from .config import MAX_INT, ClipConfig, _is_int, check_recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoTable:
    """One row per item of the dataset, in file order then record order: an item is a whole video or,
    in a dataset with a segment table, a segment of one (frames ``first`` .. ``first + num_frames - 1``
    of its video), in the table's order."""

    shards: tuple  # FrameIndex per shard file
    shard: np.ndarray  # index into shards
    frame_start: np.ndarray  # row of the video's first frame in its shard's frame table
    num_frames: np.ndarray  # the item's frames
    height: np.ndarray
    width: np.ndarray
    label: np.ndarray  # the one single-label head's class (or the first head's when single-label); else -1
    filename: np.ndarray  # str
    fps: np.ndarray  # frames per second as stored in the index; 0: unknown
    record_offset: np.ndarray  # the video's record in its shard: byte offset and length
    record_length: np.ndarray
    first: np.ndarray  # the item's first frame in its video (0 for a whole video)
    segment: np.ndarray  # the segment's annotation row (0-based, header excluded); -1: a whole video
    source: np.ndarray  # the item's video: its row among the dataset's videos (file order, record order)
    video_frames: np.ndarray  # the frames of the item's video
    head_labels: np.ndarray  # [items, width] class ids of every head, side by side, padded with -1
    heads: tuple = ()  # (Head, first column in head_labels, columns) per label head; empty: none

    def __len__(self) -> int:
        return len(self.num_frames)

    @functools.cached_property
    def digest(self) -> bytes:
        """SHA-256 of the table's contents (its shards' frame tables by identity): readers of equal tables
        share one native table (``dataset._native_table``)."""
        h = hashlib.sha256()
        for ix in self.shards:
            h.update(repr((str(ix.path), ix.frame_table_offset, ix.num_frame_rows, ix.frame_table_crc,
                           ix.shard_size)).encode())
        for name in _PER_VIDEO:
            column = getattr(self, name)
            h.update(name.encode())
            h.update("\n".join(column).encode("utf-8", "surrogatepass") if column.dtype == object else column.tobytes())
        return h.digest()

    def take(self, rows) -> "VideoTable":
        return VideoTable(self.shards, **{name: getattr(self, name)[rows] for name in _PER_VIDEO}, heads=self.heads)


# The table's per-item columns: every field but shards and heads.
_PER_VIDEO = tuple(f.name for f in dataclasses.fields(VideoTable) if f.name not in ("shards", "heads"))


class SplitError(ValueError):
    """A dataset folder holds several splits and none was picked; ``splits`` maps each to its files (None:
    files whose names name no split), ``found`` says them in words."""

    def __init__(self, folder, splits: dict):
        self.folder, self.splits, self.found = folder, splits, _describe_splits(splits)
        super().__init__(f"{folder} holds the splits {self.found}: pass split=... to pick one")


def _describe_splits(groups: dict) -> str:
    text = str(sorted(s for s in groups if s is not None))
    return text + f" and files of no split name ({_names(groups[None])})" if None in groups else text


def _names(shards) -> str:
    names = [storage.name(s) for s in shards]
    return ", ".join(names if len(names) <= 4 else [*names[:2], "...", *names[-1:]])


def shard_files(files, split: str | None = None) -> list[Path | str]:
    """Shards from a glob, a list of files, or a dataset folder, local or ``s3://``/``gs://`` (a bucket
    checked first); ``split`` keeps the shards of one split (read from their names:
    :func:`dali_video.index_tools.format.split_of`). A folder holding several splits needs ``split``."""
    path = storage.check_path(files) if isinstance(files, (str, Path)) else None
    if path is not None and storage.is_url(path):
        storage.check_bucket(path)
    folder = path is not None and storage.isdir(path)
    found = storage.glob(path, f"*{fmt.SHARD_SUFFIX}") if folder else \
        expand([files] if path is not None else files)
    groups: dict = {}
    for shard in found:
        groups.setdefault(fmt.split_of(storage.name(shard)), []).append(shard)
    if split is None and folder and len(groups) > 1:
        raise SplitError(files, groups)
    shards = found if split is None else groups.get(split, [])
    if not shards:
        raise FileNotFoundError(f"no shards {f'of split {split!r} ' if split else ''}in {files}" + (
            f" (it holds {_describe_splits(groups)})" if groups else f" (no *{fmt.SHARD_SUFFIX} files)"))
    log.info("%s: reading %d file%s%s: %s", files, len(shards), "s" * (len(shards) > 1),
             f" of split {split!r}" if split else "", _names(shards))
    return shards


def _check_class_space(shards) -> None:
    """Raise when files disagree on what a label means: a label with two class texts, or a class text
    with two labels (files without class texts say nothing)."""
    pairs = set().union(*(zip(ix.videos["label"], ix.videos["class_text"]) for ix in shards))
    named = {(label, text) for label, text in pairs if text}
    if len({label for label, _ in named}) == len(named) == len({text for _, text in named}):
        return  # each label one text and each text one label: at once (300k videos at start-up)
    by_label: dict = {}  # label -> (class text, shard of its first video)
    by_text: dict = {}  # class text -> (label, shard)
    for ix in shards:
        shard = fmt.shard_of(ix.path)
        for label, text in sorted(set(zip(ix.videos["label"], ix.videos["class_text"]))):
            if not text:
                continue
            text0, where0 = by_label.setdefault(label, (text, shard))
            label1, where1 = by_text.setdefault(text, (label, shard))
            if text0 != text:
                clash = f"label {label} is class {text0!r} in {where0} but {text!r} in {shard}"
            elif label1 != label:
                clash = f"class {text!r} is label {label1} in {where1} but label {label} in {shard}"
            else:
                continue
            raise ValueError(f"{clash}: the files hold different class spaces; read one dataset at a time "
                             f"(a folder or split each), or pass mixed_classes=True to read them together")


def _shard_index(shard):
    """The frame index header of one shard, checked against the shard and its .idx, and its segment table
    (None when it was written without one)."""
    try:
        return _checked_index(shard)
    except FormatError:  # a compressed shard says so first: it has no index to build (the indexer refuses it)
        fmt.check_not_gzip(shard, storage.read(shard, 0, 2))
        raise


def _checked_index(shard):
    idx, fidx = idx_path(shard), fidx_path(shard)
    for path in (idx, fidx):
        if not storage.exists(path):
            raise FormatError(f"{path}: index missing for shard {shard}; build it with: "
                              f"dali-video-index build {shard}")
    index = read_frame_index(fidx)
    check_fresh(shard, index)
    records = fmt.read_idx_array(idx)
    if not _records_match(records, index):
        raise FormatError(f"{idx}: {len(records)} records that do not match the frame index "
                          f"({index.num_records} records): stale index; rebuild it with: "
                          f"dali-video-index build {shard}")
    if "segments" not in index.notes:  # the writer notes the table it writes: no request for other datasets
        return index, None
    if not storage.exists(segments_path(shard)):
        raise FormatError(f"{segments_path(shard)}: segment table missing for shard {shard} (its frame index says "
                          f"it was written with {index.notes['segments']} segments); write the dataset again")
    return index, read_segments(segments_path(shard), index)


def _items(index, segments) -> dict:
    """One shard's items: its segments, or its videos; columns of _PER_VIDEO (labels per head as lists)."""
    v = index.videos
    if segments is None:
        rows = np.arange(index.num_videos)
        return dict(video=rows, first=np.zeros(len(rows), np.int64), num_frames=np.asarray(v["num_frames"], np.int64),
                    segment=np.full(len(rows), -1, np.int64), labels={})
    c = segments.segments
    return dict(video=np.asarray(c["video"], np.int64), first=np.asarray(c["first"], np.int64),
                num_frames=np.asarray(c["count"], np.int64), segment=np.asarray(c["id"], np.int64),
                labels=c["labels"])


def _heads(pairs) -> tuple:
    """The label heads the shards agree on (every shard with a segment table, or none), each with its
    columns in head_labels: 1 for a single-label head, the most labels of a segment for a multi-label one."""
    tables = [(ix, seg) for ix, seg in pairs if seg is not None]
    if not tables:
        return ()
    if len(tables) < len(pairs):
        plain = next(fmt.shard_of(ix.path) for ix, seg in pairs if seg is None)
        raise ValueError(f"{plain} has no segment table but {fmt.shard_of(tables[0][0].path)} has one: the files mix "
                         f"datasets with and without segments or label heads; read one dataset at a time")
    heads = tables[0][1].heads
    for ix, seg in tables:
        if seg.heads != heads:
            raise ValueError(f"{seg.path} has label heads {[h.name for h in seg.heads]} (or their classes) other than "
                             f"{tables[0][1].path}'s {[h.name for h in heads]}: read one dataset at a time")
    out, column = [], 0
    for h in heads:
        width = max([1] + [len(ids) for _, seg in tables for ids in seg.segments["labels"][h.name]]) \
            if h.multi_label else 1
        out.append((h, column, width))
        column += width
    return tuple(out)


def _head_labels(heads, labels: dict, n: int) -> np.ndarray:
    """[n, width] class ids of every head side by side, padded with -1."""
    out = np.full((n, sum(w for _, _, w in heads)), -1, np.int64)
    for h, column, _ in heads:
        for k, ids in enumerate(labels[h.name]):
            out[k, column:column + len(ids)] = ids
    return out


def _records_match(records: np.ndarray, index) -> bool:
    """Whether the .idx ``records`` ([n, 2]: offset, size) hold the frame index's records where it says."""
    rows, offsets = np.asarray(index.videos["record"]), np.asarray(index.videos["record_offset"])
    if len(records) != index.num_records or len(rows) == 0:
        return len(records) == index.num_records
    if rows.dtype.kind not in "iu" or rows.min() < 0 or rows.max() >= len(records):
        return False
    return np.array_equal(records[rows, 0], offsets)


# The tables loaded in this process, while one is used (a reader, a pipeline or the caller holds it):
# every reader of the same files shares one, and reads no index again.
_tables: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_tables_lock = threading.Lock()


def _stamp(path) -> tuple:
    """What changes when a local file is replaced or rewritten (an object in a bucket: nothing is asked)."""
    if storage.is_url(path):
        return ()
    try:
        st = os.stat(path)
    except FileNotFoundError:  # reading the table says so, naming the shard
        return ()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def load_table(files, split: str | None = None, *, mixed_classes: bool = False) -> VideoTable:
    """Read the frame index headers of every shard, checking that no index is missing or stale and
    (unless ``mixed_classes``) that every file gives each label the same class text.

    Shards in a bucket are read 16 at a time (2 requests each after one listing), so start-up
    waits for the store's latency once per 16 shards, not once per request. A table is read once per
    process while it is in use: loading the same files again (another reader, validation, a dataset
    iterated again) returns the same table, unless a local shard, index or segment table changed since
    (its inode, size or modification time); one in a bucket is taken as unchanged while its table is in use."""
    found = shard_files(files, split)
    key = (tuple(str(s) for s in found), mixed_classes,
           tuple(_stamp(p) for s in found for p in (s, idx_path(s), fidx_path(s), segments_path(s))))
    with _tables_lock:
        table = _tables.get(key)
    if table is None:
        table = _read_table(found, mixed_classes)
        with _tables_lock:
            table = _tables.setdefault(key, table)
    return table


_WARM_READ = 0.0007  # seconds a shard's headers take from the page cache, at most (~0.45 ms here)


def _shard_indexes(found) -> list:
    """Every shard's (index, segments), in order: one after another while the first 32 local shards come
    at page-cache speed (there a thread pool's hand-offs cost more than they save: 1,000 headers in
    0.43 s against 0.57-0.64 s on 2 cores), else 16 at a time (a bucket, a cold cache, a network disk:
    1,000 cold headers in 0.70 s against 0.94-1.07 s one after another)."""
    done = []
    if not any(storage.is_url(s) for s in found):
        start = time.perf_counter()
        done = [_shard_index(s) for s in found[:32]]
        if time.perf_counter() - start <= _WARM_READ * len(done):
            return done + [_shard_index(s) for s in found[len(done):]]
    with ThreadPoolExecutor(16) as pool:
        return done + list(pool.map(_shard_index, found[len(done):]))


def _read_table(found, mixed_classes: bool) -> VideoTable:
    pairs = _shard_indexes(found)
    shards = [ix for ix, _ in pairs]
    if not mixed_classes:
        _check_class_space(shards)
    heads = _heads(pairs)
    items = [_items(ix, seg) for ix, seg in pairs]
    sources = np.cumsum([0] + [ix.num_videos for ix in shards])[:-1]

    def column(name, dtype):  # a per-video column, for each item
        if heads:  # a segment table's items: their videos' values
            return np.concatenate([np.asarray(ix.videos[name], dtype)[it["video"]] for ix, it in zip(shards, items)])
        values = itertools.chain.from_iterable(ix.videos[name] for ix in shards)
        return np.array(list(values), dtype) if dtype is object else np.fromiter(values, dtype)

    head_labels = np.concatenate([_head_labels(heads, it["labels"], len(it["video"])) for it in items]) \
        if heads else np.zeros((sum(len(it["video"]) for it in items), 0), np.int64)
    label = column("label", np.int64)
    if heads:  # the reader's one label: the first head's, when it is single-label
        label = head_labels[:, 0] if not heads[0][0].multi_label else np.full(len(label), -1, np.int64)
    # The table keeps compact arrays, not the headers' per-video lists (memory at 300k videos);
    # names stay Python strings: a fixed-width array would pad every name to the longest.
    video_frames = np.fromiter(itertools.chain.from_iterable(ix.videos["num_frames"] for ix in shards), np.int64)
    # A video's first row: the frames before it in the dataset less those of the shards before its own
    # (each shard's frames fill its frame table: read_frame_index checks it).
    first_rows = np.cumsum([0] + [ix.num_frame_rows for ix in shards[:-1]], dtype=np.int64)
    video_start = np.cumsum(video_frames) - video_frames - np.repeat(first_rows, [ix.num_videos for ix in shards])
    source = np.concatenate([it["video"] + s for it, s in zip(items, sources)]).astype(np.int64)
    return VideoTable(
        shards=tuple(dataclasses.replace(ix, videos={}) for ix in shards),
        shard=np.repeat(np.arange(len(shards), dtype=np.int64), [len(it["video"]) for it in items]),
        frame_start=video_start[source],
        num_frames=np.concatenate([it["num_frames"] for it in items]).astype(np.int64),
        height=column("height", np.int64), width=column("width", np.int64), label=label,
        filename=column("filename", object), fps=column("fps", np.float64),
        first=np.concatenate([it["first"] for it in items]).astype(np.int64),
        segment=np.concatenate([it["segment"] for it in items]).astype(np.int64),
        source=source, video_frames=video_frames[source], record_offset=column("record_offset", np.int64),
        record_length=column("record_length", np.int64),
        head_labels=head_labels, heads=heads)


def centred(table: VideoTable, config: ClipConfig) -> VideoTable:
    """Each item replaced by the clip span centred on its middle frame (AVA's keyframes: segments of one
    frame), so that every clip drawn from it is centred on that frame: the span starts at
    ``middle - (clip_len * stride) // 2``, as SlowFast's AVA loader centres its sequence
    (slowfast/datasets/ava_dataset.py, ``get_sequence``), moved inside the video where it would reach
    past an end (SlowFast repeats the end frame instead). A video shorter than the span is read whole and
    follows ``short_videos``. One stride, no target_fps, stride sampling."""
    if config.sampling != "stride" or config.strides[0] != config.strides[1] or config.target_fps is not None:
        raise ValueError(f"centre=True centres one clip span on each segment: it needs sampling='stride', one stride "
                         f"and no target_fps, got sampling={config.sampling!r}, stride={config.strides}, "
                         f"target_fps={config.target_fps!r}")
    span = int(clip_extent(config, config.strides[0], 0.0))
    middle = table.first + (table.num_frames - 1) // 2
    start = np.clip(middle - config.clip_len * config.strides[0] // 2, 0, np.maximum(table.video_frames - span, 0))
    return dataclasses.replace(table, first=start, num_frames=np.minimum(span, table.video_frames))


def labels_by_head(heads) -> bool:
    """Whether a table's ``heads`` give labels as a dict by head name: any heads but one single-label
    head (whose labels are ``labels [B]``, as a dataset's without heads)."""
    return bool(heads) and not (len(heads) == 1 and not heads[0][0].multi_label)


def label_heads(files, split: str | None = None) -> dict:
    """The label heads of a dataset written with several label columns or segments (empty for one
    plain label): name -> ``{"classes": [class name by id], "multi_label": bool}``, in the order
    :func:`clip_dataset`'s ``labels`` dict holds them, so a model can size its outputs
    (``len(classes)`` units each)."""
    return fmt.heads_json(h for h, _, _ in load_table(files, split).heads)


# ---------------------------------------------------------------- clip plans

_SHORT_DOES = {"repeat_last": "their clips repeat the last frame", "loop": "their clips loop back to the first frame",
               "skip": "they are skipped"}


def clip_extent(config: ClipConfig, stride: int, fps):
    """The stored frames a clip at ``stride`` reads from its first to its last, per rate in ``fps`` (an array
    or a number; the specification's extent): a video with fewer frames is short."""
    t, fps = config.clip_len, np.asarray(fps, np.float64)
    if config.target_fps and t > 1:
        span = np.maximum(1.0, np.float64(stride * t) / _f32(config.target_fps) * fps)  # S, as the plan has it
        return np.floor(span).astype(np.int64)
    return np.full(fps.shape, t if config.sampling == "segments" else (t - 1) * stride + 1, np.int64)


def _span_text(spec: ClipConfig, extent: np.ndarray, fps: np.ndarray) -> str:
    """The clip span of some videos in words: their extents and what makes them."""
    what = f"clip_len {spec.clip_len}, stride {spec.strides[1]}"
    if spec.target_fps:
        lo, hi = fps.min(), fps.max()
        what += f", target_fps {spec.target_fps:g} at " + (f"{lo:g} fps" if lo == hi else f"{lo:g} to {hi:g} fps")
    lo, hi = extent.min(), extent.max()
    return f"the clip span ({lo} frames: {what})" if lo == hi else f"their clip spans ({lo} to {hi} frames: {what})"


def usable_videos(table: VideoTable, spec: ClipConfig) -> np.ndarray:
    """Rows of the videos a clip can be taken from; checks sizes against the crop. A video is short when it
    holds fewer frames than its clips read at the largest stride (:func:`clip_extent`, at its own rate)."""
    empty = (table.num_frames < 1) | (np.minimum(table.height, table.width) < 1)
    if empty.any():
        log.warning("%d videos have no frames, or no frame size in their index, and are skipped (check them "
                    "with: dali-video-index inspect)", int(empty.sum()))
    if spec.target_fps is not None and (unknown := ~empty & (table.fps <= 0)).any():
        i = int(np.flatnonzero(unknown)[0])
        shard = fmt.shard_of(table.shards[table.shard[i]].path)
        raise ValueError(f"target_fps ({spec.target_fps:g}) needs each video's frame rate: video "
                         f"{str(table.filename[i])!r} in {shard} has none in its index ({int(unknown.sum())} "
                         f"videos); give their rate with: dali-video-index build --fps <rate> {shard}")
    # Per video, so a range of a video's frames could stand for its num_frames here.
    extent = clip_extent(spec, spec.strides[1], table.fps)
    short = ~empty & (table.num_frames < extent)
    if short.any():
        log.warning("%d of %d videos are shorter than %s; short_videos=%r: %s", int(short.sum()), len(table),
                    _span_text(spec, extent[short], table.fps[short]), spec.short_videos, _SHORT_DOES[spec.short_videos])
    if spec.short_videos == "skip" and short.any() and not (~empty & ~short).any():
        i = int(np.argmax(np.where(empty, np.iinfo(np.int64).min, table.num_frames - extent)))
        raise ValueError(f"every video is shorter than {_span_text(spec, extent[~empty], table.fps[~empty])}: the "
                         f"nearest to fit, {str(table.filename[i])!r}, has {table.num_frames[i]} frames of the "
                         f"{extent[i]} its clips read; pass a smaller clip_len or stride, or "
                         f"short_videos='repeat_last' or 'loop'")
    huge = (table.height > MAX_INT) | (table.width > MAX_INT)
    if huge.any():
        i = int(np.flatnonzero(huge)[0])
        raise FormatError(f"{table.shards[table.shard[i]].path}: video {str(table.filename[i])!r} is "
                          f"{table.width[i]}x{table.height[i]} in the index, beyond JPEG's {MAX_INT} pixels: corrupt "
                          f"index; rebuild it with: dali-video-index build")
    keep = ~empty & ~(short if spec.short_videos == "skip" else False)
    shorter = np.minimum(table.height, table.width)
    small = keep & (shorter < spec.crop_size) if not spec.resizes else np.zeros_like(keep)
    if small.any():
        i = int(np.flatnonzero(small)[0])
        raise ValueError(f"video {str(table.filename[i])!r} is {table.width[i]}x{table.height[i]}, smaller than "
                         f"crop_size ({spec.crop_size}); pass resize_shorter >= {spec.crop_size}, a crop_area "
                         f"or a smaller crop_size")
    return np.flatnonzero(keep)


# The clip plan. One specification, two implementations: ``plan_clip`` below (the reference, for
# tests and tools) and ``plan_clip`` in native/clip_reader.cc (the reader); a property test holds
# them equal. Integers modulo 2**64 where noted, and IEEE doubles with +, -, *, / and sqrt only (each
# correctly rounded, in the order written), so both agree bit for bit.
#
#   mix(x)      splitmix64's finaliser (mod 2**64); hash(h, v) = mix(h ^ mix(v))
#   uniform(h, m) = (h * m) >> 64, an integer in [0, m);   rdiv(a, b) = (2a + b) // (2b)  (a/b, halves up)
#   unit(h) = (h >> 11) * 2**-53, a double in [0, 1);   round(v) = int(v + 0.5) for v >= 0
#   exp(v): halve v until |v| <= 0.5 (k times), r = 1 + v*r/i for i = 12 down to 1 (from r = 1), square r
#       k times (libm's exp is not correctly rounded, so it could differ between machines)
#   permute(x, n, key): a 4-round Feistel network on 2*half bits (the least half with 4**half >= n;
#       round r: L, R = R, L ^ (hash(hash(key, r), R) & (2**half - 1))), repeated while the result >= n.
# Real-valued options travel as float32 (DALI's argument type): alo, ahi (crop_area), plo, phi
# (crop_aspect), llo, lhi (float32 of log(plo), log(phi), computed as _log below) and the colour jitter
# (b, c, s, hue).
#
# "Video" below means an item of the table: a whole video, or a segment of one (a dataset with a segment
# table), whose n frames are its own (frame numbers count from the item's first frame; the reader adds
# that frame's number in its video when it reads and reports them). The plan sees items alone.
#
# The clips form one endless sequence, epoch after epoch, whatever the number of readers: with n usable
# videos, K = clips_per_video and C = num_crops, an epoch holds N = n*K (training) or n*K*C (evaluation)
# clips. Reader r of R with batch size B reads positions initial_clip + k*B*R + r*B + i for its k-th
# batch, so any clip is found in O(1) from (seed, e, j), where
#   training:   clip p is item j = p % N of epoch e = p // N (an epoch's last batch runs into the next);
#   evaluation: with G = B*R > 0 (global_batch), an epoch (a pass) is P = ceil(N / G) * G slots: slot
#               q = p % P of epoch e = p // P is view j = q if q < N, else a padding clip (padding = 1)
#               of view j = q % N; every pass thus holds every view once and starts a global batch.
#               G = 0: P = N, no padding.
#   training:   video = permute(j // K, n, hash(hash(seed, 1), e)); draws = hash(hash(hash(seed, 2), e), j);
#               field f's random bits are hash(draws, f):
#               stride = slo + uniform(f5, shi - slo + 1); scale R = rlo + uniform(f6, rhi - rlo + 1) (0: none)
#               start = uniform(f1, room + 1) with room = max(frames - (T - 1) * stride - 1, 0)
#               window h x w: c x c, or (crop_area) for try t in 0..9: a = unit(hash(f7, t)),
#                   q = exp(llo + unit(hash(f8, t)) * (lhi - llo)), area = rh*rw * (alo + a * (ahi - alo)),
#                   w = round(sqrt(area * q)), h = round(sqrt(area / q)), the first with 1 <= h <= rh and
#                   1 <= w <= rw; if none, the centre of the whole frame clamped to the aspect range
#                   (rw/rh < plo: h = min(rh, max(1, round(rw / plo))); rw/rh > phi: likewise w from rh * phi).
#               y, x = uniform(f2, rh - h + 1), uniform(f3, rw - w + 1) (but centred for the fallback);
#               flip = uniform(f4, 2) (0 without flip); colour (b, c, s, hue) = lo + unit(f10..f13) * (hi - lo)
#               over [max(0, 1 - b), 1 + b], likewise c and s, and [-hue, hue]; (1, 1, 1, 0) without jitter.
#   evaluation: stride = slo, R = rlo (an evaluation view holds one value each: ClipConfig.evaluation);
#               video = j // (K*C), view = j // C % K, crop = j % C; draws as in training;
#               start = floor(view_start(view, room)), view_start(i, D) by test_views:
#                 "default": D // 2 for K = 1, else rdiv(i * D, K - 1) (D an integer);
#                 "slowfast": D * i / K;  "slowfast_offset" (and "mmaction" with target_fps): floor(D / 2) for
#                 K = 1, else i * floor(D / (K - 1));  "mmaction": floor(D / 2) for K = 1, else
#                 round_even(i * (D / (K - 1)))  (doubles, operation for operation as the references);
#               a c x c window, centred ((rh - c) // 2; "slowfast*": (rh - c + 1) // 2, likewise x), or for
#               C = 3 along the longer side L (for "default" the height when rh >= rw, else when rh > rw),
#               crop 0, 1, 2 at: 0, (L - c) // 2, L - c ("default"); 0, (L - c + 1) // 2, L - c ("slowfast*");
#               0, 2 * ((L - c) // 2), (L - c) // 2 ("mmaction": left, right, middle); no flip, no colour change.
# Frame t of T of a video of n stored frames (round_even: halves to even, as Python's round):
#   stride:     start + t*stride, taken modulo n ("loop") or capped at n - 1 ("repeat_last").
#   target_fps: span S = max(1, stride * T / target_fps * fps) (the video's fps; doubles, in this order),
#               D = max(n - S, 0); start = uniform(f1, floor(D) + 1) (training) or view_start(view, D);
#               end = start + S - 1; frame t = floor(t * ((end - start) / (T - 1)) + start) (numpy's
#               linspace: the last is floor(end); T = 1: floor(start)), then as for stride (SlowFast clamps:
#               "repeat_last").
#   segments:   h_t = hash(hash(draws, 9), t).  "slowfast": z = (n - 1) / T, a = round_even(z * t),
#               b = round_even(z * (t + 1)); training a + uniform(h_t, b - a + 1), evaluation (a + b) // 2.
#               "tsn": training: a = n // T; t * a + uniform(h_t, a) if a > 0, else round_even(t * (n / T));
#               evaluation: a = n / T, int(a * t + a / 2), or with twice_sample for odd views int(a * t).
#               Then, as for stride, modulo n ("loop") or capped ("repeat_last"): TSN's rule rounds past the
#               end of videos shorter than T / 2. The plan's start is frame 0, its stride 0.
# A clip's extent (clip_extent): the stored frames it reads from its first to its last, at stride s:
#   (T - 1) * s + 1; target_fps: floor(S) for T > 1 (from start 0 its last frame is floor(S - 1)), else 1;
#   segments: T. A video of n frames is short when n < extent at the largest stride (at its own fps with
#   target_fps): only then does a clip read past frame n - 1, which short_videos resolves.
# (rh, rw) is the frame after resizing its shorter side s to R: (rdiv(h*R, s), rdiv(w*R, s)); without
# resizing the frame itself. The window in stored pixels: h' = min(height, max(1, rdiv(h*s, R))), likewise
# w', y' = min(rdiv(y*s, R), height - h'), likewise x' (without resizing, as drawn).

_M64 = (1 << 64) - 1
SHORT_CODES = {"repeat_last": 0, "loop": 1, "skip": 2}
SAMPLING_CODES = {"stride": 0, "segments": 1}
RULE_CODES = {"slowfast": 0, "tsn": 1}
VIEW_CODES = {"default": 0, "slowfast": 1, "slowfast_offset": 2, "mmaction": 3}


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


def _unit(h: int) -> float:
    return (h >> 11) * (1.0 / (1 << 53))


def _round(v: float) -> int:
    return int(v + 0.5)


def _round_even(v: float) -> int:
    f = math.floor(v)
    return f + 1 if v - f > 0.5 or (v - f == 0.5 and f % 2) else f


def _exp(v: float) -> float:
    k = 0
    while abs(v) > 0.5:
        v, k = v / 2, k + 1
    r = 1.0
    for i in range(12, 0, -1):
        r = 1.0 + v * r / i
    for _ in range(k):
        r = r * r
    return r


def _log(v: float) -> float:
    """log(v) for v > 0 from + * / in a fixed order (v = m * 2**e exactly, then 2 atanh((m-1)/(m+1))): the
    same bits on every machine, which libm's log does not promise."""
    m, e = math.frexp(v)
    z = (m - 1) / (m + 1)
    z2, term, total = z * z, z, 0.0
    for i in range(40):
        total = total + term / (2 * i + 1)
        term = term * z2
    return 2 * total + e * 0.6931471805599453


def _f32(v: float) -> float:
    return float(np.float32(v))


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

    config: ClipConfig
    seed: int
    training: bool
    global_batch: int = 0  # evaluation: clips per global batch, to pad each pass to whole batches

    def items_per_epoch(self, num_videos: int) -> int:
        """Clips (training) or views (evaluation) in an epoch, padding not counted."""
        c = self.config
        return num_videos * c.clips_per_video * (1 if self.training else c.num_crops)

    def epoch_length(self, num_videos: int) -> int:
        """Positions in an epoch: in evaluation, padded to whole global batches."""
        items = self.items_per_epoch(num_videos)
        return items if self.training else _padded(items, self.global_batch)

    def steps_per_epoch(self, num_videos: int, global_batch_size: int) -> int:
        """Global batches that cover an epoch once (in training the last one runs into the next epoch; in
        evaluation its rest is padding)."""
        return -(-self.items_per_epoch(num_videos) // global_batch_size)

    def floats(self) -> list[float]:
        """alo, ahi, plo, phi, llo, lhi, b, c, s, hue, target_fps (0: off) as the plan uses them (float32)."""
        c = self.config
        area = c.crop_area or (1.0, 1.0)
        aspect = [_f32(v) for v in c.crop_aspect]
        return [_f32(v) for v in (*area, *aspect, *map(_log, aspect), *(c.color_jitter or (0, 0, 0, 0)),
                                  c.target_fps or 0.0)]

    def as_ints(self) -> list[int]:
        """The fields of ``struct Spec`` in clip_reader.cc, in order (doubles as their bits)."""
        c = self.config
        ints = [self.seed, int(self.training), c.clip_len, *c.strides, c.crop_size, *c.resize_range,
                SHORT_CODES[c.short_videos], c.clips_per_video, c.num_crops, int(c.flip),
                int(c.crop_area is not None), int(c.color_jitter is not None), self.global_batch,
                SAMPLING_CODES[c.sampling], RULE_CODES[c.segment_rule], int(c.twice_sample), VIEW_CODES[c.test_views]]
        return ints + [int(np.float64(v).view(np.int64)) for v in self.floats()]


def _padded(items: int, global_batch: int) -> int:
    """``items`` rounded up to whole global batches (0: not padded)."""
    return -(-items // global_batch) * global_batch if global_batch else items


@dataclass(frozen=True)
class ClipPlan:
    """What one clip is: a row of the videos planned over, its first frame and stride, its frame numbers,
    crop window (in stored pixels) and flip, colour factors (brightness, contrast, saturation, hue), and
    whether it only pads an evaluation pass to whole batches."""

    video: int
    start: int
    stride: int
    frames: np.ndarray
    window: tuple[int, int, int, int, int]  # y, x, h, w, flip
    color: tuple[float, float, float, float]
    padding: int = 0


def _train_window(plan: PlanSpec, rh: int, rw: int, draws: int) -> tuple[int, int, int, int]:
    """y, x, h, w of a training window in the (resized) rh x rw frame."""
    c = plan.config
    if c.crop_area is None:
        h = w = c.crop_size
    else:
        alo, ahi, plo, phi, llo, lhi = plan.floats()[:6]
        for t in range(10):
            area = rh * rw * (alo + _unit(_hash(_hash(draws, 7), t)) * (ahi - alo))
            q = _exp(llo + _unit(_hash(_hash(draws, 8), t)) * (lhi - llo))
            w, h = _round(math.sqrt(area * q)), _round(math.sqrt(area / q))
            if 1 <= h <= rh and 1 <= w <= rw:
                break
        else:
            h, w = rh, rw
            if rw / rh < plo:
                h = min(rh, max(1, _round(rw / plo)))
            elif rw / rh > phi:
                w = min(rw, max(1, _round(rh * phi)))
            return (rh - h) // 2, (rw - w) // 2, h, w
    return _uniform(_hash(draws, 2), rh - h + 1), _uniform(_hash(draws, 3), rw - w + 1), h, w


def _view_start(cfg: ClipConfig, view: int, room: float) -> float:
    k = cfg.clips_per_video
    if cfg.test_views == "slowfast":
        return room * view / k
    if cfg.test_views == "slowfast_offset" or (cfg.test_views == "mmaction" and cfg.target_fps):
        return math.floor(room / 2) if k == 1 else view * math.floor(room / (k - 1))
    if cfg.test_views == "mmaction":
        return math.floor(room / 2) if k == 1 else _round_even(view * (room / (k - 1)))
    return int(room) // 2 if k == 1 else _rdiv(view * int(room), k - 1)


def _segment_frame(cfg: ClipConfig, train: bool, view: int, draws: int, n: int, i: int) -> int:
    t, h = cfg.clip_len, _hash(_hash(draws, 9), i)
    if cfg.segment_rule == "slowfast":
        size = (n - 1) / t
        a, b = _round_even(size * i), _round_even(size * (i + 1))
        return a + _uniform(h, b - a + 1) if train else (a + b) // 2
    if train:
        a = n // t
        return i * a + _uniform(h, a) if a > 0 else _round_even(i * (n / t))
    a = n / t
    return int(a * i if cfg.twice_sample and view % 2 else a * i + a / 2)


def _frames(plan: PlanSpec, view: int, draws: int, start: int, stride: int, n: int, fps: float) -> np.ndarray:
    """The clip's stored frame numbers (see the specification)."""
    cfg, train, t = plan.config, plan.training, plan.config.clip_len
    if cfg.target_fps:
        span = max(1.0, stride * t / plan.floats()[10] * fps)
        room = max(n - span, 0.0)
        first = float(_uniform(_hash(draws, 1), int(room) + 1)) if train else _view_start(cfg, view, room)
        end = first + span - 1
        at = [first] if t == 1 else [i * ((end - first) / (t - 1)) + first for i in range(t - 1)] + [end]
        idx = np.floor(at).astype(np.int64)
    elif cfg.sampling == "segments":
        idx = np.array([_segment_frame(cfg, train, view, draws, n, i) for i in range(t)], np.int64)
    else:
        idx = start + np.arange(t) * stride
    return idx % n if cfg.short_videos == "loop" else np.minimum(idx, n - 1)


def plan_clip(plan: PlanSpec, num_frames, heights, widths, position: int, fps=None) -> ClipPlan:
    """Clip ``position`` of the endless clip sequence over the videos whose sizes (and frame rates, for
    ``target_fps``) are given."""
    cfg, train, c = plan.config, plan.training, plan.config.crop_size
    n, k, crops = len(num_frames), cfg.clips_per_video, cfg.num_crops
    epoch, j = divmod(position, plan.epoch_length(n))
    padding = int(j >= plan.items_per_epoch(n))
    j %= plan.items_per_epoch(n)
    seed = plan.seed & _M64
    if train:
        video, view, crop = permute(j // k, n, _hash(_hash(seed, 1), epoch)), 0, 0
    else:
        video, view, crop = j // (k * crops), j // crops % k, j % crops
    draws = _hash(_hash(_hash(seed, 2), epoch), j)
    frames, height, width = int(num_frames[video]), int(heights[video]), int(widths[video])
    (slo, shi), (rlo, rhi) = cfg.strides, cfg.resize_range
    stride = slo + _uniform(_hash(draws, 5), shi - slo + 1) if train else slo
    r = rlo + _uniform(_hash(draws, 6), rhi - rlo + 1) if train else rlo
    room = max(frames - (cfg.clip_len - 1) * stride - 1, 0)
    start = _uniform(_hash(draws, 1), room + 1) if train else int(_view_start(cfg, view, room))
    shorter = min(height, width)
    rh, rw = (_rdiv(height * r, shorter), _rdiv(width * r, shorter)) if r else (height, width)
    flip, color = 0, (1.0, 1.0, 1.0, 0.0)
    if train:
        y, x, h, w = _train_window(plan, rh, rw, draws)
        flip = _uniform(_hash(draws, 4), 2) if cfg.flip else 0
        if cfg.color_jitter is not None:
            b, ct, s, hue = plan.floats()[6:10]
            bounds = ((max(0.0, 1.0 - b), 1.0 + b), (max(0.0, 1.0 - ct), 1.0 + ct), (max(0.0, 1.0 - s), 1.0 + s),
                      (-hue, hue))
            color = tuple(lo + _unit(_hash(draws, 10 + i)) * (hi - lo) for i, (lo, hi) in enumerate(bounds))
    else:
        up = int(cfg.test_views in ("slowfast", "slowfast_offset"))
        h = w = c
        y, x = (rh - c + up) // 2, (rw - c + up) // 2
        if crops == 3:
            tall = rh >= rw if cfg.test_views == "default" else rh > rw
            room_xy = max(rh, rw) - c
            spots = (0, room_xy // 2 * 2, room_xy // 2) if cfg.test_views == "mmaction" else (
                0, (room_xy + up) // 2, room_xy)
            y, x = (spots[crop], x) if tall else (y, spots[crop])
    if r:
        h, w = min(height, max(1, _rdiv(h * shorter, r))), min(width, max(1, _rdiv(w * shorter, r)))
        y, x = min(_rdiv(y * shorter, r), height - h), min(_rdiv(x * shorter, r), width - w)
    idx = _frames(plan, view, draws, start, stride, frames, float(fps[video]) if fps is not None else 0.0)
    if cfg.sampling == "segments":
        stride = 0
    return ClipPlan(video, int(idx[0]), stride, idx, (y, x, h, w, flip), color, padding)


# ---------------------------------------------------------------- mixtures of datasets

@dataclass(frozen=True)
class Mixture:
    """Datasets mixed into one clip sequence: ``Mixture([(files, recipe, weight), ...])``, accepted
    wherever files are.

    Every ``sum(weights)`` clips of the sequence hold exactly ``weight`` clips of each dataset, in a
    fixed interleave (:func:`mix_slots`: no random draws); each dataset draws its clips by its own recipe
    (a preset's name, "default" (ClipConfig()'s clips) or a ClipConfig, checked here, with the loader's keywords
    overriding every recipe) and its own
    per-epoch order. labels: "offset" (dataset i's labels follow those of datasets 0..i-1, each counted
    as its largest label + 1; an unlabelled video, label < 0, stays so) or one dict per dataset mapping its labels to the shared ones (int32, as the
    reader carries them). Each recipe's flip_label_pairs are in its own dataset's labels and swap only
    that dataset's flipped clips (:func:`shared_flip_pairs`). The recipes
    must agree on clip_len, crop_size, dtype, mean and std (one output). An epoch of the mixture is the
    shortest whole number of periods in which every dataset completes an epoch of its own. In
    evaluation (``training=False``) the weights do not apply: a pass holds every view of dataset 0,
    then of dataset 1, ..., each once, then the rest of its last global batch as padding, as one
    dataset's pass does (:meth:`MixPlan.locate`).
    """

    parts: tuple
    labels: str | tuple = "offset"

    def __post_init__(self):
        parts = tuple(tuple(p) for p in self.parts) if isinstance(self.parts, (list, tuple)) else ()
        if not parts or any(len(p) != 3 or not _is_int(p[2]) or not 1 <= p[2] <= MAX_INT for p in parts):
            raise ValueError(f"Mixture takes [(files, recipe, weight), ...] with integer weights in [1, {MAX_INT}], "
                             f"got {self.parts!r}")
        for number, (_, recipe, _) in enumerate(parts):  # here, not when a loader first reads it
            try:
                check_recipe(recipe)
            except ValueError as e:
                raise ValueError(f"Mixture dataset {number}: {e}") from None
        labels = self.labels
        if not (labels == "offset" or (isinstance(labels, (list, tuple)) and len(labels) == len(parts)
                                       and all(isinstance(m, dict) for m in labels))):
            raise ValueError(f"Mixture labels must be 'offset' or one dict (label -> shared label) per dataset, "
                             f"got {labels!r}")
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "labels", labels if labels == "offset" else tuple(labels))


def mix_slots(weights) -> list[int]:
    """The dataset of each of the ``sum(weights)`` slots of one period (smooth weighted round robin: each
    step every dataset gains its weight and the one with the most, the first on ties, gives up the total),
    so every dataset holds exactly its weight of slots, spread evenly."""
    total, credit, slots = sum(weights), [0] * len(weights), []
    for _ in range(total):
        credit = [c + w for c, w in zip(credit, weights)]
        d = max(range(len(weights)), key=lambda i: (credit[i], -i))
        credit[d] -= total
        slots.append(d)
    return slots


@dataclass(frozen=True)
class MixPlan:
    """The plan of a :class:`Mixture`: one PlanSpec per dataset (each with its own seed), its usable
    videos' count (in the combined table, dataset after dataset) and weight.

    Training: position p is slot r = p % W of period p // W (W = sum of weights): clip q = (p // W) *
    weight + (earlier slots of the same dataset in the period) of dataset ``slots[r]``.
    Evaluation: a pass holds the N_0 views of dataset 0, then the N_1 of dataset 1, ... (N = their sum),
    padded to P = ceil(N / G) * G positions (G = global_batch > 0; 0: P = N): position p is q = p % P of
    its pass, view j = q % N of the datasets in turn (dataset d, its view j - N_0 - ... - N_{d-1}),
    padding when q >= N. The datasets' own plans carry global_batch 0."""

    parts: tuple
    counts: tuple
    weights: tuple
    flip_label_pairs: tuple = ()  # per dataset, its pairs in the shared label space (shared_flip_pairs)
    global_batch: int = 0  # evaluation: clips per global batch, to pad each pass to whole batches

    @property
    def config(self) -> ClipConfig:
        return self.parts[0].config

    @property
    def seed(self) -> int:
        return self.parts[0].seed

    @property
    def training(self) -> bool:
        return self.parts[0].training

    def floats(self) -> list[float]:
        return self.parts[0].floats()

    def locate(self, position: int) -> tuple[int, int, int]:
        """(dataset, its clip position, padding) of mixture position ``position``."""
        if self.training:
            slots = mix_slots(self.weights)
            period, r = divmod(position, len(slots))
            return slots[r], period * self.weights[slots[r]] + slots[:r].count(slots[r]), 0
        views = [p.items_per_epoch(n) for p, n in zip(self.parts, self.counts)]
        q = position % _padded(sum(views), self.global_batch)
        d, j = 0, q % sum(views)
        while j >= views[d]:
            j -= views[d]
            d += 1
        return d, j, int(q >= sum(views))

    def items_per_epoch(self, num_videos: int | None = None) -> int:
        """Clips in an epoch (whole periods of the schedule), or views in an evaluation pass (padding not counted)."""
        if not self.training:
            return sum(p.items_per_epoch(n) for p, n in zip(self.parts, self.counts))
        periods = max(-(-p.items_per_epoch(n) // w) for p, n, w in zip(self.parts, self.counts, self.weights))
        return periods * sum(self.weights)

    def steps_per_epoch(self, num_videos: int | None, global_batch_size: int) -> int:
        return -(-self.items_per_epoch() // global_batch_size)


def concat_tables(tables) -> VideoTable:
    """One table of several datasets' videos, dataset after dataset."""
    if any(t.heads != tables[0].heads for t in tables):
        raise ValueError("a Mixture's datasets must have the same label heads (or none): "
                         f"{[[h.name for h, _, _ in t.heads] for t in tables]}")
    first = np.cumsum([0] + [len(t.shards) for t in tables])[:-1]
    sources = np.cumsum([0] + [int(t.source.max(initial=-1)) + 1 for t in tables])[:-1]
    tables = [dataclasses.replace(t, source=t.source + s) for t, s in zip(tables, sources)]
    return VideoTable(shards=sum((t.shards for t in tables), ()), heads=tables[0].heads,
                      shard=np.concatenate([t.shard + f for t, f in zip(tables, first)]),
                      **{name: np.concatenate([getattr(t, name) for t in tables])
                         for name in _PER_VIDEO if name != "shard"})


def mix_plan(mixture: Mixture, configs, counts, *, seed: int, training: bool, global_batch: int = 0) -> MixPlan:
    """The MixPlan of ``mixture`` read with ``configs`` over ``counts`` usable videos per dataset; each
    dataset's seed is drawn from ``seed`` and its index, so the datasets' draws are independent."""
    parts = tuple(PlanSpec(c, seed=_hash(seed, i) >> 1, training=training) for i, c in enumerate(configs))
    return MixPlan(parts, tuple(int(n) for n in counts), tuple(int(w) for *_, w in mixture.parts),
                   global_batch=global_batch)


_mixtures: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # as _tables: one per process in use


def mixture_table(mixture: Mixture, tables, rows=None) -> VideoTable:
    """One table of a Mixture's datasets (of their ``rows``, default all), labels in the shared space;
    the same table for every reader of the same mixture in this process."""
    rows = [np.arange(len(t)) for t in tables] if rows is None else rows
    key = (repr(mixture), tuple(t.digest for t in tables), tuple(hashlib.sha256(r.tobytes()).digest() for r in rows))
    with _tables_lock:
        table = _mixtures.get(key)
    if table is None:
        maps = shared_labels(mixture, tables)
        table = concat_tables([dataclasses.replace(t, label=np.array([m(x) for x in t.label], np.int64))
                               for t, m in zip([t.take(r) for t, r in zip(tables, rows)], maps)])
        with _tables_lock:
            table = _mixtures.setdefault(key, table)
    return table


def shared_labels(mixture: Mixture, tables) -> list:
    """Per dataset, a function from its labels to the mixture's shared labels, each checked to fit the
    reader's int32 labels."""
    def checked(i, label, shared):
        if not _is_int(shared) or not -2**31 <= shared < 2**31:
            raise ValueError(f"Mixture labels: dataset {i} ({mixture.parts[i][0]}) label {int(label)} maps to shared "
                             f"label {shared!r}, not an integer in the reader's int32 range [-2**31, 2**31); "
                             f"map it to a smaller integer")
        return int(shared)

    if mixture.labels != "offset":
        def lookup(mapping, i):
            def shared(label):
                if int(label) not in mapping:
                    raise ValueError(f"Mixture labels: dataset {i} ({mixture.parts[i][0]}) has label {int(label)}, "
                                     f"which its mapping lacks; map every label of the dataset")
                return checked(i, label, mapping[int(label)])
            return shared
        return [lookup(m, i) for i, m in enumerate(mixture.labels)]
    offsets = np.cumsum([0] + [int(t.label.max(initial=-1)) + 1 for t in tables])[:-1]
    # An unlabelled video (a negative label, as the index gives one without a label) stays unlabelled:
    # shifted, -1 would become the previous dataset's last class.
    return [lambda label, i=i, o=int(o): checked(i, label, int(label) + o if int(label) >= 0 else int(label))
            for i, o in enumerate(offsets)]


def shared_flip_pairs(mixture: Mixture, tables, configs) -> tuple:
    """Per dataset, its recipe's flip_label_pairs (in the dataset's own labels) in the shared label space:
    the reader swaps a flipped clip's label by its own dataset's pairs only."""
    maps, per_dataset = shared_labels(mixture, tables), []
    for i, (table, config, shared) in enumerate(zip(tables, configs, maps)):
        largest = int(table.label.max(initial=-1))
        for label in {v for pair in config.flip_label_pairs for v in pair}:
            unmapped = (label not in mixture.labels[i] if mixture.labels != "offset" else label > largest)
            if unmapped:
                raise ValueError(
                    f"Mixture labels: dataset {i} ({mixture.parts[i][0]}) has flip_label_pairs label {label}, which "
                    + ("its mapping lacks; map it too or drop the pair" if mixture.labels != "offset" else
                       f"is beyond its largest label {largest} and would become another dataset's label with "
                       f"labels='offset'; drop the pair or pass labels as dicts"))
        pairs = tuple((shared(a), shared(b)) for a, b in config.flip_label_pairs)
        try:
            per_dataset.append(ClipConfig(flip_label_pairs=pairs).flip_label_pairs)
        except ValueError as e:  # two pairs that the mapping joins
            raise ValueError(f"Mixture labels: dataset {i} ({mixture.parts[i][0]}): in the shared labels, {e}") from None
    return tuple(per_dataset)
