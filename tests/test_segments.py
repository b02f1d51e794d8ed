"""Segments of untrimmed videos and label heads: written once, sampled inside their segments, labelled
by head (EPIC-style verb + noun, Charades-style multi-label, AVA-style keyframes)."""
import hashlib
import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import dali_video
from dali_video.index_tools import FormatError, inspect, verify
from dali_video.index_tools import format as fmt
from dali_video.loader.sampling import PlanSpec, load_table, plan_clip
from dali_video.tools.sample_data import make_video
from dali_video.writer import EncodeOptions, InputError, Segment, from_segments
from dali_video.writer.write import plan_digest, plan_shards, segment_frames

from .conftest import run_module
from .test_beam import _assert_same_files
from .test_loader import CPU, batches, numbers

VERBS, NOUNS = ("cut", "take", "wash"), ("cup", "knife", "onion", "pan")
LENGTHS = {"P01_01.avi": 200, "P01_02.avi": 160}


def _epic_rows(seed=0):
    """20 overlapping segments over two long videos: (path, first, end, verb, noun)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(20):
        name = sorted(LENGTHS)[i % 2]
        first = int(rng.integers(0, LENGTHS[name] - 40))
        rows.append((name, first, first + int(rng.integers(3, 40)), VERBS[i % 3], NOUNS[i % 4]))
    return rows


def _csv(path, header, rows):
    path.write_text("\n".join([header] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def epic(tmp_path_factory):
    """Two long videos, 20 overlapping segments with verb and noun, written with --segments (frames)."""
    root = tmp_path_factory.mktemp("epic")
    for name, n in LENGTHS.items():
        make_video(root / "videos" / name, n, fps=25)
    rows = _epic_rows()
    _csv(root / "ann.csv", "path,start_frame,end_frame,verb,noun", rows)
    run_module("dali_video.writer", "--segments", root / "ann.csv", root / "videos", root / "data", "--resize", "0",
               "--workers", "1")
    return root, rows


@pytest.fixture(scope="module")
def charades(tmp_path_factory):
    """Whole videos, each with several classes (multi-label), written with --csv."""
    root = tmp_path_factory.mktemp("charades")
    labels = {"a.avi": "3;1", "b.avi": "0", "c.avi": "2;0;4", "d.avi": ""}
    for i, name in enumerate(labels):
        make_video(root / "videos" / name, 24 + 4 * i)
    _csv(root / "list.csv", "path,action", labels.items())
    run_module("dali_video.writer", "--csv", root / "list.csv", root / "videos", root / "data", "--resize", "0",
               "--workers", "1")
    return root, labels


def test_overlapping_segments_store_each_frame_once(epic, tmp_path):
    root, rows = epic
    _csv(tmp_path / "whole.csv", "path,label", [(name, 0) for name in LENGTHS])
    run_module("dali_video.writer", "--csv", tmp_path / "whole.csv", root / "videos", tmp_path / "whole",
               "--resize", "0", "--workers", "1")
    [seg_shard], [whole_shard] = (sorted(Path(d).glob("*.tfrecord")) for d in (root / "data", tmp_path / "whole"))
    frames = sum(LENGTHS.values())
    assert sum(end - first for _, first, end, _, _ in rows) > frames  # the segments overlap
    assert abs(seg_shard.stat().st_size - whole_shard.stat().st_size) < 200  # the same frames, other labels
    assert len(read_rows(seg_shard)) == len(read_rows(whole_shard)) == frames
    manifest = json.loads((root / "data" / "train.manifest.json").read_text())
    assert manifest["segments"] == 20 and manifest["videos"] == 2 and manifest["frames"] == frames
    assert manifest["heads"] == {"verb": {"classes": list(VERBS), "multi_label": False},
                                 "noun": {"classes": list(NOUNS), "multi_label": False}}
    table = load_table(root / "data")
    assert sorted(table.segment) == list(range(20))
    for k in range(20):
        name, first, end, verb, noun = rows[table.segment[k]]
        assert (table.filename[k], table.first[k], table.num_frames[k]) == (name, first, end - first)
        assert list(table.head_labels[k]) == [VERBS.index(verb), NOUNS.index(noun)]
    # against each segment written as its own video (cut out of its source): every overlap stored again
    for i, (name, first, end, verb, _) in enumerate(rows):
        make_video(tmp_path / "cut" / verb / f"{i:02d}.avi", end - first, first=first)
    run_module("dali_video.writer", tmp_path / "cut", tmp_path / "each", "--resize", "0", "--workers", "1")
    size = {d: sum(p.stat().st_size for p in (tmp_path / d if d != "data" else root / d).iterdir())
            for d in ("data", "each")}
    cut_frames = sum(end - first for _, first, end, _, _ in rows)
    print(f"{frames} video frames, {cut_frames} segment frames: --segments {size['data']} bytes, "
          f"each segment its own video {size['each']} bytes")
    assert size["data"] < size["each"] * frames / cut_frames * 1.05


def test_beam_writes_the_local_segment_dataset(epic, tmp_path):
    root, _ = epic
    run_module("dali_video.writer", "--segments", root / "ann.csv", root / "videos", tmp_path, "--resize", "0",
               "--runner", "beam", "--workers", "2")
    _assert_same_files(tmp_path, root / "data")


def test_verify_and_the_loader_check_the_segment_table(epic, tmp_path):
    data = shutil.copytree(epic[0] / "data", tmp_path / "data")
    [shard] = sorted(data.glob("*.tfrecord"))
    assert verify(shard) == 2
    text = inspect([shard])
    assert "segments: 20 in 1 shards; label heads: verb (3 classes), noun (4 classes)" in text
    assert "label histogram" not in text  # the videos' plain label (-1) says nothing of their segments
    assert re.search(r"verb histogram \(class id, class, segments\):\n +0 cut +7\n +1 take +7\n +2 wash +6\n", text)
    assert re.search(r"noun histogram .*\n +0 cup +5\n +1 knife +5\n +2 onion +5\n +3 pan +5$", text)
    table = json.loads(fmt.segments_path(shard).read_text())
    table["segments"]["count"][3] = 500
    fmt.segments_path(shard).write_text(json.dumps(table))
    with pytest.raises(FormatError, match=r"segment 3 \(annotation row \d+\) is frames \d+\.\.\d+ of video \d, outside "
                                          r"its \d+ frames: corrupt table"):
        verify(shard)
    with pytest.raises(FormatError, match=r"outside its \d+ frames: corrupt table"):
        load_table(data)
    fmt.segments_path(shard).unlink()
    with pytest.raises(FormatError, match=r"segments: missing \(the frame index says the shard was written with 20 "
                                          r"segments\)"):
        verify(shard)
    with pytest.raises(FormatError, match=r"segment table missing for shard .* written with 20 segments"):
        load_table(data)


def read_rows(shard):
    index = fmt.read_frame_index(fmt.fidx_path(shard))
    return index.read_rows(0, index.num_frame_rows)


@pytest.mark.parametrize("kw", [dict(stride=2), dict(sampling="segments"), dict(stride=4, short_videos="loop"),
                                dict(training=False, clips_per_video=3, stride=2), dict(target_fps=12.5)])
def test_every_clip_lies_inside_its_segment_and_carries_its_labels(epic, kw):
    root, rows = epic
    steps = 15 if kw.get("training") is False else 6  # an evaluation pass: 20 segments x 3 views
    got = batches(root / "data", steps, batch_size=4, clip_len=6, crop_size=32, seed=2, **kw)
    seen = set()
    for clips, labels, meta in got:
        for i, clip in enumerate(clips):
            name, first, end, verb, noun = rows[meta["segment"][i]]
            assert meta["filename"][i].decode() == name and meta["source_video"][i] == sorted(LENGTHS).index(name)
            assert numbers(clip) == list(meta["frames"][i]), meta["segment"][i]
            assert all(first <= f < end for f in meta["frames"][i]), (first, end, meta["frames"][i])
            assert (labels["verb"][i], labels["noun"][i]) == (VERBS.index(verb), NOUNS.index(noun))
            seen.add(int(meta["segment"][i]))
    assert seen == set(range(20))  # the first epoch (or pass) covers every segment


def test_segment_frames_are_the_python_plan_offset_by_the_segments_first_frame(epic):
    root, _ = epic
    table = load_table(root / "data")
    got = batches(root / "data", 3, batch_size=4, clip_len=5, crop_size=32, seed=7, stride=3)
    plan = dali_video.clip_pipeline(root / "data", batch_size=4, clip_len=5, crop_size=32, seed=7, stride=3,
                                    device="cpu", dtype="uint8").plan
    for step, (_, _, meta) in enumerate(got):
        for i in range(4):
            ref = plan_clip(plan, table.num_frames, table.height, table.width, step * 4 + i)
            assert meta["video"][i] == ref.video
            assert list(meta["frames"][i]) == list(ref.frames + table.first[ref.video])


def test_resume_from_a_clip_position_is_exact(epic):
    root, _ = epic
    kw = dict(batch_size=4, clip_len=3, crop_size=16, seed=3)
    straight = batches(root / "data", 6, **kw)
    resumed = batches(root / "data", 3, initial_clip=12, **kw)
    for (a, la, ma), (b, lb, mb) in zip(straight[3:], resumed):
        assert np.array_equal(a, b) and np.array_equal(ma["segment"], mb["segment"])
        assert np.array_equal(la["verb"], lb["verb"]) and np.array_equal(ma["frames"], mb["frames"])


def test_epic_style_two_heads_train_with_fit(epic):
    root, _ = epic
    heads = dali_video.label_heads(root / "data")
    assert list(heads) == ["verb", "noun"] and [len(h["classes"]) for h in heads.values()] == [3, 4]
    ds = dali_video.clip_dataset(root / "data", batch_size=4, clip_len=4, crop_size=32, device="cpu", seed=0)
    inputs = tf.keras.layers.Input((4, 32, 32, 3))
    features = tf.keras.layers.GlobalAveragePooling3D()(tf.keras.layers.Conv3D(4, 3)(inputs))
    outputs = {name: tf.keras.layers.Dense(len(h["classes"]), name=name)(features) for name, h in heads.items()}
    model = tf.keras.Model(inputs, outputs)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss={name: loss for name in heads})
    steps = dali_video.steps_per_epoch(ds)
    assert steps == 5  # 20 segments, batch 4
    history = model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()


def test_charades_style_multi_label_gives_multi_hot_or_indices_and_trains_with_fit(charades):
    root, labels = charades
    assert dali_video.label_heads(root / "data") == {"action": {"classes": ["0", "1", "2", "3", "4"],
                                                                "multi_label": True}}
    want = {name: {int(c) for c in cell.split(";") if c} for name, cell in labels.items()}
    assert inspect(sorted((root / "data").glob("*.tfrecord"))).endswith(  # a class counts each video that has it
        "action histogram (class id, class, segments):\n" + "\n".join(
            f"  {i:>5} {str(i):40} {n:>7}" for i, n in enumerate([2, 1, 1, 1, 1])) + f"\n  {'':>5} {'(no label)':40} {1:>7}")
    for fmt_, check in (("multi_hot", lambda row, ids: set(np.flatnonzero(row)) == ids and row.dtype == np.float32),
                        ("indices", lambda row, ids: set(row[row >= 0]) == ids and len(row) == 3)):
        for _, lab, meta in batches(root / "data", 2, batch_size=4, clip_len=2, crop_size=16, seed=1,
                                    label_format=fmt_):
            for i, name in enumerate(meta["filename"]):
                assert check(lab["action"][i], want[name.decode()]), (fmt_, name, lab["action"][i])
    ds = dali_video.clip_dataset(root / "data", batch_size=2, clip_len=2, crop_size=16, device="cpu", seed=0)
    inputs = tf.keras.layers.Input((2, 16, 16, 3))
    out = tf.keras.layers.Dense(5, name="action")(tf.keras.layers.GlobalAveragePooling3D()(inputs))
    model = tf.keras.Model(inputs, {"action": out})
    model.compile("adam", loss={"action": tf.keras.losses.BinaryCrossentropy(from_logits=True)})
    history = model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()


def _want_labels(table, videos, fmt_="multi_hot"):
    """Each item's labels by head from the table's class ids (the written CSV's), as clip_dataset gives them."""
    out = {}
    for h, column, width in table.heads:
        ids = table.head_labels[videos, column:column + width]
        if not h.multi_label:
            out[h.name] = ids[:, 0]
        elif fmt_ == "indices":
            out[h.name] = ids
        else:
            out[h.name] = np.stack([np.isin(np.arange(len(h.classes)), row[row >= 0]) for row in ids]).astype(np.float32)
    return out


def test_labels_by_head_come_out_of_the_dali_graph_as_on_the_gpu(epic, charades):
    # layout "clips" without metadata is the GPU path's dataset on the CPU: DALI's outputs are the
    # elements (no tf.data op follows), the dict of labels regroups them.
    root, rows = epic
    kw = dict(batch_size=4, clip_len=4, crop_size=32, device="cpu", seed=0)
    ds = dali_video.clip_dataset(root / "data", layout="clips", **{**CPU, **kw})
    assert ds.element_spec[1] == {"noun": tf.TensorSpec((4,), tf.int32), "verb": tf.TensorSpec((4,), tf.int32)}
    table = load_table(root / "data")
    for (clips, labels), (clips_f, labels_f, meta) in zip(ds.take(2), batches(root / "data", 2, **kw)):
        assert np.array_equal(clips, clips_f)  # the same clips as the per-frame layout, the same labels
        want = _want_labels(table, meta["video"])
        assert all(np.array_equal(labels[k], labels_f[k]) and np.array_equal(labels[k], want[k]) for k in want)
        assert [VERBS[v] for v in labels["verb"]] == [rows[s][3] for s in meta["segment"]]
    heads = dali_video.label_heads(root / "data")
    inputs = tf.keras.layers.Input((4, 32, 32, 3))
    features = tf.keras.layers.GlobalAveragePooling3D()(tf.keras.layers.Rescaling(1 / 255)(inputs))
    model = tf.keras.Model(inputs, {n: tf.keras.layers.Dense(len(h["classes"]), name=n)(features)
                                    for n, h in heads.items()})
    model.compile("adam", loss={n: tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True) for n in heads})
    assert np.isfinite(model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False).history["loss"]).all()
    # Without TensorFlow: the pipeline's outputs, one per head in name order (multi-hot or indices).
    croot, _ = charades
    ctable = load_table(croot / "data")
    for fmt_, dtype in (("multi_hot", np.float32), ("indices", np.int32)):
        with dali_video.clip_pipeline(croot / "data", layout="clips", label_format=fmt_, batch_size=3, clip_len=2,
                                      crop_size=16, device="cpu", seed=1) as p:
            for _ in range(2):
                clips, action, meta, _ = (np.asarray(o.as_tensor()) for o in p.pipeline.run())
                assert action.dtype == dtype
                assert np.array_equal(action, _want_labels(ctable, meta[:, 6], fmt_)["action"])


