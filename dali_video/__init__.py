"""dali-video: random contiguous clips from indexed TFRecord shards, decoded by DALI, for TensorFlow."""
from .dataset import (META_COLUMNS, ClipPipeline, clip_dataset, clip_pipeline, distribute, reader_dataset,
                      steps_per_epoch)
from .sampling import ClipSpec, load_table

__version__ = "0.1.0"
__all__ = ["META_COLUMNS", "ClipPipeline", "ClipSpec", "clip_dataset", "clip_pipeline", "distribute", "load_table",
           "reader_dataset", "steps_per_epoch"]
