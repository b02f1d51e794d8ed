"""dali-video-doctor: check that this host can run dali-video, and name the fix for what is broken.

Prints (and with --json writes) what a user and a bug report need: versions, GPUs, driver, the CUDA
libraries TensorFlow loaded, whether each GPU's hardware JPEG decoder is usable and used, the threads
and memory a GPU pipeline takes at your clip length and frame size (``gpu_resources``), a small clip
decoded on the CPU and on each GPU and compared, where the dataset's tensors land on each GPU, and the
decode and feed rates. Exit status 0 when the host is usable (the CPU fallback counts, and says so), 1 otherwise.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.metadata as metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from .. import __version__
from ..loader.gpu import enable_memory_growth, quiet_tensorflow
from .sample_data import frame_number, make_folder_dataset

# Every check returns (name, ok, detail, fix); fix is "" when ok.
Check = tuple[str, bool, str, str]

INSTALL_CUDA = ('pip install -e ".[cuda]" in the checkout (TensorFlow\'s own CUDA library pins), '
                "or run the image of docker/Dockerfile")
REPORT = "run dali-video-doctor --json report.json and attach the report to an issue"
# Oldest driver of each CUDA 12 release (CUDA release notes, "CUDA Toolkit and Corresponding Driver
# Versions"). PTX from CUDA 12.x needs that driver to be JIT-compiled; CUDA 12 binaries (SASS) run on
# any driver from 12.0's on (minor version compatibility).
CUDA_DRIVER = {"12.0": 525, "12.1": 530, "12.2": 535, "12.3": 545, "12.4": 550, "12.5": 555, "12.6": 560,
               "12.8": 570, "12.9": 575}
# GPUs documented to carry JPEG engines (GA100, GH100): there a missing hardware decoder is a fault.
HW_JPEG_GPUS = re.compile(r"\b(A100|A800|A30|H100|H800|H200|H20|GH200)\b")
CUDA_LIBS = re.compile(r"/lib(cuda|cudart|cublas|cublasLt|cudnn|cufft|curand|cusolver|cusparse|nccl|nvjpeg|"
                       r"nvrtc|nvJitLink|cupti)\.so[.\d]*$")
ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
            "TF_FORCE_GPU_ALLOW_GROWTH", "CUDA_CACHE_PATH", "CUDA_CACHE_MAXSIZE", "CUDA_CACHE_DISABLE",
            "LD_LIBRARY_PATH", "XLA_FLAGS")
# The sample clip: tiny synthetic videos whose pixels encode the frame number (sample_data).
HEIGHT, WIDTH, CROP, CLIP_LEN = 48, 64, 32, 8
DECODE = dict(batch_size=2, clip_len=CLIP_LEN, crop_size=CROP, training=False, dtype="uint8", std=(1, 1, 1),
              seed=0)
FEED = dict(batch_size=8, clip_len=CLIP_LEN, crop_size=CROP, seed=0)


# Facts about the host. Tests replace these to simulate broken hosts.

def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict:
    def starting(prefix):  # DALI's distribution names carry the CUDA flavour (nvidia-dali-cuda120)
        return next((d.version for d in metadata.distributions()
                     if (d.metadata["Name"] or "").lower().startswith(prefix)), None)
    return {"dali_video": __version__, "python": platform.python_version(), "tensorflow": _installed("tensorflow"),
            "dali": starting("nvidia-dali-cuda"), "dali_tf_plugin": starting("nvidia-dali-tf-plugin"),
            "nvimgcodec": starting("nvidia-nvimgcodec")}


def _driver() -> tuple[str | None, list[str]]:
    """The driver version and the GPUs the driver shows (None, [] without an NVIDIA driver)."""
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
                              capture_output=True, text=True)
        rows = [line.split(", ", 1) for line in proc.stdout.splitlines() if ", " in line]
        if proc.returncode == 0 and rows:
            return rows[0][0], [name for _, name in rows]
    # Without nvidia-smi (a container lacking the `utility` capability) the kernel module still tells.
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d[\d.]*)", _read("/proc/driver/nvidia/version"))
    gpus = Path("/proc/driver/nvidia/gpus")  # one folder per GPU, named by its PCI address
    return (m.group(1) if m else None), (sorted(p.name for p in gpus.iterdir()) if gpus.is_dir() else [])


def _driver_cuda() -> str | None:
    """The newest CUDA version the driver supports, asked of libcuda itself."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def _tf_gpus() -> list[dict]:
    """The GPUs TensorFlow sees, in CUDA order (DALI's device_id): name and compute capability."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        cc = details.get("compute_capability")
        gpus.append({"name": details.get("device_name", device.name), "cc": "%d.%d" % cc if cc else None})
    return gpus


def _memory_growth(index: int) -> bool:
    import tensorflow as tf

    return bool(tf.config.experimental.get_memory_growth(tf.config.list_physical_devices("GPU")[index]))


def _build_info() -> dict:
    import tensorflow as tf

    info = tf.sysconfig.get_build_info()
    return {k: info.get(k) for k in ("cuda_version", "cudnn_version", "cuda_compute_capabilities")}


def _tf_and_cuda() -> dict:
    """TensorFlow's own `and-cuda` pins: {distribution: specifier}."""
    from packaging.requirements import Requirement

    pins = {}
    for line in metadata.requires("tensorflow") or []:
        req = Requirement(line)
        if req.marker is not None and req.marker.evaluate({"extra": "and-cuda"}):
            pins[req.name] = req.specifier
    return pins


