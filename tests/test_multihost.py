"""Training across hosts: two CPU workers on localhost (TF_CONFIG, MultiWorkerMirroredStrategy)."""
import json
import os
import socket
import subprocess
import sys

import dali_video

from .conftest import ROOT

READ = """
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
import dali_video
strategy = tf.distribute.MultiWorkerMirroredStrategy()
ds = dali_video.distribute(strategy, sys.argv[1], global_batch_size=4, clip_len=3, crop_size=16, device="cpu",
                           seed=3, with_meta=True, dtype="uint8", std=(1, 1, 1))
videos, it = [], iter(ds)
for _ in range(2):  # 8 clips of the first epoch (10 videos)
    clips, labels, meta = next(it)
    local = strategy.experimental_local_results
    assert local(clips)[0].shape == (2, 3, 16, 16, 3)  # this worker's half of each global batch
    videos += list(zip(local(meta["video"])[0].numpy().tolist(), local(meta["first_frame"])[0].numpy().tolist()))
print("VIDEOS " + json.dumps(videos), flush=True)
"""


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run_workers(argv_of, timeout=240, env_of=lambda i: {"CUDA_VISIBLE_DEVICES": ""}):
    """Run two workers (argv_of(index) each, with env_of(index) added: no GPU unless it says) with a
    TF_CONFIG; kill them (SIGKILL: TF workers ignore SIGTERM) if they outlive the timeout. Returns
    their (returncode, stdout, stderr)."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = [subprocess.Popen(argv_of(i), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT, **env_of(i),
                                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, *o) for p, o in zip(procs, outputs)]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_two_workers_read_disjoint_shares_of_each_global_batch(dataset):
    results = _run_workers(lambda i: [sys.executable, "-c", READ, str(dataset)])
    seen = []
    for code, out, err in results:
        lines = [line for line in out.splitlines() if line.startswith("VIDEOS ")]
        assert lines, err[-3000:]
        seen.append(json.loads(lines[0][len("VIDEOS "):]))
    seen = [[tuple(clip) for clip in worker] for worker in seen]
    assert len(seen[0]) == len(seen[1]) == 4 and not set(seen[0]) & set(seen[1])
    # Step by step, the two shares are the global batch one reader reads alone.
    one = [list(zip(m["video"].numpy().tolist(), m["first_frame"].numpy().tolist())) for _, _, m in
           dali_video.clip_dataset(dataset, batch_size=4, clip_len=3, crop_size=16, device="cpu", seed=3,
                                   with_meta=True, dtype="uint8", std=(1, 1, 1)).take(2)]
    for step in range(2):
        assert sorted(seen[0][2 * step:2 * step + 2] + seen[1][2 * step:2 * step + 2]) == sorted(one[step])


def test_dali_video_train_reads_tf_config_and_trains_on_two_workers(dataset):
    cmd = [sys.executable, "-m", "dali_video.train_input", "--data", str(dataset), "--cpu", "--epochs", "2",
           "--steps-per-epoch", "2", "--batch-size", "4", "--clip-len", "4", "--crop-size", "32", "--seed", "1"]
    for code, out, err in _run_workers(lambda i: cmd):
        epochs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert code == 0 and [e["epoch"] for e in epochs] == [1, 2], err[-3000:]
        # TensorFlow's profiler can abort a worker of a cluster when it stops (loader/monitor.py): not run there
        assert all(e["input_wait"] is None for e in epochs), epochs
        assert err.count("input_wait not measured: in a cluster of several workers") == 1, err[-3000:]


ONE_WORKER = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
import dali_video
strategy = tf.distribute.MultiWorkerMirroredStrategy()  # no TF_CONFIG: one worker, its local devices
ds = dali_video.distribute(strategy, sys.argv[1], global_batch_size=4, clip_len=4, crop_size=32, device="cpu", seed=0)
with strategy.scope():
    model = tf.keras.Sequential([tf.keras.layers.Input((4, 32, 32, 3)), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(2)])
    model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
print("EPOCHS", len(model.fit(ds, epochs=2, steps_per_epoch=2, verbose=0).history["loss"]), flush=True)
"""


def test_multiworker_strategy_on_one_worker_reads_per_worker(dataset):
    # MultiWorkerMirroredStrategy takes no per-replica datasets even without a cluster
    # (collective_all_reduce_strategy.py:775-786): distribute() must read per worker there too.
    proc = subprocess.run([sys.executable, "-c", ONE_WORKER, str(dataset)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""}, timeout=240)
    assert "EPOCHS 2" in proc.stdout, proc.stderr[-3000:]
