"""dali-video's native DALI operator (``clip_reader.cc``): find or build it, load it once per process.

The library's name carries a hash of its source, the DALI version and the CUDA major it is built for
(nvidia-dali-cuda120 or -cuda130) and the compiler flags (without their paths), so a changed source or
DALI gets a new build and a stale library is never loaded. Building needs g++ and the CUDA headers
DALI's ``operator.h`` includes (no GPU, no TensorFlow): :func:`cuda_includes` takes them from
TensorFlow's wheel, else ``CUDA_HOME`` / ``nvcc``, else the CUDA header wheels (pyproject.toml's
``cuda12-headers`` / ``cuda13-headers`` extras). It is looked for in two places:

- ``_build/`` beside this file: the wheel carries it there, built for the DALI it pins; ``make
  setup`` (and the Docker image's build stage) build it there with ``python -m dali_video.loader.native``;
- the user cache, ``$DALI_VIDEO_CACHE/native`` (default ``~/.cache/dali-video/native``): where the
  installed DALI differs from the wheel's, or the package has no library (an sdist installed without
  a compiler), the first use builds it there, under a file lock so that many processes starting at
  once build it once, and renames it into place complete. The package folder may be read-only.
"""
from __future__ import annotations

import atexit
import ctypes
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("clip_reader.cc")  # includes the headers beside it
SOURCES = (SOURCE, *sorted(SOURCE.parent.glob("*.h")))
BUILD_DIR = Path(__file__).with_name("_build")
log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: Path | None = None
_clients_bound = False
_client_problem: dict[str, str] = {}  # scheme -> why its DALI client would abort this process (preload_store_clients)


def _tensorflow_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return "libtensorflow_framework" in maps.read()
    except OSError:  # no /proc: what Python has imported is all there is to go by
        return "tensorflow" in sys.modules


# DALI's object-store clients call a library they embed through lazily bound PLT entries, and
# TensorFlow's libtensorflow_framework.so.2, loaded RTLD_GLOBAL, exports a library of the same symbols:
# per URL scheme, the client's library (in DALI's .libs) and what binding TensorFlow's instead would do.
_CLIENTS = {
    "s3://": ("libs2n*.so*", "DALI's S3 client (s2n) would bind TensorFlow's BoringSSL instead of its own libcrypto "
              "and abort the process"),
    "gs://": ("libgoogle_cloud_cpp_rest_internal*.so*", "DALI's GCS client (google-cloud-cpp) would bind "
              "TensorFlow's libcurl instead of the one it embeds and abort the process"),
}


def preload_store_clients() -> None:
    """Bind DALI's S3 and GCS clients to the libraries they embed, before TensorFlow loads.

    TensorFlow's libtensorflow_framework.so.2, loaded RTLD_GLOBAL, exports BoringSSL's OpenSSL symbols
    (``EVP_*``, ``SSL_*``, ``OpenSSL_version_num``) and libcurl's (``curl_*``). DALI's ``.libs/libs2n-*.so.1``
    calls its embedded libcrypto, and ``libgoogle_cloud_cpp_rest_internal-*.so.3`` its embedded libcurl,
    through lazily bound PLT entries, so once TensorFlow is loaded they bind to TensorFlow's: s2n_init()'s
    libcrypto version check fails and aws-c-io exits the process at the first s3:// read; google-cloud-cpp
    gets more bytes per write callback than its buffer holds (``Attempted to write 55296 bytes into
    SpillBuffer with only 16384 bytes available``) and aborts at the first gs:// read over 16 KB. Loaded here
    with RTLD_NOW (and RTLD_LOCAL) they are bound now, to their own, for good. Cheap: the wheel is found
    without importing DALI. Once per process; nothing to do without DALI or its clients."""
    global _clients_bound
    if _clients_bound:
        return
    _clients_bound = True
    try:
        spec = importlib.util.find_spec("nvidia.dali")  # imports only the namespace package nvidia
    except (ImportError, ValueError):
        return
    locations = spec.submodule_search_locations if spec else None
    for scheme, (pattern, _) in _CLIENTS.items():
        found = [p for d in locations or () for p in sorted(Path(d, ".libs").glob(pattern))]
        if not found:
            continue
        if _tensorflow_loaded():  # too late: binding now would find TensorFlow's symbols first
            _client_problem[scheme] = "TensorFlow was imported before dali_video"
            continue
        try:
            ctypes.CDLL(str(found[0]), mode=os.RTLD_NOW)  # ctypes' default is RTLD_LOCAL
        except OSError as e:
            _client_problem[scheme] = f"loading DALI's {found[0].name} failed ({e})"


