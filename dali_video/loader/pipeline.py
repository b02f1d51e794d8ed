"""The DALI pipeline: dali-video's native reader, then decoded, cropped, flipped and normalised frames.

The only module that imports ``nvidia.dali`` (with ``native``, which builds and loads the reader).
``device`` is "gpu" (decoding with ``device="mixed"``, nvJPEG) or "cpu" (the CPU fallback), decided
once when the pipeline is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nvidia.dali import fn, pipeline_def, types

from . import native
from .resources import usable_cores

Device = Literal["gpu", "cpu"]
DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "uint8": types.UINT8}


@dataclass(frozen=True)
class Graph:
    """How the pipeline turns read frames into outputs.

    layout "frames": one sample per frame (batch B*T), one decoder over all of them; outputs frames and
    per-frame metadata. layout "clips": the same decoder over the batch's B*T frames, then
    :func:`regroup` turns them into one sample per clip, ``[T, H, W, 3]`` (B of them), and the
    sequence-aware ops treat each clip as one sample (NVIDIA/DALI#2855); outputs clips, labels and
    (``with_meta``) per-clip metadata and each clip's T frame numbers, so that DALI itself emits the
    final elements (on the GPU no tf.data op may follow: NVIDIA/DALI#2228). One decoder, not one per
    frame position: each mixed decoder owns a thread pool and per-thread buffers (see ``resources``).
    """

    device: Device = "gpu"
    layout: Literal["frames", "clips"] = "frames"
    crop_size: int = 224
    resize: bool = False  # resize each crop window to crop_size (scale jitter, random resized crop)
    color: bool = False  # colour jitter with the factors in the metadata
    dtype: str = "float32"
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (255.0, 255.0, 255.0)
    decode_crop: bool = True
    with_meta: bool = True
    hw_decoder_load: float = 0.65
    jpeg_fancy_upsampling: bool = False  # GPU: libjpeg-turbo's chroma upsampling, as the CPU decoder
    host_output: bool = False  # GPU: the final outputs copied to host memory (MultiWorkerMirroredStrategy)
    frame_hw: tuple = (512, 683)  # the largest stored frame (height, width): sizes the decoder's buffers
    # Labels by head (per clip, or per frame with layout "frames"), in name order: (name, first column,
    # columns, multi_label, classes) of each, from the reader's class ids (its "heads" output); empty: the
    # one label of the metadata.
    heads: tuple = ()
    label_format: str = "multi_hot"  # a multi-label head's: multi-hot float32 [classes], or "indices" [columns]


def decode(jpegs, anchor, shape, g: Graph):
    """JPEGs decoded to their windows as the loader does on ``g.device`` (the bench's decode bound uses it too)."""
    if g.device == "gpu":
        # Whole frames, sliced on the GPU: crop-window decoding in nvImageCodec 0.9 (the line DALI 2.4
        # takes) crashes on H100 and fails on A100 (NVIDIA/nvImageCodec#55). Per decoder thread one
        # device and two pinned buffers of this padding (image_decoder.h, the "Forcing allocations"
        # loop): one frame, not nvJPEG's 16 MB and 8 MB; the hardware decoder preallocates its batch
        # at the hinted size, so that no frame makes it reallocate (see resources.gpu_resources).
        (height, width), frame = g.frame_hw, g.frame_hw[0] * g.frame_hw[1] * 3
        images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB, hw_decoder_load=g.hw_decoder_load,
                                   jpeg_fancy_upsampling=g.jpeg_fancy_upsampling, device_memory_padding=frame,
                                   host_memory_padding=frame, preallocate_width_hint=width,
                                   preallocate_height_hint=height)
        return fn.slice(images, anchor, shape, axis_names="HW")
    if g.decode_crop:  # on the CPU, decoding only the window is measured faster (README)
        return fn.decoders.image_slice(jpegs, anchor, shape, axis_names="HW", device="cpu", output_type=types.RGB)
    return fn.slice(fn.decoders.image(jpegs, device="cpu", output_type=types.RGB), anchor, shape, axis_names="HW")


def regroup(frames, meta, positions, clip_len: int, ids=None):
    """Frames ``[B*T]`` (clip-major, ``positions`` their CPU int32 position t in the clip) regrouped into
    ``[T, H, W, 3]`` clips ``[B]``, the metadata of each clip's first frame, each clip's T stored
    frame numbers ``[T]`` (the per-frame metadata's frame column, regrouped the same way), and (given
    the reader's per-frame class ids ``ids``) each clip's first frame's.

    DALI's conditional split sends the samples whose predicate holds to its first output and the rest
    to its second, in order, sharing them, not copying (dali/pipeline/operator/builtin/conditional/
    split.cc:78, ``output.SetSample(..., input, ...)``): T-1 splits on ``t == k`` give T batches of B,
    the frames at each position, and ``fn.stack`` joins them (the one copy). Split and merge are the
    operators exempt from DALI's check that an operator's outputs keep its input's batch size, so a
    pipeline of batch B*T may emit B samples (dali/pipeline/operator/operator.cc:48-52,
    ``EnforceUniformOutputBatchSize`` returns early for ``IsSplitOrMerge``). Split is registered for
    the CPU and the GPU (split.cc:111-112), so one mixed decoder decodes all B*T frames.
    """
    parts, numbers, first = [], [], None
    number = meta[7]  # META_COLUMNS "frame": each frame's stored number
    for k in range(clip_len - 1):
        at_k = positions == k
        part, frames = fn._conditional.split(frames, predicate=at_k)
        at, number = fn._conditional.split(number, predicate=at_k)
        if first is None:
            first, _ = fn._conditional.split(meta, predicate=at_k)
            ids = None if ids is None else fn._conditional.split(ids, predicate=at_k)[0]
        _, positions = fn._conditional.split(positions, predicate=at_k)
        parts.append(part)
        numbers.append(at)
    parts.append(frames)  # position T-1 (or the only one)
    numbers.append(number)
    return fn.stack(*parts, axis_name="F"), (meta if first is None else first), fn.stack(*numbers), ids


def head_labels(ids, g: Graph) -> list:
    """Each label head's labels from a clip's class ids ``[columns]`` (-1 padded), in ``g.heads``' order:
    a single-label head's class (int32 scalar); a multi-label head's multi-hot float32 ``[classes]`` (a -1
    id one-hots to zeros), or its ids (``label_format="indices"``)."""
    out = []
    for _, column, width, multi_label, classes in g.heads:
        if not multi_label:
            out.append(ids[column])
        elif g.label_format == "indices":
            out.append(ids[column:column + width])
        else:
            hot = fn.one_hot(ids[column:column + width], num_classes=classes, dtype=types.FLOAT, axis=-1)
            out.append(fn.reductions.max(hot, axes=0))
    return out


@pipeline_def(enable_conditionals=False)
def _clip_pipeline(reader: dict, g: Graph, output: str):
    # output "jpegs" / "padded_jpegs" / "meta": the reader alone (per frame, or with layout "clips" one
    # JPEG output per frame position); "padded_jpegs" zero-pads each frame's bytes to the batch's
    # longest (uniform shapes for TensorFlow; cheaper in the reader than DALI's fn.pad after it).
    if output != "frames":
        read = fn.dali_video_clips(**reader, pad=output == "padded_jpegs", per_clip=g.layout == "clips")
        return read[-1] if output == "meta" else tuple(read)
    per_clip = g.layout == "clips"
    jpegs, meta, *rest = fn.dali_video_clips(**reader, positions=per_clip, heads=bool(g.heads))
    positions, ids = rest[0] if per_clip else None, rest[-1] if g.heads else None
    images = decode(jpegs, meta[0:2], meta[2:4], g)  # one decoder over the batch's B*T frames
    if per_clip:
        images, meta, numbers, ids = regroup(images, meta, positions, reader["clip_len"], ids)
    flip = meta[4]
    if g.resize:
        images = fn.resize(images, size=[g.crop_size, g.crop_size], antialias=True)
    if g.color:  # the clip's factors, drawn by the plan, travel as float32 bits in the metadata
        factors = fn.reinterpret(meta, dtype=types.FLOAT)
        images = fn.color_twist(images, brightness=factors[10], contrast=factors[11], saturation=factors[12],
                                hue=factors[13] * 360.0)
    if g.dtype == "uint8":
        images = fn.flip(images, horizontal=flip)  # raw pixels: a flip costs less than normalising
    else:
        images = fn.crop_mirror_normalize(images, mirror=flip, dtype=DTYPES[g.dtype], mean=list(g.mean),
                                          std=list(g.std), output_layout="FHWC" if per_clip else "HWC")
    # Per frame, the labels of heads go along (a map on the CPU finishes the clips); per clip, the labels.
    labels = head_labels(ids, g) if g.heads else [meta[5]] if per_clip else []
    if g.host_output:  # the dynamic executor copies GPU outputs to the host (nvidia/dali/pipeline.py:148-155)
        images = images.cpu()
    elif g.device == "gpu":  # DALI's TF dataset wants every output on its device
        meta, labels = meta.gpu(), [x.gpu() for x in labels]
        numbers = numbers.gpu() if per_clip else None
    if not per_clip:
        return (images, meta, *labels)
    return (images, *labels, meta, numbers) if g.with_meta else (images, *labels)


def clip_pipeline(reader: dict, graph: Graph, *, batch_size: int, device_id: int | None = 0,
                  output: Literal["frames", "jpegs", "padded_jpegs", "meta"] = "frames",
                  num_threads: int | None = None, prefetch_queue_depth: int = 2):
    """Build the DALI pipeline over the native reader, whose arguments ``reader`` holds (see
    ``fn.dali_video_clips``; ``table`` a :class:`native.table.NativeTable`, which the pipeline keeps);
    ``batch_size`` counts samples (frames or clips, see :class:`Graph`).
    Frames are ``(pixel - mean) / std`` as ``dtype``, or the raw pixels for uint8. ``output="jpegs"``
    (or "padded_jpegs", or "meta" alone) stops after the reader."""
    table = reader["table"]  # a native.table.NativeTable: the reader argument is its key
    native.check_store_clients(table.shards)
    native.load()
    pipe = _clip_pipeline({**reader, "table": table.key}, graph, output, batch_size=batch_size,
                          num_threads=num_threads or usable_cores(),
                          device_id=device_id if graph.device == "gpu" else None,
                          prefetch_queue_depth=prefetch_queue_depth)
    pipe._dali_video_table = table  # the video table lives while its pipeline may build readers
    return pipe
