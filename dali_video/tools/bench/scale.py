"""dali-video-bench scale: start-up time and memory of the loader on a Kinetics-shaped dataset.

  dali-video-bench scale --out RESULTS_DIR [--data DIR] [--videos 300000] [--frames 64] [--shards 1000]
                         [--readers 4] [--clips 2400] [--epochs 20]

Makes (once: a complete dataset of the same shape in --data is kept) a synthetic dataset of N videos
of F frames in S shards, in the writer's format, every frame the same tiny JPEG (16x16 grey, 163
bytes: the index, not the pixels, is what grows with the dataset), then, in a fresh process with
TensorFlow already imported:

  first reader     clip_dataset(...) called, then its first batch (seconds), and RSS after --clips clips;
  further readers  each one more clip_dataset of the same files in the same process (one share of a
                   global batch each, as on a host with one reader per GPU): its start-up seconds and
                   the RSS it adds after --clips clips of its own;
  epochs           RSS at the end of each of --epochs epochs over a small dataset (200 videos of 16 frames).

Figures go to RESULTS_DIR/scale.json and are printed.
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

from ...index_tools import format as fmt
from ...index_tools.proto import encode_example
from .measure import machine, measure, rss_mb

SIDE = 16  # frame side in pixels; the clips' crop
CLIP_LEN, BATCH = 8, 8


def tiny_jpeg() -> bytes:
    """A 16x16 grey JPEG of 163 bytes (optimised Huffman tables); decoded as RGB like any other."""
    import cv2

    image = np.zeros((SIDE, SIDE), np.uint8)
    image[: SIDE // 2] = 200
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 30, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    return data.tobytes()


def _write_shard(task) -> None:
    """One shard of ``videos`` videos (numbered from ``first``) of ``frames`` frames, then its .idx and .fidx."""
    path, first, videos, frames, jpeg = task
    records, rows, starts = [], [], 0
    columns = {c: [] for c in fmt.VIDEO_COLUMNS}
    crc = fmt.crc32c(jpeg)
    with open(path, "wb") as f:
        for v in range(first, first + videos):
            name = f"video_{v:07d}.mp4"
            data, spans = encode_example({fmt.FRAMES: [jpeg] * frames, fmt.NUM_FRAMES: [frames], fmt.HEIGHT: [SIDE],
                                          fmt.WIDTH: [SIDE], fmt.CLASS_LABEL: [v % 400],
                                          fmt.FILENAME: [name.encode()]}, track=fmt.FRAMES)
            record = fmt.encode_record(data)
            table = np.empty(frames, fmt.FRAME_ROW)
            table["offset"] = starts + 12 + np.array([s for s, _ in spans])
            table["length"], table["crc"] = len(jpeg), crc
            rows.append(table)
            for column, value in (("record", len(records)), ("record_offset", starts),
                                  ("record_length", len(record)), ("num_frames", frames), ("height", SIDE),
                                  ("width", SIDE), ("label", v % 400), ("filename", name), ("class_text", ""),
                                  ("fps", 25.0)):
                columns[column].append(value)
            records.append((starts, len(record)))
            f.write(record)
            starts += len(record)
    fmt.atomic_write(fmt.idx_path(path), fmt.format_idx(records))
    fmt.atomic_write(fmt.fidx_path(path), fmt.encode_frame_index(
        shard_size=starts, num_records=len(records), layout="example", frames_key=fmt.FRAMES, videos=columns,
        rows=np.concatenate(rows)))


def make_dataset(root, *, videos: int, frames: int, shards: int, workers: int = 2) -> Path:
    """A Kinetics-shaped dataset in ``root`` (kept when one of this shape is complete there)."""
    root = Path(root)
    shape = {"videos": videos, "frames": frames, "shards": shards, "side": SIDE}
    done = root / "scale.json"
    if done.exists() and json.loads(done.read_text()) == shape:
        return root
    root.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    jpeg = tiny_jpeg()
    bounds = np.linspace(0, videos, shards + 1).astype(int)
    tasks = [(root / fmt.shard_name("train", i, shards), int(bounds[i]), int(bounds[i + 1] - bounds[i]), frames, jpeg)
             for i in range(shards)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_shard, tasks):
            pass
    done.write_text(json.dumps(shape))  # last: marks the dataset complete
    return root


def _reader(data, shard_id: int, num_shards: int):
    from ...loader.dataset import clip_dataset

    return clip_dataset(str(data), batch_size=BATCH, clip_len=CLIP_LEN, crop_size=SIDE, device="cpu", seed=0,
                        shard_id=shard_id, num_shards=num_shards, dtype="uint8")


def readers(data, readers: int, clips: int) -> dict:
    """In this process: start-up and RSS of ``readers`` readers of ``data``, one after another, each
    reading ``clips`` clips; TensorFlow imported first (not counted)."""
    # TensorFlow and DALI's TF plugin imported before the clock starts, as a training script has them
    from nvidia.dali.plugin import tf  # noqa: F401

    out = {"rss_before_mb": rss_mb(), "readers": []}
    kept = []
    for k in range(readers):
        before, start = rss_mb(), time.perf_counter()
        ds = _reader(data, k, readers)
        made = time.perf_counter() - start
        it = iter(ds)
        next(it)
        first = time.perf_counter() - start
        for _ in range(clips // BATCH - 1):
            next(it)
        kept.append(it)
        rss = rss_mb()
        out["readers"].append({"startup_s": made, "first_batch_s": first, "rss_mb": rss, "added_mb": rss - before,
                               "rss_file_mb": rss_mb("RssFile")})
    return out


def epochs(data, epochs: int) -> dict:
    """RSS at the end of each epoch of one reader over ``data``."""
    import tensorflow  # noqa: F401

    ds = _reader(data, 0, 1)
    steps = ds._dali_video_loader.steps_per_epoch
    it = iter(ds)
    rss = []
    for _ in range(epochs):
        for _ in range(steps):
            next(it)
        rss.append(rss_mb())
    return {"steps_per_epoch": steps, "rss_mb": rss, "growth_2_to_last": rss[-1] / rss[1] - 1}


def _run_readers(data, batch_size, clip_len, crop, batches, device, *, readers_, clips):
    return readers(data, readers_, clips)


def _run_epochs(data, batch_size, clip_len, crop, batches, device, *, epochs_):
    return epochs(data, epochs_)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dali-video-bench scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results folder: scale.json")
    p.add_argument("--data", help="where the synthetic dataset is made (or kept); default RESULTS_DIR/data")
    p.add_argument("--videos", type=int, default=300_000)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--shards", type=int, default=1000)
    p.add_argument("--readers", type=int, default=4, help="readers in one process (default 4)")
    p.add_argument("--clips", type=int, default=2400, help="clips each reader reads (default 2400)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the small dataset (default 20)")
    args = p.parse_args(argv)
    if min(args.videos, args.frames, args.shards, args.readers, args.clips) < 1 or args.epochs < 2 \
            or args.shards > args.videos:
        print("dali-video-bench scale: error: --videos, --frames, --shards, --readers and --clips must be at least 1, "
              "--epochs at least 2, and --shards at most --videos", file=sys.stderr)
        return 2
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    start = time.perf_counter()
    make_dataset(data, videos=args.videos, frames=args.frames, shards=args.shards)
    made = time.perf_counter() - start
    small = make_dataset(out / "small", videos=200, frames=16, shards=4)
    results = {"machine": machine(), "videos": args.videos, "frames": args.frames, "shards": args.shards,
               "make_s": made, "clips_per_reader": args.clips}
    kw = dict(batch_size=BATCH, clip_len=CLIP_LEN, crop=SIDE, batches=0, device="cpu")
    readers = functools.partial(_run_readers, readers_=args.readers, clips=args.clips)
    results["readers"] = measure(str(data), readers, **kw)
    results["epochs"] = measure(str(small), functools.partial(_run_epochs, epochs_=args.epochs), **kw)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=1))
    m = results["machine"]
    print(f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {args.videos} videos x {args.frames} frames in "
          f"{args.shards} shards (made or checked in {made:.0f} s); B={BATCH} T={CLIP_LEN}, device cpu")
    for section in ("readers", "epochs"):
        if "error" in results[section]:
            print(f"{section}: error: {results[section]['error']}")
    for k, r in enumerate(results["readers"].get("readers", [])):
        print(f"reader {k + 1}: clip_dataset {r['startup_s']:.2f} s, first batch at {r['first_batch_s']:.2f} s; "
              f"after {args.clips} clips RSS {r['rss_mb']:.0f} MB ({r['added_mb']:+.0f} MB; mapped from files "
              f"{r.get('rss_file_mb', 0):.0f} MB)")
    e = results["epochs"]
    if "rss_mb" in e:
        print(f"epochs (200 videos x 16 frames, {e['steps_per_epoch']} steps each): RSS " +
              ", ".join(f"{x:.0f}" for x in e["rss_mb"]) + f" MB; epoch 2 -> {args.epochs}: "
              f"{e['growth_2_to_last']:+.1%}")
    print(f"wrote {out / 'scale.json'}")
    return 1 if any("error" in results[s] for s in ("readers", "epochs")) else 0