def check_store_clients(shards) -> None:
    """Raise, rather than let DALI abort the process, if s3:// or gs:// ``shards`` would be read by a
    client bound to TensorFlow's libraries (see :func:`preload_store_clients`)."""
    for scheme, (_, consequence) in _CLIENTS.items():
        url = next((s for s in map(str, shards) if s.startswith(scheme)), None)
        if url is not None and scheme in _client_problem:
            raise RuntimeError(f"cannot read {url} in this process: {_client_problem[scheme]}, so {consequence}; "
                               f"import dali_video before tensorflow (dali-video-train does)")


# What DALI's operator.h includes from CUDA (even for a CPU operator): the runtime API, the compiler's
# host configuration and libcu++ (cuda/std).
CUDA_HEADERS = ("cuda_runtime_api.h", "crt/host_config.h", "cuda/std/type_traits")
# The CUDA header wheels, per CUDA major: the folders (under the `nvidia` namespace package) their
# headers install to. CUDA 12's come as nvidia-cuda-runtime-cu12, -cccl-cu12 and -nvcc-cu12 (crt/);
# CUDA 13's as nvidia-cuda-runtime, -cccl and -crt, all into cu13/include (libcu++ under cccl/).
HEADER_WHEELS = {12: ("cuda_runtime/include", "cuda_cccl/include", "cuda_nvcc/include"),
                 13: ("cu13/include", "cu13/include/cccl")}
HEADER_EXTRA = {12: "cuda12-headers", 13: "cuda13-headers"}  # pyproject.toml's extras that pin them


def dali_cuda() -> int:
    """The CUDA major version the installed DALI is built for (12: nvidia-dali-cuda120, 13: -cuda130);
    DALI's own backend reads it the same way (nvidia/dali/backend.py, ``int(str(__cuda_version__)[:2])``)."""
    import nvidia.dali

    return int(str(nvidia.dali.__cuda_version__)[:2])


def _cudart_major(folders) -> int | None:
    """The CUDA major version of the headers in ``folders`` (``CUDART_VERSION`` in cuda_runtime_api.h)."""
    for folder in folders:
        header = Path(folder, "cuda_runtime_api.h")
        if header.is_file():
            m = re.search(r"#define\s+CUDART_VERSION\s+(\d+)", header.read_text(errors="replace"))
            return int(m.group(1)) // 1000 if m else None
    return None


def _nvcc_includes(nvcc: str) -> list[Path]:
    """The include folders ``nvcc`` compiles with, as it says itself (``--dryrun`` prints its INCLUDES and
    SYSTEM_INCLUDES): also right where nvcc on PATH is a wrapper script outside the toolkit."""
    try:
        proc = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = re.findall(r'(?:-I|-isystem"?\s+"?)([^"\s]+)', "".join(
        line for line in proc.stderr.splitlines(keepends=True) if "INCLUDES=" in line))
    return [Path(f) for f in found]


