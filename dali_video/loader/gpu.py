"""TensorFlow and DALI sharing one GPU, and whether this host has one."""
from __future__ import annotations

import ctypes
import functools
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

log = logging.getLogger(__name__)


@functools.cache
def usable_gpus() -> tuple[int, str]:
    """How many GPUs this process can use, asked of the NVIDIA driver (libcuda) as DALI asks it, without
    TensorFlow; with none, why (the text is "" when there are some). Honours CUDA_VISIBLE_DEVICES."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver: libcuda.so.1 cannot be loaded"
    error = cuda.cuInit(0)
    count = ctypes.c_int(0)
    if error == 100 or not error and (cuda.cuDeviceGetCount(ctypes.byref(count)) or count.value < 1):
        return 0, "the NVIDIA driver finds no GPU (is CUDA_VISIBLE_DEVICES empty or -1?)"  # 100: no device
    if error:
        return 0, f"the NVIDIA driver's cuInit failed with CUDA error {error}"
    return count.value, ""


def cuda_pci_bus_ids() -> list[str]:
    """Each CUDA device's PCI bus id ("0000:3B:00.0"), in CUDA's order under CUDA_VISIBLE_DEVICES: the
    ordinals DALI's ``device_id`` counts. Asked of the NVIDIA driver (libcuda), without TensorFlow."""
    if not usable_gpus()[0]:
        return []
    cuda = ctypes.CDLL("libcuda.so.1")
    count, device, ids = ctypes.c_int(0), ctypes.c_int(0), []
    cuda.cuDeviceGetCount(ctypes.byref(count))
    for ordinal in range(count.value):
        text = ctypes.create_string_buffer(64)
        if cuda.cuDeviceGet(ctypes.byref(device), ordinal) or cuda.cuDeviceGetPCIBusId(text, 64, device):
            raise RuntimeError(f"the NVIDIA driver gives no PCI bus id for CUDA device {ordinal}")
        ids.append(text.value.decode())
    return ids


def _bus(pci_bus_id: str) -> tuple:
    """A PCI bus id as numbers: libcuda writes "0000:3B:00.0", nvidia-smi "00000000:3B:00.0"."""
    domain, bus, rest = pci_bus_id.strip().split(":")
    device, function = rest.split(".")
    return tuple(int(x, 16) for x in (domain, bus, device, function))


def dali_device_id(tf_gpu: int) -> int:
    """The CUDA device behind TensorFlow's logical GPU ``tf_gpu`` ("/gpu:<tf_gpu>"), as DALI's
    ``device_id`` counts it (a CUDA ordinal under CUDA_VISIBLE_DEVICES). After
    ``tf.config.set_visible_devices`` TensorFlow's GPU 0 may be CUDA's device 3: matched by the PCI bus
    id when TensorFlow's device details give one, else by TensorFlow's physical device index, which
    counts the CUDA devices in CUDA's order."""
    import tensorflow as tf

    logical = []  # the physical device of each logical GPU (a device split into virtual ones: several)
    for device in tf.config.get_visible_devices("GPU"):
        logical += [device] * max(1, len(tf.config.get_logical_device_configuration(device) or ()))
    if not 0 <= tf_gpu < len(logical):
        raise ValueError(f"device_id {tf_gpu} is none of TensorFlow's {len(logical)} visible GPUs "
                         f"(tf.config.get_visible_devices('GPU'))")
    device = logical[tf_gpu]
    bus = tf.config.experimental.get_device_details(device).get("pci_bus_id")
    if not bus:
        return tf.config.list_physical_devices("GPU").index(device)
    buses = cuda_pci_bus_ids()
    for ordinal, cuda in enumerate(buses):
        if _bus(cuda) == _bus(bus):
            return ordinal
    raise ValueError(f"TensorFlow's GPU {tf_gpu} ({device.name}, PCI bus {bus}) is none of the CUDA devices this "
                     f"process sees ({', '.join(buses) or 'none'}); check CUDA_VISIBLE_DEVICES")


def quiet_tensorflow() -> None:
    """Call before TensorFlow is imported: its C++ log keeps errors only, and on a host without a usable
    GPU not even those, since there every start prints "failed call to cuInit", which says only that
    there is no GPU. A TF_CPP_MIN_LOG_LEVEL already set is kept. The lines its libraries log while they
    load, before that level applies ("oneDNN custom operations are on", and without a GPU
    "cudart_stub.cc: Could not find cuda drivers", each twice), are held to the level too
    (:class:`_LevelledImport`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if usable_gpus()[0] else "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _LevelledImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _LevelledImport())


# A line of TensorFlow's C++ log (absl's format: severity I/W/E/F, date, time, thread, file:line]) and the
# line absl writes before its first lines when logging is not yet set up.
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] ")
_ABSL_PREFACE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


class _LevelledImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports TensorFlow with its stderr (the file descriptor: C++ writes there) held back and written
    out without the log lines below TF_CPP_MIN_LOG_LEVEL. Its libraries log while they load, before
    they read the level (absl writes every line until it is set up), so the level misses those."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and the real finders find it
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader
        level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
        if level not in ("1", "2", "3"):
            return self.loader.exec_module(module)
        hidden = "IWEF"[:int(level)]
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with tempfile.TemporaryFile() as held:
                os.dup2(held.fileno(), 2)
                try:
                    self.loader.exec_module(module)
                finally:
                    sys.stderr.flush()
                    os.dup2(saved, 2)
                    held.seek(0)
                    lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
                    sys.stderr.write("".join(line for line in lines if not (
                        line.rstrip("\n") == _ABSL_PREFACE or (m := _LOG_LINE.match(line)) and m[1] in hidden)))
                    sys.stderr.flush()
        finally:
            os.close(saved)


def enable_memory_growth() -> int:
    """Let TensorFlow take GPU memory as it needs it. By default it takes nearly all of a GPU's memory
    the first time it uses it, and DALI's decoder, which allocates its own, gets none
    (NVIDIA/DALI#2623, #2326). Call this before TensorFlow uses a GPU. Returns how many GPUs
    TensorFlow sees."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as e:
            # TensorFlow already initialised this GPU, or it is split into virtual devices with their
            # own memory limits: the setting stays as it is (dali-video-doctor reports it).
            log.warning("memory growth stays off on %s: %s", gpu.name, e)
    return len(gpus)
