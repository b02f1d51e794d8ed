"""The GPU graph's CPU twins: one decoder and the regroup into clips, the resources a GPU pipeline takes,
the cores a process may use, and the input-wait monitor. Run here, without a GPU."""
import logging
import os
import time

import numpy as np
import pytest

import dali_video


@pytest.mark.parametrize("clip_len", [8, 32])
def test_one_decoder_regrouped_into_clips_gives_the_frame_layouts_pixels(dataset, clip_len):
    kw = dict(batch_size=2, clip_len=clip_len, crop_size=32, device="cpu", seed=2, dtype="uint8", std=(1, 1, 1),
              short_videos="loop", with_meta=True)
    with dali_video.clip_pipeline(dataset, layout="frames", **kw) as f, \
            dali_video.clip_pipeline(dataset, layout="clips", **kw) as c:
        assert c.pipeline.serialize().count(b"decoders__Image") == 1  # not one per frame position
        for _ in range(2):
            frames, frame_meta = (np.asarray(o.as_tensor()) for o in f.pipeline.run())
            clips, labels, meta, numbers = (np.asarray(o.as_tensor()) for o in c.pipeline.run())
            assert clips.shape == (2, clip_len, 32, 32, 3)
            assert np.array_equal(clips.reshape(frames.shape), frames)
            assert np.array_equal(meta, frame_meta[::clip_len]) and np.array_equal(labels, meta[:, 5])
            assert np.array_equal(numbers, frame_meta[:, 7].reshape(2, clip_len))  # META_COLUMNS "frame"


@pytest.mark.parametrize("options", [dict(sampling="segments"), dict(stride=(1, 3))])
def test_the_clip_layout_gives_each_clips_planned_frame_numbers(dataset, options):
    # The per-clip layout (the GPU path's graph) regroups the per-frame numbers inside DALI: they must be
    # the frame layout's meta["frames"], the frames the reference plans and the frames the pixels show.
    from dali_video.loader.sampling import plan_clip
    from dali_video.tools.sample_data import frame_number

    kw = dict(batch_size=3, clip_len=6, crop_size=16, device="cpu", seed=5, with_meta=True, dtype="uint8",
              std=(1, 1, 1), **options)
    frames = dali_video.clip_dataset(dataset, layout="frames", **kw)
    clips = dali_video.clip_dataset(dataset, layout="clips", **kw)
    assert clips.element_spec[2]["frames"].shape == (3, 6)
    loader = clips._dali_video_loader
    t, v = loader.table, loader.videos
    for step, (a, b) in enumerate(zip(frames.take(2), clips.take(2))):
        assert np.array_equal(a[2]["frames"], b[2]["frames"])
        for i, (clip, numbers) in enumerate(zip(b[0].numpy(), b[2]["frames"].numpy())):
            ref = plan_clip(loader.plan, t.num_frames[v], t.height[v], t.width[v], step * 3 + i)
            assert numbers.tolist() == ref.frames.tolist() == [frame_number(f) for f in clip]


def _dali_threads() -> set:
    """Ids of the process's threads that DALI named ("[DALI] Executor", "[DALI][TP0]Exec", ...)."""
    ids = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("[DALI]"):
                    ids.add(tid)
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return ids


@pytest.mark.parametrize("num_threads", [1, 3, 8])
def test_a_pipelines_threads_are_what_gpu_resources_counts_without_the_decoder(dataset, num_threads):
    # On the CPU the decoder runs in the pipeline's pool, so the pipeline starts the threads the formula
    # counts besides the mixed decoder's pool: DALI's CPU pool and its executor's task threads.
    want = dali_video.gpu_resources(4, (48, 64), 2, decoders=0, num_threads=num_threads)["threads"]
    with dali_video.clip_pipeline(dataset, batch_size=2, clip_len=4, crop_size=32, device="cpu", seed=0,
                                  layout="clips", num_threads=num_threads) as p:
        before = _dali_threads()  # new threads only: earlier pipelines' threads may end meanwhile
        p.pipeline.build()
        p.pipeline.run()
        assert len(_dali_threads() - before) == want


GIB = 1 << 30


