"""Plan the shards (pure), then write them, each by ``write_shard``, and the manifests from their results.

The local runner writes the shards in this process from videos encoded by a process pool; the
Beam runner (``writer.beam``) maps ``write_shard`` over the shards. Both give the same bytes.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import cv2
import numpy as np

from ..index_tools import FrameIndex, ShardIndex
from ..index_tools import format as fmt
from ..index_tools import storage

from .encode import EncodeOptions, VideoError, encode_video, open_video
from .folder import SplitState, classes_hint, complete_index, differences, read_folder, remove_dataset, writer_split
from .sources import Failure, Segment, VideoSpec

log = logging.getLogger(__name__)
BYTES_PER_PIXEL = 0.25  # a q90 JPEG of natural video is about 2 bits per pixel: for sizing shards only


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    count: int
    videos: tuple[VideoSpec, ...]
    heads: tuple = ()  # Head per label head of the dataset (with segments or label heads; else empty)

    @property
    def name(self) -> str:
        return fmt.shard_name(self.split, self.index, self.count)


def plan_shards(specs, num_shards: dict[str, int], seed: int, heads: tuple = ()) -> list[ShardPlan]:
    """Shuffle each split's videos with ``seed`` and cut them into ``num_shards[split]`` even runs
    (``heads``: the dataset's label heads, written in each shard's segment table)."""
    plans = []
    for split in sorted(num_shards):
        videos = sorted((s for s in specs if s.split == split), key=lambda s: (s.filename, s.path))
        order = np.random.default_rng([seed, len(videos)]).permutation(len(videos))
        videos = [videos[i] for i in order]
        n = num_shards[split]
        plans += [ShardPlan(split, i, n, tuple(videos[i * len(videos) // n:(i + 1) * len(videos) // n]), tuple(heads))
                  for i in range(n)]
    return plans


def shard_count(num_videos: int, bytes_per_video: float, shard_bytes: float) -> int:
    return max(1, min(num_videos, math.ceil(num_videos * bytes_per_video / shard_bytes)))


def estimate_bytes_per_video(specs, opts: EncodeOptions, sample: int = 16) -> float:
    """A rough output size from the container headers of a few videos (for sizing shards only)."""
    picks = [specs[i] for i in np.linspace(0, len(specs) - 1, min(sample, len(specs))).astype(int)]
    sizes = []
    for spec in picks:
        try:
            with open_video(spec.path) as cap:
                frames, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS) or 25.0
                h, w = cap.get(cv2.CAP_PROP_FRAME_HEIGHT), cap.get(cv2.CAP_PROP_FRAME_WIDTH)
        except OSError:
            continue
        if not (frames > 0 and h > 0 and w > 0):
            continue
        if spec.start is not None:
            frames = min(frames, (spec.end - spec.start) * fps)
        if opts.fps:
            frames *= min(1.0, opts.fps / fps)
        frames = min(frames, opts.max_frames or frames)
        scale = opts.resize_shorter / min(h, w) if opts.resize_shorter else 1.0
        sizes.append(frames * h * w * scale * scale * BYTES_PER_PIXEL)
    return float(np.mean(sizes)) if sizes else 8e6


def _encode(task):
    spec, opts = task
    try:
        return encode_video(spec, opts)
    except VideoError as e:
        return Failure(spec.filename, str(e))
    except Exception as e:  # noqa: BLE001 - a decoder crash on one file must not lose the others
        return Failure(spec.filename, f"{type(e).__name__}: {e}")


def _init_worker():
    cv2.setNumThreads(1)


def encode_all(tasks, workers: int, ahead: int = 4, fn=None):
    """``fn`` (default: encode a video) over ``tasks`` in worker processes, yielding results in task
    order, ``ahead`` per worker in flight.

    A decoder that kills its process (a segfault on a hostile file) must not stop the run or hang
    it: the pool is rebuilt, the oldest unfinished task is retried alone, and if it kills that
    process too it becomes a Failure.
    """
    fn = fn or _encode
    ctx = multiprocessing.get_context("spawn")
    i = 0
    while i < len(tasks):
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
        try:
            pending = collections.deque()
            while i < len(tasks):
                while len(pending) < workers * ahead and i + len(pending) < len(tasks):
                    pending.append(pool.submit(fn, tasks[i + len(pending)]))
                result = pending.popleft().result()
                i += 1
                yield result
        except BrokenProcessPool:
            pool.shutdown(wait=False, cancel_futures=True)
            with ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker) as alone:
                try:
                    result = alone.submit(fn, tasks[i]).result()
                except BrokenProcessPool:
                    result = Failure(getattr(tasks[i][0], "filename", str(tasks[i][0])),
                                     "the decoder crashed on this file (its process died)")
            i += 1
            yield result
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def plan_digest(plan: ShardPlan, opts: EncodeOptions) -> str:
    """What a shard was written from: a finished shard is reused only for the same plan and options."""
    # Without segments a video's entry is what it was before segments existed: the same digest.
    videos = [{k: v for k, v in asdict(spec).items() if k != "path" and (k != "segments" or v)}
              for spec in plan.videos]  # movable roots
    heads = [[asdict(h) for h in plan.heads]] if plan.heads else []
    return hashlib.sha256(json.dumps([asdict(opts), videos, *heads]).encode()).hexdigest()


class WriteError(RuntimeError):
    pass


ON_ERROR = ("skip", "fail")
RUNNERS = ("local", "beam")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


@dataclass(frozen=True)
class ShardResult:
    """What one complete shard adds to its split's manifest (from its frame index, read once or just written)."""

    file: str
    videos: int
    frames: int
    bytes: int
    num_frames: dict  # filename -> frames
    classes: dict  # label -> class text
    failures: list  # {"filename", "reason"} of each video skipped
    warnings: list
    reused: bool = False  # complete before this run
    segments: int = 0  # rows of its segment table (0: none)


