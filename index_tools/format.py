"""Every on-disk fact of dali-video: TFRecord framing, feature keys, shard names and index files.

This module is the bottom layer: it imports nothing else from the project.

Files next to a shard ``NAME.tfrecord``:
  ``NAME.tfrecord.idx``   DALI's ``tfrecord2idx`` index: one ``"<offset> <record size>\\n"`` line per record.
  ``NAME.tfrecord.fidx``  the frame index (below): where every JPEG of every video lies in the shard.

Frame index, version 2 (little-endian; version 1, the same without the ``fps`` column, still reads):
  bytes 0-7   magic ``b"DVFIDX\\x00\\x01"``
  bytes 8-11  u32 length H of the JSON header that follows (UTF-8)
  H bytes     JSON header: format version, shard size and record count (to detect a stale index),
              the frame layout, per-video columns (filename, label, fps (0.0: unknown), ...), the frame table's offset,
              row count and CRC32C
  padding to a multiple of 16, then the frame table: one 16-byte row per frame, video after video,
  in frame order: u64 absolute offset of the JPEG in the shard, u32 its length, u32 its CRC32C.
A reader loads the header and reads only the rows of the frames it needs.

  ``NAME.tfrecord.segments``  the segment table (below), only in datasets with segments or label
                              heads beyond one single-label class.

Segment table, version 1 (UTF-8 JSON, one object): ``version``, ``shard_size`` (to detect a stale
table, as the frame index does), ``heads`` (one ``{"name", "classes": [class name per id],
"multi_label"}`` per label head) and ``segments``: columns of one entry per segment, ``video`` (the
video's number among the frame index's videos), ``first`` (its first stored frame), ``count`` (its
frames: ``first`` .. ``first + count - 1``), ``id`` (the row of the annotation it came from, 0-based,
header excluded) and ``labels`` (per head, each segment's class ids: a list, one id for a
single-label head). A whole-video dataset with label heads has one segment per video covering it.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import crc32c as _crc32c
import numpy as np

from . import storage

FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # version 1: no fps column (read as 0.0, unknown)
SHARD_SUFFIX = ".tfrecord"
IDX_SUFFIX = ".idx"
FIDX_SUFFIX = ".fidx"
FIDX_MAGIC = b"DVFIDX\x00\x01"
SEGMENTS_SUFFIX = ".segments"
SEGMENTS_VERSION = 1
SEGMENT_COLUMNS = ("video", "first", "count", "id", "labels")
MANIFEST_SUFFIX = ".manifest.json"
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")

# Feature keys of the dali-video layout (one tf.train.Example per video).
FRAMES = "frames"
NUM_FRAMES = "num_frames"
HEIGHT = "height"
WIDTH = "width"
CHANNELS = "channels"
CLASS_LABEL = "class_label"
CLASS_TEXT = "class_text"
FILENAME = "filename"
FPS = "fps"  # float: frames per second of the stored frames
# Layouts written by other tools: frames as one feature each (``frames/0000``), or a
# tf.train.SequenceExample with one frame per element of a feature list (DeepMind DMVR).
FRAME_FEATURE_RE = re.compile(r"^frames/(\d+)$")
SEQUENCE_FRAME_KEYS = ("image/encoded", "frames")
LABEL_KEYS = (CLASS_LABEL, "label", "clip/label/index", "image/class/label")
FILENAME_KEYS = (FILENAME, "video_id", "clip/id", "filename/raw")
CLASS_TEXT_KEYS = (CLASS_TEXT, "clip/label/text", "label/text")
LAYOUTS = ("example", "frame_features", "sequence_example")

FRAME_ROW = np.dtype([("offset", "<u8"), ("length", "<u4"), ("crc", "<u4")])
_HEADER_KEYS = ("version", "shard_size", "num_records", "layout", "frames_key", "frame_table_offset",
                "num_frame_rows", "frame_table_crc", "videos")
VIDEO_COLUMNS = ("record", "record_offset", "record_length", "num_frames", "height", "width",
                 "label", "filename", "class_text", "fps")
_HEAD_READ = 1 << 16  # bytes of a frame index read first: its header, in one request mostly
MAX_RECORD_BYTES = 1 << 34  # 16 GiB: a larger length field is corruption, never an allocation


class FormatError(ValueError):
    """A file does not hold what its format promises; the message names file, record and offset."""


def crc32c(data) -> int:
    return _crc32c.crc32c(data)


def masked_crc(data) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------- shard names

def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
    m = _SHARD_RE.match(name)
    return (m["split"], int(m["index"]), int(m["count"])) if m else None


# Words that name a split in shard names other tools write (the writer's own names carry any split).
SPLIT_WORDS = ("train", "training", "val", "valid", "validation", "eval", "test", "testing", "dev")


def split_of(name: str) -> str | None:
    """The split a shard's file name names, or None: the writer's ``SPLIT-00000-of-00008.tfrecord``,
    else the first word of the name (words split at ``-``, ``_`` and ``.``) in :data:`SPLIT_WORDS`:
    ``train.tfrecord``, ``train-3.tfrecord``, ``train_003.tfrecord``, ``kinetics-train-00001.tfrecord``."""
    if parsed := parse_shard_name(name):
        return parsed[0]
    stem = name[: -len(SHARD_SUFFIX)] if name.endswith(SHARD_SUFFIX) else name
    return next((w for w in re.split(r"[-_.]", stem) if w.lower() in SPLIT_WORDS), None)


def idx_path(shard) -> Path | str:
    return storage.check_path(str(shard) + IDX_SUFFIX)


def fidx_path(shard) -> Path | str:
    return storage.check_path(str(shard) + FIDX_SUFFIX)


def segments_path(shard) -> Path | str:
    return storage.check_path(str(shard) + SEGMENTS_SUFFIX)


def shard_of(fidx) -> str:
    """The shard of a frame index path (``NAME.tfrecord.fidx`` -> ``NAME.tfrecord``)."""
    s = str(fidx)
    for suffix in (FIDX_SUFFIX, SEGMENTS_SUFFIX):
        if s.endswith(suffix):
            return s[: -len(suffix)]
    return s


def manifest_path(folder, split: str) -> Path | str:
    return storage.join(folder, f"{split}{MANIFEST_SUFFIX}")


atomic_write = storage.write  # the file or object appears only complete


def manifest_classes_json(classes: dict) -> dict:
    """A manifest's ``classes``: class id (a string, as JSON keys are) -> class text, in id order. One
    form for every input: ids may have gaps (a split of some classes) or be any integers (a CSV's)."""
    return {str(k): v for k, v in sorted(classes.items())}


def manifest_classes(manifest: dict) -> dict[int, str]:
    """Class id -> class text of a manifest read from JSON; manifests of earlier releases hold a list
    (ids 0..n-1) where their ids had no gaps."""
    classes = manifest.get("classes") or {}
    return {int(k): v for k, v in (enumerate(classes) if isinstance(classes, list) else classes.items())}


# ---------------------------------------------------------------- TFRecord framing

def encode_record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


RECORD_OVERHEAD = 16  # u64 length, u32 length CRC, ..., u32 data CRC


def gunzip_command(name: str) -> str:
    """A shell command that decompresses the file ``name`` into an uncompressed ``.tfrecord`` without
    truncating it first (``gunzip -c X > X`` would empty X before reading it)."""
    plain = name[:-3] if name.endswith(".gz") else name
    plain = plain if plain.endswith(SHARD_SUFFIX) else plain + SHARD_SUFFIX
    if plain != name:
        return f"gunzip -c {name} > {plain}"
    return f"gunzip -c {name} > {name}.plain && mv {name}.plain {name}"


def check_not_gzip(path, head: bytes) -> None:
    if head[:2] == b"\x1f\x8b":
        raise FormatError(f"{path}: the file is GZIP-compressed; DALI and dali-video read only "
                          f"uncompressed TFRecords. Decompress it ({gunzip_command(storage.name(path))}) "
                          f"and index that.")


def scan_records(path, *, check_data_crc: bool = True):
    """Yield ``(offset, size, data)`` for every record of a TFRecord file; ``size`` counts the framing.

    Raises FormatError naming the file, the record number and the byte offset of the first problem.
    """
    file_size = storage.size(path)
    with storage.open_read(path) as f:
        check_not_gzip(path, f.read(2))
        f.seek(0)
        offset, number = 0, 0
        while offset < file_size:
            where = f"{path}: record {number} at byte {offset}"
            head = f.read(12)
            if len(head) < 12:
                raise FormatError(f"{where}: truncated header ({len(head)} of 12 bytes)")
            (length,) = struct.unpack_from("<Q", head)
            if struct.unpack_from("<I", head, 8)[0] != masked_crc(head[:8]):
                raise FormatError(f"{where}: length field fails its CRC (corrupt length or not a TFRecord file)")
            if length > min(MAX_RECORD_BYTES, file_size - offset - RECORD_OVERHEAD):
                raise FormatError(f"{where}: record length {length} runs past the end of the file "
                                  f"({file_size} bytes): the file is truncated")
            data = f.read(length)
            footer = f.read(4)
            if check_data_crc and struct.unpack("<I", footer)[0] != masked_crc(data):
                raise FormatError(f"{where}: data fails its CRC (corrupt record)")
            yield offset, length + RECORD_OVERHEAD, data
            offset += length + RECORD_OVERHEAD
            number += 1


# ---------------------------------------------------------------- DALI .idx

def format_idx(entries) -> bytes:
    """DALI's tfrecord2idx text: ``"<offset> <size>\\n"`` per record."""
    return "".join(f"{offset} {size}\n" for offset, size in entries).encode()


_IDX_LINES = re.compile(rb"(?:\d{1,18} \d{1,18}\n)*")  # "<offset> <size>\n", numbers within int64


def read_idx(path) -> list[tuple[int, int]]:
    numbers = read_idx_array(path).tolist()
    return [tuple(entry) for entry in numbers]


def read_idx_array(path) -> np.ndarray:
    """DALI's .idx as ``[records, 2]`` int64 (offset, size), or FormatError naming the first bad line."""
    text = storage.read(path)
    # At once when every line is as DALI's tfrecord2idx writes it (300k lines a dataset at start-up); else
    # line by line, to name the first bad one.
    if _IDX_LINES.fullmatch(text):
        return np.fromstring(text, dtype=np.int64, sep=" ").reshape(-1, 2)
    lines = text.splitlines()
    for number, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() and len(p) < 19 for p in parts):  # 19 digits: beyond int64
            raise FormatError(f"{path}: line {number + 1} is not '<offset> <size>': {line[:80]!r}")
    return np.array([[int(p) for p in line.split()] for line in lines], np.int64).reshape(-1, 2)


