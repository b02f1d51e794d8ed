"""The bench's shared timing and report: batches timed, a system measured in a fresh process, the
process's memory and reads, the machine, and the results file."""
from __future__ import annotations

import collections
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty

from ...index_tools import fidx_path, read_frame_index
from ...index_tools import storage
from ...loader.gpu import quiet_tensorflow
from ...loader.sampling import shard_files
from .proxy import proxy_log

quiet_tensorflow()  # before TensorFlow is imported, here and in the spawned children that measure

def rss_mb(kind: str = "VmRSS") -> float:
    """This process's resident set now (MB); ``kind="RssFile"``: its part mapped from files (shared
    with other processes that map them)."""
    return _proc("status", f"{kind}:") / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evict(files) -> None:
    """Drop the files from the page cache, as if read from cold storage."""
    os.sync()
    for f in files:
        if storage.is_url(f):  # an object in a bucket: nothing of it is in this machine's cache
            continue
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def dataset_files(data):
    from ...index_tools import idx_path

    shards = shard_files(data)
    return shards, [p for s in shards for p in (s, idx_path(s), fidx_path(s))]


def sizes(data, clip_len):
    """Mean bytes of a record and of ``clip_len`` of its frames, from the frame indexes."""
    indexes = [read_frame_index(fidx_path(s)) for s in dataset_files(data)[0]]  # each header read once
    videos = sum(ix.num_videos for ix in indexes)
    records = sum(sum(ix.videos["record_length"]) for ix in indexes)
    frame_bytes = sum(int(ix.read_rows(0, ix.num_frame_rows)["length"].sum()) for ix in indexes)
    return records / videos, frame_bytes / sum(ix.num_frame_rows for ix in indexes) * clip_len, videos


def _proc(path: str, key: str) -> int:
    """The number after ``key`` in this process's ``/proc/self/`` file ``path``."""
    with open(f"/proc/self/{path}") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def bytes_read() -> int:
    """Bytes this process has read from files so far (read and pread, page cache or not)."""
    return _proc("io", "rchar:")


def thread_count() -> int:
    return _proc("status", "Threads:")


def time_batches(it, batches, batch_size, clip_len, start, seconds=None, proxy=None):
    """Time ``batches`` batches after the first, or (``seconds``) as many as end within about that long.
    ``proxy``: the URL of the counting proxy (:mod:`.proxy`) in front of the store: the requests it
    saw while timing are counted too."""
    next(it)
    first = time.perf_counter() - start
    if proxy:
        proxy_log(proxy, clear=True)
    t0, read0 = time.perf_counter(), bytes_read()
    n = 0
    while True:
        last = next(it)
        n += 1
        if n >= batches if seconds is None else time.perf_counter() - t0 >= seconds:
            break
    if hasattr(last[0], "numpy"):  # a GPU batch may still be in flight when next() returns: wait for it
        last[0].numpy()
    took = time.perf_counter() - t0
    out = {"clips_per_s": n * batch_size / took, "frames_per_s": n * batch_size * clip_len / took,
           "first_batch_s": first, "bytes_read_per_clip": (bytes_read() - read0) / (n * batch_size),
           "batches": n, "seconds": took}
    if proxy:
        log = proxy_log(proxy)
        kinds = collections.Counter(f"{r['method']} {r['path'].split('?')[0].rsplit('.', 1)[-1]}" for r in log["log"])
        out.update(requests_per_clip=len(log["log"]) / (n * batch_size), most_in_flight=log["most_in_flight"],
                   store_bytes_per_clip=log["bytes"] / (n * batch_size),
                   requests=dict(kinds), clips=n * batch_size)
    return out



def _child(args) -> None:
    data, runner, batch_size, clip_len, crop, batches, device, cold, seconds, queue = args
    try:
        if device == "gpu":  # before TensorFlow takes the GPU's memory and leaves DALI none
            from ...loader.gpu import enable_memory_growth

            enable_memory_growth()
        if cold:
            evict(dataset_files(data)[1])
        timed = {"seconds": seconds} if seconds else {}  # only run_dali_video (and the bucket's runners) take it
        out = runner(data, batch_size, clip_len, crop, batches, device, **timed)
        out["peak_rss_mb"] = peak_rss_mb()
        queue.put(out)
    except BaseException as e:  # noqa: BLE001 - reported in the results, the other systems still run
        queue.put({"error": f"{type(e).__name__}: {e}"})


def measure(data, runner, *, batch_size, clip_len, crop, batches, device, cold=False, seconds=None) -> dict:
    """Run one system's ``runner`` (:data:`.systems.RUNNERS`: a module-level function or a partial of one)
    in a fresh process (clean memory figures, own page-cache state)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=((data, runner, batch_size, clip_len, crop, batches, device,
                                             cold, seconds, queue),))
    proc.start()
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                out = queue.get(timeout=1)
                break
            except Empty:  # a child killed by a crash in native code reports nothing: say so, do not wait
                if not proc.is_alive() and queue.empty():
                    out = {"error": f"the measuring process died (exit code {proc.exitcode})"}
                    break
                if time.monotonic() > deadline:
                    out = {"error": "no result within 900 s"}
                    break
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    return out


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    gpu = None
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True)
        gpu = r.stdout.strip() or None
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "gpu": gpu,
            "python": platform.python_version(), "platform": platform.platform()}



def failures(results) -> list[str]:
    """``"name: error"`` for every measurement that failed, wherever it is in ``results``."""
    found = []

    def visit(name, value):
        if isinstance(value, dict):
            for key in ("error", "bound_error"):
                if key in value:
                    found.append(f"{name}: {value[key]}")
            for key, sub in value.items():
                visit(f"{name} {key}".strip(), sub)

    for section in ("systems", "recipes", "t_sweep", "growth", "longer"):
        visit(section, results.get(section, {}))
    return found



def save(results, out: Path) -> None:
    (out / "bench.json").write_text(json.dumps(results, indent=1, default=float))


def finish(results, out: Path) -> int:
    """The results' path printed; 1 when a measurement failed, each named."""
    print(f"wrote {out / 'bench.json'}")
    failed = failures(results)
    if failed:
        print(f"dali-video-bench: {len(failed)} measurements failed:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0