@dataclass(frozen=True)
class DatasetPlan:
    """What one run writes: the planned shards of every split, and what their manifests record."""

    out_dir: str
    opts: EncodeOptions
    shards: tuple[ShardPlan, ...]
    seed: int = 0
    on_error: Literal["skip", "fail"] = "skip"
    input_failures: tuple[Failure, ...] = ()
    reused: tuple[ShardResult, ...] = ()  # shards of this plan complete in out_dir when it was planned

    def __post_init__(self):
        _check_choice("on_error", self.on_error, ON_ERROR)

    @property
    def splits(self) -> list[str]:
        return sorted({s.split for s in self.shards})

    @property
    def todo(self) -> list[ShardPlan]:
        """The shards left to write: every runner maps ``write_shard`` over these."""
        done = {r.file for r in self.reused}
        return [p for p in self.shards if p.name not in done]


def _shard_result(path, videos: dict, size: int, notes: dict, reused: bool = False) -> ShardResult:
    """From the shard's frame index: read back (``videos``, ``size``, ``notes`` of a FrameIndex) or in memory."""
    return ShardResult(file=storage.name(path), videos=len(videos["record"]), frames=sum(videos["num_frames"]),
                       bytes=size, num_frames=dict(zip(videos["filename"], videos["num_frames"])),
                       classes={k: v for k, v in zip(videos["label"], videos["class_text"]) if k >= 0},
                       failures=notes.get("failures", []), warnings=notes.get("warnings", []), reused=reused,
                       segments=notes.get("segments", 0))


def segment_frames(segment: Segment, num_frames: int, fps: float) -> tuple[int, int] | str:
    """The stored frames ``first .. end - 1`` of ``segment`` in a video of ``num_frames`` frames at ``fps``
    (stored frame k shows time ``k / fps``), or why it has none."""
    if segment.unit == "video":
        return 0, num_frames
    if segment.unit == "seconds":
        if not fps > 0:
            return "the video has no frame rate to convert seconds with; give start_frame,end_frame"
        # the frames whose time k / fps lies in [start, end) (1e-6: a boundary given in rounded seconds)
        first, end = math.ceil(segment.start * fps - 1e-6), math.ceil(segment.end * fps - 1e-6)
        end = max(end, first + 1)  # a segment shorter than a frame holds the frame it starts in
    else:
        first, end = int(segment.start), int(segment.end)
    if first >= num_frames:
        return f"starts at frame {first}, the video has {num_frames} stored frames"
    return first, min(end, num_frames)


def _reused(path, index: FrameIndex | None, digest: str) -> ShardResult | None:
    """The result of a complete shard (``index``: its frame index, or None) written from ``digest``, else None."""
    if index is None:
        return None
    if index.notes.get("plan") != digest:
        log.info("%s was written from other videos or options: writing it again", path)
        return None
    return _shard_result(path, index.videos, index.shard_size, index.notes, reused=True)