# ---------------------------------------------------------------- frame index

@dataclass(frozen=True)
class FrameIndex:
    """The header of a ``.fidx`` file; frame rows are read on demand with :meth:`read_rows`."""

    path: Path | str  # a local path, or an s3:// or gs:// URL
    shard_size: int
    num_records: int
    layout: str
    frames_key: str
    frame_table_offset: int
    num_frame_rows: int
    frame_table_crc: int
    videos: dict  # column name -> list, one entry per video (VIDEO_COLUMNS)
    notes: dict  # free-form notes of the tool that wrote the shard (the writer's failures, say)

    @property
    def num_videos(self) -> int:
        return len(self.videos["record"])

    def frame_starts(self) -> np.ndarray:
        """Row of each video's first frame in the frame table."""
        counts = np.asarray(self.videos["num_frames"], dtype=np.int64)
        return np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts

    def read_rows(self, first: int, count: int, fd: int | None = None) -> np.ndarray:
        """Rows ``first .. first+count-1`` of the frame table (one read; ``fd``: this file, open)."""
        if first < 0 or count < 0 or first + count > self.num_frame_rows:
            raise FormatError(f"{self.path}: frame rows {first}..{first + count} outside the table "
                              f"of {self.num_frame_rows} rows")
        start = self.frame_table_offset + first * FRAME_ROW.itemsize
        size = count * FRAME_ROW.itemsize
        data = storage.read(self.path, start, size) if fd is None else os.pread(fd, size, start)
        if len(data) != size:
            raise FormatError(f"{self.path}: frame table truncated (wanted {size} bytes at {start})")
        return np.frombuffer(data, dtype=FRAME_ROW)