def _floor(specifier) -> tuple[int, ...]:
    from packaging.version import Version

    return next(Version(s.version).release for s in specifier if s.operator == ">=")


def _loaded_libs() -> list[str]:
    """The CUDA libraries mapped into this process: what TensorFlow and DALI actually loaded."""
    return sorted({line.split()[-1] for line in _read("/proc/self/maps").splitlines() if CUDA_LIBS.search(line)})


def _loaded_cudnn() -> tuple[tuple[int, int, int], str] | None:
    for path in _loaded_libs():
        if "/libcudnn.so" in path:
            lib = ctypes.CDLL(path)  # already loaded: this only looks it up
            lib.cudnnGetVersion.restype = ctypes.c_size_t
            v = lib.cudnnGetVersion()
            return (v // 10000, v % 10000 // 100, v % 100), path
    return None


def _tf_conv() -> None:
    """A small convolution on GPU 0: TensorFlow loads cuDNN for it, and fails if cuDNN is too old."""
    import tensorflow as tf

    with tf.device("/GPU:0"):
        tf.nn.conv2d(tf.ones((1, 8, 8, 3)), tf.ones((3, 3, 3, 4)), 1, "SAME").numpy()


def _xla_tools() -> dict:
    """ptxas and libdevice where XLA looks for them (xla/tsl/platform/default/cuda_root_path.cc):
    ptxas on PATH first, then the pip package nvidia-cuda-nvcc-cu12 beside TensorFlow, then /usr/local/cuda."""
    import tensorflow as tf

    here = Path(tf.__file__).parent
    roots = [here.parent / "nvidia" / "cuda_nvcc", here / "cuda", Path("/usr/local/cuda"), Path("/opt/cuda")]
    flag = re.search(r"--xla_gpu_cuda_data_dir=(\S+)", os.environ.get("XLA_FLAGS", ""))
    if flag:
        roots.insert(0, Path(flag.group(1)))

    def find(rel):
        return next((str(r / rel) for r in roots if (r / rel).is_file()), None)
    return {"ptxas": shutil.which("ptxas") or find("bin/ptxas"), "libdevice": find("nvvm/libdevice/libdevice.10.bc")}


def _in_container() -> bool:
    # Docker and Podman leave these files; Kubernetes' NVIDIA device plugin sets NVIDIA_VISIBLE_DEVICES.
    return (Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()
            or "NVIDIA_VISIBLE_DEVICES" in os.environ)


def _nvjpeg_hw_status() -> int | None:
    """nvjpegCreateEx with the hardware backend on the current GPU: 0 when the JPEG engine is usable.
    It is the test nvImageCodec (DALI's decoder) makes before it registers its hardware decoder
    (nvImageCodec extensions/nvjpeg/hw_decoder.cpp), on the library it loads (the nvjpeg wheel)."""
    try:
        files = metadata.distribution("nvidia-nvjpeg-cu12").files or []
        path = next(str(f.locate()) for f in files if f.name.startswith("libnvjpeg.so"))
    except (metadata.PackageNotFoundError, StopIteration):
        path = "libnvjpeg.so.12"
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    handle = ctypes.c_void_p()
    status = lib.nvjpegCreateEx(3, None, None, 0, ctypes.byref(handle))  # 3: NVJPEG_BACKEND_HARDWARE
    if status == 0:
        lib.nvjpegDestroy(handle)
    return status


def _on_gpu(index: int, code: str, data="", env=None) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python that sees only TensorFlow's GPU ``index`` (as CUDA numbers it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    device = visible.split(",")[index] if visible else str(index)
    return subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {}), "CUDA_VISIBLE_DEVICES": device})


