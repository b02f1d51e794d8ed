"""Build, verify and inspect the indexes of TFRecord video shards."""
from __future__ import annotations

import collections
import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import format as fmt
from . import storage
from .format import FormatError
from .proto import walk


@dataclass(frozen=True)
class VideoMeta:
    label: int
    filename: str
    class_text: str
    height: int
    width: int
    fps: float = 0.0  # 0.0: unknown


class ShardIndex:
    """Accumulates the ``.idx`` lines and the frame index of one shard, record by record."""

    def __init__(self, layout: str, frames_key: str):
        self.layout, self.frames_key = layout, frames_key
        self.records: list[tuple[int, int]] = []
        self.videos = {c: [] for c in fmt.VIDEO_COLUMNS}
        self.rows: list[np.ndarray] = []

    def add(self, offset: int, data, spans, meta: VideoMeta | None) -> None:
        """Record at byte ``offset`` with payload ``data``; ``spans`` locate its frames in ``data``."""
        size = len(data) + fmt.RECORD_OVERHEAD
        self.records.append((offset, size))
        if meta is None:
            return
        rows = np.empty(len(spans), dtype=fmt.FRAME_ROW)
        view = memoryview(data)
        for i, (start, length) in enumerate(spans):
            rows[i] = (offset + 12 + start, length, fmt.crc32c(view[start:start + length]))
        self.rows.append(rows)
        values = dict(record=len(self.records) - 1, record_offset=offset, record_length=size,
                      num_frames=len(spans), **meta.__dict__)
        for column, value in values.items():
            self.videos[column].append(value)

    def idx_bytes(self) -> bytes:
        return fmt.format_idx(self.records)

    def fidx_bytes(self, shard_size: int, notes: dict | None = None) -> bytes:
        rows = np.concatenate(self.rows) if self.rows else np.empty(0, fmt.FRAME_ROW)
        return fmt.encode_frame_index(shard_size=shard_size, num_records=len(self.records),
                                      layout=self.layout, frames_key=self.frames_key,
                                      videos=self.videos, rows=rows, notes=notes)


def _first(features: dict, keys, kind: str):
    for key in keys:
        if key in features and features[key][0] == kind and features[key][1]:
            return features[key][1][0]
    return None


def describe_record(data, frames_key: str | None = None, fps: float | None = None):
    """Find the frames of one record in any supported layout: ``(layout, key, spans, meta)``.

    Returns ``(None, None, [], None)`` for a record with no frames: indexed, but holds no video.
    ``fps`` is the frame rate of videos whose record has no ``fps`` feature.
    """
    features, lists = walk(data)
    layout, key, spans = None, None, []
    for key in (frames_key,) if frames_key else (fmt.FRAMES,):
        if key in features and features[key][0] == "bytes":
            layout, spans = "example", features[key][1]
    if layout is None and not frames_key:
        numbered = sorted((int(m[1]), k) for k in features if (m := fmt.FRAME_FEATURE_RE.match(k)))
        if numbered:
            layout, key = "frame_features", "frames/"
            spans = [features[k][1][0] for _, k in numbered if features[k][1]]
    for k in (frames_key,) if frames_key else fmt.SEQUENCE_FRAME_KEYS:
        if layout is None and k in lists:
            layout, key = "sequence_example", k
            spans = [f[1][0] for f in lists[k] if f[0] == "bytes" and f[1]]
    if layout is None:
        return None, None, [], None

    def text(keys):
        span = _first(features, keys, "bytes")
        return bytes(memoryview(data)[span[0]:span[0] + span[1]]).decode("utf-8", "surrogateescape") if span else ""

    height, width = _first(features, (fmt.HEIGHT,), "int64"), _first(features, (fmt.WIDTH,), "int64")
    if (height is None or width is None) and spans:
        height, width = fmt.jpeg_size(memoryview(data)[spans[0][0]:spans[0][0] + spans[0][1]])
    label = _first(features, fmt.LABEL_KEYS, "int64")
    meta = VideoMeta(label=-1 if label is None else int(label), filename=text(fmt.FILENAME_KEYS),
                     class_text=text(fmt.CLASS_TEXT_KEYS), height=int(height or 0), width=int(width or 0),
                     fps=float(_first(features, (fmt.FPS,), "float") or fps or 0.0))
    return layout, key, spans, meta


def index_shard(shard, frames_key: str | None = None, fps: float | None = None, check=None) -> ShardIndex:
    """Read a whole shard (checking every CRC) and build its indexes in memory (``fps``: the frame rate
    of videos whose records hold none). ``check(offset, data, spans, meta)`` is called on each record
    that holds a video, in the same pass."""
    index = None
    for number, (offset, _size, data) in enumerate(fmt.scan_records(shard)):
        try:
            layout, key, spans, meta = describe_record(data, frames_key, fps)
        except FormatError as e:
            raise FormatError(f"{shard}: record {number} at byte {offset}: {e}") from None
        if index is None:
            index = ShardIndex(layout or "example", key or fmt.FRAMES)
        elif layout and layout != index.layout:
            raise FormatError(f"{shard}: record {number} at byte {offset} stores frames as {layout}, "
                              f"earlier records as {index.layout}; one layout per shard")
        index.add(offset, data, spans, meta)
        if check and meta:
            check(offset, data, spans, meta)
    return index or ShardIndex("example", fmt.FRAMES)


