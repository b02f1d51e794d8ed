"""Small synthetic videos whose pixels say which frame they are: for tests, demos and checks.

Every frame is flat in green and blue, which encode the frame number ``k``
(``G = 4 + 8 * (k % 32)``, ``B = 4 + 8 * (k // 32)``, so up to 1024 frames survive lossy codecs),
and red is a left-to-right ramp whose slope depends on the class: the ramp shows crops and flips,
and the slope gives a model something to learn.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

MAX_FRAMES = 1024


def frame_pixels(k: int, height: int, width: int, label: int = 0, num_classes: int = 1) -> np.ndarray:
    """Frame ``k`` as a BGR uint8 image."""
    if not 0 <= k < MAX_FRAMES:
        raise ValueError(f"frame number {k} outside 0..{MAX_FRAMES - 1}")
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = 4 + 8 * (k // 32)
    img[..., 1] = 4 + 8 * (k % 32)
    slope = 255 * (label + 1) / max(num_classes, 1)
    img[..., 2] = np.linspace(0, slope, width).round().astype(np.uint8)[None, :]
    return img


def frame_number(rgb: np.ndarray) -> int:
    """The frame number encoded in an RGB image (or any crop or flip of it)."""
    g = float(np.mean(rgb[..., 1]))
    b = float(np.mean(rgb[..., 2]))
    return int(round((g - 4) / 8)) + 32 * int(round((b - 4) / 8))


def make_video(path, num_frames: int, height: int = 48, width: int = 64, label: int = 0,
               num_classes: int = 1, fps: float = 25.0, first: int = 0) -> Path:
    """Write an MJPG ``.avi`` (or ``mp4v`` ``.mp4``) video of ``num_frames`` coded frames, showing frames
    ``first`` .. ``first + num_frames - 1`` (a part of a longer video, cut out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix == ".mp4" else "MJPG"))
    out = cv2.VideoWriter(str(path), fourcc, fps, (width, height))
    if not out.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for k in range(first, first + num_frames):
        out.write(frame_pixels(k, height, width, label, num_classes))
    out.release()
    return path


def make_folder_dataset(root, videos_per_class: int = 4, classes=("a", "b"), frames=(40, 72),
                        height: int = 48, width: int = 64, seed: int = 0) -> Path:
    """``ROOT/<class>/<video>.avi`` with frame counts drawn from ``frames`` (inclusive range)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        for i in range(videos_per_class):
            n = int(rng.integers(frames[0], frames[1] + 1))
            make_video(Path(root) / name / f"{name}_{i:03d}.avi", n, height, width, label, len(classes))
    return Path(root)


def sample_dataset(cache_dir=None) -> Path:
    """A small written dataset (built once, then cached): 4 classes x 12 videos of 48-96 frames."""
    cache = Path(cache_dir or os.environ.get("DALI_VIDEO_CACHE", Path.home() / ".cache" / "dali-video"))
    out = cache / "sample-v1"
    if (out / "train.manifest.json").exists():
        return out
    videos = cache / "sample-v1-videos"
    make_folder_dataset(videos, videos_per_class=12, classes=("left", "right", "up", "down"),
                        frames=(48, 96), height=120, width=160)
    # The writer runs as its own program: dali_video never imports the writer.
    subprocess.run([sys.executable, "-m", "dali_video.writer", str(videos), str(out), "--resize", "0",
                    "--num-shards", "4"], check=True)
    return out
