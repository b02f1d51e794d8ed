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
_s2n_done = False
_s2n_problem: str | None = None  # why DALI's S3 client would abort this process (see preload_s2n), or None


def _tensorflow_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return "libtensorflow_framework" in maps.read()
    except OSError:  # no /proc: what Python has imported is all there is to go by
        return "tensorflow" in sys.modules


def preload_s2n() -> None:
    """Bind DALI's s2n (its S3 client's TLS library) to the libcrypto it embeds, before TensorFlow loads.

    TensorFlow's libtensorflow_framework.so.2, loaded RTLD_GLOBAL, exports BoringSSL's OpenSSL symbols
    (``EVP_*``, ``SSL_*``, ``OpenSSL_version_num``); DALI's ``.libs/libs2n-*.so.1`` calls its embedded
    libcrypto through lazily bound PLT entries, so once TensorFlow is loaded they bind to BoringSSL,
    ``s2n_init()``'s libcrypto version check fails and aws-c-io exits the process at the first s3:// read.
    Loaded here with RTLD_NOW (and RTLD_LOCAL) they are bound now, to s2n's own, for good. Cheap: the
    wheel is found without importing DALI. Once per process; nothing to do without DALI or its s2n."""
    global _s2n_done, _s2n_problem
    if _s2n_done:
        return
    _s2n_done = True
    try:
        spec = importlib.util.find_spec("nvidia.dali")  # imports only the namespace package nvidia
    except (ImportError, ValueError):
        return
    locations = spec.submodule_search_locations if spec else None
    found = [p for d in locations or () for p in sorted(Path(d, ".libs").glob("libs2n*.so*"))]
    if not found:
        return
    if _tensorflow_loaded():  # too late: binding now would find TensorFlow's symbols first
        _s2n_problem = "TensorFlow was imported before dali_video"
        return
    try:
        ctypes.CDLL(str(found[0]), mode=os.RTLD_NOW)  # ctypes' default is RTLD_LOCAL
    except OSError as e:
        _s2n_problem = f"loading DALI's {found[0].name} failed ({e})"


def check_s3(shards) -> None:
    """Raise, rather than let DALI abort the process, if s3:// ``shards`` would be read by an S3 client
    bound to TensorFlow's BoringSSL (see :func:`preload_s2n`)."""
    url = next((s for s in map(str, shards) if s.startswith("s3://")), None)
    if url is not None and _s2n_problem:
        raise RuntimeError(f"cannot read {url} in this process: {_s2n_problem}, so DALI's S3 client (s2n) "
                           f"would bind TensorFlow's BoringSSL instead of its own libcrypto and abort the "
                           f"process; import dali_video before tensorflow (dali-video-train does)")


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
    f.argtypes = [p, p, ctypes.c_int64, ctypes.c_int64, p]
    return f
