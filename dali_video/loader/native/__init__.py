"""dali-video's native DALI operator (``clip_reader.cc``): build it, load it once per process.

The library's name carries a hash of its source, the DALI version and the flags, so a changed
source or DALI gets a new build and a stale library is never loaded. ``make setup`` (and the
Docker image's build stage) build it with ``python -m dali_video.loader.native``.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("clip_reader.cc")  # includes the headers beside it
SOURCES = (SOURCE, *sorted(SOURCE.parent.glob("*.h")))
BUILD_DIR = Path(__file__).with_name("_build")
BUILD_COMMAND = f"{Path(sys.executable).name} -m dali_video.loader.native"
_lock = threading.Lock()
_loaded: Path | None = None


def _flags(sanitize: str | None) -> list[str]:
    """g++ flags from the DALI and TensorFlow this process imports (never hand-copied)."""
    import nvidia.dali.sysconfig as dali_config

    # DALI's operator.h includes CUDA headers even for a CPU operator; TensorFlow's wheel ships them
    # (found without importing TensorFlow, which takes seconds).
    tf = importlib.util.find_spec("tensorflow")
    if tf is None or not tf.submodule_search_locations:
        raise RuntimeError("building dali-video's native reader needs TensorFlow's CUDA headers: "
                           "pip install tensorflow (see pyproject.toml for the version)")
    cuda = Path(next(iter(tf.submodule_search_locations)), "include", "third_party", "gpus", "cuda")
    # -ffp-contract=off: no fused multiply-add, so the plan's doubles match the Python reference's.
    flags = ["-std=c++20", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Wno-sign-compare",
             *dali_config.get_compile_flags(), f"-I{cuda / 'include'}", f"-I{cuda / 'libcudacxx' / 'include'}",
             *dali_config.get_link_flags()]
    if sanitize:
        flags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
    return flags


def _sanitize() -> str | None:
    return os.environ.get("DALI_VIDEO_SANITIZE") or None  # "address": the AddressSanitizer build


def _dali_version() -> str:
    import nvidia.dali

    return nvidia.dali.__version__


def library_path(sanitize: str | None = None) -> Path:
    key = hashlib.sha256(b"".join(f.read_bytes() for f in SOURCES) + _dali_version().encode()
                         + " ".join(_flags(sanitize)).encode()).hexdigest()[:16]
    return BUILD_DIR / f"libdali_video_ops-{key}{'-' + sanitize if sanitize else ''}.so"


def build(sanitize: str | None = None) -> Path:
    """Compile the operator if this source and DALI have no library yet; return its path."""
    path = library_path(sanitize)
    if path.exists():
        return path
    BUILD_DIR.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=BUILD_DIR, suffix=".so.tmp")
    os.close(fd)
    cmd = [os.environ.get("CXX", "g++"), str(SOURCE), "-o", tmp, *_flags(sanitize)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed:\n{' '.join(cmd)}\n{proc.stderr}")
        os.replace(tmp, path)
        for old in BUILD_DIR.glob(f"libdali_video_ops-*{'-' + sanitize if sanitize else ''}.so"):
            if old != path and (sanitize or old.name.count("-") == 1):
                old.unlink()  # built from another source or DALI: never loaded again
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load() -> Path:
    """Load the operator into DALI, once per process (a second registration aborts the process)."""
    global _loaded
    with _lock:
        if _loaded is None:
            path = library_path(_sanitize())
            if not path.exists():
                raise RuntimeError(f"dali-video's native reader is not built for this source and DALI "
                                   f"{_dali_version()} (no {path}); build it with: "
                                   f"{BUILD_COMMAND}  (or: make setup)")
            from nvidia.dali import plugin_manager

            plugin_manager.load_library(str(path))
            _loaded = path
        return _loaded


def plan_function():
    """The operator's plan as a C function (see ``dali_video_plan`` in clip_reader.cc), for tests."""
    f = ctypes.CDLL(str(load())).dali_video_plan
    p = ctypes.POINTER(ctypes.c_int64)
    f.argtypes = [p, p, ctypes.c_int64, ctypes.c_int64, p, p]
    return f
