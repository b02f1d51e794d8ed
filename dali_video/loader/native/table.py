"""The video table the native reader reads, made once per process (``table.h``).

Every reader of the same videos in a process (each GPU's, validation's, a dataset iterated again) names
the same table by its key, a digest of the videos: the first makes it, the others hold it. A table
lives while a :class:`NativeTable` of Python's or a reader holds it, so a pipeline's readers find it
when DALI builds them (DALI's TensorFlow dataset builds them from the serialized pipeline) and it is
freed when no reader and no pipeline uses it.
"""
from __future__ import annotations

import ctypes
import weakref

import numpy as np

from . import load

# The videos' columns, in the order table.h's VideoColumn reads them (add a column to both).
# An item is a video, or a segment of one: row is its first frame's row in the shard's frame table, first
# that frame's number in its video, num_frames its frames.
VIDEO_COLUMNS = ("shard", "row", "num_frames", "height", "width", "label", "table_row", "record_start", "record_end",
                 "first")
# Each shard's: its frame table's offset, rows and CRC32C (the .fidx header's), and the shard's size.
SHARD_COLUMNS = ("table_offset", "table_rows", "table_crc", "shard_size")

_i64 = ctypes.POINTER(ctypes.c_int64)


def _library():
    lib = ctypes.CDLL(str(load()))  # the operator's library, loaded into DALI: the same tables
    lib.dali_video_table_hold.argtypes = [ctypes.c_char_p]
    lib.dali_video_table_hold.restype = ctypes.c_int64
    lib.dali_video_table_make.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_char_p), _i64,
                                          ctypes.c_int64, _i64, ctypes.POINTER(ctypes.c_double), ctypes.c_char_p,
                                          ctypes.c_int64, ctypes.c_int64, _i64, ctypes.c_char_p, ctypes.c_int64]
    lib.dali_video_table_make.restype = ctypes.c_int64
    lib.dali_video_table_release.argtypes = [ctypes.c_int64]
    lib.dali_video_table_release.restype = None
    return lib


class NativeTable:
    """A hold on the process's video table ``key`` (its reader argument); the table's shards."""

    def __init__(self, key: str, shards: list[str], handle: int, lib):
        self.key, self.shards = key, shards
        weakref.finalize(self, lib.dali_video_table_release, handle)


def video_table(key: str, shards: list[str], make) -> NativeTable:
    """A hold on the video table ``key`` of ``shards``, made by ``make()`` unless this process has it:
    ``make`` returns ``(shard_columns [S, 4] int64 (SHARD_COLUMNS), columns [N, 10] int64 (VIDEO_COLUMNS),
    fps [N] float64, names (bytes, one line each), head_labels [N, W] int64: each item's class ids of
    its label heads side by side, -1 padded; W may be 0)``."""
    lib = _library()
    handle = lib.dali_video_table_hold(key.encode())
    if handle < 0:
        shard_columns, columns, fps, names, head_labels = make()
        shard_columns = np.ascontiguousarray(shard_columns, np.int64)
        columns = np.ascontiguousarray(columns, np.int64)
        fps = np.ascontiguousarray(fps, np.float64)
        head_labels = np.ascontiguousarray(head_labels, np.int64).reshape(len(columns), -1)
        paths = (ctypes.c_char_p * len(shards))(*(s.encode("utf-8", "surrogateescape") for s in shards))
        error = ctypes.create_string_buffer(1024)
        handle = lib.dali_video_table_make(key.encode(), len(shards), paths, shard_columns.ctypes.data_as(_i64),
                                           len(columns), columns.ctypes.data_as(_i64),
                                           fps.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), names, len(names),
                                           head_labels.shape[1], head_labels.ctypes.data_as(_i64), error, len(error))
        if handle < 0:
            raise ValueError(error.value.decode(errors="replace"))
    return NativeTable(key, shards, handle, lib)
