"""The dali-video writer: a video dataset to indexed TFRecord shards."""
from .encode import EncodedVideo, EncodeOptions, VideoError, encode_video
from .sources import Failure, InputError, VideoSpec, from_csv, from_folder, from_kinetics
from .write import (DatasetPlan, ShardPlan, ShardResult, WriteError, plan_dataset, plan_shards, write_dataset,
                    write_manifests, write_plan, write_shard)

__all__ = ["DatasetPlan", "EncodeOptions", "EncodedVideo", "Failure", "InputError", "ShardPlan", "ShardResult",
           "VideoError", "VideoSpec", "WriteError", "encode_video", "from_csv", "from_folder", "from_kinetics",
           "plan_dataset", "plan_shards", "write_dataset", "write_manifests", "write_plan",
           "write_shard"]
