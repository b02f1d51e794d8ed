"""GPU path (marked gpu: skipped without an NVIDIA GPU unless DALI_VIDEO_REQUIRE_GPU=1)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import dali_video

from .conftest import ROOT

pytestmark = pytest.mark.gpu
KW = dict(batch_size=2, clip_len=4, crop_size=32, training=False, dtype="uint8", std=(1, 1, 1), seed=0)


def test_mixed_decoder_matches_cpu_decoder(dataset):
    cpu = next(iter(dali_video.clip_dataset(dataset, device="cpu", **KW)))[0].numpy().astype(int)
    gpu = next(iter(dali_video.clip_dataset(dataset, device="gpu", jpeg_fancy_upsampling=True, **KW)))[0]
    gpu = gpu.numpy().astype(int)
    assert cpu.shape == gpu.shape
    # nvJPEG and libjpeg-turbo differ by rounding in IDCT and colour conversion; chroma upsampling is
    # aligned by jpeg_fancy_upsampling=True.
    assert np.abs(cpu - gpu).max() <= 8 and np.abs(cpu - gpu).mean() < 1.0


@pytest.mark.parametrize("recipe", ["slowfast", "mvit", "movinet"])
def test_recipes_on_the_gpu_match_the_cpu(dataset, recipe):
    # The same plan on both devices; scale, crop, colour and flip run on the GPU after decoding there.
    kw = dict(batch_size=2, recipe=recipe, clip_len=4, crop_size=32, dtype="uint8", mean=(0, 0, 0), std=(1, 1, 1),
              with_meta=True, seed=3, layout="clips")
    cpu_clips, _, cpu_meta = next(iter(dali_video.clip_dataset(dataset, device="cpu", **kw)))
    gpu_clips, _, gpu_meta = next(iter(dali_video.clip_dataset(dataset, device="gpu", jpeg_fancy_upsampling=True,
                                                               **kw)))
    cpu_meta = dali_video.meta_fields(cpu_meta) if isinstance(cpu_meta, tf.Tensor) else cpu_meta
    gpu_fields = dali_video.meta_fields(gpu_meta)
    for name in ("window", "flip", "stride", "color", "first_frame"):
        assert np.array_equal(cpu_meta[name].numpy(), gpu_fields[name].numpy()), name
    assert np.abs(cpu_clips.numpy().astype(int) - gpu_clips.numpy().astype(int)).mean() < 2.0


def test_dataset_emits_final_elements_on_the_gpu_with_static_shapes(dataset):
    ds = dali_video.clip_dataset(dataset, device="gpu", batch_size=2, clip_len=4, crop_size=32, with_meta=True, seed=0)
    assert ds.element_spec[0].shape == (2, 4, 32, 32, 3) and ds.element_spec[1].shape == (2,)
    clips, labels, meta = next(iter(ds))
    assert "GPU:0" in clips.device and clips.shape == (2, 4, 32, 32, 3) and clips.dtype == tf.float32
    assert labels.shape == (2,) and meta.shape == (2, len(dali_video.META_COLUMNS))
    assert np.array_equal(labels.numpy(), meta.numpy()[:, dali_video.META_COLUMNS.index("label")])


def test_model_fit_on_the_gpu(dataset):
    ds = dali_video.clip_dataset(dataset, device="gpu", batch_size=2, clip_len=4, crop_size=32, seed=0)
    model = tf.keras.Sequential([tf.keras.layers.Input((4, 32, 32, 3)), tf.keras.layers.Conv3D(4, 3),
                                 tf.keras.layers.GlobalAveragePooling3D(), tf.keras.layers.Dense(2)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()


MIRRORED_GPUS = """
import sys
import tensorflow as tf
import dali_video
gpus = tf.config.list_logical_devices("GPU")
strategy = tf.distribute.MirroredStrategy([g.name for g in gpus[:2]])
ds = dali_video.distribute(strategy, sys.argv[1], global_batch_size=4, clip_len=3, crop_size=16, seed=0)
clips, labels = next(iter(ds))
parts = strategy.experimental_local_results(clips)
assert [p.shape for p in parts] == [(2, 3, 16, 16, 3)] * 2 and "GPU:0" in parts[0].device and "GPU:1" in parts[1].device
print("two GPUs fed")
"""


def test_mirrored_strategy_on_two_gpus(dataset):
    if len(tf.config.list_physical_devices("GPU")) < 2 and os.environ.get("DALI_VIDEO_REQUIRE_GPU") != "1":
        pytest.skip("needs two GPUs")
    proc = subprocess.run([sys.executable, "-c", MIRRORED_GPUS, str(dataset)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert "two GPUs fed" in proc.stdout, proc.stdout + proc.stderr[-3000:]
