"""Plan the shards (pure), then encode videos in parallel and write shards, indexes and manifests."""
from __future__ import annotations

import collections
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

from index_tools import FormatError, ShardIndex, read_frame_index
from index_tools import format as fmt

from .encode import EncodeOptions, VideoError, encode_video, open_video
from .sources import Failure, VideoSpec

log = logging.getLogger(__name__)
BYTES_PER_PIXEL = 0.25  # a q90 JPEG of natural video is about 2 bits per pixel: for sizing shards only


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    count: int
    videos: tuple[VideoSpec, ...]

    @property
    def name(self) -> str:
        return fmt.shard_name(self.split, self.index, self.count)


def plan_shards(specs, num_shards: dict[str, int], seed: int) -> list[ShardPlan]:
    """Shuffle each split's videos with ``seed`` and cut them into ``num_shards[split]`` even runs."""
    plans = []
    for split in sorted(num_shards):
        videos = sorted((s for s in specs if s.split == split), key=lambda s: (s.filename, s.path))
        order = np.random.default_rng([seed, len(videos)]).permutation(len(videos))
        videos = [videos[i] for i in order]
        n = num_shards[split]
        plans += [ShardPlan(split, i, n, tuple(videos[i * len(videos) // n:(i + 1) * len(videos) // n]))
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
    videos = [{k: v for k, v in asdict(spec).items() if k != "path"} for spec in plan.videos]  # movable roots
    return hashlib.sha256(json.dumps([asdict(opts), videos]).encode()).hexdigest()


def _shard_done(path: Path, digest: str) -> bool:
    if not (path.exists() and fmt.idx_path(path).exists() and fmt.fidx_path(path).exists()):
        return False
    try:
        index = read_frame_index(fmt.fidx_path(path))
        fmt.check_fresh(path, index)
    except FormatError:
        return False
    if index.notes.get("plan") != digest:
        log.info("%s was written from other videos or options: writing it again", path)
        return False
    return True


class WriteError(RuntimeError):
    pass


def _write_shard(path: Path, plan: ShardPlan, digest: str, results, on_error: str, progress) -> None:
    index = ShardIndex("example", fmt.FRAMES)
    failures, warnings = [], []
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
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
                f.write(fmt.encode_record(result.data))
                progress(len(result.spans))
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fmt.atomic_write(fmt.idx_path(path), index.idx_bytes())
    # The frame index goes last: its presence marks the shard complete.
    notes = {"plan": digest, "failures": failures, "warnings": warnings}
    fmt.atomic_write(fmt.fidx_path(path), index.fidx_bytes(size, notes))


def write_dataset(specs: list[VideoSpec], out_dir, opts: EncodeOptions, *, input_failures=(),
                  shard_size_mb: float = 256, num_shards: int | None = None, workers: int | None = None,
                  on_error: Literal["skip", "fail"] = "skip", seed: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Write every split of ``specs`` to ``out_dir``; return the manifests by split.

    Re-running after a crash skips the complete shards and gives the same bytes.
    ``progress(videos, frames)`` is called once per video done.
    """
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', not {on_error!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):
        stale.unlink()
    input_failures = list(input_failures)
    if input_failures and on_error == "fail":
        raise WriteError(f"{input_failures[0].filename}: {input_failures[0].reason}")
    splits = sorted({s.split for s in specs})
    if num_shards is None:
        per_video = estimate_bytes_per_video(specs, opts) if specs else 0
        counts = {sp: shard_count(sum(s.split == sp for s in specs), per_video, shard_size_mb * 1e6)
                  for sp in splits}
    else:
        counts = {sp: max(1, min(num_shards, sum(s.split == sp for s in specs))) for sp in splits}
    plans = plan_shards(specs, counts, seed)
    planned = {p.name for p in plans}
    foreign = sorted(f.name for f in out.glob(f"*{fmt.SHARD_SUFFIX}")
                     if (parsed := fmt.parse_shard_name(f.name)) and parsed[0] in splits and f.name not in planned)
    if foreign:
        raise WriteError(f"{out} holds shards of another plan ({foreign[0]}, ...), which would mix with these "
                         f"{len(plans)}: remove them or write to another folder")
    digests = {p.name: plan_digest(p, opts) for p in plans}
    todo = [p for p in plans if not _shard_done(out / p.name, digests[p.name])]
    done = len(plans) - len(todo)
    if done:
        log.info("resuming: %d of %d shards already complete", done, len(plans))
    tick = progress or (lambda videos, frames: None)
    for p in plans:
        if p not in todo:
            tick(len(p.videos), 0)
    tasks = [(spec, opts) for p in todo for spec in p.videos]
    results = encode_all(tasks, workers or os.cpu_count())
    try:
        for p in todo:
            _write_shard(out / p.name, p, digests[p.name], results, on_error, lambda frames: tick(1, frames))
    finally:
        results.close()
    return {split: _write_manifest(out, split, [p for p in plans if p.split == split], opts, seed,
                                   [f for f in input_failures if f.split in ("", split)])
            for split in splits}


def _write_manifest(out: Path, split: str, plans, opts, seed, input_failures) -> dict:
    shards, warnings = [], []
    failures = [{"filename": f.filename, "reason": f.reason} for f in input_failures]
    classes = {}
    for p in plans:
        ix = read_frame_index(fmt.fidx_path(out / p.name))
        failures += ix.notes.get("failures", [])
        warnings += ix.notes.get("warnings", [])
        for label, text in zip(ix.videos["label"], ix.videos["class_text"]):
            classes[label] = text
        shards.append({"file": p.name, "videos": ix.num_videos, "frames": ix.num_frame_rows,
                       "bytes": ix.shard_size,
                       "num_frames": dict(zip(ix.videos["filename"], ix.videos["num_frames"]))})
    for spec in (s for p in plans for s in p.videos):
        classes.setdefault(spec.label, spec.class_text)
    manifest = {"format_version": fmt.FORMAT_VERSION, "split": split, "options": asdict(opts), "seed": seed,
                "classes": [classes[k] for k in sorted(classes)] if sorted(classes) == list(range(len(classes)))
                else {str(k): v for k, v in sorted(classes.items())},
                "videos": sum(s["videos"] for s in shards), "frames": sum(s["frames"] for s in shards),
                "shards": shards, "failures": failures, "warnings": warnings}
    fmt.atomic_write(fmt.manifest_path(out, split), json.dumps(manifest, indent=1).encode())
    return manifest