def _nvjpeg_hw_status_on(index: int) -> int | None:
    proc = _on_gpu(index, "from dali_video.tools.doctor import _nvjpeg_hw_status as s; print(s())")
    last = proc.stdout.strip().splitlines()[-1:] or ["None"]
    return None if last[0] == "None" else int(last[0])


# nvImageCodec's log at DALI_NVIMGCODEC_LOG_LEVEL=4 (debug; DALI 2.4's libdali_operators.so reads the
# variable) names the codec that decodes: the hardware one is "nvjpeg_hw_decoder" (nvImageCodec 0.9,
# extensions/nvjpeg/hw_decoder.cpp), which logs "zero HW engines" on a GPU without JPEG engines.
HW_PROBE = """
import sys
from dali_video import clip_pipeline
p = clip_pipeline(sys.argv[1], device="gpu", device_id=0, hw_decoder_load=1.0, batch_size=2, clip_len=8,
                  crop_size=32, training=False, seed=0)
p.pipeline.run()
print("decoded", flush=True)
"""


def _hw_decoder_log(data, index: int) -> list[str]:
    """The lines of nvImageCodec's debug log about its hardware decoder while GPU ``index`` decodes a
    batch with ``hw_decoder_load=1``."""
    proc = _on_gpu(index, HW_PROBE, data, env={"DALI_NVIMGCODEC_LOG_LEVEL": "4"})
    if "decoded" not in proc.stdout:
        raise RuntimeError(f"a decode on GPU {index} failed: {proc.stderr.strip()[-1500:]}")
    return [line.strip() for line in (proc.stdout + proc.stderr).splitlines()
            if "hw_decoder" in line.lower() or "HW engines" in line]


def hw_decoder_used(log: list[str]) -> bool:
    """Whether nvImageCodec's log shows its hardware decoder at work (see HW_PROBE)."""
    return any("nvjpeg_hw_decoder" in line for line in log) and not any("zero HW engines" in line for line in log)


# The checks.

def check_versions() -> Check:
    v = _versions()
    detail = ", ".join(f"{k} {v[k] or 'missing'}" for k in v)
    if not (v["tensorflow"] and v["dali"]):
        return "versions", False, detail, "install dali-video: make setup (or pip install -e .)"
    if v["dali_tf_plugin"] != v["dali"]:
        return ("versions", False, detail, "DALI's TF plugin must be built for this DALI and TensorFlow: make setup "
                "(it installs the plugin pin of pyproject.toml with --no-build-isolation)")
    return "versions", True, detail, ""


def check_gpus() -> Check:
    driver, shown = _driver()
    gpus = _tf_gpus()
    if gpus:
        names = "; ".join(f"GPU {i}: {g['name']} (compute capability {g['cc']})" for i, g in enumerate(gpus))
        return "gpus", True, f"{names}; driver {driver}", ""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1")
    if shown and not hidden:
        return ("gpus", False, f"the driver shows {len(shown)} GPU(s) ({', '.join(shown)}) but TensorFlow sees none: "
                "it found no usable CUDA libraries (its log says which)", INSTALL_CUDA)
    why = "hidden by CUDA_VISIBLE_DEVICES" if hidden else "no NVIDIA GPU"
    return "gpus", True, f"{why}: CPU fallback, DALI decodes on the CPU", ""


def _has_sass(cc: str, capabilities) -> bool:
    """Whether TensorFlow ships binaries for this GPU: sm_XY runs on compute capability X.Z for Z >= Y."""
    major, minor = (int(x) for x in cc.split("."))
    built = [re.fullmatch(r"sm_(\d+)(\d)a?", c) for c in capabilities]
    return any(m and int(m.group(1)) == major and int(m.group(2)) <= minor for m in built)