@pytest.mark.parametrize("clip_len", [8, 32, 64])
def test_a_gpu_pipeline_of_an_8_gpu_host_stays_within_128_threads_and_1_gib_pinned(clip_len):
    # 224 cores, 8 GPUs, 256x340 frames, B=8: one mixed decoder over the B*T frames.
    r = dali_video.gpu_resources(clip_len, (256, 340), 8, num_pipelines=8, cores=224)
    frame, n = 256 * 340 * 3, r["num_threads"]
    assert n == 28  # the pipeline's share of the cores, within the thread budget
    assert r["threads"] == n + 4 + n <= 128  # CPU pool, executor (min(n, 4)), decoder pool
    assert r["pinned_bytes"] == 2 * n * frame + 3 * 8 * clip_len * frame // 4 <= GIB
    # One decoder per frame position (the former graph) at the same num_threads: T pools and paddings.
    before = dali_video.gpu_resources(clip_len, (256, 340), 8, decoders=clip_len, num_threads=28)
    assert before["threads"] == 28 + 4 + clip_len * 28 > 128
    assert before["pinned_bytes"] - r["pinned_bytes"] == (clip_len - 1) * 2 * 28 * frame


def test_gpu_threads_shrink_to_the_budget_on_a_large_host_with_one_gpu():
    r = dali_video.gpu_resources(64, (256, 340), 8, num_pipelines=1, cores=224)
    assert r["threads"] <= 128 and r["num_threads"] == 62  # 62 + 4 + 62 = 128


def test_a_bucket_readers_io_threads_fit_in_the_thread_budget():
    # A dataset in a bucket: the reader starts BUCKET_IO_THREADS read-ahead threads of its own, and
    # num_threads leaves room for them (else 62 + 4 + 62 + 32 = 160 threads on this host).
    from dali_video.loader.resources import BUCKET_IO_THREADS
    r = dali_video.gpu_resources(64, (256, 340), 8, num_pipelines=1, cores=224, io_threads=BUCKET_IO_THREADS)
    assert r["threads"] <= 128 and r["num_threads"] == 46  # 46 + 4 + 46 + 32 = 128


def _fake_cgroup(root, cgroup_line, files):
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup_line + "\n")
    for path, text in files.items():
        (root / "sys/fs/cgroup" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "sys/fs/cgroup" / path).write_text(text)
    return root