def build(shard, frames_key: str | None = None, fps: float | None = None) -> ShardIndex:
    """Write ``SHARD.idx`` and ``SHARD.fidx`` for an existing TFRecord file (``fps``: the frame rate of
    videos whose records hold no ``fps`` feature). The notes of a frame index already there that
    describes this shard (the writer's) are kept."""
    if fps is not None and not 0 < fps <= 1e4:
        raise ValueError(f"fps must be a frame rate in (0, 10000], got {fps!r}")
    index = index_shard(shard, frames_key, fps)
    if not index.videos["record"]:
        raise FormatError(f"{shard}: no record holds video frames (looked for a bytes feature "
                          f"{frames_key or fmt.FRAMES!r}, features 'frames/NNNN', or a feature list "
                          f"{list(fmt.SEQUENCE_FRAME_KEYS)}); pass --frames-key")
    size = storage.size(shard)
    fmt.atomic_write(fmt.idx_path(shard), index.idx_bytes())
    fmt.atomic_write(fmt.fidx_path(shard), index.fidx_bytes(size, _kept_notes(shard, index, size)))
    return index


def _kept_notes(shard, index: ShardIndex, size: int) -> dict:
    """The notes of the frame index being replaced (the writer's: what the shard was written from, the
    videos it skipped), when that index, of any version, described this very shard: the same size,
    records and videos. A rebuild (after an upgrade, say) thus leaves the writer able to resume its
    own dataset."""
    try:
        old, _ = fmt.read_header(fmt.fidx_path(shard))
        videos = old["videos"]
        same = old["shard_size"] == size and old["num_records"] == len(index.records) and all(
            videos[c] == index.videos[c] for c in ("record", "record_offset", "num_frames", "filename", "label"))
    except (FormatError, OSError, KeyError, TypeError):  # missing or unreadable: nothing to keep
        return {}
    return (old.get("notes") or {}) if same else {}


def verify(shard) -> int:
    """Check a shard and both its indexes against each other; return its record count.

    Raises FormatError naming the file, record number and byte offset of the first problem.
    """
    for path in (fmt.idx_path(shard), fmt.fidx_path(shard)):
        if not storage.exists(path):
            raise FormatError(f"{path}: missing; build it with: dali-video-index build {shard}")
    stored = fmt.read_frame_index(fmt.fidx_path(shard))
    fmt.check_fresh(shard, stored)
    if "segments" in stored.notes:  # written with a segment table: it must be there and fit the index
        if not storage.exists(fmt.segments_path(shard)):
            raise FormatError(f"{fmt.segments_path(shard)}: missing (the frame index says the shard was written with "
                              f"{stored.notes['segments']} segments); write the dataset again")
        fmt.read_segments(fmt.segments_path(shard), stored)
    problems = []  # each record's first frame that is no JPEG of its video's size: checked in the one read
    fresh = index_shard(shard, None if stored.layout == "frame_features" else stored.frames_key,
                        check=lambda *record: problems.append(_jpeg_problem(shard, *record)))
    lines = fmt.read_idx(fmt.idx_path(shard))
    for number, (want, got) in enumerate(zip(fresh.records, lines)):
        if want != got:
            raise FormatError(f"{fmt.idx_path(shard)}: line {number + 1} says {got}, record {number} "
                              f"is at byte {want[0]} with size {want[1]}")
    if len(lines) != len(fresh.records):
        raise FormatError(f"{fmt.idx_path(shard)}: {len(lines)} lines for {len(fresh.records)} records")
    if stored.num_records != len(fresh.records):
        raise FormatError(f"{stored.path}: says {stored.num_records} records, the shard has {len(fresh.records)}")
    for column in fmt.VIDEO_COLUMNS:
        for video, (want, got) in enumerate(zip(fresh.videos[column], stored.videos[column])):
            # A rate the record lacks came from `build --fps`: the shard cannot say it, nor contradict it.
            if want != got and not (column == "fps" and want == 0.0):
                raise FormatError(f"{stored.path}: video {video} (record {fresh.videos['record'][video]}) "
                                  f"{column} is {got!r}, the shard says {want!r}")
    if stored.num_videos != len(fresh.videos["record"]):
        raise FormatError(f"{stored.path}: {stored.num_videos} videos, the shard has {len(fresh.videos['record'])}")
    table = stored.read_rows(0, stored.num_frame_rows)
    if fmt.crc32c(table.tobytes()) != stored.frame_table_crc:
        raise FormatError(f"{stored.path}: frame table fails its CRC")
    rows = np.concatenate(fresh.rows) if fresh.rows else np.empty(0, fmt.FRAME_ROW)
    bad = np.flatnonzero(rows != table)
    if len(bad):
        video = int(np.searchsorted(np.cumsum(stored.videos["num_frames"]), bad[0], side="right"))
        raise FormatError(f"{stored.path}: frame row {bad[0]} (video {video}, record "
                          f"{stored.videos['record'][video]}) is {table[bad[0]]}, the shard has "
                          f"{rows[bad[0]]} (at byte {rows[bad[0]]['offset']})")
    if problem := next(filter(None, problems), None):  # raised after the index checks, whose rows it trusts
        raise FormatError(problem)
    return len(fresh.records)


