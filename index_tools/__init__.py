"""The on-disk layer of dali-video: TFRecord framing, the DALI .idx and the frame index."""
from .format import FormatError, FrameIndex, check_fresh, fidx_path, idx_path, read_frame_index
from .indexer import ShardIndex, VideoMeta, build, describe_record, expand, inspect, verify

__all__ = ["FormatError", "FrameIndex", "ShardIndex", "VideoMeta", "build", "check_fresh",
           "describe_record", "expand", "fidx_path", "idx_path", "inspect", "read_frame_index", "verify"]
