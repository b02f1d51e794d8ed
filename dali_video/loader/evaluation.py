"""Evaluation: predictions averaged per video over its views, the padding of a pass's last batch and the
clips that replaced damaged ones left out."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import META_COLUMNS, ClipPipeline
from .sampling import VideoTable


@dataclass(frozen=True)
class VideoAverages:
    """Per video (ascending rows of ``load_table``): the mean prediction, the views averaged and, when
    labels were given, its label; when the dataset was given, its file name (as the writer stored it)."""

    video: np.ndarray  # [V]
    mean: np.ndarray  # [V, ...] float64
    count: np.ndarray  # [V]
    label: np.ndarray | None = None  # [V]
    filename: np.ndarray | None = None  # [V] str


def _table(dataset) -> VideoTable:
    """The video table a dataset of :func:`clip_dataset` (or a ClipPipeline) reads, or a table itself."""
    if isinstance(dataset, VideoTable):
        return dataset
    loader = dataset if isinstance(dataset, ClipPipeline) else getattr(dataset, "_dali_video_loader", None)
    if loader is None:
        raise TypeError("dataset must be what clip_dataset returned (untransformed), a ClipPipeline or a VideoTable "
                        f"(load_table), got {type(dataset).__name__}")
    return loader.table


def _batches(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _video_and_padding(meta, key: str = "video") -> tuple[np.ndarray, np.ndarray]:
    """The ``key`` column of per-clip metadata and whether each clip is left out (padding, or a clip
    that replaced a damaged one with ``on_corrupt="skip"``: it repeats another view): a dict of
    :func:`clip_dataset` (``with_meta=True``) or a ``[B, len(META_COLUMNS)]`` array (the GPU path's)."""
    if isinstance(meta, dict):
        return np.asarray(meta[key]), (np.asarray(meta["padding"]) != 0) | (np.asarray(meta["replaced"]) > 0)
    if key != "video":
        raise ValueError("per_source_video=True needs clip_dataset's metadata dicts (their 'source_video')")
    meta = np.asarray(meta)
    if meta.ndim != 2 or meta.shape[1] != len(META_COLUMNS):
        raise ValueError(f"meta must be clip_dataset's metadata dict or a [B, {len(META_COLUMNS)}] array "
                         f"(META_COLUMNS), got shape {meta.shape}")
    column = META_COLUMNS.index
    return meta[:, column("video")], (meta[:, column("padding")] != 0) | (meta[:, column("replaced")] > 0)


def average_per_video(predictions, meta, labels=None, *, dataset=None, per_source_video: bool = False) -> VideoAverages:
    """Averages predictions per video over one evaluation pass (``training=False``, ``with_meta=True``,
    :func:`steps_per_epoch` batches), leaving out the padding clips (``meta["padding"]``) that fill the
    last batch and the clips that replaced damaged ones (``meta["replaced"] > 0``, with
    ``on_corrupt="skip"``: each repeats another view), so that each video's views count once each.

    predictions: ``[N, ...]`` per clip (a model's outputs), or a list of such batches; meta: the
    matching metadata (dicts, or on the GPU the elements' ``[B, 16]`` arrays, their third entry), one
    per batch; labels: optionally the matching labels; dataset: optionally the dataset of the pass (what
    :func:`clip_dataset` returned, a :class:`ClipPipeline`, or the ``VideoTable`` it reads), which gives
    each video's file name. Takes NumPy arrays or eager tensors.

    In a dataset with segments a "video" is an item, a segment: its views are averaged per segment
    (``video`` holds table rows); ``per_source_video=True`` averages every view of every segment of a
    video together (``video`` holds ``meta["source_video"]``, the rows among the dataset's videos, and
    ``label`` a label of one of its segments)."""
    preds = [np.asarray(p) for p in _batches(predictions)]
    columns = [_video_and_padding(m, "source_video" if per_source_video else "video") for m in _batches(meta)]
    if len(preds) != len(columns) or any(len(p) != len(v) for p, (v, _) in zip(preds, columns)):
        raise ValueError(f"predictions ({[len(p) for p in preds]} per batch) and meta "
                         f"({[len(v) for v, _ in columns]} per batch) must match batch for batch")
    keep = ~np.concatenate([out for _, out in columns])
    video = np.concatenate([v for v, _ in columns])[keep]
    values = np.concatenate(preds)[keep].astype(np.float64)
    videos, row, count = np.unique(video, return_inverse=True, return_counts=True)
    total = np.zeros((len(videos),) + values.shape[1:])
    np.add.at(total, row, values)
    mean = total / count.reshape((-1,) + (1,) * (values.ndim - 1))
    label = None
    if labels is not None:
        given = np.concatenate([np.asarray(x) for x in _batches(labels)])[keep]
        label = np.zeros(len(videos), given.dtype)
        label[row] = given
    filename = None
    if dataset is not None:
        table = _table(dataset)
        if per_source_video:  # a source video's name: that of its first item
            sources, first = np.unique(table.source, return_index=True)
            filename = table.filename[first[np.searchsorted(sources, videos)]]
        else:
            filename = table.filename[videos]
    return VideoAverages(videos, mean, count, label, filename)