def _jpeg_problem(shard, offset: int, data, spans, meta: VideoMeta) -> str:
    """The error of the record's first frame that is no JPEG of its video's size (as the loader checks
    it before decoding), or ""."""
    view = memoryview(data)
    for frame, (start, length) in enumerate(spans):
        if problem := fmt.jpeg_problem(view[start:start + length], meta.height, meta.width):
            return f"{shard}: video {meta.filename!r} frame {frame} at byte {offset + 12 + start}: {problem}"
    return ""


def expand(paths) -> list[Path | str]:
    """Shard paths from files, globs and folders (a folder means the ``*.tfrecord`` files in it),
    local or ``s3://``/``gs://`` URLs (kept as ``str``)."""
    out = []
    for given in map(str, paths):  # named in errors as the user wrote it
        p = storage.check_path(given)
        if storage.is_url(p):
            storage.check_bucket(p)
        if storage.isdir(p):
            found = storage.glob(p, f"*{fmt.SHARD_SUFFIX}")
        elif any(c in str(p) for c in "*?["):
            found = storage.glob_paths(p) if storage.is_url(p) else sorted(Path(x) for x in glob.glob(str(p)))
        elif storage.exists(p):
            found = [p]
        else:
            raise FileNotFoundError(f"{given}: no such file or folder")
        if not found:
            raise FileNotFoundError(f"no TFRecord shards match {given!r}")
        out.extend(found)
    return out


def _stats(values) -> str:
    values = np.asarray(values)
    return f"{values.min()}/{int(np.median(values))}/{values.max()}" if len(values) else "-"


def inspect(paths) -> str:
    """A readable table per shard and for the whole dataset, from the frame indexes (each checked to be
    built for its shard as it is now: a stale one raises FormatError)."""
    indexes = []
    for shard in expand(paths):
        if not storage.exists(fmt.fidx_path(shard)):
            raise FormatError(f"{fmt.fidx_path(shard)}: missing; build it with: dali-video-index build {shard}")
        index = fmt.read_frame_index(fmt.fidx_path(shard))
        fmt.check_fresh(shard, index)  # as verify and the loader: an index of another shard is no description
        indexes.append((shard, index))
    lines = [f"{'shard':40} {'videos':>7} {'frames':>8} {'frames/video min/med/max':>25} "
             f"{'KB/frame':>9} resolutions"]
    sizes = {shard: int(ix.read_rows(0, ix.num_frame_rows)["length"].sum()) for shard, ix in indexes}
    for shard, ix in indexes + [("TOTAL", None)]:
        if ix is None:
            videos = {c: [v for _, i in indexes for v in i.videos[c]] for c in fmt.VIDEO_COLUMNS}
            nbytes = sum(sizes.values())
        else:
            videos, nbytes = ix.videos, sizes[shard]
        frames = sum(videos["num_frames"])
        res = {}
        for h, w in zip(videos["height"], videos["width"]):
            res[f"{h}x{w}"] = res.get(f"{h}x{w}", 0) + 1
        lines.append(f"{storage.name(shard):40} {len(videos['record']):>7} {frames:>8} "
                     f"{_stats(videos['num_frames']):>25} {nbytes / max(frames, 1) / 1024:>9.1f} "
                     + ", ".join(f"{k} ({v})" for k, v in sorted(res.items())))
    tables = [fmt.read_segments(fmt.segments_path(shard), ix) for shard, ix in indexes if "segments" in ix.notes]
    if tables:  # label heads: one histogram each, over the items (segments, or videos)
        heads = ", ".join(map(str, tables[0].heads))
        lines += ["", f"segments: {sum(t.num_segments for t in tables)} in {len(tables)} shards; label heads: {heads}"]
        for h in tables[0].heads:
            cells = [ids for t in tables for ids in t.segments["labels"][h.name]]
            counts = collections.Counter(i for ids in cells for i in ids)
            lines += ["", f"{h.name} histogram (class id, class, segments):"]
            lines += [f"  {i:>5} {text[:40]:40} {counts[i]:>7}" for i, text in enumerate(h.classes)]
            if not all(cells):
                lines.append(f"  {'':>5} {'(no label)':40} {sum(not ids for ids in cells):>7}")
        return "\n".join(lines)
    labels = collections.Counter(zip(videos["label"], videos["class_text"]))
    lines += ["", "label histogram (label, class, videos):"]
    lines += [f"  {label:>5} {text[:40]:40} {n:>7}" for (label, text), n in sorted(labels.items())]
    return "\n".join(lines)
