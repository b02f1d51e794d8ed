"""Is training waiting for data? A Keras callback that measures, per epoch, the share of wall time
``fit`` spent waiting for its next batch, from TensorFlow's own profiler events, so that it sees any
dataset on any device: DALI's dataset on the GPU too, where no tf.data op may follow it.

TensorFlow sources it rests on (2.21):
- ``tensorflow/core/kernels/data/iterator_ops.cc``: ``IteratorGetNextOp::DoCompute`` and
  ``IteratorGetNextAsOptionalOp::DoCompute`` wrap each fetch of a dataset's next element in a
  ``TraceMe`` of that name at level ``kInfo`` (2), and the same kernel classes are registered for
  ``DEVICE_CPU`` and ``DEVICE_GPU`` (``REGISTER_KERNEL_BUILDER(Name("IteratorGetNext")...``): the
  event is recorded on the host wherever the iterator lives;
- ``tensorflow/tsl/profiler/utils/xplane_schema.cc`` names both events as ``kIteratorGetNextOp`` and
  ``kIteratorGetNextAsOptionalOp``, the events TensorFlow's profiler counts as input time.

Not across hosts: in a worker of a MultiWorkerMirroredStrategy cluster of several workers, stopping
the profiler aborted the process ("double free or corruption", "munmap_chunk(): invalid pointer" in
``tsl::profiler::SplitEventTracker::FindStartAndMerge``, from ``TraceMeRecorder::Consume``) in 3 of
15 two-worker runs of two epochs here (TensorFlow 2.21, CPU), while 12 one-process runs of 4 epochs
never did. There the monitor measures nothing and says so once, rather than risk the run.
"""
from __future__ import annotations

import glob
import logging
import shutil
import tempfile
import time

from .resume import _callback_base

log = logging.getLogger(__name__)

GET_NEXT = ("IteratorGetNextOp::DoCompute", "IteratorGetNextAsOptionalOp::DoCompute")
# The folder of the profiler window an InputMonitor has open: Keras runs no callback when fit raises
# (a damaged batch, Ctrl-C), so a window left open is closed when the next fit begins.
_open_window = None


def _close_abandoned_window() -> None:
    global _open_window
    if _open_window is None:
        return
    import tensorflow as tf

    try:
        tf.profiler.experimental.stop(save=False)
    except tf.errors.UnavailableError:  # stopped by someone else meanwhile
        pass
    shutil.rmtree(_open_window, ignore_errors=True)
    _open_window = None


def get_next_seconds(xspace) -> float | None:
    """Seconds in which some dataset fetch was under way: the union of the ``GET_NEXT`` events of every
    host thread (replicas fetch in parallel; their waits overlap, not add); None when there is none."""
    spans = []
    for plane in xspace.planes:
        ids = {k for k, v in plane.event_metadata.items() if v.name in GET_NEXT}
        for line in plane.lines:
            spans += [(line.timestamp_ns * 1000 + e.offset_ps, e.duration_ps)
                      for e in line.events if e.metadata_id in ids]
    if not spans:
        return None
    total, end = 0, None
    for start, length in sorted(spans):
        stop = start + length
        if end is None or start > end:
            total, end = total + length, stop
        elif stop > end:
            total, end = total + stop - end, stop
    return total / 1e12


def _workers(model) -> int:
    """How many workers train ``model`` together: its strategy's cluster's, else 1."""
    resolver = getattr(getattr(model, "distribute_strategy", None), "cluster_resolver", None)
    if resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return sum(len(cluster.get(job, ())) for job in ("chief", "worker"))


