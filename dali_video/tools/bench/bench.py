"""dali-video-bench: dali-video side by side with the loaders users would pick instead, in one run.

  dali-video-bench DATA_DIR --out RESULTS_DIR [--split train] [--quick] [--device auto|gpu|cpu] [--seconds S]
  dali-video-bench s3://BUCKET/PREFIX --out RESULTS_DIR [--latency-ms 0 30] [--threads 25]   (or gs://)
  dali-video-bench scale --out RESULTS_DIR [--videos 300000 --frames 64 --shards 1000 --readers 4]

On a bucket the loaders only read, side by side, with the requests, bytes and requests in flight
that the store saw (see dali_video/tools/bench/bucket.py); `scale` makes a Kinetics-shaped synthetic dataset
and measures start-up and memory with one and several readers (dali_video/tools/bench/scale.py); the
rest of this text is about a local dataset. The systems are in systems.py, the timing and report
code all three share in measure.py.

--seconds S times dali_video for about S seconds of batches instead of --batches; with --quick it
measures only that (warm), as a GPU read of a user's own data needs (`--device gpu --seconds 60 --quick`;
`dali-video-gpu-check` times the GPU pipeline alone on its own data).

The inputs are checked first (shards, their indexes, the split, the clip against the frames); the
exit status is 1 when any system failed, each failure named at the end.

Systems (each measured in a fresh child process, warm and with the shards evicted from the page cache):
  dali_video     clip_dataset end to end through TensorFlow (--device; auto: the GPU if there is one, else
                 the CPU fallback);
                 _uint8: raw pixels; _tf_norm: float32 normalised in TensorFlow rather than DALI
  tfdata         the tuned tf.data answer: TFRecordDataset, parse_single_example (or, per the shards'
                 layout, one feature per frame or a SequenceExample's feature list), random contiguous
                 offset, decode_and_crop_jpeg of the T frames, batch, prefetch
  dali_tfrecord  DALI's own TFRecord reader over whole records (it can deliver only a record's
                 first frame, so only its read volume and shuffle-buffer memory are measured)
  decode_bound   the same frames and crop windows decoded from memory by DALI's CPU decoder on all
                 cores, no I/O: the ceiling of a CPU pipeline here (cv2.imdecode beside it)
Recipes (clip_dataset with a preset, at the preset's own clip length and crop size, float32):
  recipe slowfast, recipe mvit, recipe tsm_ssv2 (segments)   against the decode bound of the same frames
                 and windows
Feed rate (reading only, no decoding, into TensorFlow; frames/s):
  feed_native    dali-video's native reader through DALIDataset
  feed_native_x2 two such pipelines in one process (one DALI thread each, each reading half of every
                 global batch) against one pipeline with one thread
  feed_native_bytes  feed_native, and every frame's bytes also copied into TensorFlow (zero-padded)
  feed_python    the Python feed dali-video had before (threads + DALIDatasetWithInputs), the baseline
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ...index_tools import storage
from ...loader.config import ClipConfig
from ...loader.sampling import load_table, shard_files, usable_videos
from ...loader.gpu import usable_gpus
from . import measure as timing
from .measure import dataset_files, finish, machine, save
from .systems import RECIPE_ROWS, RUNNERS

SYSTEMS = ("dali_video", "dali_video_uint8", "dali_video_tf_norm", "tfdata", "dali_tfrecord", "decode_bound")
FEEDS = ("feed_native", "feed_native_x2", "feed_native_bytes", "feed_python")
COLUMNS = """Columns: clips/s, frames/s: timed batches after the first; /bound: frames/s over the decode bound's
(the same frames decoded from memory); /dali-v: clips/s over dali_video's; readamp: bytes read per clip
over the bytes of its T frames (1 = only the clip's frames); RSS MB: the child process's peak memory;
1st s: seconds to the first batch (start-up). (cold): with the shards evicted from the page cache."""
HEADER = (f"{'system':22} {'clips/s':>9} {'frames/s':>10} {'/bound':>8} {'/dali-v':>8} {'readamp':>7} {'RSS MB':>8} "
          f"{'1st s':>7}")


def measure(data, system: str, **kw) -> dict:
    """One system of :data:`.systems.RUNNERS`, by name, measured in a fresh process."""
    return timing.measure(data, RUNNERS[system], **kw)


def _transcode_segment(task):
    """Decode, resize (shorter side) and JPEG-encode one segment in a plain loop: the writer's bound."""
    import cv2

    path, start, end, shorter = task
    cv2.setNumThreads(1)
    cap = cv2.VideoCapture(path)
    cap.set(cv2.CAP_PROP_POS_MSEC, start * 1000)
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok or cap.get(cv2.CAP_PROP_POS_MSEC) >= end * 1000:
            break
        h, w = frame.shape[:2]
        scale = shorter / min(h, w)
        frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        frames += 1
    return frames


def bench_writer(csv_path, video_root, shorter=256) -> dict:
    """The writer on a Kinetics CSV of full videos, against the transcode loop on all cores."""
    import csv

    rows = list(csv.DictReader(open(csv_path)))
    found = {p.stem: str(p) for p in Path(video_root).rglob("*") if p.is_file()}
    tasks = [(found[r["youtube_id"]], float(r["time_start"]), float(r["time_end"]), shorter) for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dali_video.writer", str(video_root), tmp, "--kinetics", str(csv_path),
                        "--resize", str(shorter), "--follow-symlinks"], check=True, capture_output=True)
        seconds = time.perf_counter() - t0
        manifest = json.loads((Path(tmp) / "train.manifest.json").read_text())
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        frames = sum(pool.map(_transcode_segment, tasks, chunksize=1))
    bound = time.perf_counter() - t0
    return {"videos_per_s": manifest["videos"] / seconds, "frames_per_s": manifest["frames"] / seconds,
            "bound_videos_per_s": len(tasks) / bound, "bound_frames_per_s": frames / bound,
            "vs_bound": (manifest["frames"] / seconds) / (frames / bound)}



