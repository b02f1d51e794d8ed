"""The public API: a DALI pipeline over indexed shards, and the TensorFlow dataset around it.

Only this module imports DALI's TensorFlow plugin.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..index_tools import format as fmt
from ..index_tools import storage

from .config import ClipConfig, _is_int, _is_real, resolve
from .errors import tensorflow
from .gpu import dali_device_id, usable_gpus
from .resources import BUCKET_IO_THREADS, MAX_THREADS, pipeline_threads, usable_cores
from .sampling import (RULE_CODES, SAMPLING_CODES, SHORT_CODES, VIEW_CODES, MixPlan, Mixture, PlanSpec,
                       VideoTable, centred, labels_by_head, load_table, mix_plan, mix_slots, mixture_table,
                       shared_flip_pairs, usable_videos)

log = logging.getLogger(__name__)
IO_TIMEOUT = 60.0  # seconds a read of an object in a bucket may take, retries included (io_timeout)
DEVICES = ("auto", "gpu", "cpu")
LABEL_FORMATS = ("multi_hot", "indices")  # label_format's
# Columns of the int32 metadata the pipeline returns next to the frames (one row per frame, or per clip
# with layout "clips"); brightness..hue hold float32 bits (see meta_fields); padding is 1 for the clips that
# only fill an evaluation pass's last batch; dataset is a Mixture's dataset (0 otherwise).
META_COLUMNS = ("crop_y", "crop_x", "crop_h", "crop_w", "flip", "label", "video", "frame", "replaced", "stride",
                "brightness", "contrast", "saturation", "hue", "padding", "dataset")


@dataclass
class ClipPipeline:
    """A built DALI pipeline over dali-video's native reader; :func:`clip_pipeline` says what
    ``pipeline.run()`` returns for each ``layout``. Metadata is int32 with :data:`META_COLUMNS`
    (``video`` is the row in ``table``; ``replaced`` counts damaged clips skipped with
    ``on_corrupt="skip"`` to give this one)."""

    pipeline: object
    table: VideoTable
    videos: np.ndarray  # rows of ``table`` the clips are planned over
    plan: PlanSpec | MixPlan  # with the ClipConfig it reads (plan.config; a Mixture's first dataset's)
    batch_size: int
    num_shards: int
    layout: str = "frames"  # "frames": one sample per frame; "clips": one per clip (see pipeline.Graph)
    instance: str = field(default="", repr=False)  # the reader's name for native.close

    def __post_init__(self):
        # Its readers (DALI's TF dataset builds its own from the serialized pipeline) stop waiting for
        # reads once this is closed or collected, so that deleting them never waits on a hung store.
        if self.instance:
            self._close = weakref.finalize(self, _close_readers, self.instance)

    @property
    def items_per_epoch(self) -> int:
        """Clips in one epoch of the global sequence (over all readers)."""
        return self.plan.items_per_epoch(len(self.videos))

    @property
    def steps_per_epoch(self) -> int:
        """Batches per reader that cover one epoch; every reader runs the same number."""
        return self.plan.steps_per_epoch(len(self.videos), self.batch_size * self.num_shards)

    def close(self) -> None:
        """Release the pipeline; its reader's waits for reads end at once (a store that hangs is not
        waited for)."""
        if self.instance:
            self._close()
        self.pipeline = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _dali_tf(what: str):
    """DALI's TensorFlow plugin (this module alone imports it) for ``dali_video.<what>``, or an ImportError
    naming how to install it."""
    tensorflow(what)
    try:
        from nvidia.dali.plugin import tf as dali_tf
    except ModuleNotFoundError as e:
        raise ImportError(f"dali_video.{what} needs DALI's TensorFlow plugin, which is not installed here ({e}): "
                          f"pip install --no-build-isolation nvidia-dali-tf-plugin-cuda120 at the version of "
                          f"pyproject.toml's tf-plugin extra (make setup does)") from None
    from . import native

    if not native.route_tf_iterators():
        log.debug("DALI's TF plugin's calls are not routed: deleting an iterator may wait io_timeout")
    return dali_tf


def _close_readers(instance: str) -> None:
    from . import native

    native.close(instance)


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _default_io_threads(files) -> int:
    """The reader's read-ahead threads for ``files`` (shards, a folder, a glob or a Mixture): a bucket's
    latency is hidden by requests in flight; a local disk needs none."""
    if isinstance(files, Mixture):
        return max(_default_io_threads(part[0]) for part in files.parts)
    names = [files] if isinstance(files, (str, os.PathLike)) else files
    return BUCKET_IO_THREADS if any(storage.is_url(f) for f in names) else 0


def _check_int(name: str, value, low: int) -> None:
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _device(device: str) -> str:
    """"gpu" or "cpu" for ``device``: "auto" takes the GPU when the driver offers one, else the CPU,
    saying so once; "gpu" on a host without one is refused before DALI fails to load CUDA."""
    _check_choice("device", device, DEVICES)
    if device == "cpu":
        return device
    gpus, why = usable_gpus()
    if gpus:
        return "gpu"
    if device == "gpu":
        raise ValueError(f"device='gpu' but this host has no usable GPU ({why}); pass device='cpu' "
                         f"(or device='auto', which picks the CPU there)")
    _say_cpu(why)
    return "cpu"


@functools.cache
def _say_cpu(why: str) -> None:
    log.warning("device='auto': no usable GPU (%s); decoding on the CPU", why)


def _random_seed() -> int:
    return int(np.random.SeedSequence().entropy % (1 << 63))


def _configs(files, recipe, training: bool, options: dict) -> list[ClipConfig]:
    """The config of each dataset read: one, or a Mixture's recipes with ``options`` overriding each."""
    if not isinstance(files, Mixture):
        return [resolve(recipe, training, options)]
    if recipe is not None:
        raise ValueError(f"a Mixture carries a recipe per dataset: pass recipe=None, got recipe={recipe!r}")
    configs = [resolve(r, training, options) for _, r, _ in files.parts]
    shared = ("clip_len", "crop_size", "dtype", "mean", "std")
    for i, c in enumerate(configs):
        differ = [f for f in shared if getattr(c, f) != getattr(configs[0], f)]
        if differ:
            raise ValueError(f"Mixture datasets 0 and {i} differ in {', '.join(differ)}: the recipes must agree on "
                             f"{', '.join(shared)} (pass them as keywords to set them for all; dali-video-train: "
                             f"--clip-len, --crop-size, --mean, --std)")
    return configs