class InputMonitor(_callback_base()):
    """``logs["input_wait"]`` at each epoch's end: the share of wall time over ``steps`` training steps
    (from the epoch's second step: the first also traces the step function) in which ``fit`` waited for
    its next batch, and a warning naming the likely cause above ``threshold``::

        model.fit(ds, callbacks=[dali_video.InputMonitor()], ...)

    The wait is read from TensorFlow's profiler, run over those steps only (host events, no device
    tracing): the events of the op that fetches every batch of every dataset (see the module
    docstring), so it measures DALI's dataset on the GPU as on the CPU, and any strategy's replicas.
    Profiled steps run slower (here, 2 CPU cores, steps of ~8 ms: 3-5 ms more each), so a window of
    short steps reads a little low; steps of a GPU model (100 ms and more) hardly notice.
    The profiler admits one session at a time: while another runs, that epoch's logs have no
    ``input_wait``, with a warning; nor do those of an epoch of one step. The other way round, while
    this window is open TensorBoard's ``profile_batch`` cannot start its profile (it logs an error):
    profile batches after the window (``steps``), or run that profile without the monitor.
    The window ends before fit's validation; one left open by a fit that raised is closed when the
    next fit begins.
    """

    def __init__(self, threshold: float = 0.1, steps: int = 50):
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.threshold, self.steps = threshold, steps
        self._folder = self._start = self._wait = None
        self._measured = False  # this epoch's window is begun
        self._off = False  # in a cluster of several workers: never profiled (the module docstring)

    def _begin(self):
        import tensorflow as tf

        self._folder = tempfile.mkdtemp(prefix="dali-video-monitor-")
        options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2, python_tracer_level=0,
                                                           device_tracer_level=0)
        try:
            tf.profiler.experimental.start(self._folder, options)
        except tf.errors.AlreadyExistsError:
            log.warning("input_wait not measured: another TensorFlow profiler session is running")
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
            return
        global _open_window
        _open_window = self._folder
        self._start = time.perf_counter()

    def _end(self):
        import tensorflow as tf
        from tensorflow.tsl.profiler.protobuf import xplane_pb2

        global _open_window
        seconds = time.perf_counter() - self._start
        tf.profiler.experimental.stop()
        _open_window = None
        try:
            xspace = xplane_pb2.XSpace()
            for path in glob.glob(f"{self._folder}/**/*.xplane.pb", recursive=True):  # one: this host's
                with open(path, "rb") as f:
                    xspace.MergeFromString(f.read())
            waited = get_next_seconds(xspace)
            if waited is None:  # never 0 for "not seen": that would read as "no wait"
                log.warning("input_wait not measured: the profiler recorded no dataset fetch (%s) in %.1f s",
                            " or ".join(GET_NEXT), seconds)
            else:
                self._wait = min(1.0, waited / seconds)
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def on_train_begin(self, logs=None):
        _close_abandoned_window()
        self._off = _workers(self.model) > 1
        if self._off:
            log.warning("input_wait not measured: in a cluster of several workers TensorFlow's profiler can abort "
                        "the process when it stops (a double free in its TraceMeRecorder), so InputMonitor "
                        "does not run it there")

    def on_test_begin(self, logs=None):  # fit's validation: its fetches are not training's wait
        if self._folder is not None:
            self._end()

    def on_epoch_begin(self, epoch, logs=None):
        self._wait, self._measured = None, False

    def on_train_batch_begin(self, batch, logs=None):
        if batch >= 1 and not self._measured and not self._off:  # ">=": with steps_per_execution Keras skips batch numbers
            self._measured = True
            self._begin()

    def on_train_batch_end(self, batch, logs=None):
        if self._folder is not None and batch >= self.steps:
            self._end()

    def on_epoch_end(self, epoch, logs=None):
        if self._folder is not None:
            self._end()
        if logs is not None and self._wait is not None:  # Keras averages logs: no None there
            logs["input_wait"] = self._wait
        if self._wait is not None and self._wait > self.threshold:
            log.warning("epoch %d: training waited for input %.0f%% of the time (above %.0f%%): the input pipeline is "
                        "the bottleneck. Likely causes: too few cores for reading and decoding (num_threads, "
                        "dali_video.usable_cores()), storage slower than the clips need (dali-video-bench --quick "
                        "shows the read rate), or decoding on the CPU (device='cpu')", epoch + 1, 100 * self._wait,
                        100 * self.threshold)
