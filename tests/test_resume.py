"""Long runs: resume at the exact clip (also on another number of readers), and after a kill -9."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import dali_video
from dali_video import META_COLUMNS
from dali_video.loader.resume import read_position

from .conftest import ROOT
from .test_loader import CPU, reader_batches

VIDEO = META_COLUMNS.index("video")


def test_resumed_batches_equal_the_uninterrupted_runs_pixels_and_meta(dataset):
    kw = dict(batch_size=3, clip_len=4, crop_size=24, seed=9, with_meta=True, **CPU)
    straight = list(dali_video.clip_dataset(dataset, **kw).take(5))
    resumed = list(dali_video.clip_dataset(dataset, initial_clip=2 * 3, **kw).take(3))  # after 2 batches
    for a, b in zip(straight[2:], resumed):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert all(np.array_equal(a[2][k], b[2][k]) for k in a[2])


def _global_sequence(dataset, batches, readers, **kw):
    """The clips (video rows) of ``batches`` global batches of 4 read by ``readers`` readers, in order."""
    parts = [reader_batches(dataset, batches, batch_size=4 // readers, shard_id=r, num_shards=readers, **kw)
             for r in range(readers)]
    return np.concatenate([part[k][:, VIDEO] for k in range(batches) for part in parts])


def test_resume_on_another_number_of_readers_covers_the_epoch_once(dataset):
    kw = dict(clip_len=3, crop_size=16, seed=21)
    straight = _global_sequence(dataset, 3, 1, **kw)
    assert sorted(straight[:10]) == list(range(10))  # 10 videos: positions 0-9 are epoch 0
    for before, after in ((2, 1), (1, 2)):  # one global batch on `before` readers, the rest on `after`
        resumed = np.concatenate([_global_sequence(dataset, 1, before, **kw),
                                  _global_sequence(dataset, 2, after, initial_clip=4, **kw)])
        assert np.array_equal(resumed, straight)  # so epoch 0 is read exactly once, nothing lost


def test_kill_9_then_restart_continues_at_the_right_clip(dataset, tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "dali_video.train_input", "--data", str(dataset), "--cpu", "--epochs", "6",
           "--steps-per-epoch", "3", "--batch-size", "2", "--clip-len", "4", "--crop-size", "32", "--seed", "5",
           "--checkpoint-dir", str(ckpt)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240
        while (read_position(ckpt) or {}).get("epoch", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    saved = read_position(ckpt)
    assert saved and 2 <= saved["epoch"] < 6 and saved["clip"] == saved["epoch"] * 3 * 2 and saved["seed"] == 5
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {ckpt}: epoch {saved['epoch']}, clip {saved['clip']}" in done.stdout
    epochs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(e["epoch"], e["clip"]) for e in epochs] == [(k, k * 6) for k in range(saved["epoch"] + 1, 7)]
    assert read_position(ckpt)["clip"] == 36


def test_clip_position_counts_steps_and_names_the_model_it_belongs_to(tmp_path):
    import tensorflow as tf

    from dali_video.loader.resume import ClipPosition

    x = tf.data.Dataset.from_tensors((tf.zeros((2, 3)), tf.zeros((2,)))).repeat()
    model = tf.keras.Sequential([tf.keras.layers.Input((3,)), tf.keras.layers.Dense(1)])
    model.compile("sgd", "mse", steps_per_execution=2)  # callbacks see every other step only
    model.fit(x, epochs=2, steps_per_epoch=4, verbose=0,
              callbacks=[ClipPosition(tmp_path, seed=3, global_batch_size=2, initial_clip=10)])
    position = read_position(tmp_path)
    assert position["epoch"] == 2 and position["clip"] == 10 + 2 * 4 * 2
    assert [p.name for p in tmp_path.glob("model-*.keras")] == ["model-00002.keras"]
    assert position["model"] == str(tmp_path / "model-00002.keras")