def _select(files, configs: list, *, training: bool, split, shard_id, num_shards, seed, global_batch,
            mixed_classes=False, centre=False):
    """The plan, the video table and the rows of it to read (a Mixture's: its usable videos, dataset after
    dataset, labels in the shared label space)."""
    _check_int("num_shards", num_shards, 1)
    if not isinstance(shard_id, int) or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in 0..num_shards-1 ({num_shards - 1}), got {shard_id!r}")
    tables, rows = [], []
    for part, config in zip(files.parts if isinstance(files, Mixture) else [(files,)], configs):
        tables.append(load_table(part[0], split, mixed_classes=mixed_classes))
        if centre:
            tables[-1] = centred(tables[-1], config)
        rows.append(usable_videos(tables[-1], config))
        if len(rows[-1]) == 0:
            raise ValueError(f"no videos to read in {part[0]} (all shards empty, or every video skipped)")
    if seed is None and num_shards > 1:
        raise ValueError(f"seed is None with num_shards={num_shards}: readers that share a clip sequence need "
                         f"the same seed; pass seed=<int> to every reader")
    seed = _random_seed() if seed is None else seed
    _check_int("seed", seed, 0)
    if seed >= 1 << 63:
        raise ValueError(f"seed must be below 2**63, got {seed}")
    if not isinstance(files, Mixture):
        return PlanSpec(configs[0], seed=int(seed), training=training, global_batch=global_batch), tables[0], rows[0]
    plan = mix_plan(files, configs, [len(r) for r in rows], seed=int(seed), training=training,
                    global_batch=global_batch)
    table = mixture_table(files, tables, rows)
    # The pairs swap the label in the shared label space; with labels by head, the first head's class ids,
    # which a Mixture leaves as they are (its datasets have the same heads).
    pairs = tuple(c.flip_label_pairs for c in configs) if labels_by_head(table.heads) else \
        shared_flip_pairs(files, tables, configs)
    return dataclasses.replace(plan, flip_label_pairs=pairs), table, np.arange(len(table))


def _native_table(table: VideoTable, videos: np.ndarray):
    """The native reader's video table of these ``videos`` (rows of ``table``): one per process, shared
    by every reader of the same videos (see ``native.table``)."""
    from .native.table import video_table

    used = np.unique(table.shard[videos])  # shards that hold a planned video
    shards = [str(fmt.shard_of(table.shards[s].path)) for s in used]  # local paths or s3:// / gs:// URLs
    key = hashlib.sha256(table.digest + np.ascontiguousarray(videos, np.int64).tobytes()).hexdigest()

    def make():
        ix = [table.shards[s] for s in used]
        shard_columns = [(i.frame_table_offset, i.num_frame_rows, i.frame_table_crc, i.shard_size) for i in ix]
        row = table.frame_start[videos] + table.first[videos]  # an item's first frame (a segment's, or its video's)
        columns = np.stack([np.searchsorted(used, table.shard[videos]), row, table.num_frames[videos],
                            table.height[videos], table.width[videos], table.label[videos], videos,
                            table.record_offset[videos], table.record_offset[videos] + table.record_length[videos],
                            table.first[videos]], axis=1)
        return (shard_columns, columns, table.fps[videos], _name_lines(table.filename[videos].tolist()),
                table.head_labels[videos])

    return video_table(key, shards, make)


def _name_lines(names: list) -> bytes:
    """The videos' names, one line each (a newline in a name written as ``\\n``), as UTF-8."""
    try:
        text = "\n".join(names)  # at once: 300k names at start-up
    except TypeError:  # a name that is no string
        text = None
    if text is None or text.count("\n") != max(len(names) - 1, 0):
        text = "\n".join(str(n).replace("\n", "\\n") for n in names)
    return text.encode("utf-8", "backslashreplace")


