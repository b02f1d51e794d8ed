"""dali-video-index: build, verify and inspect the indexes of TFRecord video shards."""
from __future__ import annotations

import argparse
import sys

from .format import FormatError
from .indexer import build, expand, inspect, verify


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dali-video-index", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="write SHARD.idx (DALI tfrecord2idx) and SHARD.fidx (frame index)")
    p.add_argument("paths", nargs="+", help="shard files, globs or folders")
    p.add_argument("--frames-key", help="feature (or feature list) holding the JPEG frames; "
                   "default: 'frames', then 'frames/NNNN' features, then 'image/encoded' feature list")
    p.add_argument("--fps", type=float, help="frame rate of videos whose records hold no 'fps' feature "
                   "(needed by target_fps sampling)")
    p = sub.add_parser("verify", help="check every record, CRC, index line and frame-index entry")
    p.add_argument("paths", nargs="+")
    p = sub.add_parser("inspect", help="videos, frames, resolutions, bytes per frame, labels")
    p.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            print(inspect(args.paths))
            return 0
        for shard in expand(args.paths):
            if args.command == "build":
                index = build(shard, args.frames_key, args.fps)
                print(f"{shard}: {len(index.records)} records, {len(index.videos['record'])} videos, "
                      f"{sum(index.videos['num_frames'])} frames ({index.layout})")
            else:
                print(f"{shard}: OK, {verify(shard)} records")
    except (FormatError, OSError, ValueError) as e:
        print(f"dali-video-index {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
