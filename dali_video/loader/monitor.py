"""Is training waiting for data? A Keras callback that measures, per epoch, the share of wall time
``fit`` spent waiting for its next batch."""
from __future__ import annotations

import logging
import threading
import time

from .resume import _callback_base

log = logging.getLogger(__name__)


class InputMonitor(_callback_base()):
    """``logs["input_wait"]`` at each epoch's end: the fraction of the epoch's wall time that ``fit``
    waited for the next batch of a dataset passed through :meth:`watch`, and a warning naming the
    likely cause when it exceeds ``threshold``::

        monitor = dali_video.InputMonitor()
        model.fit(monitor.watch(ds), callbacks=[monitor], ...)

    :meth:`watch` times each ``get_next`` on the consumer's side: a clock element is taken when the
    next batch is asked for (``Dataset.zip`` pulls its inputs in order) and read again when it arrives;
    tf.data's injected prefetch is turned off after it, so the wait is the consumer's. It adds a
    ``tf.data`` op after the dataset, so it needs the elements in host memory (the CPU device, or
    ``host_output=True`` / :func:`distribute` under MultiWorkerMirroredStrategy): on the GPU no tf.data
    op may follow DALI's dataset (NVIDIA/DALI#2228).
    """

    def __init__(self, threshold: float = 0.1):
        super().__init__()
        self.threshold = threshold
        self._lock = threading.Lock()
        self._waited = 0.0
        self._start = None

    def _asked(self):
        import numpy as np

        return np.float64(time.perf_counter())

    def _arrived(self, asked):
        with self._lock:
            self._waited += time.perf_counter() - float(asked)
        return asked

    def watch(self, dataset):
        """``dataset`` with each batch's wait timed; elements unchanged."""
        import tensorflow as tf

        clock = tf.data.Dataset.range(1).repeat().map(lambda _: tf.numpy_function(self._asked, [], tf.float64))

        def arrived(asked, element):
            with tf.control_dependencies([tf.numpy_function(self._arrived, [asked], tf.float64)]):
                return tf.nest.map_structure(tf.identity, element)

        options = tf.data.Options()
        options.experimental_optimization.inject_prefetch = False  # else the wait would be the prefetch's
        watched = tf.data.Dataset.zip((clock, dataset)).map(arrived).with_options(options)
        watched._dali_video_loader = getattr(dataset, "_dali_video_loader", None)
        return watched

    def on_epoch_begin(self, epoch, logs=None):
        with self._lock:
            self._waited = 0.0
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        with self._lock:
            wait = self._waited / seconds if seconds > 0 else 0.0
        if logs is not None:
            logs["input_wait"] = wait
        if wait > self.threshold:
            log.warning("epoch %d: training waited for input %.0f%% of the time (above %.0f%%): the input pipeline is "
                        "the bottleneck. Likely causes: too few cores for reading and decoding (num_threads, "
                        "dali_video.usable_cores()), storage slower than the clips need (dali-video-bench --quick "
                        "shows the read rate), or decoding on the CPU (device='cpu')", epoch + 1, 100 * wait,
                        100 * self.threshold)
