"""The systems the bench measures: dali-video's loader, its reader alone and its recipes, tf.data, DALI's own
TFRecord reader and the decode bound; each a runner ``(data, batch_size, clip_len, crop, batches, device)``
that returns its figures (:func:`.measure.measure` runs one in a fresh process)."""
from __future__ import annotations

import functools
import multiprocessing.pool
import os
import time

import numpy as np

from ...index_tools import fidx_path, read_frame_index
from ...index_tools import format as fmt
from ...index_tools.proto import walk
from .measure import dataset_files, sizes, thread_count, time_batches

RECIPE_ROWS = ("slowfast", "mvit", "tsm_ssv2")  # tsm_ssv2: segment sampling (one frame from each of 8 segments)


def run_dali_video(data, batch_size, clip_len, crop, batches, device, raw=False, normalize_in="auto", seconds=None,
                   io_threads=None, proxy=None):
    """float32 in [0, 1] like the other loaders, or (raw) the uint8 pixels a model normalises itself.
    ``seconds``: timed for about that long instead of ``batches``."""
    from ...loader.dataset import clip_dataset

    start, threads = time.perf_counter(), thread_count()
    pixels = dict(dtype="uint8", std=(1.0, 1.0, 1.0)) if raw else {}
    ds = clip_dataset(data, batch_size=batch_size, clip_len=clip_len, crop_size=crop, device=device, seed=0,
                      normalize_in=normalize_in, io_threads=io_threads, **pixels)
    out = time_batches(iter(ds), batches, batch_size, clip_len, start, seconds, proxy)
    out["threads_started"] = thread_count() - threads  # DALI's and TensorFlow's, for this pipeline
    out["bytes_per_clip"] = out["bytes_read_per_clip"]  # the frames' bytes, and the frame index rows
    out["read_amplification"] = out["bytes_per_clip"] / sizes(data, clip_len)[1]
    return out


def run_recipe(data, batch_size, clip_len, crop, batches, device, name):
    """clip_dataset with a preset recipe, at the recipe's clip length and crop size (not the bench's)."""
    from ...loader.dataset import clip_dataset

    start = time.perf_counter()
    ds = clip_dataset(data, batch_size=batch_size, recipe=name, device=device, seed=0)
    return time_batches(iter(ds), batches, batch_size, ds._dali_video_loader.plan.config.clip_len, start)


