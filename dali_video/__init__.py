"""dali-video: random contiguous clips from indexed TFRecord shards, decoded by DALI, for TensorFlow."""
from .config import RECIPES, ClipConfig, ClipSpec, recipe
from .dataset import (META_COLUMNS, ClipPipeline, clip_dataset, clip_pipeline, distribute, meta_fields,
                      reader_dataset, steps_per_epoch)
from .sampling import load_table

__version__ = "0.1.0"
__all__ = ["META_COLUMNS", "RECIPES", "ClipConfig", "ClipPipeline", "ClipSpec", "clip_dataset", "clip_pipeline", "distribute",
           "load_table", "meta_fields", "reader_dataset", "recipe", "steps_per_epoch"]
