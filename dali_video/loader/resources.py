"""What a pipeline may use (the cores this process may run on) and what a GPU pipeline takes (threads,
pinned and device memory), derived from DALI 2.4's source, to size ``num_threads`` and the decoder's
buffers. Pure functions; no DALI import.

DALI source lines the formula rests on (NVIDIA/DALI, files as stored for 2.4):
- dali/pipeline/executor/executor_factory.cc:36 ``cfg.thread_pool_threads = num_thread`` and
  exec2.cc ``SetupThreadPool``: one pool of ``num_threads`` for the CPU operators (the reader);
- executor_factory.cc:42,62 ``operator_threads = min(num_thread, 4)`` (``kDefaultMaxThreads``,
  ``DALI_EXEC2_MAX_THREADS``) and exec2.cc ``Start``: the dynamic executor's task threads;
- dali/operators/imgcodec/image_decoder.h, ``ImageDecoder::ImageDecoder``: every mixed decoder makes
  its own ``ThreadPool(num_threads_, ..., "MixedDecoder")``, and (the "Forcing allocations" loop) per
  thread one device buffer of ``device_memory_padding`` and two pinned buffers of
  ``host_memory_padding`` (DALI 2.4's fn.decoders.image docs: "preallocates one device buffer ... per
  thread", "two (because of double-buffering) host-pinned buffers ... per thread"); it passes
  ``preallocate_batch_size = max_batch_size`` and the width/height hints to nvImageCodec's hardware
  decoder, which preallocates a batch of frames of that size on the device.
The per-thread counts are measured on the CPU here (tests/test_gpu_graph.py); the memory terms are
checked on a GPU by tests/test_gpu.py (``make gpu-check``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

MAX_THREADS = 128  # per pipeline: a pids limit of a few thousand holds 8 GPUs' pipelines and the trainer
EXECUTOR_MAX_THREADS = 4  # DALI executor_factory.cc:42, kDefaultMaxThreads
QUEUE_DEPTH = 2  # DALI's prefetch_queue_depth default, ours too
# The reader's read-ahead threads for a dataset in a bucket, one request in flight each: 32 at 30 ms a
# request allow ~1,000 clips/s per pipeline (S3's client in DALI holds 25 connections per process).
BUCKET_IO_THREADS = 32


def _cgroup_v2_cores(root: Path, path: str) -> float | None:
    """The tightest ``cpu.max`` quota on the way from this process's cgroup up to the root."""
    best, parts = None, [p for p in path.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        f = root / "sys/fs/cgroup" / "/".join(parts[:depth]) / "cpu.max"
        if f.is_file():
            quota, _, period = f.read_text().strip().partition(" ")
            if quota != "max":
                cores = int(quota) / int(period or 100000)
                best = cores if best is None else min(best, cores)
    return best


def _cgroup_v1_cores(root: Path, controllers: str, path: str) -> float | None:
    """``cpu.cfs_quota_us / cpu.cfs_period_us`` of the cpu controller (-1: no quota), tightest first."""
    best, parts = None, [p for p in path.strip("/").split("/") if p]
    for mount in {controllers, "cpu", "cpu,cpuacct"}:
        for depth in range(len(parts), -1, -1):
            d = root / "sys/fs/cgroup" / mount / "/".join(parts[:depth])
            if (d / "cpu.cfs_quota_us").is_file() and (d / "cpu.cfs_period_us").is_file():
                quota = int((d / "cpu.cfs_quota_us").read_text())
                if quota > 0:
                    cores = quota / int((d / "cpu.cfs_period_us").read_text())
                    best = cores if best is None else min(best, cores)
    return best


def usable_cores(root: str | os.PathLike = "/") -> int:
    """The cores this process may use: its CPU affinity (``taskset``, Slurm, ``docker --cpuset-cpus``),
    capped by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``:
    ``docker --cpus``, Kubernetes limits), rounded down (at least 1), as Go's automaxprocs does.
    ``os.cpu_count()`` sees neither. ``root``: where ``/proc`` and ``/sys`` are (tests)."""
    root = Path(root)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return cores
    quotas = []
    for line in lines:  # "ID:CONTROLLERS:PATH"; v2 is "0::PATH"
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            quotas.append(_cgroup_v2_cores(root, path))
        elif "cpu" in controllers.split(","):
            quotas.append(_cgroup_v1_cores(root, controllers, path))
    quotas = [q for q in quotas if q is not None]
    return max(1, min([cores, *(math.floor(q) for q in quotas)]))


def _threads(num_threads: int, decoders: int, io_threads: int) -> int:
    """Threads of one pipeline: the CPU operators' pool and the executor's task threads
    (executor_factory.cc:36,62), each mixed decoder's pool of ``num_threads``, the reader's io threads."""
    return num_threads + min(num_threads, EXECUTOR_MAX_THREADS) + decoders * num_threads + io_threads


def pipeline_threads(cores: int, num_pipelines: int = 1, decoders: int = 1, io_threads: int = 0) -> int:
    """``num_threads`` for one of ``num_pipelines`` GPU pipelines sharing ``cores``: their share of the
    cores, lowered until the pipeline, with its reader's ``io_threads``, starts at most
    :data:`MAX_THREADS` threads."""
    n = max(1, cores // num_pipelines)
    while n > 1 and _threads(n, decoders, io_threads) > MAX_THREADS:
        n -= 1
    return n


def gpu_resources(clip_len: int, frame_hw, batch_size: int, num_pipelines: int = 1, cores: int | None = None, *,
                  crop_size: int = 224, decoders: int = 1, num_threads: int | None = None,
                  jpeg_bytes: int | None = None, io_threads: int = 0) -> dict:
    """What one GPU pipeline of :func:`dali_video.clip_dataset` starts and allocates, per pipeline:
    ``{"threads", "pinned_bytes", "device_bytes", "num_threads"}`` for batches of ``batch_size`` clips
    of ``clip_len`` frames of at most ``frame_hw`` (height, width), ``num_pipelines`` pipelines (one per
    GPU) sharing ``cores`` (default :func:`usable_cores`).

    threads: the CPU operators' pool and the executor's (see the module docstring) and each mixed
    decoder's pool of ``num_threads``. pinned: each decoder thread's two host paddings (one frame each),
    and the JPEG bytes of ``QUEUE_DEPTH + 1`` batches staged for the GPU (``jpeg_bytes`` per frame,
    default a quarter of the raw frame: a generous bound for quality <= 95). device: each decoder
    thread's device padding, the hardware decoder's preallocated batch of frames, and per queued
    batch the decoded frames, their crops (slice, then stack) and the float32 clips.
    ``io_threads``: the reader's read-ahead threads (:data:`BUCKET_IO_THREADS` for a dataset in a
    bucket, 0 for local files). ``decoders``: 1 for the graph dali-video builds; ``clip_len`` gives the former graph (one decoder
    per frame position) by the same formula.
    """
    h, w = frame_hw
    frame = h * w * 3
    frames = clip_len * batch_size
    n = num_threads or pipeline_threads(cores or usable_cores(), num_pipelines, decoders, io_threads)
    jpeg = frame // 4 if jpeg_bytes is None else jpeg_bytes
    crop = crop_size * crop_size * 3
    # The hardware decoder preallocates its batch (max_batch_size of the decoder: B*T frames in one
    # decoder, B in each of T) at the hinted size: the same bytes either way.
    hw = frames * frame
    return {
        "num_threads": n,
        "threads": _threads(n, decoders, io_threads),
        "pinned_bytes": decoders * n * 2 * frame + (QUEUE_DEPTH + 1) * frames * jpeg,
        "device_bytes": decoders * n * frame + hw + QUEUE_DEPTH * frames * (frame + 2 * crop + 4 * crop),
    }
