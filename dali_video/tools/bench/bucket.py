"""dali-video-bench on a bucket: ``dali-video-bench s3://BUCKET/PREFIX --out DIR [--latency-ms 0 30]``.

Storage is what is measured, so the loaders only read (no decoding), side by side, each in a fresh
process for ``--seconds`` (default 20) after its first batch:
  dali_video     dali-video's native reader: one ranged GET of a clip's frames per clip
  dali_tfrecord  DALI's ``fn.readers.tfrecord`` with its own indexes: one GET of a whole record per record
                 (it returns only a record's first frame, and a clip needs its whole record, so its
                 records/s are the clips/s it could give)
  tfdata         tf.data over the same objects: records streamed through fsspec (ranged GETs of 16 MB)
                 in an interleaved generator (TensorFlow 2.21 has no s3://, and its gs:// has Google's
                 endpoint built in), parsed, a random clip's JPEGs picked
and one row that decodes (not with ``--quick``): clip_dataset (``--device``) on the bucket.
``--threads`` (default 25) is the requests each may have in flight: dali-video's ``io_threads``,
fn.readers.tfrecord's DALI threads (each reads one record at a time); tf.data's are fsspec's.

Requests, bytes and requests in flight are counted by the bench's proxy (:mod:`.proxy`), which it
starts in front of a local endpoint (``AWS_ENDPOINT_URL`` for s3://, ``DALI_GCS_ENDPOINT_URL`` for
gs://, an ``http://`` address of this host), adding ``--latency-ms`` to every request. Against any
other store there is no proxy: those columns say "not measured".
"""
from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from ...index_tools import idx_path
from .measure import dataset_files, finish, machine, measure, save, sizes, time_batches
from .systems import fsspec_records, run_dali_video, tfdata_dataset
from .proxy import set_delay, stop

ENDPOINT_VARS = {"s3": "AWS_ENDPOINT_URL", "gs": "DALI_GCS_ENDPOINT_URL"}
SYSTEMS = ("dali_video", "dali_tfrecord", "tfdata", "dali_video_decoded")
HEADER = f"{'latency':>7}  {'system':19} {'clips/s':>8} {'req/clip':>9} {'MB/clip':>8} {'x clip':>7} {'in flight':>9}"
COLUMNS = """Columns: clips/s: timed clips (dali_tfrecord: records) per second; req/clip: requests the store got
per clip while timing (all kinds); MB/clip: bytes the store sent per clip while timing; x clip: those
bytes over the clip's own frames' bytes (from the frame indexes); in flight: the most requests the store
had at once."""


def read_dali_video(data, batch_size, clip_len, crop, batches, device, *, threads, proxy, seconds=None):
    """dali-video's native reader alone, in a DALI pipeline (the clips' JPEGs, checked, not decoded)."""
    from ...loader.dataset import clip_pipeline

    start = time.perf_counter()
    with clip_pipeline(data, batch_size=batch_size, clip_len=clip_len, crop_size=crop, device="cpu", seed=0,
                       output="jpegs", io_threads=threads) as loader:
        return time_batches(iter(loader.pipeline.run, None), batches, batch_size, clip_len, start, seconds,
                                   proxy)


def read_dali_tfrecord(data, batch_size, clip_len, crop, batches, device, *, threads, proxy, seconds=None):
    """DALI's TFRecord reader over the same objects, with the shards' DALI indexes."""
    from .baselines import tfrecord_pipeline

    shards, _ = dataset_files(data)
    start = time.perf_counter()
    pipe = tfrecord_pipeline(shards, [idx_path(s) for s in shards], batch_size=batch_size, num_threads=threads)
    pipe.build()
    return time_batches(iter(pipe.run, None), batches, batch_size, clip_len, start, seconds, proxy)


def read_tfdata(data, batch_size, clip_len, crop, batches, device, *, threads, proxy, seconds=None):
    """tf.data over the same objects: records through fsspec, a random clip's JPEGs, batched."""
    shards, _ = dataset_files(data)
    start = time.perf_counter()
    ds = tfdata_dataset([str(s) for s in shards], batch_size, clip_len, crop, read_records=fsspec_records,
                              decode=False)
    return time_batches(iter(ds), batches, batch_size, clip_len, start, seconds, proxy)


def decode_dali_video(data, batch_size, clip_len, crop, batches, device, *, threads, proxy, seconds=None):
    """clip_dataset on the bucket: read, decoded, cropped, through TensorFlow."""
    return run_dali_video(data, batch_size, clip_len, crop, batches, device, seconds=seconds,
                                io_threads=threads, proxy=proxy)


RUNNERS = dict(zip(SYSTEMS, (read_dali_video, read_dali_tfrecord, read_tfdata, decode_dali_video)))


def local_endpoint(scheme: str) -> str | None:
    """The store's endpoint when it is an http:// address of this host (a proxy can sit in front)."""
    endpoint = os.environ.get(ENDPOINT_VARS[scheme], "")
    parts = urlsplit(endpoint)
    return endpoint if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1") else None