def _feed_rate(data, batch_size, clip_len, crop, batches, *, readers=1, threads=None, with_bytes=False):
    from ...loader.dataset import reader_dataset

    start = time.perf_counter()
    its = [iter(reader_dataset(data, batch_size=batch_size // readers, clip_len=clip_len, crop_size=crop, seed=0,
                               shard_id=r, num_shards=readers, with_bytes=with_bytes, num_threads=threads))
           for r in range(readers)]
    for it in its:
        next(it)
    first = time.perf_counter() - start
    t0 = time.perf_counter()
    if readers == 1:  # in this thread: large tensors came out ~10x slower in a pool thread here
        for _ in range(batches):
            next(its[0])
    else:
        with multiprocessing.pool.ThreadPool(readers) as pool:  # TF lets go of the GIL while it waits
            pool.map(lambda it: [next(it) for _ in range(batches)], its)
    seconds = time.perf_counter() - t0
    frames = batches * (batch_size // readers) * readers * clip_len
    return {"frames_per_s": frames / seconds, "clips_per_s": frames / clip_len / seconds, "first_batch_s": first}


def run_feed_native(data, batch_size, clip_len, crop, batches, device, with_bytes=False):
    """The native reader through DALIDataset, no decoding. The frames stay in DALI as for decoding and
    TF gets the metadata (``with_bytes``: the padded bytes too)."""
    return _feed_rate(data, batch_size, clip_len, crop, batches, with_bytes=with_bytes)


def run_feed_native_x2(data, batch_size, clip_len, crop, batches, device):
    """Two native pipelines in one process, one DALI thread each, against one pipeline with one thread:
    what one process gains from a second pipeline (no GIL between them)."""
    one = _feed_rate(data, batch_size, clip_len, crop, batches, threads=1)
    two = _feed_rate(data, batch_size, clip_len, crop, batches, readers=2, threads=1)
    return {**two, "one_pipeline_frames_per_s": one["frames_per_s"],
            "vs_one_pipeline": two["frames_per_s"] / one["frames_per_s"]}


def run_feed_python(data, batch_size, clip_len, crop, batches, device):
    """The Python feed (threads + DALIDatasetWithInputs), no decoding: the baseline."""
    from ...loader.dataset import clip_pipeline
    from .baselines import python_feed_dataset
    from .python_feed import BatchStream

    start = time.perf_counter()
    loader = clip_pipeline(data, batch_size=batch_size, clip_len=clip_len, crop_size=crop, device="cpu", seed=0)
    stream = BatchStream(loader.table, loader.videos, loader.plan, batch_size)
    try:
        return time_batches(iter(python_feed_dataset(stream, batch_size * clip_len)), batches, batch_size,
                             clip_len, start)
    finally:
        stream.close()


def _layout(shard) -> tuple[str, tuple, str | None]:
    """How a shard stores a video, for a tf.data parser: its layout (from the frame index), the frames'
    feature keys and the label's key (from its first record)."""
    index = read_frame_index(fidx_path(shard))
    features, _ = walk(next(fmt.scan_records(shard))[2])
    label = next((k for k in fmt.LABEL_KEYS if k in features), None)
    if index.layout != "frame_features":
        return index.layout, (index.frames_key,), label
    # One feature per frame: parse_single_example needs every key; their numbers' width is the first's.
    width = min(len(m[1]) for k in features if (m := fmt.FRAME_FEATURE_RE.match(k)))
    return index.layout, tuple(f"frames/{k:0{width}d}" for k in range(max(index.videos["num_frames"]))), label


def _parser(layout: str, keys: tuple, label: str | None):
    """record -> (frames [n] JPEG strings, label (-1 without one)) for one layout."""
    import tensorflow as tf

    labels = {label: tf.io.FixedLenFeature([], tf.int64, -1)} if label else {}

    def parse(record):
        if layout == "sequence_example":
            context, lists = tf.io.parse_single_sequence_example(
                record, context_features=labels,
                sequence_features={keys[0]: tf.io.FixedLenSequenceFeature([], tf.string)})
            frames = lists[keys[0]]
        elif layout == "frame_features":  # every numbered key, "" past the record's last frame
            context = tf.io.parse_single_example(record, {**labels, **{k: tf.io.FixedLenFeature([], tf.string, "")
                                                                        for k in keys}})
            frames = tf.stack([context[k] for k in keys])
            frames = frames[:tf.reduce_sum(tf.cast(frames != "", tf.int32))]
        else:
            context = tf.io.parse_single_example(record, {**labels, keys[0]: tf.io.VarLenFeature(tf.string)})
            frames = context[keys[0]].values
        return frames, context[label] if label else tf.constant(-1, tf.int64)

    return parse


def fsspec_records(path):
    """A shard's records as a ``tf.data.Dataset``, streamed through fsspec (buffered ranged GETs): how a
    tf.data user reads a bucket that TensorFlow's own filesystems cannot reach (TF 2.21 has no s3://, and
    its gs:// has Google's endpoint built in)."""
    import tensorflow as tf

    def records(url):
        for _, _, data in fmt.scan_records(url.decode()):
            yield data

    return tf.data.Dataset.from_generator(records, args=(path,), output_signature=tf.TensorSpec([], tf.string))


def tfdata_dataset(shards, batch_size, clip_len, crop, *, read_records=None, decode=True):
    """What a good TF user writes: interleave, parse, random offset, decode-and-crop, batch, prefetch.
    Reads every layout the loader reads (shards of several layouts: one stream per layout, mixed).
    ``read_records``: path -> its records (default ``TFRecordDataset``); ``decode=False``: the clips' JPEGs
    ``[B, T]``, not decoded (the reader alone)."""
    import tensorflow as tf

    auto = tf.data.AUTOTUNE
    read_records = read_records or tf.data.TFRecordDataset
    groups = {}
    for shard in shards:
        groups.setdefault(_layout(shard), []).append(shard)

    def clip(frames, label):
        n = tf.shape(frames)[0]
        start = tf.random.uniform([], 0, tf.maximum(n - clip_len, 0) + 1, dtype=tf.int32)
        picked = tf.gather(frames, tf.minimum(start + tf.range(clip_len), n - 1))
        if not decode:
            return picked, label
        size = tf.image.extract_jpeg_shape(frames[0])
        h, w = size[0], size[1]
        y = tf.random.uniform([], 0, h - crop + 1, dtype=tf.int32)
        x = tf.random.uniform([], 0, w - crop + 1, dtype=tf.int32)
        images = tf.map_fn(lambda j: tf.image.decode_and_crop_jpeg(j, [y, x, crop, crop], channels=3), picked,
                           fn_output_signature=tf.TensorSpec([crop, crop, 3], tf.uint8))
        images = tf.cond(tf.random.uniform([]) < 0.5, lambda: tf.reverse(images, [2]), lambda: images)
        return tf.cast(images, tf.float32) / 255.0, label

    streams = []
    for layout, group in groups.items():
        files = tf.data.Dataset.from_tensor_slices([str(s) for s in group]).shuffle(len(group)).repeat()
        records = files.interleave(read_records, cycle_length=min(4, len(group)), num_parallel_calls=auto,
                                   deterministic=False)
        streams.append(records.map(_parser(*layout), num_parallel_calls=auto, deterministic=False))
    ds = streams[0] if len(streams) == 1 else tf.data.Dataset.sample_from_datasets(streams)
    return ds.shuffle(16).map(clip, num_parallel_calls=auto, deterministic=False).batch(batch_size).prefetch(auto)


def run_tfdata(data, batch_size, clip_len, crop, batches, device):
    shards, _ = dataset_files(data)
    start = time.perf_counter()
    out = time_batches(iter(tfdata_dataset(shards, batch_size, clip_len, crop)), batches, batch_size, clip_len,
                        start)
    record, sampled, _ = sizes(data, clip_len)
    out["read_amplification"] = record / sampled
    out["bytes_per_clip"] = record
    return out


def run_dali_tfrecord(data, batch_size, clip_len, crop, batches, device):
    from ...index_tools import idx_path

    from .baselines import tfrecord_pipeline

    shards, _ = dataset_files(data)
    start = time.perf_counter()
    pipe = tfrecord_pipeline(shards, [idx_path(s) for s in shards], batch_size=batch_size)
    pipe.build()
    out = time_batches(iter(pipe.run, None), batches, batch_size, clip_len, start)
    record, sampled, _ = sizes(data, clip_len)
    # Records/s, not clips: this reader returns only the first JPEG of each record's frames list.
    out = {"records_per_s": out["clips_per_s"], "first_batch_s": out["first_batch_s"], "clips_per_s": None,
           "frames_per_s": None, "read_amplification": record / sampled, "bytes_per_clip": record}
    return out


def run_decode_bound(data, batch_size, clip_len, crop, batches, device, recipe=None):
    """Decode the frames of real clips from memory: DALI (same crop windows) and cv2, all cores. With
    ``recipe``, the frames and windows that preset reads."""
    import cv2

    from ...loader.dataset import clip_pipeline
    from .baselines import decode_pipeline

    jpegs, windows = [], []
    clip = dict(recipe=recipe) if recipe else dict(clip_len=clip_len, crop_size=crop)
    with clip_pipeline(data, batch_size=batch_size, device="cpu", seed=0, output="jpegs", **clip) as loader:
        clip_len = loader.plan.config.clip_len
        for _ in range(min(batches, 8)):
            frames, meta = loader.pipeline.run()
            jpegs.append([np.array(f) for f in frames])
            windows.append(list(meta.as_array()))
    n = batch_size * clip_len
    state = {"i": 0}

    def source():
        i = state["i"] % len(jpegs)
        state["i"] += 1
        return jpegs[i], [w[0:2].copy() for w in windows[i]], [w[2:4].copy() for w in windows[i]]

    start = time.perf_counter()
    pipe = decode_pipeline(source, batch_size=n, device=device)
    pipe.build()
    out = time_batches(iter(pipe.run, None), batches, batch_size, clip_len, start)
    flat = [bytes(j) for batch in jpegs for j in batch]
    cv2.setNumThreads(1)
    with multiprocessing.pool.ThreadPool(os.cpu_count()) as pool:
        t0 = time.perf_counter()
        pool.map(lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), flat, chunksize=16)
        out["cv2_frames_per_s"] = len(flat) / (time.perf_counter() - t0)
    out.update(read_amplification=None, bytes_per_clip=0)
    return out


RUNNERS = {"dali_video": run_dali_video, "dali_video_uint8": functools.partial(run_dali_video, raw=True),
           "dali_video_tf_norm": functools.partial(run_dali_video, normalize_in="tensorflow"),
           "tfdata": run_tfdata, "dali_tfrecord": run_dali_tfrecord, "decode_bound": run_decode_bound,
           "feed_native": run_feed_native, "feed_native_x2": run_feed_native_x2,
           "feed_native_bytes": functools.partial(run_feed_native, with_bytes=True),
           "feed_python": run_feed_python,
           **{f"recipe_{r}": functools.partial(run_recipe, name=r) for r in RECIPE_ROWS},
           **{f"recipe_{r}_bound": functools.partial(run_decode_bound, recipe=r) for r in RECIPE_ROWS}}
