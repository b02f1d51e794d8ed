"""dali-video: random contiguous clips from indexed TFRecord shards, decoded by DALI, for TensorFlow.

The package's folders: ``dali_video.loader`` is the library a training script imports (its public
names are re-exported here); ``dali_video.writer`` writes datasets and ``dali_video.index_tools`` owns
the on-disk format (both usable alone); ``dali_video.tools`` holds the command-line tools (train,
bench, doctor) around them.
"""
from importlib import metadata

from .loader.config import RECIPES, ClipConfig, ClipSpec, recipe
from .loader.dataset import (META_COLUMNS, ClipPipeline, clip_dataset, clip_pipeline, distribute, meta_fields,
                             reader_dataset, steps_per_epoch)
from .loader.gpu import enable_memory_growth
from .loader.sampling import load_table

try:  # the one version is pyproject.toml's, as installed (pip install, or make setup's editable install)
    __version__ = metadata.version("dali-video")
except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"
__all__ = ["META_COLUMNS", "RECIPES", "ClipConfig", "ClipPipeline", "ClipSpec", "clip_dataset",
           "clip_pipeline", "distribute", "enable_memory_growth", "load_table", "meta_fields",
           "reader_dataset", "recipe", "steps_per_epoch"]