def _reader_args(table: VideoTable, videos: np.ndarray, plan: PlanSpec | MixPlan, *, shard_id: int,
                 num_shards: int, initial_clip: int, on_corrupt: str) -> dict:
    """The arguments of the native reader (``fn.dali_video_clips``) for these videos and plan."""
    c, mixed = plan.config, isinstance(plan, MixPlan)
    wide = videos[(table.label[videos] < -2**31) | (table.label[videos] >= 2**31)]
    if len(wide):  # the reader carries labels as int32
        v = wide[0]
        raise ValueError(f"video {table.filename[v]!r} in {table.shards[table.shard[v]].path} has label "
                         f"{table.label[v]}, beyond the reader's int32 range [-2**31, 2**31); re-index it with a "
                         f"smaller label")
    reals = plan.floats()  # float32 values, as the Python reference plans with them
    pairs_of = plan.flip_label_pairs if mixed else (c.flip_label_pairs,)  # per dataset
    return dict(
        table=_native_table(table, videos),
        plan_seed=plan.seed, training=plan.training, clip_len=c.clip_len, stride=list(c.strides),
        crop_size=c.crop_size, resize_shorter=list(c.resize_range), crop_area=reals[:2] if c.crop_area else [],
        crop_aspect=reals[2:6], flip=c.flip, color_jitter=reals[6:10] if c.color_jitter is not None else [],
        short_videos=SHORT_CODES[c.short_videos], clips_per_video=c.clips_per_video, num_crops=c.num_crops,
        sampling=SAMPLING_CODES[c.sampling], segment_rule=RULE_CODES[c.segment_rule], twice_sample=c.twice_sample,
        test_views=VIEW_CODES[c.test_views], target_fps=reals[10],
        flip_label_pairs=[v for pairs in pairs_of for pair in pairs for v in pair],
        flip_pair_datasets=[d for d, pairs in enumerate(pairs_of) for _ in pairs],
        flip_columns=table.heads[0][2] if table.heads else 0,  # the first head's ids swap as the label does
        parts=[v for p in plan.parts for v in p.as_ints()] if mixed else [],
        part_videos=list(plan.counts) if mixed else [], mix_slots=mix_slots(plan.weights) if mixed else [],
        global_batch=plan.global_batch, shard_id=shard_id, num_shards=num_shards, initial_clip=initial_clip,
        skip_corrupt=on_corrupt == "skip")


def clip_pipeline(files, *, batch_size: int, recipe: str | ClipConfig | None = None, training: bool = True,
                  device: Literal["auto", "gpu", "cpu"] = "auto", seed: int | None = None, shard_id: int = 0,
                  num_shards: int = 1, initial_clip: int = 0, split: str | None = None,
                  mixed_classes: bool = False, decode_crop: bool = True,
                  device_id: int = 0, num_threads: int | None = None, prefetch_queue_depth: int = 2,
                  on_corrupt: Literal["raise", "skip"] = "raise", layout: Literal["auto", "frames", "clips"] = "auto",
                  hw_decoder_load: float = 0.65, jpeg_fancy_upsampling: bool = False, with_meta: bool = True,
                  host_output: bool = False, io_threads: int | None = None, io_timeout: float = IO_TIMEOUT,
                  output: Literal["frames", "jpegs", "padded_jpegs", "meta"] = "frames", centre: bool = False,
                  label_format: Literal["multi_hot", "indices"] = "multi_hot", **options) -> ClipPipeline:
    """The DALI pipeline alone, for use without TensorFlow. Arguments as :func:`clip_dataset`.
    ``pipeline.run()`` returns, with layout "frames", ``(frames [B*T, crop, crop, 3], meta [B*T, 16])``;
    with layout "clips", ``(clips [B, T, crop, crop, 3], labels [B], meta [B, 16], frames [B, T])`` (meta
    and each clip's stored frame numbers only ``with_meta``; :data:`META_COLUMNS`). A dataset with label
    heads other than one single-label head (:func:`label_heads`) gives one labels output per head instead,
    in the order of the heads' names, as :func:`clip_dataset`'s dict (``label_format``; with layout
    "frames" per frame, after the metadata). ``output="jpegs"`` stops after the reader (JPEG bytes, and the metadata)."""
    from .pipeline import Graph
    from .pipeline import clip_pipeline as build

    configs = _configs(files, recipe, training, options)
    config = configs[0]
    device = _device(device)
    _check_choice("layout", layout, ("auto", "frames", "clips"))
    if not 0 <= hw_decoder_load <= 1:
        raise ValueError(f"hw_decoder_load must be in [0, 1], got {hw_decoder_load!r}")
    _check_choice("on_corrupt", on_corrupt, ("raise", "skip"))
    _check_choice("output", output, ("frames", "jpegs", "padded_jpegs", "meta"))
    _check_choice("label_format", label_format, LABEL_FORMATS)
    _check_int("batch_size", batch_size, 1)
    _check_int("initial_clip", initial_clip, 0)
    plan, table, videos = _select(files, configs, training=training, split=split, shard_id=shard_id,
                                  num_shards=num_shards, seed=seed, global_batch=batch_size * num_shards,
                                  mixed_classes=mixed_classes, centre=centre)
    reader = _reader_args(table, videos, plan, shard_id=shard_id, num_shards=num_shards,
                          initial_clip=initial_clip, on_corrupt=on_corrupt)
    if io_threads is None:
        io_threads = _default_io_threads(reader["table"].shards)
    _check_int("io_threads", io_threads, 0)
    if io_threads > MAX_THREADS:
        raise ValueError(f"io_threads must be at most {MAX_THREADS} (one request in flight each), got {io_threads}")
    reader["io_threads"] = io_threads
    if not _is_real(io_timeout) or not 0 < io_timeout <= 3600:
        raise ValueError(f"io_timeout must be seconds in (0, 3600], got {io_timeout!r}")
    reader["io_timeout"] = float(io_timeout)
    reader["instance"] = uuid.uuid4().hex
    if layout == "auto":  # on the CPU one decoder over B*T frames is faster than T decoders (README)
        layout = "clips" if device == "gpu" else "frames"
    graph = Graph(device=device, layout=layout, crop_size=config.crop_size, resize=any(c.resizes for c in configs),
                  color=any(c.color_jitter is not None for c in configs), dtype=config.dtype, mean=config.mean,
                  std=config.std, decode_crop=decode_crop, with_meta=with_meta, hw_decoder_load=hw_decoder_load,
                  jpeg_fancy_upsampling=jpeg_fancy_upsampling, host_output=host_output and device == "gpu",
                  frame_hw=(int(table.height[videos].max()), int(table.width[videos].max())),
                  heads=_graph_heads(table.heads), label_format=label_format)
    # One decoder over the B*T frames in both layouts: the pipeline's batch is B*T frames ("clips"
    # regroups them into B clips inside DALI, pipeline.regroup); the reader alone runs per clip there.
    per_clip_reader = layout == "clips" and output != "frames"
    if num_threads is None:  # the cores this process may use; on the GPU within the thread budget
        num_threads = usable_cores() if device == "cpu" else pipeline_threads(usable_cores(), io_threads=io_threads)
    pipe = build(reader, graph, batch_size=batch_size * (1 if per_clip_reader else config.clip_len),
                 device_id=device_id, num_threads=num_threads, prefetch_queue_depth=prefetch_queue_depth,
                 output=output)
    return ClipPipeline(pipe, table, videos, plan, batch_size, num_shards, layout, reader["instance"])