def _write_shard(path, plan: ShardPlan, opts: EncodeOptions, digest: str, results, on_error: str,
                 progress) -> ShardResult:
    """The shard, then its .idx, then its .fidx, each appearing whole (renamed, or one upload)."""
    index = ShardIndex("example", fmt.FRAMES)
    failures, warnings = [], []
    segments = {c: [] for c in fmt.SEGMENT_COLUMNS}
    segments["labels"] = {h.name: [] for h in plan.heads}
    with storage.writing(path) as f:
        for spec in plan.videos:
            result = next(results)
            if isinstance(result, Failure):
                if on_error == "fail":
                    raise WriteError(f"{spec.path}: {result.reason} (pass --on-error skip to skip such videos)")
                log.warning("skipping %s: %s", spec.path, result.reason)
                failures.append({"filename": result.filename, "reason": result.reason})
                progress(0)
                continue
            if result.warning:
                warnings.append({"filename": spec.filename, "reason": result.warning})
            index.add(f.tell(), result.data, result.spans, result.meta)
            _add_segments(segments, plan.heads, spec, len(index.videos["record"]) - 1, len(result.spans),
                          result.meta.fps, warnings)
            f.write(fmt.encode_record(result.data))
            progress(len(result.spans))
        size = f.tell()
    fmt.atomic_write(fmt.idx_path(path), index.idx_bytes())
    notes = {"plan": digest, "options": asdict(opts), "failures": failures, "warnings": warnings}
    if plan.heads:
        fmt.atomic_write(fmt.segments_path(path), fmt.encode_segments(shard_size=size, heads=plan.heads,
                                                                      segments=segments))
        notes["segments"] = len(segments["video"])
    # The frame index goes last: its presence marks the shard complete.
    fmt.atomic_write(fmt.fidx_path(path), index.fidx_bytes(size, notes))
    return _shard_result(path, index.videos, size, notes)


def _add_segments(segments: dict, heads, spec: VideoSpec, video: int, num_frames: int, fps: float,
                  warnings: list) -> None:
    """The segment table's rows of ``spec``'s segments, the ``video``-th of its shard."""
    for seg in spec.segments:
        frames = segment_frames(seg, num_frames, fps)
        if isinstance(frames, str):
            warnings.append({"filename": spec.filename, "reason": f"segment of annotation row {seg.id} left out: "
                                                                  f"it {frames}"})
            continue
        for column, value in zip(("video", "first", "count", "id"), (video, frames[0], frames[1] - frames[0], seg.id)):
            segments[column].append(value)
        for head, ids in zip(heads, seg.labels):
            segments["labels"][head.name].append(list(ids))


def write_shard(shard: ShardPlan, out_dir, opts: EncodeOptions, *, on_error: Literal["skip", "fail"] = "skip",
                isolate: bool = False) -> ShardResult:
    """Write one planned shard and its indexes to ``out_dir``; the unit of work of every runner.

    It needs no engine: map it over ``plan_dataset(...).shards`` with any executor (Beam, Dask,
    Ray, Spark, a process pool), then call ``write_manifests``. The bytes depend only on the shard
    plan and ``opts``. A complete shard of the same plan already in ``out_dir`` is kept as it is.
    ``isolate`` decodes in a child process, so that a decoder which kills its process (a segfault
    on a hostile file) becomes a reported failure instead of taking this process with it.
    """
    _check_choice("on_error", on_error, ON_ERROR)
    path, digest = storage.join(out_dir, shard.name), plan_digest(shard, opts)
    if reused := _reused(path, complete_index(path), digest):
        return reused
    tasks = [(spec, opts) for spec in shard.videos]
    encoded = encode_all(tasks, workers=1) if isolate else (_encode(t) for t in tasks)
    try:
        return _write_shard(path, shard, opts, digest, encoded, on_error, lambda frames: None)
    finally:
        encoded.close()


