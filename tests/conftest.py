import os
import shutil
import struct
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from dali_video.tools.sample_data import make_folder_dataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, check=True, env=None):
    """Run ``python -m module args`` from the repository root (``env``: variables added); return the
    CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def with_dropped_frames(path, gaps: int):
    """Rewrite an MJPG ``.avi`` (as make_video writes it) so that ``gaps`` empty chunks, AVI's dropped frames,
    follow each coded frame: its header then claims (1 + gaps) times the frames at the rate it gave, while
    the decoded frames' timestamps lie 1 + gaps frame times apart (a variable-rate AVI)."""
    data = bytearray(path.read_bytes())
    movi = data.index(b"movi") - 8  # the LIST chunk holding the frames, then idx1
    end = movi + 8 + struct.unpack_from("<I", data, movi + 4)[0]
    frames, at = [], movi + 12
    while at < end:
        size = struct.unpack_from("<I", data, at + 4)[0]
        frames.append(bytes(data[at + 8:at + 8 + size]))
        at += 8 + size + (size & 1)
    body, index = bytearray(b"movi"), bytearray()
    for chunk in (c for frame in frames for c in [frame] + [b""] * gaps):
        index += struct.pack("<4sIII", b"00dc", 0x10 if chunk else 0, len(body), len(chunk))  # 0x10: key frame
        body += struct.pack("<4sI", b"00dc", len(chunk)) + chunk + b"\0" * (len(chunk) & 1)
    out = data[:movi] + b"LIST" + struct.pack("<I", len(body)) + body + b"idx1" + struct.pack("<I", len(index)) + index
    for tag, offset in ((b"avih", 24), (b"strh", 40)):  # dwTotalFrames, dwLength
        struct.pack_into("<I", out, out.index(tag) + offset, len(frames) * (1 + gaps))
    struct.pack_into("<I", out, 4, len(out) - 8)  # the RIFF size
    path.write_bytes(bytes(out))
    return path


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """2 classes x 5 synthetic videos of 20-40 frames, 48x64."""
    return make_folder_dataset(tmp_path_factory.mktemp("videos"), videos_per_class=5, frames=(20, 40))


@pytest.fixture(scope="session")
def dataset(videos, tmp_path_factory):
    """The videos written as 3 shards, frames kept at 48x64."""
    out = tmp_path_factory.mktemp("dataset")
    run_module("dali_video.writer", videos, out, "--resize", "0", "--num-shards", "3", "--workers", "2")
    return out


@pytest.fixture
def dataset_copy(dataset, tmp_path):
    """A copy that a test may damage."""
    return shutil.copytree(dataset, tmp_path / "ds")


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def pytest_collection_modifyitems(config, items):
    if has_gpu() or os.environ.get("DALI_VIDEO_REQUIRE_GPU") == "1":
        return
    skip = pytest.mark.skip(reason="no NVIDIA GPU (set DALI_VIDEO_REQUIRE_GPU=1 to fail instead)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

from .storage import bucket, gcs, gcs_server, moto_server, s3  # noqa: E402,F401  (fixtures)
