"""The public API: a DALI pipeline over indexed shards, and the TensorFlow dataset around it.

Only this module imports DALI's TensorFlow plugin.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..index_tools import format as fmt

from .config import ClipConfig, resolve
from .sampling import SHORT_CODES, PlanSpec, VideoTable, load_table, usable_videos

log = logging.getLogger(__name__)
DEVICES = ("gpu", "cpu")
# Columns of the int32 metadata the pipeline returns next to the frames (one row per frame, or per clip
# with layout "clips"); the last four hold float32 bits (see meta_fields).
META_COLUMNS = ("crop_y", "crop_x", "crop_h", "crop_w", "flip", "label", "video", "frame", "replaced", "stride",
                "brightness", "contrast", "saturation", "hue")


@dataclass
class ClipPipeline:
    """A built DALI pipeline over dali-video's native reader; :func:`clip_pipeline` says what
    ``pipeline.run()`` returns for each ``layout``. Metadata is int32 with :data:`META_COLUMNS`
    (``video`` is the row in ``table``; ``replaced`` counts damaged clips skipped with
    ``on_corrupt="skip"`` to give this one)."""

    pipeline: object
    table: VideoTable
    videos: np.ndarray  # rows of ``table`` the clips are planned over
    plan: PlanSpec  # with the ClipConfig it reads (plan.config)
    batch_size: int
    num_shards: int
    layout: str = "frames"  # "frames": one sample per frame; "clips": one per clip (see pipeline.Graph)

    @property
    def items_per_epoch(self) -> int:
        """Clips in one epoch of the global sequence (over all readers)."""
        return self.plan.items_per_epoch(len(self.videos))

    @property
    def steps_per_epoch(self) -> int:
        """Batches per reader that cover one epoch; every reader runs the same number."""
        return self.plan.steps_per_epoch(len(self.videos), self.batch_size * self.num_shards)

    def close(self) -> None:
        """Release the pipeline (its reader holds no threads of its own)."""
        self.pipeline = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _random_seed() -> int:
    return int(np.random.SeedSequence().entropy % (1 << 63))


def _select(files, config: ClipConfig, *, training: bool, split, shard_id, num_shards, seed):
    _check_int("num_shards", num_shards, 1)
    if not isinstance(shard_id, int) or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in 0..num_shards-1 ({num_shards - 1}), got {shard_id!r}")
    table = load_table(files, split)
    videos = usable_videos(table, config)
    if len(videos) == 0:
        raise ValueError(f"no videos to read in {files} (all shards empty, or every video skipped)")
    if seed is None and num_shards > 1:
        raise ValueError(f"seed is None with num_shards={num_shards}: readers that share a clip sequence need "
                         f"the same seed; pass seed=<int> to every reader")
    seed = _random_seed() if seed is None else seed
    _check_int("seed", seed, 0)
    if seed >= 1 << 63:
        raise ValueError(f"seed must be below 2**63, got {seed}")
    return PlanSpec(config, seed=int(seed), training=training), table, videos


def _reader_args(table: VideoTable, videos: np.ndarray, plan: PlanSpec, *, shard_id: int, num_shards: int,
                 initial_clip: int, on_corrupt: str) -> dict:
    """The arguments of the native reader (``fn.dali_video_clips``) for these videos and plan."""
    c = plan.config
    used = np.unique(table.shard[videos])  # shards that hold a planned video
    shard_of = np.searchsorted(used, table.shard[videos])
    columns = np.stack([shard_of, *(col[videos] for col in (table.frame_start, table.num_frames, table.height,
                                                            table.width, table.label)), videos], axis=1)
    reals = plan.floats()  # float32 values, as the Python reference plans with them
    return dict(
        shards=[fmt.shard_of(table.shards[s].path) for s in used],  # local paths or s3:// / gs:// URLs
        table_offset=[int(table.shards[s].frame_table_offset) for s in used],
        videos="\n".join(" ".join(map(str, row)) for row in columns.tolist()),
        filenames="\n".join(str(table.filename[v]).encode("utf-8", "backslashreplace").decode()
                            .replace("\n", "\\n") for v in videos),
        plan_seed=plan.seed, training=plan.training, clip_len=c.clip_len, stride=list(c.strides),
        crop_size=c.crop_size, resize_shorter=list(c.resize_range), crop_area=reals[:2] if c.crop_area else [],
        crop_aspect=reals[2:6], flip=c.flip, color_jitter=reals[6:] if c.color_jitter is not None else [],
        short_videos=SHORT_CODES[c.short_videos], clips_per_video=c.clips_per_video, num_crops=c.num_crops,
        shard_id=shard_id, num_shards=num_shards, initial_clip=initial_clip, skip_corrupt=on_corrupt == "skip")


def clip_pipeline(files, *, batch_size: int, recipe: str | ClipConfig | None = None, training: bool = True,
                  device: Literal["gpu", "cpu"] = "gpu", seed: int | None = None, shard_id: int = 0,
                  num_shards: int = 1, initial_clip: int = 0, split: str | None = None, decode_crop: bool = True,
                  device_id: int = 0, num_threads: int | None = None, prefetch_queue_depth: int = 2,
                  on_corrupt: Literal["raise", "skip"] = "raise", layout: Literal["auto", "frames", "clips"] = "auto",
                  hw_decoder_load: float = 0.65, jpeg_fancy_upsampling: bool = False, with_meta: bool = True,
                  output: Literal["frames", "jpegs", "padded_jpegs", "meta"] = "frames", **options) -> ClipPipeline:
    """The DALI pipeline alone, for use without TensorFlow. Arguments as :func:`clip_dataset`.
    ``pipeline.run()`` returns, with layout "frames", ``(frames [B*T, crop, crop, 3], meta [B*T, 14])``;
    with layout "clips", ``(clips [B, T, crop, crop, 3], labels [B], meta [B, 14])`` (meta only
    ``with_meta``; :data:`META_COLUMNS`). ``output="jpegs"`` stops after the reader (JPEG bytes, and
    the metadata)."""
    from .pipeline import Graph
    from .pipeline import clip_pipeline as build

    config = resolve(recipe, training, options)
    _check_choice("device", device, DEVICES)
    _check_choice("layout", layout, ("auto", "frames", "clips"))
    if not 0 <= hw_decoder_load <= 1:
        raise ValueError(f"hw_decoder_load must be in [0, 1], got {hw_decoder_load!r}")
    _check_choice("on_corrupt", on_corrupt, ("raise", "skip"))
    _check_int("batch_size", batch_size, 1)
    _check_int("initial_clip", initial_clip, 0)
    plan, table, videos = _select(files, config, training=training, split=split, shard_id=shard_id,
                                  num_shards=num_shards, seed=seed)
    reader = _reader_args(table, videos, plan, shard_id=shard_id, num_shards=num_shards,
                          initial_clip=initial_clip, on_corrupt=on_corrupt)
    if layout == "auto":  # on the CPU one decoder over B*T frames is faster than T decoders (README)
        layout = "clips" if device == "gpu" else "frames"
    graph = Graph(device=device, layout=layout, crop_size=config.crop_size, resize=config.resizes,
                  color=config.color_jitter is not None, dtype=config.dtype, mean=config.mean, std=config.std, decode_crop=decode_crop, with_meta=with_meta, hw_decoder_load=hw_decoder_load,
                  jpeg_fancy_upsampling=jpeg_fancy_upsampling,
                  frame_bytes=int((table.height[videos] * table.width[videos]).max()) * 3)
    pipe = build(reader, graph, batch_size=batch_size * (config.clip_len if layout == "frames" else 1),
                 device_id=device_id, num_threads=num_threads, prefetch_queue_depth=prefetch_queue_depth,
                 output=output)
    return ClipPipeline(pipe, table, videos, plan, batch_size, num_shards, layout)


def steps_per_epoch(files, *, batch_size: int, recipe: str | ClipConfig | None = None, training: bool = True,
                    num_shards: int = 1, split: str | None = None, **options) -> int:
    """Batches per reader that cover every clip of an epoch once (the last batch runs into the next
    epoch); the same for every reader of ``num_shards``. Clip options as :func:`clip_dataset`."""
    plan, _, videos = _select(files, resolve(recipe, training, options), training=training, split=split,
                              shard_id=0, num_shards=num_shards, seed=0)
    return plan.steps_per_epoch(len(videos), batch_size * num_shards)


def meta_fields(meta) -> dict:
    """The per-clip metadata ``[B, 14]`` (:data:`META_COLUMNS`, int32) as named tensors: ``window``
    ``[B, 4]`` (y, x, h, w in stored pixels), ``flip``, ``label``, ``video`` (row of ``load_table``),
    ``first_frame``, ``replaced``, ``stride`` and ``color`` ``[B, 4]`` float32 (brightness, contrast,
    saturation, hue as a fraction of the colour circle)."""
    import tensorflow as tf

    column = {name: i for i, name in enumerate(META_COLUMNS)}
    fields = {name: meta[:, column[key]] for name, key in (("flip", "flip"), ("label", "label"), ("video", "video"),
                                                           ("first_frame", "frame"), ("replaced", "replaced"),
                                                           ("stride", "stride"))}
    return {**fields, "window": meta[:, column["crop_y"]:column["crop_w"] + 1],
            "color": tf.bitcast(meta[:, column["brightness"]:], tf.float32)}


def clip_dataset(files, *, batch_size: int, recipe: str | ClipConfig | None = None, training: bool = True,
                 device: Literal["gpu", "cpu"] = "gpu", seed: int | None = None, shard_id: int = 0,
                 num_shards: int = 1, initial_clip: int = 0, with_meta: bool = False, split: str | None = None,
                 decode_crop: bool = True, device_id: int = 0, num_threads: int | None = None,
                 prefetch_queue_depth: int = 2, on_corrupt: Literal["raise", "skip"] = "raise",
                 normalize_in: Literal["auto", "dali", "tensorflow"] = "auto",
                 layout: Literal["auto", "frames", "clips"] = "auto", hw_decoder_load: float = 0.65,
                 jpeg_fancy_upsampling: bool = False, **options):
    """An endless ``tf.data.Dataset`` of ``(clips [B, T, crop, crop, 3], labels [B])`` batches.

    files: a glob, a list of shards, or a dataset folder (``split`` picks one split of a folder), local or
        ``s3://BUCKET/PREFIX``, ``gs://BUCKET/PREFIX`` (README, Datasets in S3 and GCS).
    recipe: what each clip is: a preset's name (``"slowfast"``, ``"mvit"``, ``"movinet"``: see
        :data:`dali_video.RECIPES`) or a :class:`ClipConfig`; default ``ClipConfig()``.
    **options: :class:`ClipConfig` fields (``clip_len``, ``stride``, ``crop_size``, ``resize_shorter``,
        ``crop_area``, ``crop_aspect``, ``flip``, ``color_jitter``, ``short_videos``, ``clips_per_video``,
        ``num_crops``, ``dtype``, ``mean``, ``std``), overriding the recipe's.
    training: every random option is drawn per clip (the same for all its frames); each video comes
        once per epoch in a seeded random order (``clips_per_video=K``: K differently drawn clips of
        each video, next to each other). Otherwise the config's fixed evaluation view
        (:meth:`ClipConfig.evaluation`): ``clips_per_video`` evenly spaced clips x ``num_crops`` crops
        per video, in order (a preset's testing view when ``recipe`` names one).
    device: "gpu" decodes with nvJPEG (``device="mixed"``) and places the dataset on
        ``/gpu:<device_id>``; "cpu" is the CPU fallback.
    seed: the clip plan's seed: the same seed gives the same clips on any machine.
    shard_id, num_shards: readers share each global batch of ``batch_size * num_shards`` clips: this
        reader takes part ``shard_id``. The clip sequence is the same whatever ``num_shards`` is, the
        readers' parts are disjoint, and each epoch covers every clip once (one reader per replica or host).
    initial_clip: start at this clip of the global sequence (steps done x global batch size, to resume);
        reached by computation, without reading.
    with_meta: elements become ``(clips, labels, meta)``; meta holds per clip the ``filename``, and
        :func:`meta_fields`: ``first_frame``, ``video`` (row of ``load_table(files)``, to group
        predictions per video), ``window`` ``[y, x, h, w]`` in stored pixels, ``flip``, ``stride``,
        ``color`` (the four factors drawn) and ``replaced`` (damaged clips skipped to give it).
    decode_crop: decode only the crop window of each JPEG where DALI can.
    num_threads, prefetch_queue_depth: DALI's (default: all cores, 2), passed on to DALI's dataset.
    normalize_in: where float output is normalised: "dali" (fused with the flip; "auto", the default)
        or "tensorflow" (after the uint8 pixels reach it; CPU only).
    layout: "clips": DALI emits the final elements, one sample per clip (T decoders and ``fn.stack``);
        "frames": one decoder over the batch's B*T frames, finished by a tf.data map on the CPU.
        "auto" (default): "clips" on the GPU (required there), "frames" on the CPU (measured faster).
    hw_decoder_load: the share of JPEGs the GPU's hardware decoder takes (DALI's default, 0.65; the
        rest go to the CUDA decoder). GPU only.
    jpeg_fancy_upsampling: GPU only: upsample chroma as libjpeg-turbo (the CPU decoder) does, so both
        devices give the same pixels up to IDCT rounding (nvJPEG's faster default differs more).
    On the GPU the dataset lives on ``/gpu:<device_id>`` and with ``with_meta`` the third element is
    the ``[B, 14]`` int32 metadata (:data:`META_COLUMNS`; :func:`meta_fields` names its columns).
    on_corrupt: a frame that fails its CRC32C or JPEG check raises an error naming shard, video, frame
        and byte offset ("raise"), or its clip is replaced by the next ones of the epoch, counted in
        ``meta["replaced"]`` and logged to stderr ("skip").
    Use :func:`steps_per_epoch` for ``model.fit(..., steps_per_epoch=...)``.
    """
    import tensorflow as tf
    from nvidia.dali.plugin import tf as dali_tf

    config = resolve(recipe, training, options)
    _check_choice("normalize_in", normalize_in, ("auto", "dali", "tensorflow"))
    # DALI normalises, fused with the flip: on the CPU too it measured faster than TensorFlow
    # normalising the uint8 pixels it hands over (README, Performance).
    if normalize_in == "auto":
        normalize_in = "dali"
    if device == "gpu" and layout == "frames":
        raise ValueError("layout='frames' needs device='cpu': on the GPU, DALI's dataset must emit whole clips "
                         "(layout='clips', the default there), since no tf.data op may follow it")
    if device == "gpu" and normalize_in == "tensorflow":
        raise ValueError("normalize_in='tensorflow' needs device='cpu': on the GPU, DALI's dataset emits the final "
                         "elements and no tf.data op may follow it (they run on the CPU only)")
    normalise_in_tf = normalize_in == "tensorflow" and config.dtype != "uint8"
    loader = clip_pipeline(files, batch_size=batch_size, recipe=config.replace(dtype="uint8") if normalise_in_tf
                           else config, training=training, device=device, seed=seed, shard_id=shard_id,
                           num_shards=num_shards, initial_clip=initial_clip, split=split, decode_crop=decode_crop,
                           device_id=device_id, num_threads=num_threads, prefetch_queue_depth=prefetch_queue_depth,
                           on_corrupt=on_corrupt, layout=layout, hw_decoder_load=hw_decoder_load,
                           jpeg_fancy_upsampling=jpeg_fancy_upsampling, with_meta=with_meta)
    B, T, c = batch_size, config.clip_len, config.crop_size
    mean, std = config.mean, config.std
    pixels = tf.uint8 if normalise_in_tf else tf.as_dtype(config.dtype)
    meta_shape = (B * T if loader.layout == "frames" else B, len(META_COLUMNS))
    if loader.layout == "frames":  # frames and per-frame metadata: finished by a map on the CPU below
        dtypes, shapes, samples = (pixels, tf.int32), ((B * T, c, c, 3), meta_shape), B * T
    else:  # the final elements: clips, labels (and metadata)
        dtypes, shapes, samples = (pixels, tf.int32), ((B, T, c, c, 3), (B,)), B
        if with_meta:
            dtypes, shapes = dtypes + (tf.int32,), shapes + (meta_shape,)
    with tf.device(f"/gpu:{device_id}" if device == "gpu" else "/cpu:0"):
        # DALI's dataset runs the pipeline with its own num_threads and queue depth unless told.
        ds = dali_tf.DALIDataset(pipeline=loader.pipeline, batch_size=samples, num_threads=loader.pipeline.num_threads,
                                 prefetch_queue_depth=prefetch_queue_depth, output_dtypes=dtypes, output_shapes=shapes,
                                 device_id=device_id if device == "gpu" else None)
    ds._dali_video_loader = loader  # the table and plan it reads, for tools and the CLI
    if device == "gpu":  # elements are final; with_meta gives the metadata as ``[B, 14]`` (META_COLUMNS)
        return ds
    filenames = tf.constant([n.encode("utf-8", "surrogateescape") for n in loader.table.filename])
    label = META_COLUMNS.index("label")

    @tf.autograph.experimental.do_not_convert
    def finish(images, *rest):
        if loader.layout == "frames":
            clips, first = tf.reshape(images, (B, T, c, c, 3)), rest[0][::T]
            labels = first[:, label]
        else:
            clips, labels, first = images, rest[0], (rest[1] if with_meta else None)
        if normalise_in_tf:
            # Per-channel factors tiled along a row: TF broadcasts a length-3 axis slowly.
            scale = tf.constant([1.0 / d for d in std] * c, tf.float32)
            shift = tf.constant([-m / d for m, d in zip(mean, std)] * c, tf.float32)
            rows = tf.reshape(tf.cast(clips, tf.float32), (-1, c * 3)) * scale + shift
            clips = tf.cast(tf.reshape(rows, (B, T, c, c, 3)), config.dtype)
        if not with_meta:
            return clips, labels
        fields = meta_fields(first)
        del fields["label"]
        return clips, labels, {"filename": tf.gather(filenames, fields["video"]), **fields}

    with tf.device("/cpu:0"):
        mapped = ds.map(finish)
    mapped._dali_video_loader = loader
    return mapped


def reader_dataset(files, *, batch_size: int, clip_len: int, crop_size: int, seed: int | None = None,
                   with_bytes: bool = False, **kwargs):
    """The native reader alone through DALI's TF dataset, no decoding: the clips' frames are read and
    checked in DALI as for decoding, and TensorFlow gets each frame's metadata ``[B*T, 14]`` (with
    ``with_bytes``, also its JPEG bytes zero-padded to the batch's longest, ``[B*T, L]``). Measures and
    checks the feed (dali-video-bench, dali-video-doctor); keywords as :func:`clip_pipeline`."""
    import tensorflow as tf
    from nvidia.dali.plugin import tf as dali_tf

    loader = clip_pipeline(files, batch_size=batch_size, clip_len=clip_len, crop_size=crop_size, seed=seed,
                           device="cpu", output="padded_jpegs" if with_bytes else "meta", **kwargs)
    n = batch_size * clip_len
    meta = (n, len(META_COLUMNS))
    with tf.device("/cpu:0"):
        ds = dali_tf.DALIDataset(pipeline=loader.pipeline, batch_size=n, num_threads=loader.pipeline.num_threads,
                                 output_dtypes=(tf.uint8, tf.int32) if with_bytes else tf.int32,
                                 output_shapes=((n, None), meta) if with_bytes else meta, device_id=None)
    ds._dali_video_loader = loader
    return ds


def distribute(strategy, files, *, global_batch_size: int, device: Literal["gpu", "cpu"] = "gpu",
               per_worker: bool | None = None, **kwargs):
    """:func:`clip_dataset` for a ``tf.distribute`` strategy: every global batch is the same set of clips
    whatever the number of replicas, hosts or readers (one seed for all), each reader taking its share.

    Per replica (MirroredStrategy): one pipeline per replica, on the replica's own device
    (``MirroredStrategy(["/gpu:2", "/gpu:3"])`` reads on GPUs 2 and 3). Per worker
    (MultiWorkerMirroredStrategy, the default there, which takes no per-replica datasets): one
    pipeline per worker process, reading its share of each global batch; run one worker per GPU.
    Every worker then runs the same number of steps per epoch
    (:func:`steps_per_epoch` with ``batch_size=global_batch_size``). Across hosts pass ``seed``.
    """
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(f"global_batch_size ({global_batch_size}) must divide evenly among {replicas} replicas")
    if per_worker is None:
        per_worker = strategy.extended._in_multi_worker_mode()
    local = len(strategy.extended.worker_devices)
    if per_worker and local > 1:  # one element feeds each local replica: the host's share would repeat
        raise ValueError(f"distribute(per_worker=True) takes one replica per worker, this one has {local}: run one "
                         f"worker process per GPU (one TF_CONFIG task each)")
    if kwargs.get("seed") is None:  # every reader must plan the same clip sequence
        if per_worker:
            raise ValueError("distribute(per_worker=True) needs seed=<int>: every host must plan the same clips")
        kwargs["seed"] = _random_seed()
    # The strategy's own devices: MirroredStrategy(["/gpu:2", "/gpu:3"]) puts replica 0 on GPU 2.
    devices = [tf.DeviceSpec.from_string(d) for d in strategy.extended.worker_devices]
    pipelines = 1 if per_worker else len(devices)
    kwargs.setdefault("num_threads", max(1, (os.cpu_count() or 1) // pipelines))  # the host's cores, shared

    def dataset_fn(context):
        reader = context.input_pipeline_id
        return clip_dataset(files, batch_size=global_batch_size // context.num_input_pipelines, device=device,
                            device_id=(devices[0 if per_worker else reader].device_index or 0),
                            shard_id=reader, num_shards=context.num_input_pipelines, **kwargs)

    if per_worker:
        return strategy.distribute_datasets_from_function(dataset_fn)
    options = tf.distribute.InputOptions(
        experimental_place_dataset_on_device=True, experimental_fetch_to_device=False,
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
    return strategy.distribute_datasets_from_function(dataset_fn, options)