def grow(data, factor: int, into: Path) -> Path:
    """A dataset ``factor`` times larger: copies of every shard with its indexes, as one split."""
    from ...index_tools import fidx_path, idx_path
    from ...index_tools.format import shard_name

    shards, _ = dataset_files(data)
    into.mkdir(parents=True, exist_ok=True)
    for k in range(factor):
        for i, s in enumerate(shards):
            name = into / shard_name("train", k * len(shards) + i, factor * len(shards))
            for src, dst in ((s, name), (idx_path(s), idx_path(name)), (fidx_path(s), fidx_path(name))):
                shutil.copyfile(src, dst)
    return into


def _shards(data, split, clip: ClipConfig) -> list[str]:
    """The shards the bench reads from ``data``, checked as the loader checks them at start-up (indexes
    present and fresh, one split, every usable frame large enough for the crop)."""
    path = storage.check_path(data)  # a bucket's prefix is checked by shard_files
    if not storage.is_url(path) and not any(c in str(data) for c in "*?[") and not path.exists():
        raise FileNotFoundError(f"{data} does not exist")
    shards = [str(s) for s in shard_files(data, split)]
    usable_videos(load_table(shards), clip)
    return shards


def _bench_device(device: str) -> str:
    """"gpu" or "cpu" for ``--device``, as clip_dataset decides device="auto", but --device gpu on a host
    without a usable GPU is refused here, before any system runs."""
    gpus, why = usable_gpus()
    if device == "gpu" and not gpus:
        raise ValueError(f"--device gpu but this host has no usable GPU ({why}); pass --device cpu (or --device "
                         f"auto, which picks the CPU there)")
    return "gpu" if device != "cpu" and gpus else "cpu"