def encode_frame_index(*, shard_size: int, num_records: int, layout: str, frames_key: str,
                       videos: dict, rows: np.ndarray, notes: dict | None = None) -> bytes:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    missing = [c for c in VIDEO_COLUMNS if c not in videos]
    if missing:
        raise ValueError(f"video columns missing: {missing}")
    rows = np.ascontiguousarray(rows, dtype=FRAME_ROW)
    if int(sum(videos["num_frames"])) != len(rows):
        raise ValueError(f"{len(rows)} frame rows for {sum(videos['num_frames'])} frames")
    table = rows.tobytes()
    header = {"version": FORMAT_VERSION, "shard_size": shard_size, "num_records": num_records,
              "layout": layout, "frames_key": frames_key, "frame_table_offset": 0, "num_frame_rows": len(rows),
              "frame_table_crc": crc32c(table), "videos": {c: list(videos[c]) for c in VIDEO_COLUMNS},
              "notes": notes or {}}
    # The offset depends on the header's own length: settle it with a fixed-width placeholder.
    header["frame_table_offset"] = 10 ** 15
    size = len(json.dumps(header).encode())
    header["frame_table_offset"] = _align(12 + size, 16)
    text = json.dumps(header).encode().ljust(size)
    out = FIDX_MAGIC + struct.pack("<I", len(text)) + text
    return out + b"\x00" * (header["frame_table_offset"] - len(out)) + table