@contextlib.contextmanager
def counting_proxy(scheme: str):
    """The bench's proxy in front of the local endpoint, which the environment points at meanwhile
    (the measured processes inherit it); its URL, or None when the store is not local."""
    endpoint = local_endpoint(scheme)
    if endpoint is None:
        yield None
        return
    var, parts = ENDPOINT_VARS[scheme], urlsplit(endpoint)
    # To the host the endpoint names (::1 is not 127.0.0.1), at its port or http's default.
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("proxy.py")), str(parts.port or 80),
                             parts.hostname], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{proc.stdout.readline().strip()}"
        os.environ[var] = url
        yield url
    finally:
        os.environ[var] = endpoint
        proc.stdin.close()
        stop(proc)


def check_latency(data: str, latencies) -> None:
    """Latency is added by the proxy, which needs a local endpoint."""
    scheme = data.split(":")[0]
    if any(latencies) and local_endpoint(scheme) is None:
        raise ValueError(f"--latency-ms is added by the bench's proxy, which sits in front of a local store: set "
                         f"{ENDPOINT_VARS[scheme]}=http://127.0.0.1:PORT, or measure {data} without --latency-ms")
    if any(ms < 0 for ms in latencies) or len(set(latencies)) < len(latencies):
        raise ValueError(f"--latency-ms ({' '.join(map(str, latencies))}) must be different values, 0 or more "
                         f"(the results are kept per value)")


def _row(latency, name, r) -> str:
    """One row of the table; the proxy's columns say "n/m" (not measured) where no proxy counted."""
    def f(v, spec, width):
        return format(v, spec) if isinstance(v, (int, float)) else "n/m".rjust(width)

    mb = r.get("store_bytes_per_clip")  # the proxy's columns come together (time_batches)
    return (f"{latency:>4} ms  {name:19} {f(r.get('clips_per_s'), '8.1f', 8)} "
            f"{f(r.get('requests_per_clip'), '9.3f', 9)} {f(None if mb is None else mb / 1e6, '8.3f', 8)} "
            f"{f(r.get('x_clip'), '7.2f', 7)} {f(r.get('most_in_flight'), '9d', 9)}")


def main(args, data: str, shards: list[str], device: str) -> int:
    """The bucket bench (see the module doc): ``data`` is the checked ``s3://``/``gs://`` prefix, ``shards``
    the shards read from it."""
    scheme = data.split(":")[0]
    seconds = args.seconds or (5 if args.quick else 20)
    record, clip_bytes, videos = sizes(shards, args.clip_len)
    info = machine()
    results = {"machine": info, "device": device, "data": data, "batch_size": args.batch_size,
               "clip_len": args.clip_len, "crop": args.crop_size, "threads": args.threads, "seconds": seconds,
               "videos": videos, "record_bytes": record, "clip_bytes": clip_bytes,
               "endpoint": local_endpoint(scheme), "latency": {}}
    with counting_proxy(scheme) as proxy:
        for ms in args.latency_ms:
            if proxy:
                set_delay(proxy, ms / 1000)
            rows = results["latency"][str(ms)] = {}
            for system in SYSTEMS[:3] if args.quick else SYSTEMS:
                runner = functools.partial(RUNNERS[system], threads=args.threads, proxy=proxy)
                r = rows[system] = measure(shards, runner, batch_size=args.batch_size,
                                                 clip_len=args.clip_len, crop=args.crop_size, batches=1,
                                                 device=device, seconds=seconds)
                if "store_bytes_per_clip" in r:
                    r["x_clip"] = r["store_bytes_per_clip"] / clip_bytes
                print(f"measured {system} at {ms} ms", file=sys.stderr, flush=True)
    out = Path(args.out)
    save(results, out)
    where = (f"counted by the bench's proxy in front of {results['endpoint']} ({ENDPOINT_VARS[scheme]})" if proxy
             else "remote store: requests, bytes and in flight not measured (n/m), latency not added")
    print(f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; {data}: {videos} videos, records of "
          f"{record / 1e6:.2f} MB, a clip's frames {clip_bytes / 1e6:.3f} MB (T={args.clip_len}); B={args.batch_size}, "
          f"--threads {args.threads}, {seconds:g} s timed per row; {where}")
    print(COLUMNS)
    print(HEADER)
    for ms, rows in results["latency"].items():
        for system, r in rows.items():
            print(_row(ms, system, r) + (f"  error: {r['error']}" if "error" in r else ""))
        ours, theirs = rows["dali_video"].get("clips_per_s"), rows["dali_tfrecord"].get("clips_per_s")
        if ours and theirs:
            print(f"{ms:>4} ms  dali_video reads {ours / theirs:.2f}x the clips/s of fn.readers.tfrecord")
    return finish({"systems": results["latency"]}, out)
