"""The dali-video writer: a video dataset to indexed TFRecord shards."""
from .encode import EncodedVideo, EncodeOptions, VideoError, encode_video
from .sources import Failure, InputError, Segment, VideoSpec, from_csv, from_folder, from_kinetics, from_segments
from .write import (DatasetPlan, ShardPlan, ShardResult, WriteError, plan_dataset, plan_shards, write_dataset,
                    write_manifests, write_plan, write_shard)

__all__ = ["DatasetPlan", "EncodeOptions", "EncodedVideo", "Failure", "InputError", "Segment", "ShardPlan",
           "ShardResult", "VideoError", "VideoSpec", "WriteError", "encode_video", "from_csv", "from_folder",
           "from_kinetics", "from_segments", "plan_dataset", "plan_shards", "write_dataset", "write_manifests",
           "write_plan", "write_shard"]
