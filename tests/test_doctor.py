"""dali-video-doctor on this host, and each of its checks failing when its condition is broken
(simulated by replacing the facts the checks read), and memory growth in the CLI."""
import json
import math
import re
from functools import partial

import pytest

from dali_video.tools import doctor
from dali_video.loader import gpu

from .conftest import has_gpu, run_module

H100 = {"name": "NVIDIA H100 80GB HBM3", "cc": "9.0"}
A100 = {"name": "NVIDIA A100-SXM4-80GB", "cc": "8.0"}
T4 = {"name": "Tesla T4", "cc": "7.5"}
CHECKS = {"versions", "gpus", "driver", "cuda-packages", "cudnn", "xla", "memory-growth", "video-capability",
          "hw-jpeg", "resources", "decode", "placement", "rate"}


@pytest.fixture
def gpus(monkeypatch):
    """Pretend TensorFlow sees these GPUs."""
    def pretend(*seen):
        monkeypatch.setattr(doctor, "_tf_gpus", lambda: list(seen))
    return pretend


def test_doctor_runs_on_this_host_and_reports_everything(tmp_path):
    report_path = tmp_path / "report.json"
    proc = run_module("dali_video.tools.doctor", "--seconds", "1", "--json", report_path)
    report = json.loads(report_path.read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == CHECKS and report["ok"] and all(c["ok"] and not c["fix"] for c in checks.values())
    versions = report["host"]["versions"]
    assert all(versions[k] for k in ("dali_video", "python", "tensorflow", "dali", "nvimgcodec"))
    assert {"driver", "tensorflow_gpus", "tensorflow_build", "loaded_cuda_libraries", "env"} <= set(report["host"])
    assert report["host"]["tensorflow_build"]["cuda_version"]
    assert "CPU: 2 clips of 8 frames, frame numbers consecutive" in checks["decode"]["detail"]
    assert "clips/s" in checks["rate"]["detail"]
    if not has_gpu():
        assert report["mode"] == "cpu-fallback" and "CPU fallback" in proc.stdout
        assert "device:CPU:0 (CPU fallback)" in checks["placement"]["detail"]


def test_doctor_exits_1_naming_the_fix_when_tensorflow_misses_the_gpu(monkeypatch, capsys, gpus, tmp_path):
    # As on a host whose driver shows a GPU while TensorFlow found no CUDA libraries to use it.
    monkeypatch.setattr(doctor, "_driver", lambda: ("555.42.06", ["NVIDIA H100 80GB HBM3"]))
    gpus()
    assert doctor.main(["--seconds", "0.2", "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and "FAIL gpus" in out and "TensorFlow sees none" in out
    assert 'fix: pip install -e ".[cuda]"' in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert not report["ok"] and [c["name"] for c in report["checks"] if not c["ok"]] == ["gpus"]


def test_without_a_gpu_every_host_check_passes(monkeypatch, gpus):
    monkeypatch.setattr(doctor, "_driver", lambda: (None, []))
    gpus()
    for check in (doctor.check_gpus, doctor.check_driver, doctor.check_cudnn, doctor.check_xla_tools,
                  doctor.check_memory_growth, doctor.check_container_video, partial(doctor.check_hw_jpeg, None)):
        name, ok, detail, fix = check()
        assert ok and not fix, (name, detail)


def test_cudnn_older_than_tensorflow_needs_fails(monkeypatch, gpus):
    gpus(H100)
    monkeypatch.setattr(doctor, "_tf_conv", lambda: None)
    monkeypatch.setattr(doctor, "_loaded_cudnn", lambda: ((9, 2, 1), "/usr/lib/x86_64-linux-gnu/libcudnn.so.9"))
    name, ok, detail, fix = doctor.check_cudnn()
    assert not ok and "cuDNN 9.2.1 from /usr/lib" in detail and "TensorFlow needs >= 9.3.0" in detail
    assert 'pip install -e ".[cuda]"' in fix and "older libcudnn" in fix
    monkeypatch.setattr(doctor, "_loaded_cudnn", lambda: ((9, 3, 0), "/venv/nvidia/cudnn/lib/libcudnn.so.9"))
    assert doctor.check_cudnn()[1]


def test_cudnn_not_loaded_or_failing_conv_fails(monkeypatch, gpus):
    gpus(H100)

    def conv():
        raise RuntimeError("DNN library initialization failed.\nmore")
    monkeypatch.setattr(doctor, "_tf_conv", conv)
    monkeypatch.setattr(doctor, "_loaded_cudnn", lambda: None)
    name, ok, detail, fix = doctor.check_cudnn()
    assert not ok and detail == "TensorFlow loaded no cuDNN: DNN library initialization failed." and fix


def test_cuda_package_outside_tensorflows_pins_fails(monkeypatch):
    monkeypatch.setattr(doctor, "_installed", lambda name: {"nvidia-cudnn-cu12": "9.2.1.18",
                                                             "nvidia-nccl-cu12": "2.27.7"}.get(name))
    name, ok, detail, fix = doctor.check_cuda_packages()
    assert not ok and "nvidia-cudnn-cu12 9.2.1.18" in detail and "nccl" not in detail.split("pins:")[1]
    assert 'pip install -e ".[cuda]"' in fix


@pytest.mark.parametrize("caps, ok", [("compute,utility", False), ("", False), ("compute,utility,video", True),
                                      ("all", True)])
def test_container_needs_the_video_capability(monkeypatch, gpus, caps, ok):
    gpus(H100)
    monkeypatch.setattr(doctor, "_in_container", lambda: True)
    monkeypatch.setenv("NVIDIA_DRIVER_CAPABILITIES", caps)
    name, passed, detail, fix = doctor.check_container_video()
    assert passed == ok
    if not ok:
        assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in fix and "CUDALibrarySamples#132" in detail


@pytest.mark.parametrize("forced, growth, ok", [(None, True, True), (None, False, False), ("false", True, False),
                                                ("true", False, True)])
def test_memory_growth_must_be_on(monkeypatch, gpus, forced, growth, ok):
    gpus(H100, H100)
    monkeypatch.setattr(doctor, "_memory_growth", lambda index: growth)
    if forced is None:
        monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    else:
        monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", forced)
    name, passed, detail, fix = doctor.check_memory_growth()
    assert passed == ok
    if not ok:
        assert "leaves DALI none" in detail and "set_memory_growth(gpu, True)" in fix


@pytest.mark.parametrize("gpu_seen, driver_cuda, ok, fix", [
    (H100, "12.4", False, "install NVIDIA driver >= 555 (TensorFlow's PTX from CUDA 12.5 needs it"),
    (H100, "12.5", True, ""),
    (A100, "12.2", True, ""),  # TensorFlow ships sm_80 binaries: no JIT, any CUDA 12 driver
    (T4, "11.8", False, "install NVIDIA driver >= 525"),
])
def test_driver_must_run_tensorflows_kernels(monkeypatch, gpus, gpu_seen, driver_cuda, ok, fix):
    gpus(gpu_seen)
    monkeypatch.setattr(doctor, "_driver", lambda: ("550.54.15", [gpu_seen["name"]]))
    monkeypatch.setattr(doctor, "_driver_cuda", lambda: driver_cuda)
    name, passed, detail, got_fix = doctor.check_driver()
    assert passed == ok and got_fix.startswith(fix)
    assert ("PTX only" in detail) == (gpu_seen is H100)


def test_jit_without_a_compute_cache_fails(monkeypatch, gpus):
    gpus(H100)
    monkeypatch.setattr(doctor, "_driver_cuda", lambda: "12.5")
    monkeypatch.setenv("CUDA_CACHE_DISABLE", "1")
    name, ok, detail, fix = doctor.check_driver()
    assert not ok and "every start compiles again" in detail and fix == "unset CUDA_CACHE_DISABLE"


def test_missing_ptxas_fails(monkeypatch, gpus):
    gpus(H100)
    monkeypatch.setattr(doctor, "_xla_tools", lambda: {"ptxas": None, "libdevice": "/x/libdevice.10.bc"})
    name, ok, detail, fix = doctor.check_xla_tools()
    assert not ok and detail.startswith("no ptxas:") and "jit_compile=False" in fix


USED = ["[nvjpeg_hw_decoder] decode batch of 16 images"]
UNUSED = ["[nvjpeg_hw_decoder] nvjpegGetHardwareDecoderInfo reported zero HW engines"]


@pytest.mark.parametrize("seen, status, log, ok", [
    ((H100, H100), (0, 0), USED, True), ((H100, H100), (0, 7), USED, False),  # every GPU checked, not only 0
    ((H100,), (0,), UNUSED, False), ((H100,), (0,), [], False),  # usable, yet DALI did not use it
    ((T4,), (7,), [], True)])
def test_hardware_jpeg_decoder_missing_or_unused_where_the_gpu_has_one_fails(monkeypatch, gpus, seen, status, log,
                                                                            ok):
    gpus(*seen)
    monkeypatch.setattr(doctor, "_nvjpeg_hw_status_on", lambda index: status[index])
    monkeypatch.setattr(doctor, "_hw_decoder_log", lambda data, index: log)
    name, passed, detail, fix = doctor.check_hw_jpeg(None)
    assert passed == ok and ("video" in fix) == (not ok)
    assert [int(i) for i in re.findall(r"GPU (\d) \(", detail)] == list(range(len(seen)))


def test_resources_at_the_users_clip_length_and_frame_size(monkeypatch, gpus):
    gpus(*[H100] * 8)
    monkeypatch.setattr("dali_video.loader.resources.usable_cores", lambda: 224)
    name, ok, detail, fix = doctor.check_resources(64, (256, 340), 8)
    assert ok and "T=64, 256x340 frames of a quarter of the raw frame JPEG, batch 8, 8 pipeline(s) on 224 usable " \
                  "cores" in detail
    assert "num_threads 28, 60 threads" in detail
    name, ok, detail, fix = doctor.check_resources(64, (1080, 1920), 32)
    assert not ok and "--batch-size" in fix
    # 720p at T=64: over 1 GiB pinned if JPEGs were a quarter of the raw frame (the estimate without
    # --data), within it at the 150 KB a 720p frame takes at quality 90.
    assert not doctor.check_resources(64, (720, 1280), 8)[1]
    name, ok, detail, fix = doctor.check_resources(64, (720, 1280), 8, jpeg_bytes=150_000)
    assert ok and "720x1280 frames of 146 KB JPEG" in detail


def test_resources_sized_by_the_users_dataset(dataset):
    from dali_video.index_tools import read_frame_index
    from dali_video.index_tools.format import fidx_path

    shards = sorted(dataset.glob("*.tfrecord"))
    indexes = [read_frame_index(fidx_path(s)) for s in shards]
    per_frame = sum(s.stat().st_size for s in shards) / sum(ix.num_frame_rows for ix in indexes)
    frame_hw, jpeg_bytes = doctor.dataset_frames(dataset)
    assert frame_hw == (48, 64) and jpeg_bytes == math.ceil(per_frame)


def test_has_sass_follows_binary_compatibility():
    built = ["sm_60", "sm_70", "sm_80", "sm_89", "compute_90"]
    assert [doctor._has_sass(cc, built) for cc in ("6.1", "7.5", "8.6", "8.9", "9.0", "10.0", "5.2")] == [
        True, True, True, True, False, False, False]


def test_enable_memory_growth_sets_it_on_every_gpu(monkeypatch):
    import tensorflow as tf

    calls = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: ["GPU:0", "GPU:1"])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda device, on: calls.append((device, on)))
    assert gpu.enable_memory_growth() == 2 and calls == [("GPU:0", True), ("GPU:1", True)]


def test_train_enables_memory_growth_before_it_builds_the_dataset(monkeypatch, tmp_path, capsys):
    from dali_video import train_input

    calls = []
    monkeypatch.setattr(gpu, "enable_memory_growth", lambda: calls.append("growth") or 0)
    assert train_input.main(["--data", str(tmp_path)]) == 1
    assert calls == ["growth"] and "using the CPU fallback" in capsys.readouterr().err


@pytest.mark.gpu
def test_doctor_on_a_gpu_host_decodes_on_every_gpu(tmp_path):
    run_module("dali_video.tools.doctor", "--seconds", "2", "--json", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    checks = {c["name"]: c["detail"] for c in report["checks"]}
    assert report["ok"] and report["mode"] == "gpu"
    assert "GPU 0: |GPU - CPU|" in checks["decode"] and "GPU:0" in checks["placement"]
    assert any("libcudnn" in p for p in report["host"]["loaded_cuda_libraries"])