def _header_candidates(major: int):
    """Where CUDA headers may be, in order: (what it is, include folders)."""
    tf = importlib.util.find_spec("tensorflow")  # found without importing TensorFlow, which takes seconds
    if tf is not None and tf.submodule_search_locations:
        cuda = Path(next(iter(tf.submodule_search_locations)), "include", "third_party", "gpus", "cuda")
        yield "TensorFlow's wheel", [cuda / "include", cuda / "libcudacxx" / "include"]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            root = Path(os.environ[var])
            yield f"{var}={root}", [root / "include", root / "include" / "cccl"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        yield f"nvcc ({nvcc})", _nvcc_includes(nvcc)
    nvidia = importlib.util.find_spec("nvidia")
    for folder in (nvidia.submodule_search_locations or []) if nvidia else []:
        yield f"the CUDA {major} header wheels", [Path(folder, sub) for sub in HEADER_WHEELS.get(major, ())]


def _header_wheels(major: int) -> str:
    """The pinned header wheels for CUDA ``major``, from this package's metadata (pyproject.toml's extra)."""
    extra = HEADER_EXTRA.get(major)
    try:
        requires = importlib.metadata.requires("dali-video") or []
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path
        requires = []
    pins = [r.split(";")[0].strip() for r in requires if extra and f'extra == "{extra}"' in r]
    if pins:
        return " ".join(pins)
    return {12: "nvidia-cuda-runtime-cu12 nvidia-cuda-cccl-cu12 nvidia-cuda-nvcc-cu12",
            13: "nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cuda-crt"}.get(major, f"the CUDA {major} headers")


def cuda_includes() -> tuple[list[Path], str]:
    """The include folders of CUDA headers for the installed DALI's CUDA major version, and where they
    come from: TensorFlow's wheel, else ``CUDA_HOME`` / ``CUDA_PATH`` / ``nvcc``'s, else the CUDA header
    wheels. Headers of another CUDA major are passed over (TensorFlow 2.21's are CUDA 12's)."""
    major, tried = dali_cuda(), []
    for source, folders in _header_candidates(major):
        folders = [f for f in dict.fromkeys(folders) if f.is_dir()]
        missing = [h for h in CUDA_HEADERS if not any((f / h).is_file() for f in folders)]
        found = _cudart_major(folders)
        if not missing and found == major:
            return folders, source
        tried.append(f"{source}: " + (f"lacks {', '.join(missing)}" if missing else f"CUDA {found}, not {major}"))
    raise RuntimeError(
        f"building dali-video's native reader needs the CUDA {major} headers that DALI's operator.h includes "
        f"({', '.join(CUDA_HEADERS)}), for DALI {_dali_version()} built for CUDA {major}, and none were found"
        f"{' (' + '; '.join(tried) + ')' if tried else ''}: pip install {_header_wheels(major)} (no GPU needed), "
        f"or set CUDA_HOME to a CUDA {major} toolkit")


def _flags(sanitize: str | None, includes=()) -> list[str]:
    """g++ flags from the DALI this process imports (never hand-copied), with the CUDA headers' ``includes``
    (:func:`cuda_includes`; the library's name leaves them out, so finding a built one needs none)."""
    import nvidia.dali.sysconfig as dali_config

    # -ffp-contract=off: no fused multiply-add, so the plan's doubles match the Python reference's.
    flags = ["-std=c++20", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Wno-sign-compare",
             *dali_config.get_compile_flags(), *(f"-I{f}" for f in includes), *dali_config.get_link_flags()]
    if sanitize:
        flags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
    return flags


def _sanitize() -> str | None:
    return os.environ.get("DALI_VIDEO_SANITIZE") or None  # "address": the AddressSanitizer build


def _dali_version() -> str:
    import nvidia.dali

    return nvidia.dali.__version__


def cache_dir() -> Path:
    """Where the first use builds the library: ``$DALI_VIDEO_CACHE/native`` or ``~/.cache/dali-video/native``."""
    return Path(os.environ.get("DALI_VIDEO_CACHE") or Path.home() / ".cache" / "dali-video") / "native"


def library_name(sanitize: str | None = None) -> str:
    # Include and library paths differ between the wheel's build environment and the user's venv
    # while naming the same DALI and headers, so they stay out of the key.
    flags = [f for f in _flags(sanitize) if not f.startswith(("-I", "-L"))]
    # DALI's CUDA major too: nvidia-dali-cuda120 and -cuda130 of one version are different libraries.
    dali = f"{_dali_version()} cuda{dali_cuda()}"
    key = hashlib.sha256(b"".join(f.read_bytes() for f in SOURCES) + dali.encode()
                         + " ".join(flags).encode()).hexdigest()[:16]
    return f"libdali_video_ops-{key}{'-' + sanitize if sanitize else ''}.so"


def library_path(sanitize: str | None = None) -> Path:
    """The library in the package (the wheel's, or ``make setup``'s)."""
    return BUILD_DIR / library_name(sanitize)


def _compile(path: Path, sanitize: str | None) -> None:
    """Compile the operator to ``path``, atomically: a temp file in the same folder, then a rename."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError(
            f"dali-video's native reader is not built for DALI {_dali_version()} and building it needs a "
            f"C++ compiler, but '{cxx}' is not on PATH: install g++ (Debian/Ubuntu: apt-get install g++; "
            f"RHEL: dnf install gcc-c++) or set CXX, or install the DALI version that dali-video's wheel "
            f"was built for (the nvidia-dali pin in `pip show dali-video`)")
    includes, source = cuda_includes()
    log.info("building %s with the CUDA headers of %s", SOURCE.name, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".so.tmp")
    os.close(fd)
    cmd = [cxx, str(SOURCE), "-o", tmp, *_flags(sanitize, includes)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed:\n{' '.join(cmd)}\n{proc.stderr}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def build(sanitize: str | None = None, folder: Path = BUILD_DIR) -> Path:
    """Compile the operator into ``folder`` if this source and DALI have no library there; return its path."""
    path = Path(folder) / library_name(sanitize)
    if path.exists():
        return path
    _compile(path, sanitize)
    for old in path.parent.glob(f"libdali_video_ops-*{'-' + sanitize if sanitize else ''}.so"):
        if old != path and (sanitize or old.name.count("-") == 1):
            old.unlink()  # built from another source or DALI: never loaded again
    return path


def cached_build(sanitize: str | None = None) -> Path:
    """The library in the user cache, built there on first use: once, whoever else starts at the same time."""
    path = cache_dir() / library_name(sanitize)
    if path.exists():  # appears only complete (renamed into place)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not path.exists():  # another process may have built it while this one waited
            log.warning("building dali-video's native reader for DALI %s into %s (once for this cache)",
                        _dali_version(), path)
            _compile(path, sanitize)
    return path


def load() -> Path:
    """Load the operator into DALI, once per process (a second registration aborts the process)."""
    global _loaded
    with _lock:
        if _loaded is None:
            path = library_path(_sanitize())
            if not path.exists():
                path = cached_build(_sanitize())
            from nvidia.dali import plugin_manager

            plugin_manager.load_library(str(path))
            _loaded = path
            _watch(ctypes.CDLL(str(path)))
        return _loaded


def _watch(lib) -> None:
    """No wait for a store outlives the program: at exit every wait for a read ends, and Ctrl-C ends
    the waits in progress (SIGINT's handler, Python's, chained after the reader's)."""
    atexit.register(lib.dali_video_exiting)
    lib.dali_video_watch_sigint()


def close(instance: str) -> None:
    """The readers built with this ``instance`` argument stop waiting for reads (ClipPipeline.close)."""
    if _loaded is not None:
        ctypes.CDLL(str(_loaded)).dali_video_close(instance.encode())


def route_tf_iterators() -> bool:
    """Once DALI's TF plugin is loaded: deleting one of its iterators closes that iterator's readers
    first, so that the deletion never waits for a store that hangs (``iterators.h``); False where the
    plugin's calls cannot be routed (then it waits up to io_timeout, as before)."""
    return bool(ctypes.CDLL(str(load())).dali_video_route_tf_iterators())


def plan_function():
    """The operator's plan as a C function (see ``dali_video_plan`` in clip_reader.cc), for tests."""
    f = ctypes.CDLL(str(load())).dali_video_plan
    p = ctypes.POINTER(ctypes.c_int64)
    f.argtypes = [p, p, ctypes.c_int64, ctypes.c_int64, p, p]
    return f
