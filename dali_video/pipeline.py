"""The DALI pipeline: dali-video's native reader, then decoded, cropped, flipped and normalised frames.

The only module that imports ``nvidia.dali`` (with ``native``, which builds and loads the reader).
``device`` is "gpu" (decoding with ``device="mixed"``, nvJPEG) or "cpu" (the CPU fallback), decided
once when the pipeline is built.
"""
from __future__ import annotations

import os
from typing import Literal

from nvidia.dali import fn, pipeline_def, types

from . import native

Device = Literal["gpu", "cpu"]
DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "uint8": types.UINT8}


@pipeline_def(enable_conditionals=False)
def _clip_pipeline(reader: dict, device: str, crop_size: int, resize: bool, dtype: str, mean, std,
                   decode_crop: bool, output: str):
    # "padded_jpegs": the reader alone, each frame's bytes zero-padded to the batch's longest (uniform
    # shapes for TensorFlow; padding in the reader costs less than DALI's fn.pad after it).
    jpegs, meta = fn.dali_video_clips(**reader, pad=output == "padded_jpegs")
    if output == "meta":  # the JPEGs stay in DALI, read and checked, as a decoder would get them
        return meta
    if output != "frames":
        return jpegs, meta
    anchor, shape, flip = meta[0:2], meta[2:4], meta[4]
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
    return images, (meta.gpu() if device == "gpu" else meta)


def clip_pipeline(reader: dict, *, batch_size: int, device: Device = "gpu", device_id: int | None = 0,
                  crop_size: int = 224, resize: bool = False, dtype: str = "float32",
                  mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), decode_crop: bool = True,
                  output: Literal["frames", "jpegs", "padded_jpegs", "meta"] = "frames",
                  num_threads: int | None = None, prefetch_queue_depth: int = 2):
    """Build the DALI pipeline over the native reader, whose arguments ``reader`` holds (see
    ``fn.dali_video_clips``); ``batch_size`` counts frames. Outputs are the frames ``[N, crop, crop, 3]``
    and the metadata ``[N, 9]`` (``dali_video.META_COLUMNS``). Frames are ``(pixel - mean) / std`` as ``dtype``,
    or the raw pixels for uint8. ``output="jpegs"`` (or "padded_jpegs", or "meta" alone) stops after the reader."""
    native.load()
    return _clip_pipeline(reader, device, crop_size, resize, dtype, mean, std, decode_crop, output,
                          batch_size=batch_size, num_threads=num_threads or os.cpu_count(),
                          device_id=device_id if device == "gpu" else None,
                          prefetch_queue_depth=prefetch_queue_depth)


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


def tfrecord_pipeline(paths, index_paths, *, batch_size: int):
    """DALI's own TFRecord reader over whole records, shuffled through its default 1024-record buffer.
    It yields only the first value of the ``frames`` bytes list: DALI cannot return a list of strings."""
    return _tfrecord_pipeline([str(p) for p in paths], [str(p) for p in index_paths], batch_size=batch_size,
                              num_threads=os.cpu_count(), device_id=None)