def check_inputs(args) -> tuple[list[str], list[list[str]], str]:
    """Everything a run needs, before any system runs: the shards of ``data`` and of ``--longer``, and the
    device."""
    clip = ClipConfig(clip_len=args.clip_len, crop_size=args.crop_size)  # validates both
    if args.batch_size < 1 or (args.batches is not None and args.batches < 1):
        raise ValueError(f"--batch-size ({args.batch_size}) and --batches ({args.batches}) must be at least 1")
    if args.threads < 1:
        raise ValueError(f"--threads ({args.threads}) must be at least 1")
    if args.seconds is not None and not args.seconds > 0:
        raise ValueError(f"--seconds ({args.seconds}) must be more than 0")
    for path in args.writer or ():
        if not Path(path).exists():
            raise FileNotFoundError(f"--writer: {path} does not exist")
    if storage.is_url(storage.check_path(args.data)):
        from .bucket import check_latency

        check_latency(str(storage.check_path(args.data)), args.latency_ms)
    elif any(args.latency_ms):
        raise ValueError(f"--latency-ms is added to a bucket's requests; {args.data} is a local path")
    device = _bench_device(args.device)
    return _shards(args.data, args.split, clip), [_shards(d, args.split, clip) for d in args.longer or ()], device



def fmt_row(name, r) -> str:
    def f(key, spec):
        v = r.get(key)
        return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(int(spec.split(".")[0]))
    return (f"{name:22} {f('clips_per_s', '9.1f')} {f('frames_per_s', '10.0f')} {f('vs_bound', '8.2f')} "
            f"{f('vs_dali_video', '8.2f')} {f('read_amplification', '7.2f')} {f('peak_rss_mb', '8.0f')} "
            f"{f('first_batch_s', '7.2f')}")