def check_driver() -> Check:
    gpus = _tf_gpus()
    driver, _ = _driver()
    if not gpus:
        return "driver", True, f"driver {driver}, no GPU for TensorFlow" if driver else "no NVIDIA driver", ""
    info = _build_info()
    cuda = ".".join(info["cuda_version"].split(".")[:2])
    ptx_only = [g["name"] for g in gpus if not _has_sass(g["cc"], info["cuda_compute_capabilities"])]
    needs = cuda if ptx_only else "12.0"
    supports = _driver_cuda() or "0.0"
    detail = (f"driver {driver} (supports CUDA {supports}); TensorFlow built with CUDA {info['cuda_version']} "
              f"for {', '.join(info['cuda_compute_capabilities'])}")
    if ptx_only:
        detail += (f"; {', '.join(ptx_only)}: PTX only, so the first start JIT-compiles kernels for minutes, then "
                   f"reuses them from {os.environ.get('CUDA_CACHE_PATH', '~/.nv/ComputeCache')} "
                   f"(CUDA_CACHE_MAXSIZE {os.environ.get('CUDA_CACHE_MAXSIZE', 'default')})")
    if tuple(map(int, supports.split("."))) < tuple(map(int, needs.split("."))):
        driver_needed = CUDA_DRIVER.get(needs, max(CUDA_DRIVER.values()))
        why = f" (TensorFlow's PTX from CUDA {cuda} needs it; tensorflow#62320)" if ptx_only else ""
        return "driver", False, detail, f"install NVIDIA driver >= {driver_needed}{why}"
    if ptx_only and os.environ.get("CUDA_CACHE_DISABLE") == "1":
        detail += "; CUDA_CACHE_DISABLE=1: every start compiles again"
        return "driver", False, detail, "unset CUDA_CACHE_DISABLE"
    return "driver", True, detail, ""


def check_cuda_packages() -> Check:
    pins = _tf_and_cuda()
    have = {name: _installed(name) for name in pins}
    wrong = [f"{name} {v} (TensorFlow pins {pins[name]})" for name, v in have.items()
             if v and not pins[name].contains(v, prereleases=True)]
    installed = sum(v is not None for v in have.values())
    detail = f"{installed} of the {len(pins)} CUDA packages TensorFlow pins (its and-cuda extra) are installed"
    if wrong:
        return "cuda-packages", False, f"{detail}; outside TensorFlow's pins: {', '.join(wrong)}", INSTALL_CUDA
    return "cuda-packages", True, detail + ("" if installed else " (system CUDA libraries, or no GPU)"), ""


def check_cudnn() -> Check:
    if not _tf_gpus():
        return "cudnn", True, "not used without a GPU", ""
    need = _floor(_tf_and_cuda()["nvidia-cudnn-cu12"])[:3]
    error = ""
    try:
        _tf_conv()
    except Exception as e:  # noqa: BLE001 -- whatever TensorFlow raises is the finding
        error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    found = _loaded_cudnn()
    if found is None:
        return "cudnn", False, "TensorFlow loaded no cuDNN" + (f": {error}" if error else ""), INSTALL_CUDA
    version, path = found
    detail = f"cuDNN {'.'.join(map(str, version))} from {path}"
    if version < need:
        return ("cudnn", False, f"{detail}; TensorFlow needs >= {'.'.join(map(str, need))}",
                f"{INSTALL_CUDA}; an older libcudnn found first (LD_LIBRARY_PATH, a cuDNN base image) wins otherwise")
    if error:
        return "cudnn", False, f"{detail}; a convolution on GPU 0 failed: {error}", INSTALL_CUDA
    libs = ", ".join(Path(p).name for p in _loaded_libs())
    return "cudnn", True, f"{detail}; loaded: {libs}", ""


def check_xla_tools() -> Check:
    if not _tf_gpus():
        return "xla", True, "not used without a GPU", ""
    tools = _xla_tools()
    missing = [k for k, path in tools.items() if not path]
    if missing:
        return ("xla", False, f"no {' and no '.join(missing)}: Keras compiles models with XLA on a GPU by itself "
                "(jit_compile='auto', tensorflow#58681) and XLA needs both",
                f"{INSTALL_CUDA} (nvidia-cuda-nvcc-cu12 brings both); or model.compile(..., jit_compile=False)")
    return "xla", True, f"ptxas {tools['ptxas']}, libdevice {tools['libdevice']}", ""


