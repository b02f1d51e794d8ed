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

import numpy as np

from index_tools import FormatError
from index_tools import format as fmt

from .sampling import ClipPlan, ClipSpec, VideoTable, epoch_plan

log = logging.getLogger(__name__)
HEADER_INTS = 8
HEADER_BYTES = 4 * HEADER_INTS
_GAP = 64  # frames closer than this many bytes are fetched in one read (protobuf tags lie between)


class ClipReader:
    """Reads a clip's frames: one ``pread`` per run of adjacent frames, each frame CRC-checked."""

    def __init__(self, table: VideoTable):
        self.table = table
        self._files: dict[tuple[int, bool], int] = {}
        self._lock = threading.Lock()
        self.bytes_read = 0  # from the shards
        self.frame_bytes = 0  # of the JPEGs asked for: bytes_read / frame_bytes is the read amplification

    def _fd(self, shard: int, frame_index: bool = False) -> int:
        """An open descriptor of a shard (or of its frame index), kept for later reads."""
        with self._lock:
            if (shard, frame_index) not in self._files:
                path = self.table.shards[shard].path
                self._files[shard, frame_index] = os.open(path if frame_index else path.with_suffix(""),
                                                          os.O_RDONLY)
            return self._files[shard, frame_index]

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()

    def read(self, plan: ClipPlan) -> list[memoryview]:
        t = self.table
        v = plan.video
        index = t.shards[t.shard[v]]
        shard_path = index.path.with_suffix("")
        wanted = np.unique(plan.frames)
        first = int(t.frame_start[v])
        rows = index.read_rows(first + int(wanted[0]), int(wanted[-1] - wanted[0]) + 1,
                               self._fd(int(t.shard[v]), frame_index=True))[wanted - wanted[0]]
        order = np.argsort(rows["offset"], kind="stable")
        fd = self._fd(int(t.shard[v]))
        frames: dict[int, memoryview] = {}
        i = 0
        while i < len(order):
            j = i
            end = int(rows["offset"][order[i]] + rows["length"][order[i]])
            while j + 1 < len(order) and int(rows["offset"][order[j + 1]]) - end <= _GAP:
                j += 1
                end = int(rows["offset"][order[j]] + rows["length"][order[j]])
            start = int(rows["offset"][order[i]])
            buf = memoryview(os.pread(fd, end - start, start))
            self.bytes_read += len(buf)
            for k in order[i:j + 1]:
                off, length, crc = int(rows["offset"][k]) - start, int(rows["length"][k]), int(rows["crc"][k])
                jpeg = buf[off:off + length]
                if len(jpeg) != length or fmt.crc32c(jpeg) != crc:
                    raise FormatError(f"{shard_path}: video {str(t.filename[v])!r} frame {int(wanted[k])} at byte "
                                      f"{int(rows['offset'][k])} fails its CRC32C (shard truncated, corrupt or "
                                      f"rewritten after indexing; check it with: dali-video-index verify "
                                      f"{shard_path})")
                if bytes(jpeg[:2]) != b"\xff\xd8" or bytes(jpeg[-2:]) != b"\xff\xd9":
                    raise FormatError(f"{shard_path}: video {str(t.filename[v])!r} frame {int(wanted[k])} at byte "
                                      f"{int(rows['offset'][k])} is not a complete JPEG (no SOI/EOI marker)")
                frames[int(wanted[k])] = jpeg
                self.frame_bytes += length
            i = j + 1
        return [frames[int(f)] for f in plan.frames]


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
                 threads: int = 4, prefetch: int = 2):
        if len(videos) == 0:
            raise ValueError("no videos to read (all shards empty, or every video skipped)")
        self.table, self.videos, self.spec, self.batch_size = table, videos, spec, batch_size
        self.training, self.seed = training, seed
        self.clips_per_video, self.num_crops = clips_per_video, num_crops
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
                    if not self._put(pack_batch(self.table, batch, [f.result() for f in futures])):
                        break
        except BaseException as e:  # handed to the consumer, who raises it
            self._put(e)
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()

    def __call__(self) -> np.ndarray:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)  # every later call fails the same way
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.reader.close()
