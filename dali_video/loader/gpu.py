"""TensorFlow and DALI sharing one GPU."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


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