def plan_dataset(specs: list[VideoSpec], out_dir, opts: EncodeOptions, *, input_failures=(),
                 shard_size_mb: float = 256, num_shards: int | None = None,
                 on_error: Literal["skip", "fail"] = "skip", seed: int = 0, replace: bool = False,
                 heads: tuple = ()) -> DatasetPlan:
    """Plan the shards of every split of ``specs`` in ``out_dir``, and ready the folder for them.

    The folder holds one dataset. A plan that resumes the dataset there, or adds a split to it
    with the same options and class ids, proceeds; any other stops before a file is touched, with a
    WriteError naming each split and what differs (an option, a class id, the shard count, the
    seed, the videos). ``replace=True`` first deletes the dataset there: every shard, index and
    manifest of every split (and no other file). Creates the folder and removes the temp files of
    a killed run. For ``s3://``/``gs://`` output, the same holds of the objects under the prefix,
    and the bucket is checked first (it must exist and be listable). Paths become absolute, for
    workers that run elsewhere.
    """
    _check_choice("on_error", on_error, ON_ERROR)
    out = storage.check_path(out_dir)
    if storage.is_url(out):
        storage.check_bucket(out)
    else:
        out = out.absolute()
    input_failures = tuple(input_failures)
    if input_failures and on_error == "fail":
        raise WriteError(f"{input_failures[0].filename}: {input_failures[0].reason} "
                         f"(pass --on-error skip to skip such videos)")
    if opts.fps and any(seg.unit == "frames" for s in specs for seg in s.segments):
        raise WriteError("segments given in frames (start_frame,end_frame) with fps resampling: the stored frames "
                         "are not the source's; give the segments in seconds (start,end) or write without --fps")
    specs = [dataclasses.replace(s, path=os.path.abspath(s.path)) for s in specs]
    splits = sorted({s.split for s in specs})
    if num_shards is None:
        per_video = estimate_bytes_per_video(specs, opts) if specs else 0
        counts = {sp: shard_count(sum(s.split == sp for s in specs), per_video, shard_size_mb * 1e6)
                  for sp in splits}
    else:
        counts = {sp: max(1, min(num_shards, sum(s.split == sp for s in specs))) for sp in splits}
    shards = plan_shards(specs, counts, seed, heads)
    digests = {p.name: plan_digest(p, opts) for p in shards}
    there, reused = storage.isdir(out), []
    if there and replace:
        remove_dataset(out)
    elif there and shards:
        indexes = _check_folder(out, specs, shards, digests, opts, seed)
        reused = [r for p in shards if (r := _reused(storage.join(out, p.name), indexes.get(p.name), digests[p.name]))]
        if reused:
            log.info("resuming: %d of %d shards already complete", len(reused), len(shards))
    if not storage.is_url(out):  # an upload leaves no partial object behind; a local write its temp file
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):
            if writer_split(stale.name) is not None:
                stale.unlink()
    return DatasetPlan(str(out), opts, tuple(shards), seed, on_error, input_failures, tuple(reused))


def _check_folder(out: Path | str, specs, shards, digests: dict, opts: EncodeOptions, seed: int) -> dict:
    """Refuse to write ``shards`` into a folder that holds another dataset; return the frame indexes of
    its complete shards by name (read once, here)."""
    new = {split: SplitState(asdict(opts), {s.label: s.class_text for s in specs if s.split == split and s.label >= 0},
                             {p.name: digests[p.name] for p in shards if p.split == split}, seed,
                             fmt.heads_json(shards[0].heads))
           for split in sorted({p.split for p in shards})}
    old, indexes = read_folder(out)
    if lines := differences(old, new):
        raise WriteError(f"{out} holds another dataset (splits {', '.join(old)}); this run differs:\n  "
                         + "\n  ".join(lines) + f"\n{classes_hint(old, new)}pass --replace (replace=True) to "
                         "delete its shards, indexes and manifests of every split and write this dataset, or "
                         "write to another folder")
    return indexes


def write_dataset(specs: list[VideoSpec], out_dir, opts: EncodeOptions, *, input_failures=(),
                  shard_size_mb: float = 256, num_shards: int | None = None, workers: int | None = None,
                  on_error: Literal["skip", "fail"] = "skip", seed: int = 0,
                  progress: Callable[[int, int], None] | None = None,
                  runner: Literal["local", "beam"] = "local", beam_args=(), replace: bool = False,
                  heads: tuple = ()) -> dict:
    """Write every split of ``specs`` to ``out_dir``; return the manifests by split.

    Re-running after a crash skips the complete shards and gives the same bytes. A folder holds
    one dataset: see ``plan_dataset`` for the runs it refuses and ``replace=True``.
    ``progress(videos, frames)`` is called once per video done (local runner only).
    ``runner="beam"`` runs the same plan as an Apache Beam pipeline (``writer.beam``), with
    ``beam_args`` as its pipeline options; the output is the same bytes. ``heads``: the label heads
    of specs with segments (``from_csv``, ``from_segments``), written in each shard's segment table.
    """
    _check_runner(runner, beam_args)  # before the plan, which may delete a dataset (replace=True)
    plan = plan_dataset(specs, out_dir, opts, input_failures=input_failures, shard_size_mb=shard_size_mb,
                        num_shards=num_shards, on_error=on_error, seed=seed, replace=replace, heads=heads)
    return write_plan(plan, workers=workers, progress=progress, runner=runner, beam_args=beam_args)


def _check_runner(runner: str, beam_args) -> None:
    _check_choice("runner", runner, RUNNERS)
    if beam_args and runner != "beam":
        raise ValueError(f"Beam pipeline options ({' '.join(beam_args)}) need runner='beam'")


