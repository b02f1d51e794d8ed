"""dali-video-gpu-check (``make gpu-check``): the GPU graph run and checked with DALI alone, in a few
minutes on one GPU, offline. It writes its own small dataset (256x340 frames), then reports, as one
JSON file and a printed table:

- pixel parity of the GPU pipeline (``layout="clips"``) with the CPU one over the same clips, for
  uint8 and float32 and T in {16, 32, 64}, within the tolerance of docs/gpu-hosts.md, with each
  frame's pixels decoding to its planned frame number;
- clips/s and frames/s of the GPU pipeline alone (``pipeline.run()``), B=8, T in {16, 32, 64}, with
  ``hw_decoder_load`` 0 and the default, each in its own process, with the threads it started
  (``/proc/self/status``), the device memory it took (the CUDA driver's ``cuMemGetInfo``, through
  ctypes) and the pinned host memory (mappings of ``/dev/nvidia*``), next to ``gpu_resources``;
- labels by head (a single-label and a multi-label head, multi-hot and indices) out of the GPU
  pipeline equal to the CPU pipeline's;
- whether the hardware JPEG decoder was used; the GPU, driver, CUDA and DALI versions;
- where TensorFlow is installed, ``clip_dataset`` + ``fit`` for two epochs on one GPU, and under
  ``MirroredStrategy`` where there are two.

Exit status: 0 when every check passed; 1 naming what failed (parity, a GPU pipeline that cannot
run, TensorFlow's fit); 2 on a host without a usable GPU ("no GPU"), after reading clips on the CPU,
with a JSON saying so.

DALI API relied on (NVIDIA/DALI 2.4, ``dali/python/nvidia/dali/``, installed as ``nvidia/dali/``):
``Pipeline.run`` (pipeline.py:1515): "If [cuda_stream is] skipped, the results are host-synchronous",
so a timed ``run()`` has finished its GPU work; ``TensorListGPU.as_cpu`` (tensors.pyi:155) copies
outputs to the host for the comparison; ``Pipeline.num_threads`` (pipeline.py:483) sizes
``gpu_resources``; ``fn.decoders.image``'s ``hw_decoder_load`` (default 0.65) and
``jpeg_fancy_upsampling`` (fn/decoders/__init__.pyi:324, 342: "The percentage of the image data to
be processed by the HW JPEG decoder"). The CUDA driver API: ``cuDevicePrimaryCtxRetain``
gives the primary context, the one DALI's runtime calls use, and ``cuMemGetInfo_v2`` its device's
free and total bytes.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..loader.gpu import usable_gpus
from ..loader.resources import gpu_resources
from .sample_data import frame_number, make_folder_dataset

CLIP_LENS = (16, 32, 64)
DTYPES = ("uint8", "float32")
BATCH, CROP, FRAME_HW = 8, 224, (256, 340)
DEFAULT_LOAD = 0.65  # DALI's hw_decoder_load default (fn.decoders.image), dali_video's too
# GPU vs CPU pixels, in levels (0-255): with the CUDA decoder (hw_decoder_load=0) and
# jpeg_fancy_upsampling only IDCT and colour-conversion rounding differ; the hardware decoder
# replicates 4:2:0 chroma instead of interpolating it (docs/gpu-hosts.md, "Checking a GPU host").
TOLERANCE = {0.0: {"max": 8, "mean": 1.0}, DEFAULT_LOAD: {"max": 16, "mean": 2.0}}


def make_dataset(root: Path) -> Path:
    """4 videos of 70-90 frames at 256x340, written as 2 shards; their pixels encode the frame number."""
    videos = make_folder_dataset(root / "videos", videos_per_class=2, frames=(70, 90), height=FRAME_HW[0],
                                 width=FRAME_HW[1])
    # The writer runs as its own program, as sample_data runs it.
    subprocess.run([sys.executable, "-m", "dali_video.writer", str(videos), str(root / "data"), "--resize", "0",
                    "--num-shards", "2", "--workers", "2"], check=True, capture_output=True)
    return root / "data"


def _pipeline(data, device: str, clip_len: int, batch_size: int, **kw):
    import dali_video

    return dali_video.clip_pipeline(data, device=device, batch_size=batch_size, clip_len=clip_len, crop_size=CROP,
                                    layout="clips", **kw)


def _host(outputs) -> list[np.ndarray]:
    return [np.asarray((o.as_cpu() if hasattr(o, "as_cpu") else o).as_array()) for o in outputs]


def _pixels(clips: np.ndarray, dtype: str) -> np.ndarray:
    """Clips back in pixel levels: float output is ``(pixel - mean) / std``."""
    if dtype == "uint8":
        return clips.astype(np.float64)
    from ..loader.config import ClipConfig

    c = ClipConfig()
    return clips.astype(np.float64) * np.asarray(c.std) + np.asarray(c.mean)


def parity(data, clip_len: int, dtype: str, load: float, cpu: list | None = None) -> tuple[dict, list]:
    """One evaluation batch of 2 clips on the GPU and on the CPU: metadata and frame numbers equal, pixels
    within TOLERANCE[load], every frame's pixels its planned frame number. Returns the row and the CPU
    outputs (reused for the next hw_decoder_load)."""
    kw = dict(clip_len=clip_len, batch_size=2, training=False, seed=0, dtype=dtype, with_meta=True)
    if cpu is None:
        with _pipeline(data, "cpu", **kw) as p:
            cpu = _host(p.pipeline.run())
    with _pipeline(data, "gpu", hw_decoder_load=load, jpeg_fancy_upsampling=True, **kw) as p:
        gpu = _host(p.pipeline.run())
    a, b = _pixels(gpu[0], dtype), _pixels(cpu[0], dtype)
    diff = np.abs(a - b)
    numbers = [[frame_number(np.round(f)) for f in clip] for clip in a]
    limit = TOLERANCE[load]
    row = {"clip_len": clip_len, "dtype": dtype, "hw_decoder_load": load, "shape": list(gpu[0].shape),
           "max_diff": round(float(diff.max()), 3), "mean_diff": round(float(diff.mean()), 4), "tolerance": limit,
           "meta_equal": bool(np.array_equal(gpu[2], cpu[2])), "frames_equal": bool(np.array_equal(gpu[3], cpu[3])),
           "frame_numbers_ok": numbers == gpu[3].tolist()}
    row["ok"] = bool(row["meta_equal"] and row["frames_equal"] and row["frame_numbers_ok"]
                     and gpu[0].shape == cpu[0].shape and diff.max() <= limit["max"] and diff.mean() < limit["mean"])
    return row, cpu


def head_labels(data) -> dict:
    """The data's videos written again with two label heads (``verb``, and a multi-label ``tags``):
    the GPU pipeline's labels outputs (multi-hot, then indices) equal the CPU pipeline's."""
    videos = Path(data).parent / "videos"
    rows = [f"{p.relative_to(videos)},{'cut' if k % 2 else 'take'},{';'.join('abc'[:k % 4])}"
            for k, p in enumerate(sorted(videos.rglob("*.avi")))]
    (videos.parent / "heads.csv").write_text("\n".join(["path,verb,tags", *rows]) + "\n")
    heads = videos.parent / "heads"
    subprocess.run([sys.executable, "-m", "dali_video.writer", "--csv", str(videos.parent / "heads.csv"), str(videos),
                    str(heads), "--resize", "0", "--workers", "2"], check=True, capture_output=True)
    row = {"ok": True}
    for label_format in ("multi_hot", "indices"):
        kw = dict(clip_len=CLIP_LENS[0], batch_size=2, seed=0, label_format=label_format)
        with _pipeline(heads, "cpu", **kw) as p:
            cpu = _host(p.pipeline.run())
        with _pipeline(heads, "gpu", **kw) as p:
            gpu = _host(p.pipeline.run())
        # outputs: clips, tags, verb (the heads in name order), meta, frames
        row[label_format] = {"tags": gpu[1].tolist(), "verb": gpu[2].tolist()}
        row["ok"] = row["ok"] and all(np.array_equal(gpu[k], cpu[k]) for k in (1, 2, 3))
    return row


# What one GPU pipeline takes, measured in its own process.

def process_threads() -> int:
    return int(re.search(r"Threads:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def pinned_bytes() -> int:
    """Host memory mapped through the NVIDIA driver (/dev/nvidia*): page-locked (pinned) buffers."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = "/dev/nvidia" in line
        elif inside and line.startswith("Size:"):
            total += int(line.split()[1]) * 1024
    return total