def check_memory_growth() -> Check:
    gpus = _tf_gpus()
    if not gpus:
        return "memory-growth", True, "not needed without a GPU", ""
    forced = os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")  # "true"/"false" override the setting in TensorFlow
    off = [i for i in range(len(gpus)) if not _memory_growth(i)]
    if forced == "false" or (off and forced != "true"):
        why = "TF_FORCE_GPU_ALLOW_GROWTH=false" if forced == "false" else f"memory growth is off on GPU {off}"
        return ("memory-growth", False,
                f"{why}: TensorFlow takes all GPU memory when it starts and leaves DALI none (NVIDIA/DALI#2623)",
                "unset TF_FORCE_GPU_ALLOW_GROWTH; call tf.config.experimental.set_memory_growth(gpu, True) for every "
                "GPU before TensorFlow uses one (README, GPU hosts)")
    return "memory-growth", True, "on for every GPU: TensorFlow and DALI share GPU memory", ""


def check_container_video() -> Check:
    if not _in_container():
        return "video-capability", True, "not in a container", ""
    if not _tf_gpus():
        return "video-capability", True, "in a container without a GPU", ""
    caps = os.environ.get("NVIDIA_DRIVER_CAPABILITIES", "")
    if {"video", "all"} & {c.strip() for c in caps.split(",")}:
        return "video-capability", True, f"in a container with NVIDIA_DRIVER_CAPABILITIES={caps}", ""
    return ("video-capability", False,
            f"in a container with NVIDIA_DRIVER_CAPABILITIES={caps or '(unset: compute,utility)'}: without `video` "
            "the hardware JPEG decoder is invisible (NVIDIA/CUDALibrarySamples#132)",
            "run the container with -e NVIDIA_DRIVER_CAPABILITIES=compute,utility,video (the image of "
            "docker/Dockerfile sets it)")


def check_hw_jpeg(data) -> Check:
    gpus = _tf_gpus()
    if not gpus:
        return "hw-jpeg", True, "no GPU: libjpeg-turbo decodes on the CPU", ""
    details, broken = [], []
    for i, gpu in enumerate(gpus):
        status, name, engines = _nvjpeg_hw_status_on(i), gpu["name"], HW_JPEG_GPUS.search(gpu["name"])
        if status == 0:
            used = hw_decoder_used(_hw_decoder_log(data, i))
            details.append(f"GPU {i} ({name}): usable, {'used' if used else 'NOT used'} by DALI's decoder")
            if engines and not used:
                broken.append(i)
            continue
        details.append(f"GPU {i} ({name}): not usable (nvjpegCreateEx status {status}): nvJPEG decodes on CUDA cores"
                       + (", though this GPU has JPEG engines" if engines else " (this GPU has no JPEG engine)"))
        if engines:
            broken.append(i)
    if broken:
        return ("hw-jpeg", False, "; ".join(details),
                "in a container add the `video` driver capability "
                "(-e NVIDIA_DRIVER_CAPABILITIES=compute,utility,video); otherwise update the NVIDIA driver")
    return "hw-jpeg", True, "; ".join(details), ""