def _graph_heads(heads) -> tuple:
    """The label heads the pipeline gives one output each (pipeline.Graph.heads), in name order; none
    for one single-label head (the metadata's label)."""
    if not labels_by_head(heads):
        return ()
    return tuple(sorted((h.name, column, width, h.multi_label, len(h.classes)) for h, column, width in heads))


def steps_per_epoch(files, *, batch_size: int | None = None, recipe: str | ClipConfig | None = None,
                    training: bool = True, num_shards: int = 1, split: str | None = None, mixed_classes: bool = False,
                    centre: bool = False, **options) -> int:
    """Batches per reader that cover every clip of an epoch once (in training the last batch runs into the
    next epoch; in evaluation its rest is padding, ``meta["padding"]``); the same for every reader of
    ``num_shards``. ``steps_per_epoch(ds)`` asks a dataset that
    :func:`clip_dataset` made (or a :class:`ClipPipeline`), which knows its options; otherwise pass the
    files and the dataset's options (as :func:`clip_dataset`)."""
    loader = files if isinstance(files, ClipPipeline) else getattr(files, "_dali_video_loader", None)
    if loader is not None:
        if (batch_size, recipe, training, num_shards, split, mixed_classes, centre, options) != (
                None, None, True, 1, None, False, False, {}):
            raise TypeError("steps_per_epoch(dataset) takes no other arguments: the dataset knows its options")
        return loader.steps_per_epoch
    if hasattr(files, "element_spec"):
        raise TypeError("steps_per_epoch: this dataset was not made by dali_video.clip_dataset, or was transformed "
                        "after (map, prefetch, ...): pass the dataset clip_dataset returned, or the files and options")
    if batch_size is None:
        raise TypeError("steps_per_epoch(files) needs batch_size=... (or pass the dataset clip_dataset made)")
    plan, _, videos = _select(files, _configs(files, recipe, training, options), training=training, split=split,
                              shard_id=0, num_shards=num_shards, seed=0, global_batch=batch_size * num_shards,
                              mixed_classes=mixed_classes, centre=centre)
    return plan.steps_per_epoch(len(videos), batch_size * num_shards)


def meta_fields(meta) -> dict:
    """The per-clip metadata ``[B, 16]`` (:data:`META_COLUMNS`, int32) as named tensors: ``window``
    ``[B, 4]`` (y, x, h, w in stored pixels), ``flip``, ``label``, ``video`` (row of ``load_table``),
    ``first_frame``, ``replaced``, ``stride``, ``color`` ``[B, 4]`` float32 (brightness, contrast,
    saturation, hue as a fraction of the colour circle), ``padding`` (1: a clip that only fills an
    evaluation pass's last batch) and ``dataset`` (a :class:`Mixture`'s dataset the clip is drawn from; 0
    otherwise)."""
    tf = tensorflow("meta_fields")

    column = {name: i for i, name in enumerate(META_COLUMNS)}
    fields = {name: meta[:, column[key]] for name, key in (("flip", "flip"), ("label", "label"), ("video", "video"),
                                                           ("first_frame", "frame"), ("replaced", "replaced"),
                                                           ("stride", "stride"), ("padding", "padding"),
                                                           ("dataset", "dataset"))}
    return {**fields, "window": meta[:, column["crop_y"]:column["crop_w"] + 1],
            "color": tf.bitcast(meta[:, column["brightness"]:column["hue"] + 1], tf.float32)}


