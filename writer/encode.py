"""The per-video step: decode, trim, resample, resize, JPEG-encode, serialise.

``encode_video`` is a pure function of the video file and the options, so any process (or a
distributed engine) produces the same bytes for the same input.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from ..index_tools import VideoMeta
from ..index_tools import format as fmt
from ..index_tools.proto import encode_example

from .containers import HEAD_BYTES, not_a_video
from .sources import VideoSpec


@dataclass(frozen=True)
class EncodeOptions:
    resize_shorter: int = 256  # 0 keeps the decoded size
    quality: int = 90
    fps: float | None = None  # resample to this frame rate (drops frames; never duplicates)
    max_frames: int | None = None

    def __post_init__(self):
        if self.resize_shorter < 0:
            raise ValueError(f"resize_shorter ({self.resize_shorter}) must be >= 0 (0 keeps the size)")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality ({self.quality}) must be in 1..100")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps ({self.fps}) must be > 0")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames ({self.max_frames}) must be >= 1")


@dataclass(frozen=True)
class EncodedVideo:
    data: bytes  # the serialised tf.train.Example
    spans: list  # (offset, length) of each JPEG in data
    meta: VideoMeta
    warning: str | None = None


class VideoError(Exception):
    """This video cannot be written; the message says why."""


@contextlib.contextmanager
def open_video(path: str):
    """``cv2.VideoCapture`` of a file. OpenCV crashes on names that are not valid UTF-8, so such a
    file is handed over as ``/proc/self/fd/N`` (Linux)."""
    fd = None
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        fd = os.open(path, os.O_RDONLY)
        path = f"/proc/self/fd/{fd}"
    cap = cv2.VideoCapture(path)
    try:
        yield cap
    finally:
        cap.release()
        if fd is not None:
            os.close(fd)


def _output_size(h: int, w: int, shorter: int) -> tuple[int, int]:
    if not shorter:
        return h, w
    scale = shorter / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _frames(cap, spec: VideoSpec, opts: EncodeOptions, stamps: list):
    """Decoded BGR frames of the kept segment, resampled; yields ``(index, frame)`` and appends the timestamp
    (ms) of every frame decoded in the segment, resampling's dropped ones too, to ``stamps``."""
    start_ms = (spec.start or 0.0) * 1000
    end_ms = spec.end * 1000 if spec.end is not None else math.inf
    if spec.start:
        cap.set(cv2.CAP_PROP_POS_MSEC, start_ms)
    kept, slot = 0, -1
    while kept < (opts.max_frames or math.inf):
        ok, frame = cap.read()
        if not ok:
            return
        ts = cap.get(cv2.CAP_PROP_POS_MSEC)
        if ts < start_ms - 1e-3:
            continue
        if ts >= end_ms:
            return
        stamps.append(ts)
        if opts.fps:
            s = math.floor((ts - start_ms) * opts.fps / 1000 + 1e-6)
            if s <= slot:
                continue
            slot = s
        yield kept, frame
        kept += 1


def _encode_frames(frames, opts: EncodeOptions):
    """JPEG bytes of each frame, all resized to one size: ``(jpegs, (height, width))``."""
    jpegs, size = [], None
    for i, frame in frames:
        h, w = frame.shape[:2]
        if size is None:
            first, size = (h, w), _output_size(h, w, opts.resize_shorter)
        elif (h, w) != first and not opts.resize_shorter:
            raise VideoError(f"frame {i} is {w}x{h}, earlier frames {first[1]}x{first[0]}; "
                             f"pass a resize size so all frames get one size")
        if (h, w) != size:
            interp = cv2.INTER_AREA if size[0] < h else cv2.INTER_LINEAR
            frame = cv2.resize(frame, (size[1], size[0]), interpolation=interp)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, opts.quality])
        if not ok:
            raise VideoError(f"JPEG encoding failed at frame {i}")
        jpegs.append(buf.tobytes())
    return jpegs, size


# The frames' timestamps decide the rate when it differs from the container header's by more than this
# fraction: a header can claim 15 fps for 68 frames spread over 29.5 s (each a dropped-frame gap apart).
RATE_TOLERANCE = 0.05


def frame_rate(header_fps: float, stamps) -> tuple[float, str | None]:
    """The rate of decoded frames with timestamps ``stamps`` (ms): the container header's, unless the frames'
    mean interval gives one more than RATE_TOLERANCE away from it (or the header gives none); then that one,
    with a note for the writer's report."""
    if len(stamps) < 2 or (spanned := max(stamps) - min(stamps)) <= 0:
        return header_fps, None
    measured = (len(stamps) - 1) * 1000 / spanned
    if header_fps > 0 and abs(measured - header_fps) <= RATE_TOLERANCE * header_fps:
        return header_fps, None
    header = f"{header_fps:g} fps" if header_fps > 0 else "no rate"
    return measured, (f"the frames' timestamps give {measured:.4g} fps ({len(stamps)} frames over "
                      f"{spanned / 1000:.4g} s), the container header {header}: their rate is used")


def _check_container(path: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as e:
        raise VideoError(f"cannot open: {e.strerror}") from None
    if reason := not_a_video(head):
        raise VideoError(reason)


def encode_video(spec: VideoSpec, opts: EncodeOptions) -> EncodedVideo:
    _check_container(spec.path)
    with open_video(spec.path) as cap:
        if not cap.isOpened():
            raise VideoError("cannot open: unreadable or not a video")
        header_count, header_fps, stamps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS), []
        jpegs, size = _encode_frames(_frames(cap, spec, opts, stamps), opts)
    source_fps, rate_note = frame_rate(header_fps or 0.0, stamps)
    if not jpegs:
        where = f" in segment [{spec.start:g}, {spec.end:g}) s" if spec.start is not None else ""
        raise VideoError(f"no decodable frames{where} (empty, truncated, or the segment lies outside the video)")
    # The stored frames' rate: resampling drops frames, never adds them. float32, as the record holds it.
    fps = float(np.float32(min(opts.fps, source_fps or opts.fps) if opts.fps else source_fps))
    warnings = []
    # max_frames keeps at most that many: fewer decoded than both it and the header is a truncated video.
    if header_count and spec.start is None and not opts.fps \
            and len(jpegs) != min(header_count, opts.max_frames or header_count):
        warnings.append(f"decoded {len(jpegs)} frames, the container header claims {header_count}")
    if rate_note:
        warnings.append(f"{rate_note} (stored {fps:.4g} fps)")
    warning = "; ".join(warnings) or None
    meta = VideoMeta(label=spec.label, filename=spec.filename, class_text=spec.class_text,
                     height=size[0], width=size[1], fps=fps)
    data, spans = encode_example({
        fmt.FRAMES: jpegs, fmt.NUM_FRAMES: [len(jpegs)], fmt.HEIGHT: [size[0]], fmt.WIDTH: [size[1]],
        fmt.CHANNELS: [3], fmt.CLASS_LABEL: [spec.label], fmt.CLASS_TEXT: [spec.class_text.encode()],
        fmt.FILENAME: [spec.filename.encode("utf-8", "surrogateescape")], **({fmt.FPS: [fps]} if fps > 0 else {})},
        track=fmt.FRAMES)
    return EncodedVideo(data, spans, meta, warning)