def chart(results, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = [s for s in SYSTEMS if results["systems"][s].get("clips_per_s")]
    x = np.arange(len(names))
    for i, mode in enumerate(("warm", "cold")):
        vals = [results["systems"][s]["clips_per_s"] if mode == "warm" else
                (results["systems"][s].get("cold") or {}).get("clips_per_s") or 0 for s in names]
        a.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=mode)
    a.set_xticks(x, [n.replace("dali_video_", "dali_video\n") for n in names], fontsize=8)
    a.set_ylabel("clips/s")
    a.set_title(f"B={results['batch_size']}, T={results['clip_len']}, {results['crop']} crop")
    a.legend()
    for s in ("dali_video", "tfdata", "decode_bound"):
        pts = [(int(t), r[s]["frames_per_s"]) for t, r in results["t_sweep"].items() if r.get(s, {}).get("frames_per_s")]
        if pts:
            b.plot(*zip(*pts), marker="o", label=s)
    b.set_xlabel("clip length T")
    b.set_ylabel("frames/s")
    b.set_xscale("log", base=2)
    b.set_title("T sweep (warm)")
    b.legend()
    fig.suptitle(results["machine"]["cpu"] + f", {results['machine']['cores']} cores, device {results['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["scale"]:  # start-up and memory at Kinetics scale (its own options)
        from . import scale

        return scale.main(argv[1:])
    p = argparse.ArgumentParser(prog="dali-video-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="a dataset folder (or shard glob) written by dali-video-write")
    p.add_argument("--split", help="the split to read from a folder that holds several (train, val, ...)")
    p.add_argument("--out", required=True, help="results folder: bench.json and bench.png")
    p.add_argument("--quick", action="store_true", help="fewer batches and sweeps (under 3 minutes here)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--clip-len", type=int, default=32)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--batches", type=int, help="timed batches per run (default 20, --quick 6)")
    p.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                   help="where DALI decodes (default auto: the GPU if there is a usable one, else the CPU)")
    p.add_argument("--cpu", dest="device", action="store_const", const="cpu", help="the same as --device cpu")
    p.add_argument("--seconds", type=float,
                   help="time dali_video for about this many seconds instead of --batches; with --quick, "
                        "measure only dali_video (warm): a GPU check")
    p.add_argument("--longer", nargs="+", metavar="DATA_DIR",
                   help="the same footage written with longer videos (say 2x and 4x the frames per video): "
                        "how each loader scales with video length at the same T")
    p.add_argument("--writer", nargs=2, metavar=("KINETICS_CSV", "VIDEO_ROOT"),
                   help="also time the writer on these full videos against a plain transcode loop")
    p.add_argument("--latency-ms", type=int, nargs="+", default=[0], metavar="MS",
                   help="on a bucket with a local endpoint: milliseconds the bench's proxy adds to every request, "
                        "each value a run of every system (default 0)")
    p.add_argument("--threads", type=int, default=25,
                   help="on a bucket: the requests each DALI reader may have in flight: dali-video's io_threads, "
                        "fn.readers.tfrecord's DALI threads (default 25, the AWS SDK's connections per process)")
    args = p.parse_args(argv)
    try:
        data, longer, device = check_inputs(args)
    except (ValueError, OSError) as e:
        print(f"dali-video-bench: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if storage.is_url(storage.check_path(args.data)):
        from . import bucket

        return bucket.main(args, str(storage.check_path(args.data)), data, device)
    info = machine()
    batches = args.batches or (6 if args.quick else 20)
    kw = dict(batch_size=args.batch_size, crop=args.crop_size, device=device)
    results = {"machine": info, "device": device, "batch_size": args.batch_size, "clip_len": args.clip_len,
               "crop": args.crop_size, "batches": batches, "seconds": args.seconds, "data": str(args.data),
               "split": args.split, "systems": {}, "t_sweep": {}}
    main_system = dict(clip_len=args.clip_len, batches=batches, seconds=args.seconds, **kw)
    if args.quick and args.seconds:  # a GPU check: the main system only, warm
        results["systems"]["dali_video"] = r = measure(data, "dali_video", **main_system)
        print(f"{info['cpu']}, {info['cores']} cores, GPU: {info['gpu']}; device {device}; B={args.batch_size} "
              f"T={args.clip_len} crop {args.crop_size}; {r.get('batches')} batches in {r.get('seconds') or 0:.1f} s")
        print(HEADER)
        print(fmt_row("dali_video", r))
        save(results, out)
        return finish(results, out)
    for system in SYSTEMS:
        timed = main_system if system == "dali_video" else dict(clip_len=args.clip_len, batches=batches, **kw)
        warm = measure(data, system, **timed)
        if system != "decode_bound":
            warm["cold"] = measure(data, system, cold=True, **timed)
        results["systems"][system] = warm
        print(f"measured {system}", file=sys.stderr, flush=True)
    results["recipes"] = {}
    for name in RECIPE_ROWS:
        row = measure(data, f"recipe_{name}", clip_len=args.clip_len, batches=batches, **kw)
        bound = measure(data, f"recipe_{name}_bound", clip_len=args.clip_len, batches=batches, **kw)
        if row.get("frames_per_s") and bound.get("frames_per_s"):
            row.update(bound_frames_per_s=bound["frames_per_s"], vs_bound=row["frames_per_s"] / bound["frames_per_s"])
        results["recipes"][name] = {**row, **({"bound_error": bound["error"]} if "error" in bound else {})}
        print(f"measured recipe {name}", file=sys.stderr, flush=True)
    for system in FEEDS:  # from the page cache; reading is fast, so more batches
        results["systems"][system] = measure(data, system, clip_len=args.clip_len, batches=batches * 10, **kw)
    sysr = results["systems"]
    for r in [sysr[s] for s in SYSTEMS] + [sysr[s].get("cold") or {} for s in SYSTEMS]:
        if r.get("frames_per_s"):
            r["vs_bound"] = r["frames_per_s"] / sysr["decode_bound"].get("frames_per_s", np.nan)
            r["vs_dali_video"] = r["clips_per_s"] / sysr["dali_video"].get("clips_per_s", np.nan)
    for r in [sysr[s] for s in SYSTEMS]:
        if r.get("bytes_per_clip"):
            r["clips_per_s_at_200MBps"] = 200e6 / r["bytes_per_clip"]
            r["clips_per_s_at_1GBps"] = 1e9 / r["bytes_per_clip"]
    for t in ((8, 32) if args.quick else (8, 16, 32, 64)):
        results["t_sweep"][str(t)] = {s: measure(data, s, clip_len=t, batches=batches, **kw)
                                      for s in ("dali_video", "tfdata", "decode_bound")}
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            big = grow(data, 4, Path(tmp) / "x4")
            results["growth"] = {"x1_peak_rss_mb": sysr["dali_video"]["peak_rss_mb"],
                                 "x4": measure(big, "dali_video", clip_len=args.clip_len, batches=batches, **kw)}
    if args.longer:
        results["longer"] = {}
        for name, shards in zip([args.data] + args.longer, [data] + longer):
            frames = float(np.mean(load_table(shards).num_frames))
            results["longer"][str(name)] = {"frames_per_video": frames, **{
                s: measure(shards, s, clip_len=args.clip_len, batches=batches, **kw) for s in ("dali_video", "tfdata")}}
    if args.writer:
        results["writer"] = bench_writer(*args.writer)
    save(results, out)
    try:
        if any(results["systems"][s].get("clips_per_s") for s in SYSTEMS):
            chart(results, out / "bench.png")
    except ImportError:
        print("matplotlib is not installed: no chart (pip install 'dali-video[bench]')", file=sys.stderr)
    print(f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, GPU: {info['gpu']}; device {device}; "
          f"B={args.batch_size} T={args.clip_len} crop {args.crop_size}")
    print(COLUMNS)
    print(HEADER)
    for s in SYSTEMS:
        print(fmt_row(s, sysr[s]))
        if sysr[s].get("cold"):
            print(fmt_row(f"{s} (cold)", sysr[s]["cold"]))
    for name, r in results["recipes"].items():
        print(fmt_row(f"recipe {name}", r) + "".join(f"  {k}: {r[k]}" for k in ("error", "bound_error") if k in r))
    for s in SYSTEMS:
        if sysr[s].get("error"):
            print(f"{s}: error: {sysr[s]['error']}")
    for s in FEEDS:
        print(fmt_row(s, sysr[s]) + ("  error: " + sysr[s]["error"] if sysr[s].get("error") else ""))
    if all(sysr[s].get("frames_per_s") for s in FEEDS):
        print(f"feed: native {sysr['feed_native']['frames_per_s']:.0f} frames/s = "
              f"{sysr['feed_native']['frames_per_s'] / sysr['feed_python']['frames_per_s']:.2f}x the Python feed; "
              f"one thread per pipeline: two pipelines in one process {sysr['feed_native_x2']['frames_per_s']:.0f} "
              f"frames/s = {sysr['feed_native_x2']['vs_one_pipeline']:.2f}x one pipeline "
              f"({sysr['feed_native_x2']['one_pipeline_frames_per_s']:.0f})")
    print(f"decode bound, cv2.imdecode on {info['cores']} threads (whole frames): "
          f"{sysr['decode_bound'].get('cv2_frames_per_s', float('nan')):.0f} frames/s")
    for s in ("dali_video", "tfdata"):
        if sysr[s].get("bytes_per_clip"):
            print(f"{s}: {sysr[s]['bytes_per_clip'] / 1e6:.2f} MB read per clip -> at most "
                  f"{sysr[s]['clips_per_s_at_200MBps']:.0f} clips/s on 200 MB/s storage, "
                  f"{sysr[s]['clips_per_s_at_1GBps']:.0f} on 1 GB/s")
    print("T sweep (warm frames/s): " + "; ".join(
        f"T={t}: " + ", ".join(f"{s} {r[s].get('frames_per_s') or 0:.0f}" for s in r)
        for t, r in results["t_sweep"].items()))
    if "growth" in results:
        print(f"dali_video peak RSS: {results['growth']['x1_peak_rss_mb']:.0f} MB on the dataset, "
              f"{results['growth']['x4'].get('peak_rss_mb', float('nan')):.0f} MB on 4x the dataset")
    for data, r in results.get("longer", {}).items():
        print(f"{r['frames_per_video']:.0f} frames/video ({Path(data).name}): " + ", ".join(
            f"{s} {r[s].get('clips_per_s') or 0:.1f} clips/s, {r[s].get('peak_rss_mb') or 0:.0f} MB"
            for s in ("dali_video", "tfdata")))
    if "writer" in results:
        w = results["writer"]
        print(f"writer: {w['videos_per_s']:.2f} videos/s, {w['frames_per_s']:.0f} frames/s; decode+resize+encode "
              f"loop on all cores: {w['bound_videos_per_s']:.2f} videos/s, {w['bound_frames_per_s']:.0f} frames/s "
              f"({w['vs_bound']:.2f} of the bound)")
    return finish(results, out)




if __name__ == "__main__":
    sys.exit(main())