def test_usable_cores_is_the_affinity_capped_by_a_cgroup_quota(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    v2 = _fake_cgroup(tmp_path / "v2", "0::/kubepods/pod1/c1", {"cpu.max": "max 100000",
                      "kubepods/cpu.max": "800000 100000", "kubepods/pod1/c1/cpu.max": "250000 100000"})
    assert dali_video.usable_cores(v2) == 2  # 2.5 cores of quota, rounded down; the parent's 8 is looser
    unlimited = _fake_cgroup(tmp_path / "max", "0::/", {"cpu.max": "max 100000"})
    assert dali_video.usable_cores(unlimited) == 16  # the affinity
    v1 = _fake_cgroup(tmp_path / "v1", "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc",
                      {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000",
                       "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"})
    assert dali_video.usable_cores(v1) == 4
    v1_none = _fake_cgroup(tmp_path / "v1n", "4:cpu,cpuacct:/", {"cpu,cpuacct/cpu.cfs_quota_us": "-1",
                                                                 "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert dali_video.usable_cores(v1_none) == 16
    tiny = _fake_cgroup(tmp_path / "tiny", "0::/", {"cpu.max": "50000 100000"})
    assert dali_video.usable_cores(tiny) == 1  # half a core: still one thread
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert dali_video.usable_cores(v2) == 2 and dali_video.usable_cores(unlimited) == 3


def test_a_worker_with_two_local_replicas_yields_their_shares_in_turn(dataset):
    # Two workers x two local replicas (the strategy hands a worker's elements to its replicas in turn):
    # at each step the four shares are disjoint and together the 1-reader global batch.
    from dali_video.loader.dataset import worker_dataset

    kw = dict(clip_len=3, crop_size=16, device="cpu", seed=3, with_meta=True, dtype="uint8", std=(1, 1, 1))
    steps = 3
    one = [b[2]["video"].numpy().tolist() + b[2]["first_frame"].numpy().tolist()
           for b in dali_video.clip_dataset(dataset, batch_size=8, **kw).take(steps)]
    shares = {w: [b[2] for b in worker_dataset(dataset, worker=w, num_workers=2, device_ids=[0, 1],
                                               global_batch_size=8, **kw).take(2 * steps)] for w in range(2)}
    for s in range(steps):
        parts = [shares[w][2 * s + i] for w in range(2) for i in range(2)]
        assert all(len(p["video"]) == 2 for p in parts)
        clips = sorted((v, f) for p in parts for v, f in zip(p["video"].numpy(), p["first_frame"].numpy()))
        want = sorted(zip(one[s][:8], one[s][8:]))
        assert clips == want  # every clip of the global batch read once, by one replica


def _fit_input_wait(dataset, layers=None, steps=6, clip_len=4):
    import tensorflow as tf

    monitor = dali_video.InputMonitor()
    # By default a step of a few milliseconds: a cached batch then takes a small share of it.
    layers = [tf.keras.layers.Dense(1024)] if layers is None else layers
    model = tf.keras.Sequential([tf.keras.layers.Input((clip_len, 16, 16, 3)), tf.keras.layers.Flatten(), *layers,
                                 tf.keras.layers.Dense(2)])
    model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(dataset, epochs=2, steps_per_epoch=steps, callbacks=[monitor], verbose=0,
                        shuffle=False)
    return history.history["input_wait"]


def test_input_monitor_sees_fit_wait_for_a_slow_dataset_and_not_for_a_cached_one(dataset, caplog):
    import tensorflow as tf

    ds = dali_video.clip_dataset(dataset, batch_size=2, clip_len=4, crop_size=16, device="cpu", seed=0)
    cached = ds.take(1).cache().repeat()

    def slow(clips, labels):
        time.sleep(0.1)  # a batch every 100 ms, far slower than this model's step
        return clips, labels

    slowed = cached.map(lambda c, y: tf.numpy_function(slow, [c, y], (tf.float32, tf.int32)))
    slowed = slowed.map(lambda c, y: (tf.ensure_shape(c, (2, 4, 16, 16, 3)), tf.ensure_shape(y, (2,))))
    with caplog.at_level(logging.WARNING, logger="dali_video.loader.monitor"):
        waits = _fit_input_wait(slowed)
    assert waits[1] > 0.5, waits  # the first epoch also traces the step function
    assert "waited for input" in caplog.text and "bottleneck" in caplog.text
    fast = _fit_input_wait(cached.prefetch(8))
    assert fast[1] < 0.2, fast


def test_input_monitor_reads_the_fetch_ops_events_as_a_union_over_threads():
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from dali_video.loader.monitor import get_next_seconds

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    plane.event_metadata[1].name = "IteratorGetNextOp::DoCompute"
    plane.event_metadata[2].name = "ExecutorState::Process"
    plane.event_metadata[3].name = "IteratorGetNextAsOptionalOp::DoCompute"
    ms = 10**9  # picoseconds
    one, two = plane.lines.add(timestamp_ns=0), plane.lines.add(timestamp_ns=5_000_000)  # two starts 5 ms later
    one.events.add(metadata_id=1, offset_ps=0, duration_ps=10 * ms)  # 0-10 ms
    two.events.add(metadata_id=1, offset_ps=0, duration_ps=10 * ms)  # 5-15 ms: overlaps the first
    one.events.add(metadata_id=2, offset_ps=20 * ms, duration_ps=50 * ms)  # not a fetch
    one.events.add(metadata_id=3, offset_ps=30 * ms, duration_ps=2 * ms)  # 30-32 ms
    assert get_next_seconds(space) == pytest.approx(0.017)
    assert get_next_seconds(xplane_pb2.XSpace()) is None  # nothing seen is not "no wait"


def test_input_monitor_measures_dalis_dataset_itself(dataset):
    # No tf.data op of ours between DALI's dataset and fit (as on the GPU). One CPU thread decoding
    # 256 frames a batch: a bare linear model waits for it much of the time (0.57-0.76 here); one whose
    # step sleeps 100 ms hardly waits.
    import tensorflow as tf

    ds = dali_video.clip_dataset(dataset, batch_size=32, clip_len=8, crop_size=16, device="cpu", seed=0,
                                 num_threads=1)

    def sleepy(x):
        time.sleep(0.1)
        return x

    sleeper = tf.keras.layers.Lambda(
        lambda x: tf.ensure_shape(tf.numpy_function(sleepy, [x], tf.float32, stateful=True), x.shape))
    # 30 bare steps: the few batches DALI queues ahead between epochs are a small part of them.
    waits = {name: _fit_input_wait(ds, layers, steps=steps, clip_len=8)
             for name, layers, steps in (("bare", [], 30), ("sleeping", [sleeper], 10))}
    assert waits["sleeping"][1] < 0.1 < 0.3 < waits["bare"][1], waits
