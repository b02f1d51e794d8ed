"""The bench's baselines: what dali-video is measured against (DALI's own TFRecord reader, the decode
bound, and the Python feed dali-video had before its native reader). They import DALI, as the
loader's pipeline does; the library never imports them."""
from __future__ import annotations

import os

from nvidia.dali import fn, pipeline_def, types

from ...loader.native import check_store_clients
from ...loader.pipeline import Device, Graph, decode


@pipeline_def
def _decode_pipeline(source, device: str):
    jpegs, anchor, shape = fn.external_source(source=source, num_outputs=3, batch=True)
    return decode(jpegs, anchor, shape, Graph(device=device))  # as the loader decodes on this device


def decode_pipeline(source, *, batch_size: int, device: Device = "cpu"):
    """Decode JPEGs from memory, each to its window, as the loader does on ``device`` (the bench's
    decode bound): ``source()`` gives (jpegs, anchors, shapes)."""
    return _decode_pipeline(source, device, batch_size=batch_size, num_threads=os.cpu_count(),
                            device_id=0 if device == "gpu" else None)


@pipeline_def
def _packed_pipeline(source):
    return fn.external_source(source=source, batch=False, dtype=types.UINT8, ndim=2, no_copy=False)


def packed_pipeline(source):
    """The Python feed's bridge (the bench's baseline): ``source()`` returns one packed array per
    iteration, handed on as it is."""
    return _packed_pipeline(source, batch_size=1, num_threads=os.cpu_count(), device_id=None)


@pipeline_def
def _tfrecord_pipeline(paths, index_paths):
    from nvidia.dali import tfrecord as tfrec

    out = fn.readers.tfrecord(path=paths, index_path=index_paths, random_shuffle=True, initial_fill=1024,
                              features={"frames": tfrec.FixedLenFeature((), tfrec.string, ""),
                                        "class_label": tfrec.FixedLenFeature([1], tfrec.int64, -1)})
    return out["frames"], out["class_label"]


def tfrecord_pipeline(paths, index_paths, *, batch_size: int, num_threads: int | None = None):
    """DALI's own TFRecord reader over whole records, shuffled through its default 1024-record buffer.
    It yields only the first value of the ``frames`` bytes list: DALI cannot return a list of strings.
    ``num_threads``: DALI's (default: all cores); from a bucket each thread has one record's GET in flight."""
    check_store_clients(paths)
    return _tfrecord_pipeline([str(p) for p in paths], [str(p) for p in index_paths], batch_size=batch_size,
                              num_threads=num_threads or os.cpu_count(), device_id=None)


def python_feed_dataset(stream, frames_per_batch: int):
    """The Python feed dali-video had before its native reader, through ``DALIDatasetWithInputs``:
    ``stream()`` returns packed batches (:mod:`dali_video.tools.bench.python_feed`). The bench's baseline."""
    import contextlib
    import io

    import tensorflow as tf
    from nvidia.dali.plugin import tf as dali_tf

    # DALI 2.4 prints a debugging line while it wraps the source; keep stdout clean.
    with tf.device("/cpu:0"), contextlib.redirect_stdout(io.StringIO()):
        return dali_tf.experimental.DALIDatasetWithInputs(
            pipeline=packed_pipeline(stream), batch_size=1, output_dtypes=(tf.uint8,),
            output_shapes=((frames_per_batch, None),), device_id=None)
