"""TensorFlow and DALI sharing one GPU, and whether this host has one."""
from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger(__name__)


@functools.cache
def usable_gpus() -> tuple[int, str]:
    """How many GPUs this process can use, asked of the NVIDIA driver (libcuda) as DALI asks it, without
    TensorFlow; with none, why (the text is "" when there are some). Honours CUDA_VISIBLE_DEVICES."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver: libcuda.so.1 cannot be loaded"
    error = cuda.cuInit(0)
    count = ctypes.c_int(0)
    if error == 100 or not error and (cuda.cuDeviceGetCount(ctypes.byref(count)) or count.value < 1):
        return 0, "the NVIDIA driver finds no GPU (is CUDA_VISIBLE_DEVICES empty or -1?)"  # 100: no device
    if error:
        return 0, f"the NVIDIA driver's cuInit failed with CUDA error {error}"
    return count.value, ""


def quiet_tensorflow() -> None:
    """Call before TensorFlow is imported: its C++ log keeps errors only, and on a host without a usable
    GPU not even those, since there every start prints "failed call to cuInit", which says only that
    there is no GPU. A TF_CPP_MIN_LOG_LEVEL already set is kept."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if usable_gpus()[0] else "3")


def enable_memory_growth() -> int:
    """Let TensorFlow take GPU memory as it needs it. By default it takes nearly all of a GPU's memory
    the first time it uses it, and DALI's decoder, which allocates its own, gets none
    (NVIDIA/DALI#2623, #2326). Call this before TensorFlow uses a GPU. Returns how many GPUs
    TensorFlow sees."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as e:
            # TensorFlow already initialised this GPU, or it is split into virtual devices with their
            # own memory limits: the setting stays as it is (dali-video-doctor reports it).
            log.warning("memory growth stays off on %s: %s", gpu.name, e)
    return len(gpus)