def dataset_frames(data, split=None) -> tuple[tuple[int, int], int]:
    """A dataset's largest stored frame (height, width), as clip_dataset sizes the decoder by it, and
    its JPEG bytes per frame (shard bytes over frames: a little over, records carry some framing)."""
    from ..loader.sampling import load_table

    table = load_table(data, split)
    frames = sum(ix.num_frame_rows for ix in table.shards)
    return (int(table.height.max()), int(table.width.max())), -(-sum(ix.shard_size for ix in table.shards) // frames)


def check_resources(clip_len: int, frame_hw, batch_size: int, jpeg_bytes: int | None = None,
                    io_threads: int = 0) -> Check:
    """What each GPU pipeline of this clip length and frame size starts and allocates (gpu_resources);
    ``io_threads``: the reader's read-ahead threads (a dataset in a bucket)."""
    from ..loader import resources

    cores, pipelines = resources.usable_cores(), max(1, len(_tf_gpus()))
    r = resources.gpu_resources(clip_len, frame_hw, batch_size, num_pipelines=pipelines, cores=cores,
                                jpeg_bytes=jpeg_bytes, io_threads=io_threads)
    jpeg = "a quarter of the raw frame" if jpeg_bytes is None else f"{jpeg_bytes / 1024:.0f} KB"
    detail = (f"T={clip_len}, {frame_hw[0]}x{frame_hw[1]} frames of {jpeg} JPEG, batch {batch_size}, {pipelines} "
              f"pipeline(s) on {cores} usable cores (os.cpu_count() {os.cpu_count()}): per pipeline num_threads "
              f"{r['num_threads']}, {r['threads']} threads, {r['pinned_bytes'] / 2**20:.0f} MiB pinned, "
              f"{r['device_bytes'] / 2**20:.0f} MiB on its GPU")
    if r["threads"] > resources.MAX_THREADS or r["pinned_bytes"] > 1 << 30:
        return ("resources", False, detail, "lower --batch-size or --clip-len, or store smaller frames "
                "(dali-video-write --resize)" + ("" if jpeg_bytes else "; --data YOUR_DATASET sizes JPEGs as stored"))
    return "resources", True, detail, ""


def _decode(data, device: str, device_id: int) -> np.ndarray:
    from .. import clip_pipeline

    # On the GPU, chroma upsampled as libjpeg-turbo does: pixels then differ only by IDCT rounding.
    loader = clip_pipeline(str(data), device=device, device_id=device_id, jpeg_fancy_upsampling=True, **DECODE)
    try:
        frames = np.asarray(loader.pipeline.run()[0].as_cpu().as_array())
        return frames.reshape(-1, *frames.shape[-3:])  # clips [B, T, ...] on the GPU, frames [B*T, ...] on the CPU
    finally:
        loader.close()


def check_decode(data) -> Check:
    cpu = _decode(data, "cpu", 0)
    numbers = np.array([frame_number(f) for f in cpu]).reshape(-1, CLIP_LEN)
    if not (np.diff(numbers, axis=1) == 1).all():
        return "decode", False, f"the CPU decoder gave frames {numbers.tolist()}, not consecutive ones", REPORT
    detail = f"CPU: {len(numbers)} clips of {CLIP_LEN} frames, frame numbers consecutive"
    for i in range(len(_tf_gpus())):
        diff = np.abs(_decode(data, "gpu", i).astype(int) - cpu.astype(int))
        detail += f"; GPU {i}: |GPU - CPU| max {diff.max()}, mean {diff.mean():.2f}"
        # nvJPEG and libjpeg-turbo may differ by rounding in the IDCT and the colour conversion.
        if diff.max() > 8 or diff.mean() >= 1:
            return "decode", False, detail + ": the GPU decodes differently", REPORT
    return "decode", True, detail, ""


def check_placement(data) -> Check:
    from .. import clip_dataset

    gpus = len(_tf_gpus())
    details = []
    for i in range(max(gpus, 1)):  # every GPU: its elements must land on it
        clips, _ = next(iter(clip_dataset(str(data), device="gpu" if gpus else "cpu", device_id=i, **FEED)))
        details.append(f"clips {clips.shape.as_list()} {clips.dtype.name} on {clips.device}")
        if gpus and f"GPU:{i}" not in clips.device:
            return "placement", False, "; ".join(details) + f", not on GPU {i}", REPORT
    return "placement", True, "; ".join(details) + ("" if gpus else " (CPU fallback)"), ""


def _per_second(step, seconds: float) -> float:
    step()  # the first call builds and warms up
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if time.perf_counter() - start >= seconds:
            return n / (time.perf_counter() - start)


def check_rate(data, seconds: float) -> Check:
    from .. import clip_dataset, reader_dataset

    device = "gpu" if _tf_gpus() else "cpu"
    read = iter(reader_dataset(str(data), **FEED))  # the native reader alone, into TensorFlow
    feed = _per_second(lambda: next(read), seconds / 2) * FEED["batch_size"]
    batches = iter(clip_dataset(str(data), device=device, **FEED))
    decode = _per_second(lambda: next(batches), seconds / 2) * FEED["batch_size"]
    return ("rate", True, f"{device}: the reader feeds {feed:.0f} clips/s ({feed * CLIP_LEN:.0f} frames/s); "
            f"decoded clips reach TensorFlow at {decode:.0f} clips/s ({decode * CLIP_LEN:.0f} frames/s); "
            f"{HEIGHT}x{WIDTH} JPEGs, {CROP}x{CROP} crops, batch {FEED['batch_size']}x{CLIP_LEN}", "")


def _tiny_dataset(root: Path) -> Path:
    """A tiny written dataset: 2 classes x 2 videos of 16-24 frames."""
    videos = make_folder_dataset(root / "videos", videos_per_class=2, frames=(16, 24), height=HEIGHT, width=WIDTH)
    # The writer runs as its own program: dali_video never imports the writer.
    proc = subprocess.run([sys.executable, "-m", "dali_video.writer", str(videos), str(root / "data"), "--resize", "0",
                           "--num-shards", "1", "--workers", "1"], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the writer could not write the sample videos:\n{proc.stderr}")
    return root / "data"


def run_checks(data, seconds: float, clip_len: int = 32, frame_hw=(256, 340), batch_size: int = 8,
               jpeg_bytes: int | None = None, io_threads: int = 0) -> list[Check]:
    checks = [check_versions, check_gpus, check_driver, check_cuda_packages, check_cudnn, check_xla_tools,
              check_memory_growth, check_container_video, partial(check_hw_jpeg, data),
              partial(check_resources, clip_len, frame_hw, batch_size, jpeg_bytes, io_threads),
              partial(check_decode, data),
              partial(check_placement, data), partial(check_rate, data, seconds)]
    results = []
    for check in checks:
        try:
            results.append(check())
        except Exception as e:  # noqa: BLE001 -- a check that crashes is a finding; the report goes on
            name = getattr(check, "func", check).__name__.removeprefix("check_").replace("_", "-")
            results.append((name, False, f"{type(e).__name__}: {str(e).strip()[:2000]}", REPORT))
    return results


def host() -> dict:
    driver, shown = _driver()
    return {"versions": _versions(), "platform": platform.platform(), "driver": driver,
            "driver_cuda": _driver_cuda(), "driver_gpus": shown, "tensorflow_gpus": _tf_gpus(),
            "tensorflow_build": _build_info(), "loaded_cuda_libraries": _loaded_libs(),
            "in_container": _in_container(), "env": {k: os.environ.get(k) for k in ENV_KEYS}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dali-video-doctor", description=__doc__)
    p.add_argument("--json", metavar="PATH", help="also write the report to PATH as JSON")
    p.add_argument("--seconds", type=float, default=10.0, help="time spent measuring rates (default 10)")
    p.add_argument("--clip-len", type=int, default=32, help="your clip length, for the resources check (default 32)")
    p.add_argument("--frame-size", default="256x340", help="your largest stored frame HxW (default 256x340)")
    p.add_argument("--batch-size", type=int, default=8, help="your clips per GPU and step (default 8)")
    p.add_argument("--data", help="your dataset (folder, glob or bucket prefix): its largest frame and JPEG bytes per "
                   "frame replace --frame-size and the estimate of a quarter of the raw frame")
    p.add_argument("--split", help="the split of --data to size by, where it holds several")
    args = p.parse_args(argv)
    frame_hw, jpeg_bytes = tuple(int(v) for v in args.frame_size.lower().split("x")), None
    io_threads = 0
    if args.data:
        from ..index_tools import storage
        from ..loader.resources import BUCKET_IO_THREADS

        frame_hw, jpeg_bytes = dataset_frames(args.data, args.split)
        io_threads = BUCKET_IO_THREADS if storage.is_url(args.data) else 0

    quiet_tensorflow()
    enable_memory_growth()  # before anything uses a GPU, as dali-video-train does
    with tempfile.TemporaryDirectory(prefix="dali-video-doctor-") as tmp:
        results = run_checks(_tiny_dataset(Path(tmp)), args.seconds, args.clip_len, frame_hw, args.batch_size,
                             jpeg_bytes, io_threads)
    ok = all(r[1] for r in results)
    gpus = len(_tf_gpus())
    report = {"ok": ok, "mode": "gpu" if gpus else "cpu-fallback", "host": host(),
              "checks": [dict(zip(("name", "ok", "detail", "fix"), r)) for r in results]}
    if not ok:
        print(f"dali-video-doctor: {sum(not r[1] for r in results)} problem(s); the fix follows each")
    elif gpus:
        print(f"dali-video-doctor: this host is ready: DALI decodes on {gpus} GPU(s)")
    else:
        print("dali-video-doctor: this host is usable with the CPU fallback (no GPU): DALI decodes on the CPU")
    for name, passed, detail, fix in results:
        print(f"  {'ok  ' if passed else 'FAIL'} {name:17} {detail}")
        if fix:
            print(f"       {'':17} fix: {fix}")
    if args.json:
        tmp = f"{args.json}.tmp"
        Path(tmp).write_text(json.dumps(report, indent=1, default=str))
        os.replace(tmp, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
