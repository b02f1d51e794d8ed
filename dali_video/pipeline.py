"""The DALI pipeline: packed batches in, decoded, cropped, flipped and normalised frames out.

The only module that imports ``nvidia.dali``. ``device`` is "gpu" (decoding with
``device="mixed"``, nvJPEG) or "cpu" (the CPU fallback), decided once when the pipeline is built.
"""
from __future__ import annotations

import os
from typing import Literal

from nvidia.dali import fn, pipeline_def, types

from .reader import HEADER_BYTES

Device = Literal["gpu", "cpu"]
DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "uint8": types.UINT8}


@pipeline_def(enable_conditionals=False)
def _clip_pipeline(source, device: str, crop_size: int, resize: bool, dtype: str, mean, std,
                   decode_crop: bool):
    packed = fn.external_source(source=source, batch=True, dtype=types.UINT8, ndim=1, no_copy=False)
    header = fn.reinterpret(packed[0:HEADER_BYTES], dtype=types.INT32)
    jpegs = packed[HEADER_BYTES:]
    anchor, shape, flip = header[0:2], header[2:4], header[4]
    decoder_device = "mixed" if device == "gpu" else "cpu"
    if decode_crop:
        images = fn.decoders.image_slice(jpegs, anchor, shape, axis_names="HW", device=decoder_device,
                                         output_type=types.RGB)
    else:
        images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
        images = fn.slice(images, anchor, shape, axis_names="HW")
    if resize:
        images = fn.resize(images, size=[crop_size, crop_size], antialias=True)
    if dtype == "uint8":
        images = fn.flip(images, horizontal=flip)  # raw pixels: a flip costs less than normalising
    else:
        images = fn.crop_mirror_normalize(images, mirror=flip, dtype=DTYPES[dtype], mean=list(mean),
                                          std=list(std), output_layout="HWC")
    return images, (header.gpu() if device == "gpu" else header)


def clip_pipeline(source, *, batch_size: int, device: Device = "gpu", device_id: int | None = 0,
                  crop_size: int = 224, resize: bool = False, dtype: str = "float32",
                  mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), decode_crop: bool = True,
                  num_threads: int | None = None, prefetch_queue_depth: int = 2, seed: int | None = None):
    """Build the DALI pipeline. ``source()`` returns one packed batch of ``batch_size`` frames
    (see :mod:`dali_video.reader`); outputs are the frames ``[N, crop, crop, 3]`` and the headers
    ``[N, 8]``. Frames are ``(pixel - mean) / std`` as ``dtype``, or the raw pixels for uint8."""
    return _clip_pipeline(source, device, crop_size, resize, dtype, mean, std, decode_crop,
                          batch_size=batch_size, num_threads=num_threads or os.cpu_count(),
                          device_id=device_id if device == "gpu" else None,
                          prefetch_queue_depth=prefetch_queue_depth, seed=seed if seed is not None else -1)


# Baselines for dali-video-bench; kept here so that DALI stays in this one module.

@pipeline_def
def _decode_pipeline(source, device: str):
    jpegs, anchor, shape = fn.external_source(source=source, num_outputs=3, batch=True)
    return fn.decoders.image_slice(jpegs, anchor, shape, axis_names="HW", output_type=types.RGB,
                                   device="mixed" if device == "gpu" else "cpu")


def decode_pipeline(source, *, batch_size: int, device: Device = "cpu"):
    """Decode JPEGs from memory, each to its window: ``source()`` gives (jpegs, anchors, shapes)."""
    return _decode_pipeline(source, device, batch_size=batch_size, num_threads=os.cpu_count(),
                            device_id=0 if device == "gpu" else None)


@pipeline_def
def _tfrecord_pipeline(paths, index_paths):
    from nvidia.dali import tfrecord as tfrec

    out = fn.readers.tfrecord(path=paths, index_path=index_paths, random_shuffle=True, initial_fill=1024,
                              features={"frames": tfrec.FixedLenFeature((), tfrec.string, ""),
                                        "class_label": tfrec.FixedLenFeature([1], tfrec.int64, -1)})
    return out["frames"], out["class_label"]


def tfrecord_pipeline(paths, index_paths, *, batch_size: int):
    """DALI's own TFRecord reader over whole records, shuffled through its default 1024-record buffer.
    It yields only the first value of the ``frames`` bytes list: DALI cannot return a list of strings."""
    return _tfrecord_pipeline([str(p) for p in paths], [str(p) for p in index_paths], batch_size=batch_size,
                              num_threads=os.cpu_count(), device_id=None)
