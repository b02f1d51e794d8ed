"""The public API: a DALI pipeline over indexed shards, and the TensorFlow dataset around it.

Only this module imports DALI's TensorFlow plugin.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .reader import HEADER_INTS, BatchStream
from .sampling import ClipSpec, ShortVideos, VideoTable, load_table, usable_videos

log = logging.getLogger(__name__)
DEVICES = ("gpu", "cpu")
DTYPES = ("float32", "float16", "uint8")
# Columns of the per-frame header the pipeline returns next to the frames.
HEADER_COLUMNS = ("crop_y", "crop_x", "crop_h", "crop_w", "flip", "label", "video", "frame")


@dataclass
class ClipPipeline:
    """A built DALI pipeline with what feeds it. ``pipeline.run()`` returns ``(frames, headers)``:
    ``frames`` is ``[B*T, crop, crop, 3]`` (clip after clip), ``headers`` ``[B*T, 8]`` int32 with
    :data:`HEADER_COLUMNS`. Call :meth:`close` (or use ``with``) to stop the reader threads."""

    pipeline: object
    stream: BatchStream
    table: VideoTable
    videos: np.ndarray
    spec: ClipSpec
    batch_size: int
    items_per_epoch: int

    def close(self) -> None:
        self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _select(files, *, split, clip_len, stride, crop_size, resize_shorter, short_videos, shard_id,
            num_shards, clips_per_video, num_crops):
    spec = ClipSpec(clip_len=clip_len, stride=stride, crop_size=crop_size, resize_shorter=resize_shorter,
                    short_videos=short_videos)
    if not (isinstance(num_shards, int) and num_shards >= 1 and isinstance(shard_id, int)
            and 0 <= shard_id < num_shards):
        raise ValueError(f"shard_id must be in 0..num_shards-1 and num_shards >= 1, got shard_id={shard_id!r}, "
                         f"num_shards={num_shards!r}")
    if clips_per_video < 1:
        raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
    _check_choice("num_crops", num_crops, (1, 3))
    table = load_table(files, split)
    usable = usable_videos(table, spec)
    videos = usable[shard_id::num_shards]
    if len(videos) == 0:
        raise ValueError(f"shard {shard_id} of {num_shards} gets no videos: the dataset has {len(usable)} "
                         f"usable videos; use num_shards <= {max(len(usable), 1)}")
    return spec, table, videos


def clip_pipeline(files, *, batch_size: int, clip_len: int = 64, stride: int = 1, training: bool = True,
                  device: Literal["gpu", "cpu"] = "gpu", resize_shorter: int | None = None,
                  crop_size: int = 224, dtype: Literal["float32", "float16", "uint8"] = "float32",
                  mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), seed: int | None = None,
                  shard_id: int = 0, num_shards: int = 1, short_videos: ShortVideos = "repeat_last",
                  split: str | None = None, clips_per_video: int = 1, num_crops: int = 1,
                  decode_crop: bool = True, device_id: int = 0, reader_threads: int = 4,
                  prefetch: int = 2, num_threads: int | None = None,
                  on_corrupt: Literal["raise", "skip"] = "raise") -> ClipPipeline:
    """The DALI pipeline alone, for use without TensorFlow. Arguments as :func:`clip_dataset`."""
    from .pipeline import clip_pipeline as build

    _check_choice("device", device, DEVICES)
    _check_choice("dtype", dtype, DTYPES)
    _check_choice("on_corrupt", on_corrupt, ("raise", "skip"))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
    spec, table, videos = _select(files, split=split, clip_len=clip_len, stride=stride, crop_size=crop_size,
                                  resize_shorter=resize_shorter, short_videos=short_videos, shard_id=shard_id,
                                  num_shards=num_shards, clips_per_video=clips_per_video, num_crops=num_crops)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (1 << 63))
    stream = BatchStream(table, videos, spec, batch_size, training=training, seed=seed,
                         clips_per_video=1 if training else clips_per_video,
                         num_crops=1 if training else num_crops, threads=reader_threads, prefetch=prefetch,
                         on_corrupt=on_corrupt)
    pipe = build(stream, batch_size=batch_size * clip_len, device=device, device_id=device_id,
                 crop_size=crop_size, resize=resize_shorter is not None, dtype=dtype, mean=mean, std=std,
                 decode_crop=decode_crop, num_threads=num_threads, seed=seed % (1 << 31))
    items = len(videos) * (1 if training else clips_per_video * num_crops)
    return ClipPipeline(pipe, stream, table, videos, spec, batch_size, items)


def steps_per_epoch(files, *, batch_size: int, training: bool = True, clips_per_video: int = 1,
                    num_crops: int = 1, clip_len: int = 64, stride: int = 1, crop_size: int = 224,
                    resize_shorter: int | None = None, short_videos: ShortVideos = "repeat_last",
                    shard_id: int = 0, num_shards: int = 1, split: str | None = None) -> int:
    """Batches that cover every clip of an epoch once (the last batch wraps into the next epoch)."""
    _, _, videos = _select(files, split=split, clip_len=clip_len, stride=stride, crop_size=crop_size,
                           resize_shorter=resize_shorter, short_videos=short_videos, shard_id=shard_id,
                           num_shards=num_shards, clips_per_video=clips_per_video, num_crops=num_crops)
    per_video = 1 if training else clips_per_video * num_crops
    return math.ceil(len(videos) * per_video / batch_size)


def clip_dataset(files, *, batch_size: int, clip_len: int = 64, stride: int = 1, training: bool = True,
                 device: Literal["gpu", "cpu"] = "gpu", resize_shorter: int | None = None,
                 crop_size: int = 224, dtype: Literal["float32", "float16", "uint8"] = "float32",
                 mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), seed: int | None = None,
                 shard_id: int = 0, num_shards: int = 1, short_videos: ShortVideos = "repeat_last",
                 with_meta: bool = False, split: str | None = None, clips_per_video: int = 1,
                 num_crops: int = 1, decode_crop: bool = True, device_id: int = 0,
                 reader_threads: int = 4, prefetch: int = 2, num_threads: int | None = None,
                 on_corrupt: Literal["raise", "skip"] = "raise"):
    """An endless ``tf.data.Dataset`` of ``(clips [B, T, crop, crop, 3], labels [B])`` batches.

    files: a glob, a list of shards, or a dataset folder (``split`` picks one split of a folder).
    training: a random clip start, crop window and flip per clip (the same for all its frames),
        each video once per epoch in a seeded random order. Otherwise the centre crop, no flip, and
        ``clips_per_video`` evenly spaced clips x ``num_crops`` (1 or 3) crops per video, in order.
    device: "gpu" decodes with nvJPEG (``device="mixed"``) and places the dataset on
        ``/gpu:<device_id>``; "cpu" is the CPU fallback.
    resize_shorter: resize frames so the shorter side has this length before cropping (None: keep).
    dtype: "float32" or "float16": ``(pixel - mean) / std``; "uint8": the decoded pixels as they are.
    mean, std: per channel, in pixel units (0-255); the default maps pixels to [0, 1].
    shard_id, num_shards: this reader's disjoint part of the videos (one per replica or host).
    short_videos: videos shorter than a clip repeat their last frame, loop, or are skipped.
    with_meta: elements become ``(clips, labels, meta)``; meta holds per clip the ``filename``,
        the ``first_frame`` and the ``video`` row, to group predictions per video.
    decode_crop: decode only the crop window of each JPEG where DALI can.
    on_corrupt: a frame that fails its CRC32C or JPEG check raises an error naming shard, video and
        frame ("raise"), or its clip is replaced by the next one and counted ("skip"; the reasons are in
        ``ds._dali_video_loader.stream.skipped``).
    Use :func:`steps_per_epoch` for ``model.fit(..., steps_per_epoch=...)``.
    """
    import tensorflow as tf
    from nvidia.dali.plugin import tf as dali_tf

    _check_choice("dtype", dtype, DTYPES)
    # On the GPU, DALI normalises (fused with the flip). With the CPU fallback DALI hands over raw
    # pixels and TensorFlow normalises them: ~10 % faster there than DALI's crop_mirror_normalize.
    normalise_in_tf = device == "cpu" and dtype != "uint8"
    loader = clip_pipeline(files, batch_size=batch_size, clip_len=clip_len, stride=stride, training=training,
                           device=device, resize_shorter=resize_shorter, crop_size=crop_size,
                           dtype="uint8" if normalise_in_tf else dtype,
                           mean=mean, std=std, seed=seed, shard_id=shard_id, num_shards=num_shards,
                           short_videos=short_videos, split=split, clips_per_video=clips_per_video,
                           num_crops=num_crops, decode_crop=decode_crop, device_id=device_id,
                           reader_threads=reader_threads, prefetch=prefetch, num_threads=num_threads,
                           on_corrupt=on_corrupt)
    n = batch_size * clip_len
    placement = f"/gpu:{device_id}" if device == "gpu" else "/cpu:0"
    filenames = tf.constant([n.encode("utf-8", "surrogateescape") for n in loader.table.filename])
    # DALI 2.4 prints a debugging line while it wraps the source; keep stdout clean.
    with tf.device(placement), contextlib.redirect_stdout(io.StringIO()):
        ds = dali_tf.experimental.DALIDatasetWithInputs(
            pipeline=loader.pipeline, batch_size=n,
            output_dtypes=(tf.uint8 if normalise_in_tf else tf.as_dtype(dtype), tf.int32),
            output_shapes=((n, crop_size, crop_size, 3), (n, HEADER_INTS)),
            device_id=device_id if device == "gpu" else None)
    with tf.device(placement):

        @tf.autograph.experimental.do_not_convert
        def to_clips(frames, headers):
            clips = tf.reshape(frames, (batch_size, clip_len, crop_size, crop_size, 3))
            if normalise_in_tf:
                # Per-channel factors tiled along a row: TF broadcasts a length-3 axis slowly.
                scale = tf.constant([1.0 / d for d in std] * crop_size, tf.float32)
                shift = tf.constant([-m / d for m, d in zip(mean, std)] * crop_size, tf.float32)
                rows = tf.reshape(tf.cast(clips, tf.float32), (-1, crop_size * 3)) * scale + shift
                clips = tf.cast(tf.reshape(rows, (batch_size, clip_len, crop_size, crop_size, 3)), dtype)
            first = headers[::clip_len]
            labels = first[:, HEADER_COLUMNS.index("label")]
            if not with_meta:
                return clips, labels
            video = first[:, HEADER_COLUMNS.index("video")]
            with tf.device("/cpu:0"):
                names = tf.gather(filenames, tf.identity(video))
            return clips, labels, {"filename": names, "first_frame": first[:, HEADER_COLUMNS.index("frame")],
                                   "video": video}

        ds = ds.map(to_clips)
    ds._dali_video_loader = loader  # keeps the reader threads alive as long as the dataset
    return ds


def distribute(strategy, files, *, global_batch_size: int, device: Literal["gpu", "cpu"] = "gpu", **kwargs):
    """One :func:`clip_dataset` per replica of a ``tf.distribute`` strategy (MirroredStrategy, say):
    each on its replica's GPU, each reading a disjoint part of the videos."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(f"global_batch_size ({global_batch_size}) must divide evenly among {replicas} replicas")

    def dataset_fn(context):
        replica = context.input_pipeline_id
        return clip_dataset(files, batch_size=global_batch_size // replicas, device=device, device_id=replica,
                            shard_id=replica, num_shards=context.num_input_pipelines, **kwargs)

    options = tf.distribute.InputOptions(
        experimental_place_dataset_on_device=True, experimental_fetch_to_device=False,
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
    return strategy.distribute_datasets_from_function(dataset_fn, options)
