"""GPU path (marked gpu: skipped without an NVIDIA GPU unless DALI_VIDEO_REQUIRE_GPU=1)."""
import numpy as np
import pytest
import tensorflow as tf

import dali_video

pytestmark = pytest.mark.gpu
KW = dict(batch_size=2, clip_len=4, crop_size=32, training=False, dtype="uint8", std=(1, 1, 1), seed=0)


def test_mixed_decoder_matches_cpu_decoder(dataset):
    cpu = next(iter(dali_video.clip_dataset(dataset, device="cpu", **KW)))[0].numpy().astype(int)
    gpu = next(iter(dali_video.clip_dataset(dataset, device="gpu", **KW)))[0].numpy().astype(int)
    assert cpu.shape == gpu.shape
    # nvJPEG and libjpeg-turbo may differ by rounding in IDCT and colour conversion.
    assert np.abs(cpu - gpu).max() <= 8 and np.abs(cpu - gpu).mean() < 1.0


def test_dataset_lands_on_the_gpu_with_static_shapes(dataset):
    ds = dali_video.clip_dataset(dataset, device="gpu", batch_size=2, clip_len=4, crop_size=32)
    assert ds.element_spec[0].shape == (2, 4, 32, 32, 3)
    clips, labels = next(iter(ds))
    assert "GPU:0" in clips.device and clips.shape == (2, 4, 32, 32, 3) and labels.shape == (2,)


def test_model_fit_on_the_gpu(dataset):
    ds = dali_video.clip_dataset(dataset, device="gpu", batch_size=2, clip_len=4, crop_size=32, seed=0)
    model = tf.keras.Sequential([tf.keras.layers.Input((4, 32, 32, 3)), tf.keras.layers.Conv3D(4, 3),
                                 tf.keras.layers.GlobalAveragePooling3D(), tf.keras.layers.Dense(2)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()
