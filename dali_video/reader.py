"""The CPU side: read exactly the JPEG bytes of planned clips, ahead of the decoder, in threads.

A batch leaves here as one dense uint8 array ``[B*T, 32 + L]``: each row is a 32-byte header of
eight int32 (crop y, x, h, w, flip, label, video row, frame number) followed by one JPEG,
zero-padded to the longest JPEG of the batch. One array per batch keeps the frames and their
parameters together through DALI's TensorFlow bridge.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np

from index_tools import FormatError
from index_tools import format as fmt

from .sampling import ClipPlan, ClipSpec, VideoTable, epoch_plan

log = logging.getLogger(__name__)
HEADER_INTS = 8
HEADER_BYTES = 4 * HEADER_INTS
_GAP = 64  # frames closer than this many bytes are fetched in one read (protobuf tags lie between)


class ClipReader:
    """Reads a clip's frames: one ``pread`` per run of adjacent frames, each frame checked.

    Files are opened per clip (a few microseconds) rather than kept open: datasets of thousands of
    shards stay under the descriptor limit, and a shard removed meanwhile fails with its name.
    """

    def __init__(self, table: VideoTable):
        self.table = table
        self.bytes_read = 0  # from the shards
        self.frame_bytes = 0  # of the JPEGs asked for: bytes_read / frame_bytes is the read amplification
        self._count = threading.Lock()  # reads run in several threads

    def read(self, plan: ClipPlan) -> list[memoryview]:
        t = self.table
        v = plan.video
        index = t.shards[t.shard[v]]
        shard_path = index.path.with_suffix("")
        wanted = np.unique(plan.frames)
        first = int(t.frame_start[v])
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
        with self._count:
            self.bytes_read += sum(len(buf) for buf in data)
            self.frame_bytes += int(rows["length"].sum())
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


def pack_batch(table: VideoTable, plans: list[ClipPlan], clips: list[list[memoryview]]) -> np.ndarray:
    """One dense ``[B*T, 32 + L]`` uint8 array (see the module doc)."""
    longest = max(len(j) for clip in clips for j in clip)
    n = sum(len(clip) for clip in clips)
    out = np.zeros((n, HEADER_BYTES + longest), np.uint8)
    header = np.zeros((n, HEADER_INTS), np.int32)
    row = 0
    for plan, clip in zip(plans, clips):
        y, x, h, w, flip = plan.window
        for frame, jpeg in zip(plan.frames, clip):
            header[row] = (y, x, h, w, flip, table.label[plan.video], plan.video, frame)
            out[row, HEADER_BYTES:HEADER_BYTES + len(jpeg)] = np.frombuffer(jpeg, np.uint8)
            row += 1
    out[:, :HEADER_BYTES] = header.view(np.uint8)
    return out


class BatchStream:
    """An endless stream of packed batches, read ``prefetch`` batches ahead by ``threads`` threads.

    Training draws a new random epoch plan after each pass; evaluation repeats the same plan.
    Batches run on across epoch boundaries, so every batch is full.
    """

    def __init__(self, table: VideoTable, videos: np.ndarray, spec: ClipSpec, batch_size: int, *,
                 training: bool, seed: int, clips_per_video: int = 1, num_crops: int = 1,
                 threads: int = 4, prefetch: int = 2, on_corrupt: Literal["raise", "skip"] = "raise"):
        if len(videos) == 0:
            raise ValueError("no videos to read (all shards empty, or every video skipped)")
        self.table, self.videos, self.spec, self.batch_size = table, videos, spec, batch_size
        self.training, self.seed = training, seed
        self.clips_per_video, self.num_crops = clips_per_video, num_crops
        self.on_corrupt = on_corrupt
        self.skipped: list[str] = []  # why each replaced clip was replaced (on_corrupt="skip")
        self.reader = ClipReader(table)
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dali-video-read")
        self._prefetch = prefetch
        self._thread = threading.Thread(target=self._run, name="dali-video-batches", daemon=True)
        self._thread.start()

    def plans(self):
        epoch = 0
        while True:
            yield from epoch_plan(self.table, self.videos, self.spec, training=self.training, seed=self.seed,
                                  epoch=epoch, clips_per_video=self.clips_per_video, num_crops=self.num_crops)
            epoch += 1

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
        try:
            plans = self.plans()
            while not self._stop.is_set():
                batch = [next(plans) for _ in range(self.batch_size)]
                pending.append((batch, [self._pool.submit(self.reader.read, p) for p in batch]))
                if len(pending) > self._prefetch:
                    batch, futures = pending.popleft()
                    clips = [self._result(i, batch, f, plans) for i, f in enumerate(futures)]
                    if not self._put(pack_batch(self.table, batch, clips)):
                        break
        except BaseException as e:  # handed to the consumer, who raises it
            self._put(e)
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()

    def _result(self, i: int, batch: list, future, plans):
        """The frames of ``batch[i]``; with on_corrupt="skip", a damaged clip is replaced by the next one."""
        try:
            return future.result()
        except FormatError as e:
            if self.on_corrupt != "skip":
                raise
            for _ in range(len(self.videos)):
                self.skipped.append(str(e))
                log.warning("on_corrupt='skip': replacing a clip (%d so far): %s", len(self.skipped), e)
                batch[i] = next(plans)
                try:
                    return self.reader.read(batch[i])
                except FormatError as again:
                    e = again
            raise FormatError(f"every clip tried is damaged; last: {e}") from None

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