@pytest.mark.gpu
def test_labels_by_head_on_the_gpu_are_the_cpus(epic, charades):
    for root, fmt_ in ((epic[0], "multi_hot"), (charades[0], "multi_hot"), (charades[0], "indices")):
        kw = dict(batch_size=2, clip_len=4, crop_size=16, seed=0, label_format=fmt_, layout="clips", **CPU)
        cpu = dali_video.clip_dataset(root / "data", **kw)
        gpu = dali_video.clip_dataset(root / "data", **{**kw, "device": "gpu"})
        assert gpu.element_spec[1] == cpu.element_spec[1]
        for (_, a), (_, b) in zip(cpu.take(3), gpu.take(3)):
            assert all(np.array_equal(a[k], b[k]) for k in a)


def test_flip_label_pairs_swap_the_first_heads_classes(epic):
    root, _ = epic
    table = load_table(root / "data")
    for layout in ("frames", "clips"):
        flipped = 0
        for _, labels, meta in batches(root / "data", 4, batch_size=5, clip_len=2, crop_size=16, seed=4,
                                       layout=layout, flip_label_pairs=[(0, 2)]):
            want = _want_labels(table, meta["video"])
            swap = np.array([2, 1, 0])[want["verb"]]
            assert np.array_equal(labels["verb"], np.where(meta["flip"] == 1, swap, want["verb"]))
            assert np.array_equal(labels["noun"], want["noun"])  # another head's classes: not swapped
            flipped += int(meta["flip"].sum())
        assert 0 < flipped < 20
    # A Mixture's datasets (the same heads) keep their class ids: each swaps by its recipe's own pairs.
    from dali_video.loader.config import ClipConfig

    mixture = dali_video.Mixture([(root / "data", ClipConfig(clip_len=2, crop_size=16), 1),
                                  (root / "data", ClipConfig(clip_len=2, crop_size=16, flip_label_pairs=[(0, 2)]), 1)])
    for _, labels, meta in batches(mixture, 4, batch_size=4, seed=4, layout="clips"):
        want = _want_labels(table, meta["video"] % len(table.filename))
        swapped = (meta["flip"] == 1) & (meta["dataset"] == 1)
        assert np.array_equal(labels["verb"], np.where(swapped, np.array([2, 1, 0])[want["verb"]], want["verb"]))
        assert np.array_equal(labels["noun"], want["noun"])