def clip_dataset(files, *, batch_size: int, recipe: str | ClipConfig | None = None, training: bool = True,
                 device: Literal["auto", "gpu", "cpu"] = "auto", seed: int | None = None, shard_id: int = 0,
                 num_shards: int = 1, initial_clip: int = 0, with_meta: bool = False, split: str | None = None,
                 mixed_classes: bool = False, label_format: Literal["multi_hot", "indices"] = "multi_hot",
                 centre: bool = False,
                 decode_crop: bool = True, device_id: int = 0, num_threads: int | None = None,
                 prefetch_queue_depth: int = 2, on_corrupt: Literal["raise", "skip"] = "raise",
                 normalize_in: Literal["auto", "dali", "tensorflow"] = "auto",
                 layout: Literal["auto", "frames", "clips"] = "auto", hw_decoder_load: float = 0.65,
                 jpeg_fancy_upsampling: bool = False, host_output: bool = False, io_threads: int | None = None,
                 io_timeout: float = IO_TIMEOUT, **options):
    """An endless ``tf.data.Dataset`` of ``(clips [B, T, crop, crop, 3], labels [B])`` batches.

    files: a glob, a list of shards, or a dataset folder (``split`` picks one split of a folder; a
        shard's split is read from its name: ``train.tfrecord``, ``train-*``, ``train_*``, ``*-train-*``,
        the writer's ``train-00000-of-00008``; a folder of several splits needs ``split``), local or
        ``s3://BUCKET/PREFIX``, ``gs://BUCKET/PREFIX`` (README, Datasets in S3 and GCS). The files
        taken are logged (INFO). Or a :class:`dali_video.Mixture` of datasets, each with its recipe and
        weight (then ``recipe=None``).
    mixed_classes: read files that give a label different class texts (their index headers say which);
        by default that raises a ValueError naming the files and the label.
    recipe: what each clip is: a preset's name (``"slowfast"``, ``"mvit"``, ``"x3d_m"``, ``"tsm_ssv2"``, ...:
        see :data:`dali_video.RECIPES`) or a :class:`ClipConfig`; default ``ClipConfig()``.
    **options: :class:`ClipConfig` fields (``clip_len``, ``stride``, ``crop_size``, ``resize_shorter``,
        ``crop_area``, ``crop_aspect``, ``flip``, ``color_jitter``, ``short_videos``, ``clips_per_video``,
        ``num_crops``, ``dtype``, ``mean``, ``std``, ``sampling``, ``segment_rule``, ``twice_sample``,
        ``target_fps``, ``test_views``, ``flip_label_pairs``), overriding the recipe's.
    training: every random option is drawn per clip (the same for all its frames); each video comes
        once per epoch in a seeded random order (``clips_per_video=K``: K differently drawn clips of
        each video, next to each other). Otherwise the config's fixed evaluation view
        (:meth:`ClipConfig.evaluation`): ``clips_per_video`` evenly spaced clips x ``num_crops`` crops
        per video, in order (a preset's testing view when ``recipe`` names one). Each pass of
        :func:`steps_per_epoch` global batches holds every view exactly once; the rest of its last batch
        is padding (``meta["padding"]`` 1, to be ignored: :func:`average_per_video`), and the next pass
        starts again at the first view. The dataset stays endless (DALI's dataset is; on the GPU no
        tf.data op may follow it): take one pass with ``steps=`` or ``.take(steps)``.
    device: "gpu" decodes with nvJPEG (``device="mixed"``) and places the dataset on
        ``/gpu:<device_id>``; "cpu" is the CPU fallback; "auto" (default) the GPU when the NVIDIA driver
        offers one, else the CPU, with one warning saying so. "gpu" on a host without a usable GPU raises
        a ValueError saying so.
    device_id: TensorFlow's logical GPU (``/gpu:<device_id>``); DALI decodes on the CUDA device behind
        it, also after ``tf.config.set_visible_devices`` (:func:`dali_video.loader.gpu.dali_device_id`).
        :func:`clip_pipeline`, without TensorFlow, takes the CUDA device (an ordinal under
        ``CUDA_VISIBLE_DEVICES``, as DALI counts).
    seed: the clip plan's seed: the same seed gives the same clips on any machine.
    shard_id, num_shards: readers share each global batch of ``batch_size * num_shards`` clips: this
        reader takes part ``shard_id``. The clip sequence is the same whatever ``num_shards`` is, the
        readers' parts are disjoint, and each epoch covers every clip once (one reader per replica or host).
    initial_clip: start at this clip of the global sequence (steps done x global batch size, to resume);
        reached by computation, without reading.
    with_meta: elements become ``(clips, labels, meta)``; meta holds per clip the ``filename``, the
        clip's stored frame numbers ``frames`` ``[B, T]``, and
        :func:`meta_fields`: ``first_frame``, ``video`` (row of ``load_table(files)``, to group
        predictions per video), ``window`` ``[y, x, h, w]`` in stored pixels, ``flip``, ``stride``,
        ``color`` (the four factors drawn), ``replaced`` (damaged clips skipped to give it) and
        ``padding`` (1: the clip only fills an evaluation pass's last batch) and ``dataset`` (a Mixture's
        dataset the clip is drawn from; 0 otherwise).
    decode_crop: decode only the crop window of each JPEG where DALI can.
    num_threads, prefetch_queue_depth: DALI's (default: all cores, 2), passed on to DALI's dataset.
    io_threads: the reader's own threads that read the next batches' clips ahead, one request each in
        flight: default :data:`BUCKET_IO_THREADS` for a dataset in a bucket (its latency hidden), 0 for
        local files (read in DALI's threads, as a batch is needed). Raise it for a network filesystem.
    io_timeout: seconds a read of an object in a bucket may take, the clients' and the reader's retries
        included (default 60): a store that stops answering ends the run then with a
        :class:`ReaderError` naming the store, the object and the cause. Deleting the dataset, Ctrl-C
        and interpreter exit do not wait for such a read (README, "Datasets in S3 and GCS").
    normalize_in: where float output is normalised: "dali" (fused with the flip; "auto", the default)
        or "tensorflow" (after the uint8 pixels reach it; CPU only).
    layout: both decode the batch's B*T frames with one decoder. "clips": DALI regroups them and emits
        the final elements, one sample per clip; "frames": one sample per frame, finished by a tf.data
        map on the CPU.
        "auto" (default): "clips" on the GPU (required there), "frames" on the CPU (measured faster).
    hw_decoder_load: the share of JPEGs the GPU's hardware decoder takes (DALI's default, 0.65; the
        rest go to the CUDA decoder). GPU only.
    host_output: GPU only: decode on the GPU, then hand the final elements to host memory (for
        MultiWorkerMirroredStrategy, which takes its input on the host; :func:`distribute` sets it).
    jpeg_fancy_upsampling: GPU only: upsample chroma as libjpeg-turbo (the CPU decoder) does, so both
        devices give the same pixels up to IDCT rounding (nvJPEG's faster default differs more).
    On the GPU the dataset lives on ``/gpu:<device_id>`` and with ``with_meta`` its elements are
    ``(clips, labels, meta, frames)``: the ``[B, 16]`` int32 metadata (:data:`META_COLUMNS`;
    :func:`meta_fields` names its columns) and the clips' stored frame numbers ``[B, T]`` int32.
    on_corrupt: a frame that fails its CRC32C or JPEG check raises an error naming shard, video, frame
        and byte offset ("raise"), or its clip is replaced by the next ones of the epoch, counted in
        ``meta["replaced"]`` and logged to stderr ("skip"). Only damaged bytes are skipped: a store that
        fails (refused, reset, timed out, 5xx after the retries, a shard gone) ends the run.
    label_format: a dataset with label heads (written from ``--csv`` label columns or ``--segments``;
        :func:`label_heads` lists them) other than one single-label head gives ``labels`` as a dict by
        head name: int32 ``[B]`` for a single-label head; for a multi-label head a multi-hot float32
        ``[B, classes]`` ("multi_hot") or the class ids int32 ``[B, most labels]`` padded with -1
        ("indices"). A dataset with segments reads segments as its items: each clip is drawn inside its
        segment's frames; ``meta`` then holds ``segment`` (the annotation row) and ``source_video`` (the
        segment's video, its row among the dataset's videos); -1 and the item's row otherwise.
        The labels come out of the DALI pipeline itself (one output per head), so the GPU dataset gives
        the same dict; with ``flip_label_pairs`` the first head's classes swap in flipped clips.
    centre: every clip centred on its item's middle frame (AVA-style keyframes: segments of one frame);
        see :func:`dali_video.loader.sampling.centred`. Boxes are not read.
    ``steps_per_epoch(ds)`` (:func:`steps_per_epoch`) gives ``model.fit(..., steps_per_epoch=...)``.
    """
    tf = tensorflow("clip_dataset")
    dali_tf = _dali_tf("clip_dataset")

    config = _configs(files, recipe, training, options)[0]
    _check_choice("device", device, DEVICES)
    _check_choice("normalize_in", normalize_in, ("auto", "dali", "tensorflow"))
    _check_choice("label_format", label_format, LABEL_FORMATS)
    # DALI normalises, fused with the flip: on the CPU too it measured faster than TensorFlow
    # normalising the uint8 pixels it hands over (README, Performance).
    if normalize_in == "auto":
        normalize_in = "dali"
    # Checked before the host decides "auto": the same call then works on every host, or on none.
    if device != "cpu" and layout == "frames":
        raise ValueError("layout='frames' needs device='cpu': on the GPU, DALI's dataset must emit whole clips "
                         "(layout='clips', the default there), since no tf.data op may follow it")
    if device != "cpu" and normalize_in == "tensorflow":
        raise ValueError("normalize_in='tensorflow' needs device='cpu': on the GPU, DALI's dataset emits the final "
                         "elements and no tf.data op may follow it (they run on the CPU only)")
    device = _device(device)
    # TensorFlow places the dataset on its logical GPU; DALI decodes on the CUDA device behind it.
    cuda_device = dali_device_id(device_id) if device == "gpu" else device_id
    normalise_in_tf = normalize_in == "tensorflow" and config.dtype != "uint8"
    uint8 = {"dtype": "uint8"} if normalise_in_tf else {}  # a Mixture's options override each recipe
    clips = {"recipe": None, **options, **uint8} if isinstance(files, Mixture) else {"recipe": config.replace(**uint8)}
    # On the CPU a map finishes the elements where needed (per-frame layout, named metadata, normalising);
    # otherwise DALI's outputs are the elements, as on the GPU, where no tf.data op may follow.
    finish_in_tf = device == "cpu" and (with_meta or normalise_in_tf or layout != "clips")
    loader = clip_pipeline(files, batch_size=batch_size, **clips, training=training, device=device, seed=seed,
                           shard_id=shard_id,
                           num_shards=num_shards, initial_clip=initial_clip, split=split,
                           mixed_classes=mixed_classes, decode_crop=decode_crop,
                           device_id=cuda_device, num_threads=num_threads, prefetch_queue_depth=prefetch_queue_depth,
                           on_corrupt=on_corrupt, layout=layout, hw_decoder_load=hw_decoder_load,
                           jpeg_fancy_upsampling=jpeg_fancy_upsampling, with_meta=with_meta or finish_in_tf,
                           host_output=host_output, io_threads=io_threads, io_timeout=io_timeout, centre=centre,
                           label_format=label_format)
    B, T, c = batch_size, config.clip_len, config.crop_size
    mean, std = config.mean, config.std
    pixels = tf.uint8 if normalise_in_tf else tf.as_dtype(config.dtype)
    frames_layout = loader.layout == "frames"
    heads = _graph_heads(loader.table.heads)  # one labels output each, in name order; none: the one label
    n = B * T if frames_layout else B  # samples of each output: frames, or clips
    label_specs = [tf.TensorSpec((n,), tf.int32)] if not heads else [
        tf.TensorSpec((n, classes), tf.float32) if multi and label_format == "multi_hot" else
        tf.TensorSpec((n, width) if multi else (n,), tf.int32) for _, _, width, multi, classes in heads]
    meta_spec = tf.TensorSpec((n, len(META_COLUMNS)), tf.int32)
    if frames_layout:  # frames, per-frame metadata and labels: finished by a map on the CPU below
        specs = [tf.TensorSpec((n, c, c, 3), pixels), meta_spec, *(label_specs if heads else [])]
    else:  # clips, labels (and metadata, and each clip's T frame numbers): B of them from the B*T frames
        specs = [tf.TensorSpec((B, T, c, c, 3), pixels), *label_specs]
        if with_meta or finish_in_tf:
            specs += [meta_spec, tf.TensorSpec((B, T), tf.int32)]
    on_gpu = device == "gpu" and not host_output
    with tf.device(f"/gpu:{device_id}" if on_gpu else "/cpu:0"):
        # DALI's dataset runs the pipeline with its own num_threads and queue depth unless told.
        ds = dali_tf.DALIDataset(pipeline=loader.pipeline, batch_size=B * T, num_threads=loader.pipeline.num_threads,
                                 prefetch_queue_depth=prefetch_queue_depth,
                                 output_dtypes=tuple(x.dtype for x in specs),
                                 output_shapes=tuple(tuple(x.shape) for x in specs),
                                 device_id=cuda_device if device == "gpu" else None)
    if not tf.executing_eagerly():  # a graph (tf.function) builds the pipeline after this call's objects
        # are gone: its video table lives as long as the graph (the function that holds it)
        tf.compat.v1.get_default_graph().add_to_collection("dali_video_tables", loader.pipeline._dali_video_table)
    names = [name for name, *_ in heads]

    def labelled(labels):  # the labels outputs as the element's labels: a dict by head, or the one label
        return dict(zip(names, labels)) if heads else labels[0]

    if not finish_in_tf:  # DALI's outputs are the elements; a dict of labels only regroups them (no op)
        assert not frames_layout  # per frame, a map finishes the clips (and the outputs' order differs)
        if heads:
            structure = tf.nest.pack_sequence_as((0, labelled(names), *specs[1 + len(names):]), specs)
            ds = tf.data.experimental.from_variant(tf.data.experimental.to_variant(ds), structure)
        ds._dali_video_loader = loader  # the table and plan it reads, for tools and the CLI
        return ds
    table = loader.table
    filenames = _filename_tensor(table) if with_meta else None
    items = {"segment": tf.constant(table.segment, tf.int32),
             "source_video": tf.constant(table.source, tf.int32)} if with_meta else {}
    label = META_COLUMNS.index("label")

    @tf.autograph.experimental.do_not_convert
    def finish(images, *rest):
        if frames_layout:  # each clip's first frame's metadata and labels; [B, T] frame numbers
            clips, first = tf.reshape(images, (B, T, c, c, 3)), rest[0][::T]
            labels = [x[::T] for x in rest[1:]] or [first[:, label]]
            frames = tf.reshape(rest[0][:, META_COLUMNS.index("frame")], (B, T))
        else:  # DALI regrouped them (pipeline.regroup)
            clips, labels, (first, frames) = images, rest[:-2], rest[-2:]
        if normalise_in_tf:
            # Per-channel factors tiled along a row: TF broadcasts a length-3 axis slowly.
            scale = tf.constant([1.0 / d for d in std] * c, tf.float32)
            shift = tf.constant([-m / d for m, d in zip(mean, std)] * c, tf.float32)
            rows = tf.reshape(tf.cast(clips, tf.float32), (-1, c * 3)) * scale + shift
            clips = tf.cast(tf.reshape(rows, (B, T, c, c, 3)), config.dtype)
        if not with_meta:
            return clips, labelled(labels)
        fields = meta_fields(first)
        del fields["label"]
        return clips, labelled(labels), {"filename": tf.gather(filenames, fields["video"]), **fields, "frames": frames,
                                         **{k: tf.gather(v, fields["video"]) for k, v in items.items()}}

    with tf.device("/cpu:0"):
        mapped = ds.map(finish)
    mapped._dali_video_loader = loader
    return mapped


