"""dali-video: random contiguous clips from indexed TFRecord shards, decoded by DALI, for TensorFlow.

The package's folders: ``dali_video.loader`` is the library a training script imports (its public
names are re-exported here); ``dali_video.writer`` writes datasets and ``dali_video.index_tools`` owns
the on-disk format (both usable alone); ``dali_video.tools`` holds the command-line tools (train,
bench, doctor) around them.
"""
from importlib import metadata

# First, before anything can import TensorFlow: TensorFlow's framework library exports BoringSSL's
# OpenSSL symbols (EVP_*, SSL_*, OpenSSL_version_num) and libcurl's globally, and DALI's s2n and
# google-cloud-cpp, binding their embedded libcrypto and libcurl lazily, would take them and abort the
# process at the first s3:// read or gs:// answer over 16 KB. Binding them now prevents that (see
# loader/native preload_store_clients).
from .loader.native import preload_store_clients

preload_store_clients()

from .loader.config import RECIPES, ClipConfig, ClipSpec, recipe
from .loader.dataset import (META_COLUMNS, ClipPipeline, clip_dataset, clip_pipeline, distribute, meta_fields,
                             reader_dataset, steps_per_epoch)
from .loader.errors import ReaderError, reader_errors
from .loader.evaluation import VideoAverages, average_per_video
from .loader.gpu import enable_memory_growth
from .loader.resources import gpu_resources, usable_cores
from .loader.sampling import Mixture, label_heads, load_table

try:  # the one version is pyproject.toml's, as installed (pip install, or make setup's editable install)
    __version__ = metadata.version("dali-video")
except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"
__all__ = ["META_COLUMNS", "RECIPES", "ClipConfig", "ClipPipeline", "ClipSpec", "InputMonitor", "Mixture",
           "ReaderError", "VideoAverages", "average_per_video", "clip_dataset", "clip_pipeline", "distribute",
           "enable_memory_growth", "gpu_resources", "label_heads", "load_table", "meta_fields", "reader_dataset",
           "reader_errors", "recipe", "steps_per_epoch", "usable_cores"]


def __getattr__(name):
    if name == "InputMonitor":  # a Keras callback: TensorFlow is imported only when it is asked for
        from .loader.monitor import InputMonitor

        return InputMonitor
    raise AttributeError(f"module 'dali_video' has no attribute {name!r}")
