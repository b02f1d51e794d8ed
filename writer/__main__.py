"""dali-video-write: turn a video dataset into indexed TFRecord shards.

  dali-video-write ROOT OUT                          ROOT/<class>/<video>
  dali-video-write --csv list.csv ROOT OUT           rows of path,label (paths relative to ROOT)
  dali-video-write --kinetics train.csv ROOT OUT     Kinetics annotations; ROOT holds the videos
  dali-video-write --segments ann.csv ROOT OUT       annotated segments of untrimmed videos, each video
      written once: path,start,end (seconds) or path,start_frame,end_frame, [split], label heads
  dali-video-write --segments EPIC_100_train.csv --segments-format epic ROOT OUT   (also charades, activitynet)
  dali-video-write --replace ROOT OUT                OUT holds another dataset: delete it (every split), write this
  dali-video-write --runner beam ROOT OUT [-- BEAM PIPELINE OPTIONS]
      the same, as an Apache Beam pipeline: by default --workers local processes; after "--",
      Beam's own options, e.g. -- --runner=FlinkRunner --flink_master=HOST:8081
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from tqdm import tqdm

from ..index_tools import storage

from .encode import EncodeOptions
from .sources import SEGMENT_FORMATS, InputError, from_csv, from_folder, from_kinetics, from_segments
from .write import WriteError, plan_dataset, write_plan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dali-video-write", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="dataset folder (videos)")
    p.add_argument("out", help="output folder for shards, indexes and manifests "
                   "(or s3://BUCKET/PREFIX, gs://BUCKET/PREFIX)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--csv", help="CSV of path,label rows (a header path,HEAD,HEAD...: several label heads; "
                     "a cell 'a;b': several labels)")
    src.add_argument("--segments", metavar="CSV", help="annotated segments: header path, start,end (seconds) or "
                     "start_frame,end_frame (end excluded), optional split, then label heads")
    src.add_argument("--kinetics", action="append", metavar="CSV",
                     help="a Kinetics annotation CSV (repeat the flag for several: train, val, ...)")
    p.add_argument("--segments-format", choices=SEGMENT_FORMATS, default="csv",
                   help="--segments file's layout: csv (default), or a dataset's own (epic, charades, activitynet)")
    p.add_argument("--split", help="split name of the output (default: train; Kinetics: the CSV's split column)")
    p.add_argument("--classes", help="text file, one class name per line: fixes the class ids")
    p.add_argument("--resize", type=int, default=256, help="shorter side in px (0 keeps the size; default 256)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--fps", type=float, help="resample to this frame rate (drops frames)")
    p.add_argument("--max-frames", type=int, help="keep at most this many frames per video")
    p.add_argument("--shard-size", type=float, default=256, help="target shard size in MB (default 256)")
    p.add_argument("--num-shards", type=int, help="shards per split (overrides --shard-size)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: all cores); with --runner beam, local Beam workers")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="a bad video: skip and report it (default) or stop")
    p.add_argument("--seed", type=int, default=0, help="seed of the video order in shards")
    p.add_argument("--replace", action="store_true",
                   help="OUT holds another dataset: delete its shards, indexes and manifests (every split) first")
    p.add_argument("--follow-symlinks", action="store_true", help="follow symlinks that leave ROOT")
    p.add_argument("--runner", choices=("local", "beam"), default="local",
                   help="local processes (default) or an Apache Beam pipeline (pip install 'dali-video[beam]')")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, beam_args = p.parse_args(argv[:cut]), argv[cut + 1:]
    if args.segments_format != "csv" and not args.segments:
        p.error("--segments-format reads the file of --segments: pass --segments FILE")
    if beam_args and args.runner != "beam":
        p.error("Beam pipeline options after -- need --runner beam")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        if storage.is_url(storage.check_path(args.root)):
            raise InputError(f"{args.root}: the videos are read from a local folder (or one every Beam worker "
                             f"mounts); only the output may be an s3:// or gs:// URL")
        opts = EncodeOptions(resize_shorter=args.resize, quality=args.quality, fps=args.fps,
                             max_frames=args.max_frames)
        classes, heads = None, ()
        if args.classes:
            with open(args.classes, encoding="utf-8") as f:
                classes = [line.strip() for line in f if line.strip()]
        if args.kinetics:
            specs, failures = from_kinetics(args.kinetics, args.root, args.split, classes, args.follow_symlinks)
        elif args.segments:
            specs, failures, heads = from_segments(args.segments, args.root, args.split, classes, args.follow_symlinks,
                                                   args.segments_format)
        elif args.csv:
            specs, failures, heads = from_csv(args.csv, args.root, args.split or "train", classes,
                                              args.follow_symlinks)
        else:
            specs, failures = from_folder(args.root, args.split or "train", classes, args.follow_symlinks)
        if not specs:  # nothing to write: say why rather than exit quietly with no manifest
            for f in failures:
                print(f"  skipped {f.filename}: {f.reason}", file=sys.stderr)
            why = f"{len(failures)} skipped, reasons above" if failures else \
                "its class folders hold no file; files whose names start with '.' are not read"
            raise InputError(f"no video to write from {args.root} ({why})")
        start = time.perf_counter()
        # Beam workers report progress as Beam metrics (the runner's UI), not to this bar.
        bar = tqdm(total=len(specs), unit="video", smoothing=0.05, disable=True if args.runner == "beam" else None)
        frames = [0]

        def progress(videos, n):
            frames[0] += n
            bar.update(videos)
            bar.set_postfix_str(f"{frames[0] / max(bar.format_dict['elapsed'], 1e-9):.0f} frames/s", refresh=False)

        plan = plan_dataset(specs, args.out, opts, input_failures=failures, shard_size_mb=args.shard_size,
                            num_shards=args.num_shards, on_error=args.on_error, seed=args.seed, replace=args.replace,
                            heads=heads)
        manifests = write_plan(plan, workers=args.workers, progress=progress, runner=args.runner,
                               beam_args=beam_args)
        bar.close()
    except (InputError, WriteError, ValueError, OSError) as e:
        print(f"dali-video-write: error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    for split, m in manifests.items():
        segments = f", {m['segments']} segments" if "segments" in m else ""
        print(f"{split}: {m['videos']} videos{segments}, {m['frames']} frames in {len(m['shards'])} shards; "
              f"{len(m['failures'])} skipped, {len(m['warnings'])} warnings")
        for f in m["failures"]:
            print(f"  skipped {f['filename']}: {f['reason']}")
        for w in m["warnings"]:
            print(f"  warning {w['filename']}: {w['reason']}")
    total_frames = sum(m["frames"] for m in manifests.values())
    total_videos = sum(m["videos"] for m in manifests.values())
    reused_videos, reused_frames = sum(r.videos for r in plan.reused), sum(r.frames for r in plan.reused)
    if not plan.todo:  # a rate over shards found complete would be the speed of reading their indexes
        print(f"reused all {len(plan.shards)} shards, complete from an earlier run ({total_videos} videos, "
              f"{total_frames} frames): nothing to write in {args.out}")
        return 0
    videos, frames = total_videos - reused_videos, total_frames - reused_frames
    reused = f"; reused {len(plan.reused)} complete shards ({reused_videos} videos)" if plan.reused else ""
    print(f"wrote {videos} videos, {frames} frames in {seconds:.1f} s "
          f"({videos / seconds:.2f} videos/s, {frames / seconds:.0f} frames/s) to {args.out}{reused}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
