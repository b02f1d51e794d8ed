"""The Python feed dali-video had before its native reader, kept as dali-video-bench's baseline.

Python threads read planned clips (the same plan as the native reader) and pack each batch into one
dense uint8 array ``[B*T, 32 + L]``: each row a 32-byte header of eight int32 (crop y, x, h, w, flip,
label, video row, frame number) and one JPEG, zero-padded to the longest JPEG of the batch; DALI's
TensorFlow bridge (``DALIDatasetWithInputs``) takes it from there. Not used by the loader.
"""
from __future__ import annotations

import collections
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...index_tools import FormatError
from ...index_tools import format as fmt

from ...loader.sampling import ClipPlan, PlanSpec, VideoTable, plan_clip

HEADER_INTS = 8
HEADER_BYTES = 4 * HEADER_INTS
_GAP = 64  # frames closer than this many bytes are fetched in one read (protobuf tags lie between)


class ClipReader:
    """Reads a clip's frames: one ``pread`` per run of adjacent frames, each frame checked.

    Files are opened per clip (a few microseconds) rather than kept open: datasets of thousands of
    shards stay under the descriptor limit, and a shard removed meanwhile fails with its name.
    """

    def __init__(self, table: VideoTable, videos: np.ndarray):
        self.table, self.videos = table, videos  # plans index ``videos``, rows of ``table``

    def read(self, plan: ClipPlan) -> list[memoryview]:
        t = self.table
        v = int(self.videos[plan.video])
        index = t.shards[t.shard[v]]
        shard_path = index.path.with_suffix("")
        wanted = np.unique(plan.frames)
        first = int(t.frame_start[v] + t.first[v])  # an item's first frame row (a segment's, in a dataset with them)
        try:
            with open(index.path, "rb") as fidx, open(shard_path, "rb") as shard:
                rows = index.read_rows(first + int(wanted[0]), int(wanted[-1] - wanted[0]) + 1,
                                       fidx.fileno())[wanted - wanted[0]]
                spans = _spans(rows)
                data = [memoryview(os.pread(shard.fileno(), end - start, start)) for start, end, _ in spans]
        except OSError as e:
            raise FormatError(f"{shard_path}: cannot read video {str(t.filename[v])!r}: {e}") from None
        frames: dict[int, memoryview] = {}
        for (start, _, members), buf in zip(spans, data):
            for k in members:
                off, length = int(rows["offset"][k]) - start, int(rows["length"][k])
                jpeg = buf[off:off + length]
                problem = _check_frame(jpeg, length, int(rows["crc"][k]), int(t.height[v]), int(t.width[v]))
                if problem:
                    raise FormatError(f"{shard_path}: video {str(t.filename[v])!r} frame {int(wanted[k])} at byte "
                                      f"{int(rows['offset'][k])}: {problem}")
                frames[int(wanted[k])] = jpeg
        return [frames[int(f)] for f in plan.frames]


def _spans(rows) -> list[tuple[int, int, list[int]]]:
    """Group frames lying close together into ``(start, end, row numbers)`` reads."""
    spans = []
    for k in np.argsort(rows["offset"], kind="stable"):
        start, end = int(rows["offset"][k]), int(rows["offset"][k] + rows["length"][k])
        if spans and start - spans[-1][1] <= _GAP:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]), spans[-1][2] + [int(k)])
        else:
            spans.append((start, end, [int(k)]))
    return spans


def _check_frame(jpeg, length: int, crc: int, height: int, width: int) -> str | None:
    """Why a frame's bytes cannot be decoded as promised, or None."""
    if len(jpeg) != length:
        return f"short read ({len(jpeg)} of {length} bytes): the shard is truncated"
    if fmt.crc32c(jpeg) != crc:
        return ("fails its CRC32C (corrupt, or the shard changed after indexing; check it with: "
                "dali-video-index verify)")
    if bytes(jpeg[-2:]) != b"\xff\xd9":
        return "is not a complete JPEG (no end-of-image marker)"
    try:
        size = fmt.jpeg_size(jpeg)
    except FormatError as e:
        return f"is not a valid JPEG ({e})"
    if height and width and size != (height, width):
        return f"is {size[1]}x{size[0]}, the video is {width}x{height}"
    return None


def pack_batch(table: VideoTable, videos: np.ndarray, plans: list[ClipPlan],
               clips: list[list[memoryview]]) -> np.ndarray:
    """One dense ``[B*T, 32 + L]`` uint8 array (see the module doc)."""
    longest = max(len(j) for clip in clips for j in clip)
    n = sum(len(clip) for clip in clips)
    out = np.zeros((n, HEADER_BYTES + longest), np.uint8)
    header = np.zeros((n, HEADER_INTS), np.int32)
    row = 0
    for plan, clip in zip(plans, clips):
        y, x, h, w, flip = plan.window
        v = int(videos[plan.video])
        for frame, jpeg in zip(plan.frames, clip):
            header[row] = (y, x, h, w, flip, table.label[v], v, table.first[v] + frame)
            out[row, HEADER_BYTES:HEADER_BYTES + len(jpeg)] = np.frombuffer(jpeg, np.uint8)
            row += 1
    out[:, :HEADER_BYTES] = header.view(np.uint8)
    return out


class BatchStream:
    """An endless stream of packed batches of the clip sequence, read ``prefetch`` batches ahead by
    ``threads`` threads; a damaged frame raises (the baseline has no on_corrupt="skip")."""

    def __init__(self, table: VideoTable, videos: np.ndarray, plan: PlanSpec, batch_size: int, *,
                 threads: int = 4, prefetch: int = 2):
        self.table, self.videos, self.plan, self.batch_size = table, videos, plan, batch_size
        self.sizes = (table.num_frames[videos], table.height[videos], table.width[videos])
        self.fps = table.fps[videos]
        self.reader = ClipReader(table, videos)
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dali-video-read")
        self._prefetch = prefetch
        self._thread = threading.Thread(target=self._run, name="dali-video-batches", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        pending = collections.deque()
        position = 0
        try:
            while not self._stop.is_set():
                batch = [plan_clip(self.plan, *self.sizes, position + i, self.fps) for i in range(self.batch_size)]
                position += self.batch_size
                pending.append((batch, [self._pool.submit(self.reader.read, p) for p in batch]))
                if len(pending) > self._prefetch:
                    batch, futures = pending.popleft()
                    clips = [f.result() for f in futures]
                    if not self._put(pack_batch(self.table, self.videos, batch, clips)):
                        break
        except BaseException as e:  # handed to the consumer, who raises it
            self._put(e)
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()

    def __call__(self) -> np.ndarray:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if self._stop.is_set():
                    raise RuntimeError("the clip loader was closed") from None
        if isinstance(item, BaseException):
            self._queue.put(item)  # every later call fails the same way
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
