"""InputMonitor on the CPU with plain tf.data datasets: its profiler window and what it measures."""
import glob
import tempfile
import time

import numpy as np
import pytest
import tensorflow as tf

from dali_video import InputMonitor


def _model():
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


def _batches(seconds: float = 0.0, fail_at: int | None = None):
    """Batches of 8 that each take ``seconds`` to arrive; the one numbered ``fail_at`` raises."""
    def get(i):
        if int(i) == fail_at:
            raise ValueError(f"bad batch {int(i)}")
        time.sleep(seconds)
        return np.zeros((8, 4), np.float32), np.zeros((8,), np.int64)

    ds = tf.data.Dataset.range(10**6).map(lambda i: tf.numpy_function(get, [i], (tf.float32, tf.int64)))
    return ds.map(lambda x, y: (tf.ensure_shape(x, (8, 4)), tf.ensure_shape(y, (8,))))


def _folders():
    return set(glob.glob(f"{tempfile.gettempdir()}/dali-video-monitor-*"))


def test_a_fit_that_raises_leaves_no_profiler_window_open():
    # A fit that raises (a damaged batch, Ctrl-C in a notebook) runs no on_epoch_end: the window the
    # monitor opened at batch 1 must not stay open, or every later fit has no input_wait (the profiler
    # admits one session), its temp folder stays, and the profiler keeps recording.
    before = _folders()
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad batch 5"):
        _model().fit(_batches(fail_at=5), epochs=1, steps_per_epoch=20, verbose=0, callbacks=[InputMonitor()])
    history = _model().fit(_batches(), epochs=1, steps_per_epoch=5, verbose=0, callbacks=[InputMonitor()])
    assert "input_wait" in history.history
    assert _folders() == before


def test_validation_is_not_counted_as_training_input_wait():
    # An epoch of fewer steps than InputMonitor.steps ends its window at on_epoch_end, after Keras has
    # run validation: the validation batches' fetches and time must not count as training's wait.
    history = _model().fit(_batches(), validation_data=_batches(0.2), validation_steps=5, epochs=1,
                           steps_per_epoch=10, verbose=0, callbacks=[InputMonitor()])
    assert history.history["input_wait"][0] < 0.5, history.history
