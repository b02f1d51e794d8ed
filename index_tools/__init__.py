"""The on-disk layer of dali-video: TFRecord framing, the DALI .idx and the frame index."""
from .format import (FormatError, FrameIndex, Head, SegmentTable, check_fresh, fidx_path, idx_path, read_frame_index,
                     read_segments, segments_path)
from .indexer import ShardIndex, VideoMeta, build, describe_record, expand, inspect, verify

__all__ = ["FormatError", "FrameIndex", "Head", "SegmentTable", "ShardIndex", "VideoMeta", "build", "check_fresh",
           "describe_record", "expand", "fidx_path", "idx_path", "inspect", "read_frame_index", "read_segments",
           "segments_path", "verify"]