def _filename_tensor(table: VideoTable):
    """The table's filenames as one string tensor, made once per table (every reader of it shares it);
    inside a graph (tf.function) one of the graph's own, which no other graph may use."""
    import tensorflow as tf

    made = table.__dict__.get("_filename_tensor")  # on the frozen table, as a cached_property keeps its value
    if made is None or not tf.executing_eagerly():
        made = tf.constant([n.encode("utf-8", "surrogateescape") for n in table.filename])
        if tf.executing_eagerly():
            table.__dict__["_filename_tensor"] = made
    return made


def reader_dataset(files, *, batch_size: int, clip_len: int, crop_size: int, seed: int | None = None,
                   with_bytes: bool = False, **kwargs):
    """The native reader alone through DALI's TF dataset, no decoding: the clips' frames are read and
    checked in DALI as for decoding, and TensorFlow gets each frame's metadata ``[B*T, 16]`` (with
    ``with_bytes``, also its JPEG bytes zero-padded to the batch's longest, ``[B*T, L]``). Measures and
    checks the feed (dali-video-bench, dali-video-doctor); keywords as :func:`clip_pipeline`."""
    tf = tensorflow("reader_dataset")
    dali_tf = _dali_tf("reader_dataset")

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


def distribute(strategy, files, *, global_batch_size: int, device: Literal["auto", "gpu", "cpu"] = "auto",
               per_worker: bool | None = None, **kwargs):
    """:func:`clip_dataset` for a ``tf.distribute`` strategy: every global batch is the same set of clips
    whatever the number of replicas, hosts or readers (one seed for all), each replica reading its own
    share with its own pipeline on its own device.

    Per replica (MirroredStrategy): each pipeline's dataset lives on its replica's GPU and TensorFlow
    takes its elements where they are (``MirroredStrategy(["/gpu:2", "/gpu:3"])`` reads on GPUs 2 and
    3). Per worker (MultiWorkerMirroredStrategy, the default there): one worker process per host may
    drive all its GPUs; the worker's dataset yields its local replicas' batches in turn, which
    TensorFlow hands round-robin to the local replicas. That strategy takes only per-worker datasets
    on the host (TF 2.21 collective_all_reduce_strategy.py:669-680, 775-786), so on the GPU each
    pipeline decodes on its replica's GPU, hands the clips to host memory and TensorFlow copies them
    back to the GPU (README, "Several GPUs"). Every worker runs the same number of steps per epoch
    (:func:`steps_per_epoch` with ``batch_size=global_batch_size``). Across hosts pass ``seed``.
    """
    tf = tensorflow("distribute")

    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(f"global_batch_size ({global_batch_size}) must divide evenly among {replicas} replicas")
    device = _device(device)  # "auto" decided once: worker_dataset hands GPU clips to the host
    if per_worker is None:  # MultiWorkerMirroredStrategy takes no per-replica datasets, even on one worker
        per_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if kwargs.get("seed") is None:  # every reader must plan the same clip sequence
        if strategy.extended._in_multi_worker_mode():
            raise ValueError("distribute() across hosts needs seed=<int>: every host must plan the same clips")
        kwargs["seed"] = _random_seed()
    # The strategy's own devices: MirroredStrategy(["/gpu:2", "/gpu:3"]) puts replica 0 on GPU 2.
    devices = [tf.DeviceSpec.from_string(d) for d in strategy.extended.worker_devices]
    io_threads = kwargs.get("io_threads")
    io_threads = _default_io_threads(files) if io_threads is None else io_threads
    # the host's cores, shared, and each pipeline within the thread budget with its reader's io threads
    kwargs.setdefault("num_threads", pipeline_threads(usable_cores(), len(devices), io_threads=io_threads))

    def replica_dataset(context):
        return clip_dataset(files, batch_size=global_batch_size // replicas, device=device,
                            device_id=devices[context.input_pipeline_id].device_index or 0,
                            shard_id=context.input_pipeline_id, num_shards=context.num_input_pipelines, **kwargs)

    if not per_worker:
        options = tf.distribute.InputOptions(
            experimental_place_dataset_on_device=True, experimental_fetch_to_device=False,
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
        return strategy.distribute_datasets_from_function(replica_dataset, options)
    return strategy.distribute_datasets_from_function(lambda c: worker_dataset(
        files, worker=c.input_pipeline_id, num_workers=c.num_input_pipelines,
        device_ids=[d.device_index or 0 for d in devices], global_batch_size=global_batch_size, device=device,
        **kwargs))


def worker_dataset(files, *, worker: int, num_workers: int, device_ids, global_batch_size: int,
                   device: Literal["gpu", "cpu"] = "gpu", **kwargs):
    """One worker's dataset under MultiWorkerMirroredStrategy: its local replicas' batches in turn (the
    strategy hands a worker's elements round-robin to its local replicas), replica ``i`` of worker
    ``w`` reading share ``w * L + i`` of each global batch with a pipeline on GPU ``device_ids[i]``
    (``L = len(device_ids)``). On the GPU the clips reach host memory (``host_output``)."""
    tf = tensorflow("worker_dataset")

    device, local = _device(device), len(device_ids)
    kwargs.pop("host_output", None)  # decided here: the strategy takes per-worker input on the host only
    parts = [clip_dataset(files, batch_size=global_batch_size // (num_workers * local), device=device,
                          device_id=device_ids[i], shard_id=worker * local + i, num_shards=num_workers * local,
                          host_output=device == "gpu", **kwargs) for i in range(local)]
    if local == 1:
        return parts[0]
    return tf.data.Dataset.choose_from_datasets(parts, tf.data.Dataset.range(local).repeat())
