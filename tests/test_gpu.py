"""GPU path (marked gpu: skipped without an NVIDIA GPU unless DALI_VIDEO_REQUIRE_GPU=1). No machine
dali-video is built on has one: ``make gpu-check`` runs these on a user's GPU host."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import dali_video
from dali_video.tools import doctor, gpu_check
from dali_video.tools.sample_data import frame_number

from .conftest import ROOT
from .test_multihost import _run_workers

pytestmark = pytest.mark.gpu
KW = dict(batch_size=2, clip_len=4, crop_size=32, training=False, dtype="uint8", std=(1, 1, 1), seed=0)


@pytest.fixture(scope="session", autouse=True)
def memory_growth():
    """As production runs (dali-video-train, the doctor): TensorFlow otherwise takes all but ~1.8 GB of
    every GPU the first time it uses one, and DALI's decoder allocates its own (NVIDIA/DALI#2623)."""
    dali_video.enable_memory_growth()


def _gpus() -> int:
    return len(tf.config.list_physical_devices("GPU"))


def _need_gpus(n):
    if _gpus() < n and os.environ.get("DALI_VIDEO_REQUIRE_GPU") != "1":
        pytest.skip(f"needs {n} GPUs")


def _subprocess(code, *args, gpus=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": ROOT, **({"CUDA_VISIBLE_DEVICES": gpus} if gpus is not None else {})}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


@pytest.mark.parametrize("hw_decoder_load", [0.0, 1.0])
def test_mixed_decoder_matches_cpu_decoder(dataset, hw_decoder_load):
    # Every frame decodes to its own frame number on both devices (the pixels encode it), and the pixels
    # agree within what the decoders' documented differences allow. hw_decoder_load=0: nvJPEG's CUDA
    # decoder, which honours jpeg_fancy_upsampling (image_decoder.h passes it to nvjpeg_cuda_decoder), so
    # only IDCT and colour-conversion rounding differ: a few levels. 1: the hardware decoder where the
    # GPU has one; nothing says it honours the option, and replicated instead of interpolated 4:2:0
    # chroma differs by up to half a chroma step between neighbouring 2x2 blocks: on these gradient
    # frames (sample_data: at most ~8 levels per 2 pixels) a few levels more, on average under one.
    kw = dict(KW, clip_len=8)
    cpu = next(iter(dali_video.clip_dataset(dataset, device="cpu", **kw)))[0].numpy().astype(int)
    gpu = next(iter(dali_video.clip_dataset(dataset, device="gpu", jpeg_fancy_upsampling=True,
                                            hw_decoder_load=hw_decoder_load, **kw)))[0].numpy().astype(int)
    assert cpu.shape == gpu.shape == (2, 8, 32, 32, 3)
    numbers = [[frame_number(f) for f in clip] for clip in cpu]
    assert [[frame_number(f) for f in clip] for clip in gpu] == numbers
    diff = np.abs(cpu - gpu)
    if hw_decoder_load == 0.0:
        assert diff.max() <= 8 and diff.mean() < 1.0, (diff.max(), diff.mean())
    else:
        assert diff.max() <= 16 and diff.mean() < 2.0, (diff.max(), diff.mean())


@pytest.mark.parametrize("recipe", ["slowfast", "mvit", "movinet"])
def test_recipes_on_the_gpu_match_the_cpu(dataset, recipe):
    # The same plan on both devices; scale, crop, colour and flip run on the GPU after decoding there.
    kw = dict(batch_size=2, recipe=recipe, clip_len=4, crop_size=32, dtype="uint8", mean=(0, 0, 0), std=(1, 1, 1),
              with_meta=True, seed=3, layout="clips")
    cpu_clips, _, cpu_meta = next(iter(dali_video.clip_dataset(dataset, device="cpu", **kw)))
    gpu_clips, _, gpu_meta, gpu_frames = next(iter(dali_video.clip_dataset(
        dataset, device="gpu", jpeg_fancy_upsampling=True, hw_decoder_load=0.0, **kw)))
    assert np.array_equal(cpu_meta["frames"].numpy(), gpu_frames.numpy())
    cpu_meta = dali_video.meta_fields(cpu_meta) if isinstance(cpu_meta, tf.Tensor) else cpu_meta
    gpu_fields = dali_video.meta_fields(gpu_meta)
    for name in ("window", "flip", "stride", "color", "first_frame"):
        assert np.array_equal(cpu_meta[name].numpy(), gpu_fields[name].numpy()), name
    assert np.abs(cpu_clips.numpy().astype(int) - gpu_clips.numpy().astype(int)).mean() < 2.0


def test_dataset_emits_final_elements_on_the_gpu_with_static_shapes(dataset):
    ds = dali_video.clip_dataset(dataset, device="gpu", batch_size=2, clip_len=4, crop_size=32, with_meta=True, seed=0)
    assert ds.element_spec[0].shape == (2, 4, 32, 32, 3) and ds.element_spec[1].shape == (2,)
    clips, labels, meta, frames = next(iter(ds))
    assert "GPU:0" in clips.device and clips.shape == (2, 4, 32, 32, 3) and clips.dtype == tf.float32
    assert labels.shape == (2,) and meta.shape == (2, len(dali_video.META_COLUMNS))
    assert frames.shape == (2, 4) and frames.dtype == tf.int32
    assert np.array_equal(frames.numpy()[:, 0], meta.numpy()[:, dali_video.META_COLUMNS.index("frame")])
    assert np.array_equal(labels.numpy(), meta.numpy()[:, dali_video.META_COLUMNS.index("label")])


def test_one_decoder_regroups_on_the_gpu_as_on_the_cpu(dataset):
    kw = dict(KW, clip_len=8, with_meta=True, short_videos="loop", layout="clips")
    with dali_video.clip_pipeline(dataset, device="gpu", hw_decoder_load=0.0, jpeg_fancy_upsampling=True, **kw) as g, \
            dali_video.clip_pipeline(dataset, device="cpu", **kw) as c:
        assert g.pipeline.serialize().count(b"decoders__Image") == 1
        gpu, cpu = g.pipeline.run(), c.pipeline.run()
        for i in (2, 3):  # metadata and frame numbers
            assert np.array_equal(np.asarray(gpu[i].as_cpu().as_tensor()), np.asarray(cpu[i].as_tensor()))
        clips = np.asarray(gpu[0].as_cpu().as_tensor())
        assert clips.shape == (2, 8, 32, 32, 3)
        assert [[frame_number(f) for f in c] for c in clips] == [[frame_number(f) for f in c] for c in
                                                                 np.asarray(cpu[0].as_tensor())]


def test_model_fit_on_the_gpu(dataset):
    ds = dali_video.clip_dataset(dataset, device="gpu", batch_size=2, clip_len=4, crop_size=32, seed=0)
    model = tf.keras.Sequential([tf.keras.layers.Input((4, 32, 32, 3)), tf.keras.layers.Conv3D(4, 3),
                                 tf.keras.layers.GlobalAveragePooling3D(), tf.keras.layers.Dense(2)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=2, steps_per_epoch=6, verbose=0, shuffle=False,
                        callbacks=[dali_video.InputMonitor()])
    assert np.isfinite(history.history["loss"]).all()
    # The GPU-resident dataset's fetches are seen (IteratorGetNext on the GPU device).
    assert len(history.history["input_wait"]) == 2 and all(0 <= w <= 1 for w in history.history["input_wait"])


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """4 videos of 70-90 frames at 256x340, as Kinetics is usually stored (dali-video-gpu-check's own)."""
    return gpu_check.make_dataset(tmp_path_factory.mktemp("realistic"))


MEASURE = """
import json, re, subprocess, sys, os
import numpy as np
import dali_video
from dali_video.tools.gpu_check import pinned_bytes as nvidia_mapped, process_threads as threads
dali_video.enable_memory_growth()
import tensorflow as tf
with tf.device("/gpu:0"):
    tf.zeros(1).numpy()  # the CUDA context and TensorFlow's GPU runtime exist before we count
def device_used():
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return sum(int(m) for p, m in (l.split(",") for l in out.splitlines() if l.strip()) if int(p) == os.getpid()) << 20
T = int(sys.argv[2])
t0, p0, d0 = threads(), nvidia_mapped(), device_used()
ds = dali_video.clip_dataset(sys.argv[1], device="gpu", batch_size=8, clip_len=T, crop_size=224, seed=0,
                             short_videos="loop")
it = iter(ds)
for _ in range(4):
    clips, labels = next(it)
clips.numpy()
print("MEASURED " + json.dumps({"threads": threads() - t0, "pinned": nvidia_mapped() - p0,
                                "device": device_used() - d0, "device_of": clips.device}))
"""


@pytest.mark.parametrize("clip_len", [32, 64])
def test_a_realistic_gpu_pipeline_stays_within_gpu_resources(realistic, clip_len):
    # T=32/64, 256x340 frames, B=8: the threads the pipeline starts (/proc/self/status) and the pinned
    # and device memory it takes, against gpu_resources. Allowances: TensorFlow's own dataset threads
    # (8 measured on the CPU for DALIDataset, tests/test_gpu_graph.py) and the CUDA driver's; DALI's
    # memory pools round allocations up (to 2x) and the driver maps its own control pages.
    proc = _subprocess(MEASURE, realistic, clip_len, gpus="0")
    line = [l for l in proc.stdout.splitlines() if l.startswith("MEASURED ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = json.loads(line[0][len("MEASURED "):])
    want = dali_video.gpu_resources(clip_len, (256, 340), 8, crop_size=224)
    print(clip_len, got, want)
    assert "GPU:0" in got["device_of"]
    assert got["threads"] <= want["threads"] + 16 and want["threads"] <= 128
    assert got["pinned"] <= 2 * want["pinned_bytes"] + (64 << 20)
    assert got["device"] <= 2 * want["device_bytes"] + (256 << 20)


def test_the_hardware_jpeg_decoder_is_used_where_the_gpu_has_one(dataset):
    name = doctor._tf_gpus()[0]["name"]
    if not doctor.HW_JPEG_GPUS.search(name):
        pytest.skip(f"{name} has no JPEG engine")
    log = doctor._hw_decoder_log(dataset, 0)
    assert doctor.hw_decoder_used(log), log


FIT = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
import dali_video
dali_video.enable_memory_growth()
gpus = [g.name for g in tf.config.list_logical_devices("GPU")]
strategy = (tf.distribute.MultiWorkerMirroredStrategy() if sys.argv[2] == "mwms"
            else tf.distribute.MirroredStrategy(gpus[:2]))
ds = dali_video.distribute(strategy, sys.argv[1], global_batch_size=8, clip_len=4, crop_size=32, seed=0)
clips, labels = next(iter(ds))
parts = strategy.experimental_local_results(clips)
assert [p.shape for p in parts] == [(8 // strategy.num_replicas_in_sync, 4, 32, 32, 3)] * len(parts), parts
assert all(f"GPU:{i}" in p.device for i, p in enumerate(parts)), [p.device for p in parts]
with strategy.scope():
    model = tf.keras.Sequential([tf.keras.layers.Input((4, 32, 32, 3)), tf.keras.layers.Conv3D(4, 3),
                                 tf.keras.layers.GlobalAveragePooling3D(), tf.keras.layers.Dense(2)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
history = model.fit(ds, epochs=2, steps_per_epoch=3, verbose=0, callbacks=[dali_video.InputMonitor()])
assert len(history.history["input_wait"]) == 2, history.history  # every replica's fetches seen
print("FIT OK", len(parts), history.history["loss"], flush=True)
"""


def test_fit_under_a_two_gpu_mirrored_strategy(dataset):
    _need_gpus(2)
    proc = _subprocess(FIT, dataset, "mirrored")
    assert "FIT OK 2" in proc.stdout, proc.stdout + proc.stderr[-4000:]


def test_fit_under_multiworker_mirrored_strategy_on_one_worker_with_two_gpus(dataset):
    _need_gpus(2)
    proc = _subprocess(FIT, dataset, "mwms", gpus="0,1")
    assert "FIT OK 2" in proc.stdout, proc.stdout + proc.stderr[-4000:]


def test_fit_under_multiworker_mirrored_strategy_with_two_gpus_per_worker(dataset):
    _need_gpus(4)
    gpus = ["0,1", "2,3"]
    results = _run_workers(lambda i: [sys.executable, "-c", FIT, str(dataset), "mwms"], timeout=600,
                           env_of=lambda i: {"CUDA_VISIBLE_DEVICES": gpus[i]})
    for code, out, err in results:
        assert "FIT OK 2" in out, out + err[-4000:]