class _Cuda:
    """The CUDA driver through ctypes (no framework): the device's primary context, made current, so its
    memory counters can be read; DALI's runtime calls use the same context."""

    def __init__(self, device: int = 0):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self._check(self.lib.cuInit(0), "cuInit")
        self.device, self.context = ctypes.c_int(), ctypes.c_void_p()
        self._check(self.lib.cuDeviceGet(ctypes.byref(self.device), device), "cuDeviceGet")
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), self.device),
                    "cuDevicePrimaryCtxRetain")
        self._check(self.lib.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    @staticmethod
    def _check(status: int, call: str) -> None:
        if status:
            raise RuntimeError(f"the CUDA driver's {call} failed with CUDA error {status}")

    def used(self) -> int:
        """Bytes in use on the device (all processes): total - free (cuMemGetInfo_v2)."""
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._check(self.lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo_v2")
        return total.value - free.value

    def name(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._check(self.lib.cuDeviceGetName(buf, 256, self.device), "cuDeviceGetName")
        return buf.value.decode()


def measure(data, clip_len: int, load: float, seconds: float) -> dict:
    """The GPU pipeline alone, B=8: clips/s and frames/s over ``seconds`` after 3 warm-up batches, and
    the threads, device and pinned memory it took, next to ``gpu_resources``. Run in a fresh process
    (see :func:`_measure_in_process`) so that the counts are this pipeline's."""
    from .doctor import dataset_frames

    cuda = _Cuda(0)  # the context first: its own threads and memory are not the pipeline's
    t0, d0, p0 = process_threads(), cuda.used(), pinned_bytes()
    with _pipeline(data, "gpu", clip_len, BATCH, hw_decoder_load=load, seed=0, with_meta=False) as p:
        for _ in range(3):
            p.pipeline.run()
        taken = {"threads": process_threads() - t0, "device_bytes": cuda.used() - d0,
                 "pinned_bytes": pinned_bytes() - p0}
        batches, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or batches < 3:
            p.pipeline.run()  # host-synchronous (Pipeline.run): the batch's GPU work is done
            batches += 1
        elapsed = time.perf_counter() - start
        num_threads = p.pipeline.num_threads
    hw, jpeg = dataset_frames(data)
    clips = batches * BATCH / elapsed
    return {"clip_len": clip_len, "hw_decoder_load": load, "batches": batches, "seconds": round(elapsed, 2),
            "clips_per_s": round(clips, 1), "frames_per_s": round(clips * clip_len), "measured": taken,
            "gpu_resources": gpu_resources(clip_len, hw, BATCH, crop_size=CROP, num_threads=num_threads,
                                           jpeg_bytes=jpeg)}


MEASURE = """
import json, sys
from dali_video.tools.gpu_check import measure
print("MEASURED " + json.dumps(measure(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))))
"""


def _measure_in_process(data, clip_len: int, load: float, seconds: float) -> dict:
    proc = _run([sys.executable, "-c", MEASURE, str(data), str(clip_len), str(load), str(seconds)], seconds + 240)
    line = [l for l in proc["stdout"].splitlines() if l.startswith("MEASURED ")]
    if not line:
        return {"clip_len": clip_len, "hw_decoder_load": load, "error": _last_error(proc)}
    return json.loads(line[0][len("MEASURED "):])


def _run(cmd, timeout, env=None) -> dict:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
        return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
    except subprocess.TimeoutExpired as e:
        out, err = ((s.decode() if isinstance(s, bytes) else s or "") for s in (e.stdout, e.stderr))
        return {"returncode": "timeout", "stdout": out, "stderr": err + f"\ntimed out after {timeout} s"}


def _last_error(proc: dict) -> str:
    lines = [l for l in proc["stderr"].strip().splitlines() if l.strip()]
    return (lines[-1] if lines else f"exit status {proc['returncode']}")[-1000:]


FIT = """
import json, sys
import dali_video
dali_video.enable_memory_growth()
import tensorflow as tf
gpus = tf.config.list_logical_devices("GPU")
strategy = tf.distribute.MirroredStrategy([g.name for g in gpus[:2]]) if sys.argv[2] == "mirrored" else None
kw = dict(clip_len=16, crop_size=112, seed=0)
if strategy:
    ds = dali_video.distribute(strategy, sys.argv[1], global_batch_size=4, **kw)
else:
    ds = dali_video.clip_dataset(sys.argv[1], device="gpu", batch_size=2, **kw)
def model():
    m = tf.keras.Sequential([tf.keras.layers.Input((16, 112, 112, 3)), tf.keras.layers.Conv3D(4, 3, strides=2),
                             tf.keras.layers.GlobalAveragePooling3D(), tf.keras.layers.Dense(2)])
    m.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m
if strategy:
    with strategy.scope():
        m = model()
else:
    m = model()
history = m.fit(ds, epochs=2, steps_per_epoch=4, verbose=0)
print("FIT " + json.dumps({"replicas": strategy.num_replicas_in_sync if strategy else 1,
                           "loss": history.history["loss"]}))
"""


def fit(data, mode: str) -> dict:
    """``clip_dataset`` (or ``distribute`` under a 2-GPU MirroredStrategy) + ``fit``, 2 epochs, in its own process."""
    start = time.perf_counter()
    proc = _run([sys.executable, "-c", FIT, str(data), mode], 600)
    line = [l for l in proc["stdout"].splitlines() if l.startswith("FIT ")]
    row = {"mode": mode, "seconds": round(time.perf_counter() - start, 1)}
    if not line:
        return {**row, "ok": False, "error": _last_error(proc)}
    got = json.loads(line[0][4:])
    return {**row, **got, "ok": bool(np.isfinite(got["loss"]).all())}


def versions() -> dict:
    from .doctor import _driver, _driver_cuda, _versions

    driver, gpus = _driver()
    out = {**_versions(), "driver": driver, "driver_cuda": _driver_cuda(), "gpus": gpus}
    try:
        import nvidia.dali

        from ..loader.native import dali_cuda

        out["dali_cuda"] = dali_cuda()
        out["dali_cuda_version"] = nvidia.dali.__cuda_version__
    except ImportError as e:
        out["dali_cuda"] = f"DALI cannot be imported: {e}"
    return out


def hw_decoder(data, gpu_name: str) -> dict:
    """Whether nvImageCodec's hardware JPEG decoder decoded (its debug log, as dali-video-doctor reads it)."""
    from .doctor import HW_JPEG_GPUS, _hw_decoder_log, hw_decoder_used

    try:
        log = _hw_decoder_log(data, 0)
    except RuntimeError as e:
        return {"gpu_has_engine": bool(HW_JPEG_GPUS.search(gpu_name)), "used": None, "error": str(e)}
    return {"gpu_has_engine": bool(HW_JPEG_GPUS.search(gpu_name)), "used": hw_decoder_used(log), "log": log[:20]}


def _write(report: dict, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, out)


def _mib(n) -> str:
    return f"{n / 2**20:,.0f}"


def table(report: dict) -> str:
    lines = ["parity GPU vs CPU (levels 0-255):", f"  {'T':>3} {'dtype':8} {'hw load':>7} {'max':>6} {'mean':>7}  ok"]
    lines += [f"  {r['clip_len']:>3} {r['dtype']:8} {r['hw_decoder_load']:>7} {r.get('max_diff', '-'):>6} "
              f"{r.get('mean_diff', '-'):>7}  {r['ok']}" for r in report["parity"]]
    lines += [f"GPU pipeline alone, B={BATCH} (measured / gpu_resources):",
              f"  {'T':>3} {'hw load':>7} {'clips/s':>8} {'frames/s':>9} {'threads':>9} {'device MiB':>13} "
              f"{'pinned MiB':>13}"]
    for r in report["throughput"]:
        if "error" in r:
            lines.append(f"  {r['clip_len']:>3} {r['hw_decoder_load']:>7} failed: {r['error']}")
            continue
        m, g = r["measured"], r["gpu_resources"]
        lines.append(f"  {r['clip_len']:>3} {r['hw_decoder_load']:>7} {r['clips_per_s']:>8} {r['frames_per_s']:>9} "
                     f"{m['threads']:>4}/{g['threads']:<4} {_mib(m['device_bytes']):>6}/{_mib(g['device_bytes']):<6} "
                     f"{_mib(m['pinned_bytes']):>6}/{_mib(g['pinned_bytes']):<6}")
    hw = report["hw_decoder"]
    lines.append(f"hardware JPEG decoder: {'used' if hw.get('used') else 'not used'}"
                 f" ({'the GPU has one' if hw.get('gpu_has_engine') else 'the GPU has none'})")
    lines.append(f"labels by head, GPU = CPU: {report['labels']['ok']}")
    for r in report["tensorflow"] or []:
        lines.append(f"TensorFlow fit ({r['mode']}): {'ok' if r['ok'] else 'FAILED: ' + r.get('error', '')}")
    return "\n".join(lines)


def check(data, seconds: float, with_tf: bool) -> dict:
    """Every GPU check over ``data``; the report's ``problems`` name what failed."""
    report = {"gpu": {"name": _Cuda(0).name(), "count": usable_gpus()[0]}, "parity": [], "throughput": []}
    for clip_len in CLIP_LENS:
        for dtype in DTYPES:
            cpu = None
            for load in TOLERANCE:
                try:
                    row, cpu = parity(data, clip_len, dtype, load, cpu)
                except Exception as e:  # a GPU pipeline that cannot run: named in the report
                    row = {"clip_len": clip_len, "dtype": dtype, "hw_decoder_load": load, "ok": False,
                           "error": f"{type(e).__name__}: {str(e)[-1000:]}"}
                report["parity"].append(row)
    report["throughput"] = [_measure_in_process(data, t, load, seconds) for t in CLIP_LENS for load in TOLERANCE]
    report["hw_decoder"] = hw_decoder(data, report["gpu"]["name"])
    try:
        report["labels"] = head_labels(data)
    except Exception as e:  # a GPU pipeline that cannot run: named in the report
        report["labels"] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[-1000:]}"}
    report["tensorflow"] = None
    if with_tf:
        report["tensorflow"] = [fit(data, "one_gpu")] + ([fit(data, "mirrored")] if report["gpu"]["count"] >= 2
                                                         else [])
    problems = [f"parity T={r['clip_len']} {r['dtype']} hw_decoder_load={r['hw_decoder_load']}: "
                + (r.get("error") or f"max {r['max_diff']}, mean {r['mean_diff']} levels (tolerance {r['tolerance']}), "
                   f"meta equal {r['meta_equal']}, frames equal {r['frames_equal']}, "
                   f"frame numbers {r['frame_numbers_ok']}")
                for r in report["parity"] if not r["ok"]]
    problems += [f"the GPU pipeline T={r['clip_len']} hw_decoder_load={r['hw_decoder_load']} cannot run: {r['error']}"
                 for r in report["throughput"] if "error" in r]
    if not report["labels"]["ok"]:
        problems.append(f"labels by head: {report['labels'].get('error') or 'the GPU labels differ from the CPU ones'}")
    problems += [f"TensorFlow fit ({r['mode']}): {r['error'] if 'error' in r else 'loss not finite'}"
                 for r in report["tensorflow"] or [] if not r["ok"]]
    report["problems"] = problems
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dali-video-gpu-check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-check.json", help="the JSON report (default gpu-check.json)")
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per throughput case (default 8)")
    p.add_argument("--no-tensorflow", action="store_true", help="skip clip_dataset + fit where TensorFlow is there")
    args = p.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": versions()}
    gpus, why = usable_gpus()
    with tempfile.TemporaryDirectory(prefix="dali-video-gpu-check-") as tmp:
        data = make_dataset(Path(tmp))
        if not gpus:
            # Without a GPU: the DALI-only parts still run (the native reader, the CPU pipeline).
            start = time.perf_counter()
            with _pipeline(data, "cpu", CLIP_LENS[0], 2, training=False, seed=0) as pipe:
                clips = pipe.pipeline.run()[0].as_array()
            report.update(ok=False, gpu=None, why=f"no GPU ({why})", cpu_pipeline={
                "clips": list(clips.shape), "seconds": round(time.perf_counter() - start, 2)})
            report["seconds"] = round(time.perf_counter() - started, 1)
            _write(report, out)
            print(f"dali-video-gpu-check: no GPU ({why}); the CPU pipeline read clips {list(clips.shape)}; "
                  f"wrote {out}")
            return 2
        with_tf = importlib.util.find_spec("tensorflow") is not None and not args.no_tensorflow
        report.update(check(data, args.seconds, with_tf))
    report["ok"] = not report["problems"]
    report["seconds"] = round(time.perf_counter() - started, 1)
    _write(report, out)
    print(table(report))
    for problem in report["problems"]:
        print(f"FAILED: {problem}")
    print(f"dali-video-gpu-check: {'ok' if report['ok'] else 'PROBLEMS'} in {report['seconds']} s; wrote {out} "
          f"(docs/gpu-hosts.md: please send it)")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
