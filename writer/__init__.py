"""The dali-video writer: a video dataset to indexed TFRecord shards."""
from .encode import EncodedVideo, EncodeOptions, VideoError, encode_video
from .sources import Failure, InputError, VideoSpec, from_csv, from_folder, from_kinetics
from .write import ShardPlan, WriteError, plan_shards, write_dataset

__all__ = ["EncodeOptions", "EncodedVideo", "Failure", "InputError", "ShardPlan", "VideoError", "VideoSpec",
           "WriteError", "encode_video", "from_csv", "from_folder", "from_kinetics", "plan_shards",
           "write_dataset"]