def write_plan(plan: DatasetPlan, *, workers: int | None = None, progress: Callable[[int, int], None] | None = None,
               runner: Literal["local", "beam"] = "local", beam_args=()) -> dict:
    """Write the shards ``plan.todo`` of a :func:`plan_dataset` plan, then the manifests; return them by
    split (``write_dataset``'s second half: a caller that plans first knows what a run reuses)."""
    _check_runner(runner, beam_args)
    workers = workers or os.cpu_count()
    if runner == "beam":
        try:
            from .beam import write_with_beam
        except ModuleNotFoundError as e:
            if e.name != "apache_beam":
                raise
            raise WriteError("runner='beam' needs Apache Beam: pip install 'dali-video[beam]'") from None
        return write_with_beam(plan, workers=workers, beam_args=beam_args)
    return write_manifests(plan, _write_local(plan, workers, progress or (lambda videos, frames: None)))


def _write_local(plan: DatasetPlan, workers: int, tick) -> list[ShardResult]:
    """The shards in this process, the videos encoded by a pool of ``workers`` processes."""
    todo = plan.todo
    tick(sum(len(p.videos) for p in plan.shards) - sum(len(p.videos) for p in todo), 0)
    encoded = encode_all([(spec, plan.opts) for p in todo for spec in p.videos], workers)
    try:
        return [_write_shard(storage.join(plan.out_dir, p.name), p, plan.opts, plan_digest(p, plan.opts), encoded,
                             plan.on_error, lambda frames: tick(1, frames)) for p in todo]
    finally:
        encoded.close()


def write_manifests(plan: DatasetPlan, results) -> dict:
    """Each split's manifest, from the results of the shards of ``plan.todo`` (any order; results of
    ``plan.reused`` shards may be among them); returned by split.

    Written last, once every shard of the plan is complete. A split of which no video was written
    (every one skipped) gets no manifest and keeps no shard: a WriteError names each video skipped and
    why, after the other splits' manifests are written.
    """
    by_file = {r.file: r for r in (*plan.reused, *results)}
    missing = [p.name for p in plan.shards if p.name not in by_file]
    if missing:
        raise WriteError(f"{len(missing)} planned shards have no result ({missing[0]}, ...): "
                         f"write every shard before the manifests")
    parts = {split: ([p for p in plan.shards if p.split == split], [by_file[p.name] for p in plan.shards
                                                                     if p.split == split],
                     [f for f in plan.input_failures if f.split in ("", split)]) for split in plan.splits}
    empty = [split for split, (_, results, _) in parts.items() if not sum(r.videos for r in results)]
    manifests = {split: _write_manifest(plan.out_dir, split, *part, plan) for split, part in parts.items()
                 if split not in empty}
    if empty:
        remove_dataset(plan.out_dir, empty)
        skipped = [f"{f['filename']}: {f['reason']}" for split in empty
                   for f in [*({"filename": f.filename, "reason": f.reason} for f in parts[split][2]),
                             *(f for r in parts[split][1] for f in r.failures)]]
        more = f"; ... ({len(skipped) - 10} more)" if len(skipped) > 10 else ""
        raise WriteError(f"no video of split {', '.join(empty)} could be written, all {len(skipped)} were skipped: "
                         f"{'; '.join(skipped[:10])}{more}; no shard or manifest of it is left")
    return manifests


def _write_manifest(out, split: str, shards, results, input_failures, plan: DatasetPlan) -> dict:
    failures = [{"filename": f.filename, "reason": f.reason} for f in input_failures]
    warnings, classes = [], {}
    for r in results:
        failures += r.failures
        warnings += r.warnings
        classes.update(r.classes)
    for spec in (s for p in shards for s in p.videos if s.label >= 0):
        classes.setdefault(spec.label, spec.class_text)
    entries = [{"file": r.file, "videos": r.videos, "frames": r.frames, "bytes": r.bytes,
                "num_frames": r.num_frames, **({"segments": r.segments} if r.segments else {})} for r in results]
    heads = shards[0].heads if shards else ()
    manifest = {"format_version": fmt.FORMAT_VERSION, "split": split, "options": asdict(plan.opts),
                "seed": plan.seed,
                "classes": fmt.manifest_classes_json(classes),
                "videos": sum(e["videos"] for e in entries), "frames": sum(e["frames"] for e in entries),
                "shards": entries, "failures": failures, "warnings": warnings}
    if heads:  # class ids per label head: one table for every split
        manifest["segments"] = sum(r.segments for r in results)
        manifest["heads"] = fmt.heads_json(heads)
    fmt.atomic_write(fmt.manifest_path(out, split), json.dumps(manifest, indent=1).encode())
    return manifest