def _align(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def read_header(path) -> tuple[dict, int]:
    """The JSON header of a frame index of any version, and the file's size (the header unchecked)."""
    path = storage.check_path(path)
    file_size = storage.size(path)
    head = storage.read(path, 0, min(file_size, _HEAD_READ))  # one request for most headers
    if len(head) < 12 or head[:8] != FIDX_MAGIC:
        raise FormatError(f"{path}: not a dali-video frame index (bad magic {head[:8]!r}); "
                          f"rebuild it with: dali-video-index build {shard_of(path)}")
    (size,) = struct.unpack_from("<I", head, 8)
    if size > file_size - 12:
        raise FormatError(f"{path}: header length {size} runs past the end of the file ({file_size} bytes)")
    if 12 + size > len(head):
        head += storage.read(path, len(head), 12 + size - len(head))
    try:
        header = json.loads(head[12:12 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: header is not valid JSON ({e})") from None
    return header, file_size


def read_frame_index(path) -> FrameIndex:
    path = storage.check_path(path)
    header, file_size = read_header(path)
    if not isinstance(header, dict) or any(k not in header for k in _HEADER_KEYS):
        raise FormatError(f"{path}: header lacks fields {[k for k in _HEADER_KEYS if k not in header]}")
    if header["version"] not in READ_VERSIONS:
        raise FormatError(f"{path}: frame index version {header['version']}, this dali-video reads "
                          f"versions {READ_VERSIONS}; rebuild: dali-video-index build {shard_of(path)}")
    videos = header["videos"]
    if header["version"] == 1 and isinstance(videos, dict) and isinstance(videos.get("record"), list):
        videos["fps"] = [0.0] * len(videos["record"])
    if not isinstance(videos, dict) or any(not isinstance(videos.get(c), list) for c in VIDEO_COLUMNS) \
            or len({len(videos[c]) for c in VIDEO_COLUMNS}) != 1:
        raise FormatError(f"{path}: video columns malformed")
    if (bad := _bad_rates(videos["fps"])):  # NaN and infinities fail the comparison too
        raise FormatError(f"{path}: video {videos['filename'][bad[0]]!r} has frame rate {videos['fps'][bad[0]]!r}, "
                          f"not in [0, 1e6]: corrupt index; rebuild it with: dali-video-index build {shard_of(path)}")
    end = header["frame_table_offset"] + header["num_frame_rows"] * FRAME_ROW.itemsize
    if end != file_size or sum(videos["num_frames"]) != header["num_frame_rows"]:
        raise FormatError(f"{path}: frame table holds {(file_size - header['frame_table_offset']) // 16} "
                          f"rows, header promises {header['num_frame_rows']}: truncated or corrupt")
    return FrameIndex(path=path, notes=header.get("notes") or {},
                      **{k: header[k] for k in _HEADER_KEYS if k != "version"})


def _bad_rates(fps: list) -> list[int]:
    """Which of a header's frame rates are not numbers in [0, 1e6] (NaN, infinities, text, ...)."""
    try:  # numbers only: a numeric array, tested at once (300k rates at start-up)
        rates = np.array(fps)
    except ValueError:  # lists of different lengths
        rates = None
    if rates is not None and rates.ndim == 1 and rates.dtype.kind in "iuf":
        return np.flatnonzero(~((rates >= 0) & (rates <= 1e6))).tolist()
    return [i for i, r in enumerate(fps) if not (isinstance(r, (int, float)) and 0 <= r <= 1e6)]


def check_fresh(shard, index: FrameIndex) -> None:
    """Raise FormatError when the shard changed after its frame index was written."""
    size = storage.size(shard)
    if size != index.shard_size:
        raise FormatError(f"{index.path}: stale frame index: the shard is {size} bytes, the index was "
                          f"built for {index.shard_size}. Rebuild it: dali-video-index build {shard}")


# ---------------------------------------------------------------- segment table

@dataclass(frozen=True)
class Head:
    """A label head: its name, its class names by id, and whether a segment may hold several of its classes."""

    name: str
    classes: tuple
    multi_label: bool = False

    def __str__(self) -> str:  # "verb (97 classes)", "action (157 classes, multi-label)"
        return f"{self.name} ({len(self.classes)} classes{', multi-label' if self.multi_label else ''})"


def heads_json(heads) -> dict:
    """Label heads as JSON (manifests, segment tables, ``label_heads``): name -> ``{"classes": [class
    name by id], "multi_label": bool}``, in the heads' order."""
    return {h.name: {"classes": list(h.classes), "multi_label": h.multi_label} for h in heads}


@dataclass(frozen=True)
class SegmentTable:
    """A ``.segments`` file: the label heads and one entry per segment (:data:`SEGMENT_COLUMNS`)."""

    path: Path | str
    shard_size: int
    heads: tuple  # Head per head
    segments: dict  # column -> list, one entry per segment

    @property
    def num_segments(self) -> int:
        return len(self.segments["video"])


def encode_segments(*, shard_size: int, heads, segments: dict) -> bytes:
    missing = [c for c in SEGMENT_COLUMNS if c not in segments]
    if missing:
        raise ValueError(f"segment columns missing: {missing}")
    return json.dumps({"version": SEGMENTS_VERSION, "shard_size": shard_size,
                       "heads": [{"name": name, **head} for name, head in heads_json(heads).items()],
                       "segments": {**{c: list(segments[c]) for c in SEGMENT_COLUMNS[:4]},
                                    "labels": {h.name: list(segments["labels"][h.name]) for h in heads}}}).encode()


def _int_list(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def read_segments(path, index: FrameIndex) -> SegmentTable:
    """The segment table at ``path``, checked against the frame index ``index`` of its shard."""
    path = storage.check_path(path)
    rebuild = "write the dataset again with dali-video-write"
    try:
        table = json.loads(storage.read(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: segment table is not valid JSON ({e})") from None
    if not isinstance(table, dict) or table.get("version") != SEGMENTS_VERSION:
        version = table.get("version") if isinstance(table, dict) else None
        raise FormatError(f"{path}: segment table version {version!r}, this dali-video reads version "
                          f"{SEGMENTS_VERSION}; {rebuild}")
    if table.get("shard_size") != index.shard_size:
        raise FormatError(f"{path}: stale segment table: written for a shard of {table.get('shard_size')} bytes, "
                          f"the frame index says {index.shard_size}; {rebuild}")
    heads, columns = table.get("heads"), table.get("segments")
    if not isinstance(heads, list) or any(not isinstance(h, dict) or not isinstance(h.get("name"), str)
                                          or not isinstance(h.get("classes"), list) for h in heads):
        raise FormatError(f"{path}: heads malformed")
    heads = tuple(Head(h["name"], tuple(map(str, h["classes"])), bool(h.get("multi_label"))) for h in heads)
    if not isinstance(columns, dict) or any(not isinstance(columns.get(c), (list, dict)) for c in SEGMENT_COLUMNS):
        raise FormatError(f"{path}: segment columns malformed")
    n = len(columns["video"])
    labels = columns["labels"]
    if not (all(_int_list(columns[c]) and len(columns[c]) == n for c in SEGMENT_COLUMNS[:4])
            and isinstance(labels, dict) and set(labels) == {h.name for h in heads}
            and all(len(labels[h.name]) == n and all(_int_list(v) for v in labels[h.name]) for h in heads)):
        raise FormatError(f"{path}: segment columns malformed (lengths or types)")
    frames = index.videos["num_frames"]
    for k, (v, first, count) in enumerate(zip(columns["video"], columns["first"], columns["count"])):
        if not (0 <= v < len(frames) and first >= 0 and count >= 1 and first + count <= frames[v]):
            has = frames[v] if 0 <= v < len(frames) else 0
            raise FormatError(f"{path}: segment {k} (annotation row {columns['id'][k]}) is frames {first}.."
                              f"{first + count - 1} of video {v}, outside its {has} frames: corrupt table; {rebuild}")
    for h in heads:
        bad = [k for k, ids in enumerate(labels[h.name]) if any(not 0 <= i < len(h.classes) for i in ids)
               or (not h.multi_label and len(ids) != 1)]
        if bad:
            raise FormatError(f"{path}: segment {bad[0]} has {h.name} labels {labels[h.name][bad[0]]}, not "
                              f"{'class ids' if h.multi_label else 'one class id'} in 0..{len(h.classes) - 1}")
    return SegmentTable(path, table["shard_size"], heads, columns)


# ---------------------------------------------------------------- JPEG

def jpeg_problem(data, height: int = 0, width: int = 0) -> str:
    """Why a frame's bytes are not a whole JPEG of ``height`` x ``width`` (0: any size), or "": the
    loader's check (``jpeg_problem`` in loader/native/checks.h), the same markers and messages."""
    data = memoryview(data)
    if len(data) < 4 or bytes(data[:2]) != b"\xff\xd8":
        return "is not a valid JPEG (not a JPEG (no SOI marker))"
    if bytes(data[-2:]) != b"\xff\xd9":
        return "is not a complete JPEG (no end-of-image marker)"
    try:
        h, w = jpeg_size(data)
    except FormatError as e:
        return f"is not a valid JPEG ({e})"
    return f"is {w}x{h}, the video is {width}x{height}" if height and width and (h, w) != (height, width) else ""


def jpeg_size(data) -> tuple[int, int]:
    """(height, width) from a JPEG's SOF marker, without decoding."""
    data = memoryview(data)
    if bytes(data[:2]) != b"\xff\xd8":
        raise FormatError("not a JPEG (no SOI marker)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise FormatError(f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        seg = struct.unpack_from(">H", data, i + 2)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                break
            h, w = struct.unpack_from(">HH", data, i + 5)
            return h, w
        i += 2 + seg
    raise FormatError("JPEG has no frame header (SOF)")