def _epoch_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_dali_video_train_trains_two_heads_with_a_loss_and_accuracy_each_and_resumes(epic, tmp_path, capsys):
    from dali_video.loader.resume import read_position
    from dali_video.tools.train import main

    args = ["--data", str(epic[0] / "data"), "--cpu", "--steps-per-epoch", "2", "--batch-size", "4", "--clip-len",
            "2", "--crop-size", "16", "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert main([*args, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "clip 2x16x16, label heads verb (3 classes), noun (4 classes), recipe default" in out
    [line] = _epoch_lines(out)
    assert list(line) == ["epoch", "loss", "verb_loss", "verb_accuracy", "noun_loss", "noun_accuracy", "clips_per_s",
                          "frames_per_s", "clip", "input_wait"]
    assert line["loss"] == pytest.approx(line["verb_loss"] + line["noun_loss"], abs=2e-4)
    assert 0 <= line["verb_accuracy"] <= 1 and 0 <= line["noun_accuracy"] <= 1
    model = tf.keras.models.load_model(read_position(tmp_path / "ckpt")["model"])
    assert {k: v.shape[-1] for k, v in model(np.zeros((1, 2, 16, 16, 3), np.float32)).items()} == {"verb": 3, "noun": 4}
    assert main([*args, "--epochs", "2"]) == 0  # the saved two-output model, resumed
    out = capsys.readouterr().out
    assert "resuming from" in out and [(d["epoch"], d["clip"]) for d in _epoch_lines(out)] == [(2, 16)]


def test_dali_video_train_trains_a_multi_label_head_with_map(charades):
    proc = run_module("dali_video.train_input", "--data", charades[0] / "data", "--cpu", "--epochs", "1",
                      "--steps-per-epoch", "2", "--batch-size", "2", "--clip-len", "2", "--crop-size", "16")
    assert "label heads action (5 classes, multi-label), recipe default" in proc.stdout
    [line] = _epoch_lines(proc.stdout)
    assert line["action_loss"] == line["loss"] > 0 and 0 <= line["action_mAP"] <= 1 and "accuracy" not in line


def test_dali_video_train_resumes_a_single_and_a_multi_label_head_under_tf_keras(charades, tmp_path):
    """As across hosts (Keras 2 through tf-keras), whose reloaded model names a head's metric HEAD_HEAD_mAP."""
    root, labels = charades
    _csv(tmp_path / "list.csv", "path,scene,action", [(name, "ab"[i % 2], cell)
                                                       for i, (name, cell) in enumerate(labels.items())])
    run_module("dali_video.writer", "--csv", tmp_path / "list.csv", root / "videos", tmp_path / "data", "--resize",
               "0", "--workers", "1")
    args = ["--data", tmp_path / "data", "--cpu", "--steps-per-epoch", "1", "--batch-size", "2", "--clip-len", "2",
            "--crop-size", "16", "--checkpoint-dir", tmp_path / "ckpt"]
    for epochs in (1, 2):
        proc = run_module("dali_video.train_input", *args, "--epochs", epochs, env={"TF_USE_LEGACY_KERAS": "1"})
        [line] = _epoch_lines(proc.stdout)
        assert line["epoch"] == epochs and 0 <= line["scene_accuracy"] <= 1 and 0 <= line["action_mAP"] <= 1
        assert line["loss"] == pytest.approx(line["scene_loss"] + line["action_loss"], abs=2e-4)


def test_a_segment_table_replaced_by_hand_is_read_again(epic, tmp_path):
    data = shutil.copytree(epic[0] / "data", tmp_path / "data")
    held = load_table(data)
    [path] = data.glob("*.segments")
    table = json.loads(path.read_text())
    table["segments"]["labels"]["verb"] = [[2 - ids[0]] for ids in table["segments"]["labels"]["verb"]]
    path.write_text(json.dumps(table))
    again = load_table(data)
    assert again is not held and list(again.head_labels[:, 0]) == [2 - v for v in held.head_labels[:, 0]]


def test_keyframes_centre_the_clip_on_the_frame(tmp_path):
    make_video(tmp_path / "videos" / "movie.avi", 120)
    keys = [0, 5, 30, 31, 64, 119]
    _csv(tmp_path / "keys.csv", "path,start_frame,end_frame,action", [("movie.avi", k, k + 1, k % 2) for k in keys])
    run_module("dali_video.writer", "--segments", tmp_path / "keys.csv", tmp_path / "videos", tmp_path / "data",
               "--resize", "0", "--workers", "1")
    for training in (True, False):
        for clips, labels, meta in batches(tmp_path / "data", 3, batch_size=2, clip_len=4, stride=4, crop_size=16,
                                           seed=0, centre=True, training=training):
            for i, clip in enumerate(clips):
                k = keys[meta["segment"][i]]
                start = min(max(k - 8, 0), 120 - 13)  # span 13, moved inside the video
                assert numbers(clip) == [start + 4 * t for t in range(4)], k
                assert labels[i] == k % 2  # one single-label head: labels [B], as before
    with pytest.raises(ValueError, match=r"centre=True .* needs sampling='stride', one stride"):
        dali_video.clip_dataset(tmp_path / "data", batch_size=2, clip_len=4, stride=(2, 4), crop_size=16,
                                device="cpu", centre=True)


def test_average_per_segment_or_per_video(epic):
    root, rows = epic
    ds = dali_video.clip_dataset(root / "data", batch_size=4, clip_len=2, crop_size=16, device="cpu", seed=0,
                                 training=False, clips_per_video=2, with_meta=True)
    metas = [m for _, _, m in ds.take(dali_video.steps_per_epoch(ds))]
    preds = [np.ones((len(m["video"]), 1)) for m in metas]
    per_segment = dali_video.average_per_video(preds, metas)
    per_video = dali_video.average_per_video(preds, metas, per_source_video=True, dataset=ds)
    assert len(per_segment.video) == 20 and set(per_segment.count) == {2}
    assert list(per_video.video) == [0, 1] and sorted(per_video.count) == [20, 20]
    assert list(per_video.filename) == sorted(LENGTHS)


def test_seconds_are_converted_with_the_stored_frame_rate():
    seg = Segment(0, 1.0, 1.5, "seconds", ())
    assert segment_frames(seg, 100, 25.0) == (25, 38)  # frames 25..37 show times in [1.0, 1.5)
    assert segment_frames(Segment(0, 1.0, 1.01, "seconds", ()), 100, 25.0) == (25, 26)  # shorter than a frame
    assert segment_frames(Segment(0, 3.0, 9.0, "seconds", ()), 100, 25.0) == (75, 100)  # cut at the end
    assert segment_frames(Segment(0, 10, 20, "frames", ()), 15, 0.0) == (10, 15)
    assert "the video has 15 stored frames" in segment_frames(Segment(0, 20, 30, "frames", ()), 15, 0.0)
    assert "no frame rate" in segment_frames(seg, 100, 0.0)


def test_a_seconds_segment_reads_the_frames_of_its_times(tmp_path):
    make_video(tmp_path / "videos" / "v.avi", 100, fps=20)
    _csv(tmp_path / "s.csv", "path,start,end,split,label", [("v.avi", 1.0, 2.0, "train", "x"),
                                                             ("v.avi", 4.5, 9.0, "val", "y")])
    run_module("dali_video.writer", "--segments", tmp_path / "s.csv", tmp_path / "videos", tmp_path / "data",
               "--resize", "0", "--workers", "1")
    for split, (first, count, segment) in {"train": (20, 20, 0), "val": (90, 10, 1)}.items():
        table = load_table(tmp_path / "data", split)
        assert (list(table.first), list(table.num_frames), list(table.segment)) == ([first], [count], [segment])
    manifest = json.loads((tmp_path / "data" / "val.manifest.json").read_text())
    assert manifest["heads"]["label"]["classes"] == ["x", "y"]  # the same ids in every split


def test_folder_and_kinetics_datasets_are_written_as_before(dataset):
    """No segment table, and the plan digest of the formula before segments existed."""
    assert not list(Path(dataset).glob("*.segments"))
    index = fmt.read_frame_index(fmt.fidx_path(sorted(Path(dataset).glob("*.tfrecord"))[0]))
    assert "segments" not in index.notes
    from dali_video.writer import VideoSpec
    specs = [VideoSpec(f"/v/{i}.avi", f"{i}.avi", i % 2, "ab"[i % 2], "train", 1.0, 3.0) for i in range(3)]
    plan, opts = plan_shards(specs, {"train": 1}, 0)[0], EncodeOptions()
    old = [{k: v for k, v in asdict(s).items() if k not in ("path", "segments")} for s in plan.videos]
    assert plan_digest(plan, opts) == hashlib.sha256(json.dumps([asdict(opts), old]).encode()).hexdigest()


def test_a_split_added_later_must_keep_the_heads_class_ids(tmp_path):
    make_video(tmp_path / "videos" / "a.avi", 12)
    make_video(tmp_path / "videos" / "b.avi", 12)
    write = ("dali_video.writer", tmp_path / "videos", tmp_path / "data", "--resize", "0", "--workers", "1")
    _csv(tmp_path / "train.csv", "path,verb,noun", [("a.avi", "cut", "cup"), ("b.avi", "wash", "pan")])
    run_module(*write, "--csv", tmp_path / "train.csv")
    manifest = json.loads((tmp_path / "data" / "train.manifest.json").read_text())
    assert manifest["heads"]["verb"] == {"classes": ["cut", "wash"], "multi_label": False}
    _csv(tmp_path / "val.csv", "path,verb,noun", [("a.avi", "wash", "cup")])
    proc = run_module(*write, "--csv", tmp_path / "val.csv", "--split", "val", check=False)
    assert proc.returncode == 1
    assert "train: label head 'verb' class 0 was 'cut', now 'wash' (write every split's rows in one" in proc.stderr
    _csv(tmp_path / "val.csv", "path,verb,noun", [("a.avi", "cut", "cup"), ("b.avi", "wash", "pan")])
    run_module(*write, "--csv", tmp_path / "val.csv", "--split", "val")  # the same ids: the split joins


def test_dataset_formats_convert_to_segments(tmp_path):
    root = tmp_path / "videos"
    for name in ("P01_01.MP4", "XYZ12.mp4", "v_abc.mp4"):
        (root / "sub").mkdir(parents=True, exist_ok=True)
        (root / "sub" / name).write_bytes(b"")
    epic = _csv(tmp_path / "EPIC_100_train.csv", "narration_id,participant_id,video_id,start_timestamp,"
                "stop_timestamp,verb,verb_class,noun,noun_class",
                [("P01_01_0", "P01", "P01_01", "00:00:01.50", "00:01:02.00", "take", 0, "cup", 7),
                 ("P01_01_1", "P01", "P01_01", "00:00:02.00", "00:00:04.25", "wash", 2, "pan", 3)])
    specs, failures, heads = from_segments(epic, root, segments_format="epic")
    assert failures == [] and [h.name for h in heads] == ["verb", "noun"] and len(heads[1].classes) == 8
    assert [(s.start, s.end, s.labels) for s in specs[0].segments] == [(1.5, 62.0, ((0,), (7,))),
                                                                       (2.0, 4.25, ((2,), (3,)))]
    assert specs[0].filename == "sub/P01_01.MP4"
    charades = _csv(tmp_path / "Charades_v1_train.csv", "id,subject,actions,length",
                    [("XYZ12", "s", "c092 11.90 21.20;c147 0.00 12.60", 30.5)])
    specs, _, heads = from_segments(charades, root, segments_format="charades")
    assert heads[0].multi_label and len(heads[0].classes) == 148
    assert [(s.start, s.end, s.labels) for s in specs[0].segments] == [(0.0, 30.5, ((92, 147),))]
    anet = tmp_path / "activity_net.json"
    anet.write_text(json.dumps({"database": {"abc": {"subset": "validation", "annotations": [
        {"segment": [1.0, 5.5], "label": "Surfing"}, {"segment": [7.0, 9.0], "label": "Archery"}]}}}))
    specs, _, heads = from_segments(anet, root, segments_format="activitynet")
    assert specs[0].split == "val" and heads[0].classes == ("Archery", "Surfing")
    assert [(s.id, s.start, s.labels) for s in specs[0].segments] == [(0, 1.0, ((1,),)), (1, 7.0, ((0,),))]


def test_bad_segment_annotations_say_what_and_where(tmp_path):
    make_video(tmp_path / "videos" / "v.avi", 10)
    with pytest.raises(InputError, match=r"must name start,end \(seconds\) or start_frame,end_frame"):
        from_segments(_csv(tmp_path / "a.csv", "path,begin,end,label", [("v.avi", 0, 1, "x")]), tmp_path / "videos")
    with pytest.raises(InputError, match=r"b.csv: line 3: column 'label' is empty"):
        from_segments(_csv(tmp_path / "b.csv", "path,start,end,label", [("v.avi", 0, 1, "x"), ("v.avi", 0, 1, "")]),
                      tmp_path / "videos")
    specs, failures, _ = from_segments(_csv(tmp_path / "c.csv", "path,start_frame,end_frame,label",
                                            [("v.avi", 5, 5, "x"), ("w.avi", 0, 3, "x"), ("v.avi", 1.5, 3, "x")]),
                                       tmp_path / "videos")
    assert specs == [] and [f.reason.split(": ", 1)[1] for f in failures] == [
        "segment [5, 5) is empty, negative or not whole frames", "segment [1.5, 3) is empty, negative or not whole "
        "frames", f"no such video under {tmp_path / 'videos'} (1 segments)"]
