"""Evaluation passes (every view once, padding marked, per-video averages) and resuming only the same run."""
import numpy as np
import pytest

import dali_video
from dali_video import META_COLUMNS

from .test_loader import CPU, reader_batches

VIDEO, PADDING, DATASET = (META_COLUMNS.index(c) for c in ("video", "padding", "dataset"))
CLIP, CROP = META_COLUMNS.index("frame"), META_COLUMNS.index("crop_x")


def test_each_evaluation_pass_holds_every_view_once_and_averages_per_video(dataset):
    """The issue's case: 10 clips x 3 crops of 10 videos, batch 8: 300 views in 38 batches (304 clips)."""
    kw = dict(batch_size=8, clip_len=2, crop_size=16, training=False, clips_per_video=10, num_crops=3)
    steps = dali_video.steps_per_epoch(dataset, **kw)
    assert steps == 38
    ds = dali_video.clip_dataset(dataset, with_meta=True, seed=0, **CPU, **kw)
    passes = [[], []]
    for k, (clips, labels, meta) in zip(range(2 * steps), ds):
        passes[k // steps].append((clips.numpy().reshape(8, -1).astype(np.float64), labels.numpy(),
                                   {name: v.numpy() for name, v in meta.items()}))
    for batches in passes:
        padding = np.concatenate([m["padding"] for _, _, m in batches])
        assert list(padding) == [0] * 300 + [1] * 4  # the rest of the last batch, and only that, is padding
        views = [(v, f, x) for _, _, m in batches for v, f, x, p in
                 zip(m["video"], m["first_frame"], m["window"][:, 1], m["padding"]) if not p]
        assert len(set(views)) == 300  # every view once (video x clip start x crop position)
        averages = dali_video.average_per_video([p for p, _, _ in batches], [m for _, _, m in batches],
                                                labels=[y for _, y, _ in batches], dataset=ds)
        assert list(averages.video) == list(range(10)) and list(averages.count) == [30] * 10
        table = dali_video.load_table(dataset)
        assert np.array_equal(averages.label, table.label)
        # 29.11: each video's file name, as the writer stored it (a/a_000.avi, ...), not only its table row
        assert sorted(averages.filename) == sorted(f"{c}/{c}_{i:03d}.avi" for c in "ab" for i in range(5))
        assert list(averages.filename) == list(table.filename)
        for v in range(10):  # the plain mean of the video's own 30 clips, padding left out
            own = np.concatenate([p[(m["video"] == v) & (m["padding"] == 0)] for p, _, m in batches])
            np.testing.assert_allclose(averages.mean[v], own.mean(axis=0))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(*passes))  # the second pass starts again at view 0


def test_evaluation_readers_take_disjoint_parts_of_each_padded_pass(dataset):
    kw = dict(clip_len=2, crop_size=16, training=False, clips_per_video=2, num_crops=3, seed=0)  # 60 views
    one = np.concatenate(reader_batches(dataset, 9, batch_size=7, **kw))  # ceil(60 / 7) = 9 batches
    parts = [reader_batches(dataset, 9, batch_size=7 // 7, shard_id=r, num_shards=7, **kw) for r in range(7)]
    shared = np.concatenate([np.concatenate([part[k] for part in parts]) for k in range(9)])
    assert np.array_equal(one, shared)
    assert list(one[:, PADDING]) == [0] * 60 + [1] * 3
    views = {(row[VIDEO], row[CLIP], row[CROP]) for row in one[:60]}
    assert len(views) == 60
    # The GPU path's metadata, [B, 16] arrays: per video the mean of its 6 views' first frames.
    batches = [b for part in parts for b in part]
    averages = dali_video.average_per_video([b[:, [CLIP]] for b in batches], batches)
    assert list(averages.count) == [6] * 10
    expected = [np.mean([row[CLIP] for row in one[:60] if row[VIDEO] == v]) for v in range(10)]
    np.testing.assert_allclose(averages.mean[:, 0], expected)


def test_a_mixtures_evaluation_pass_holds_each_datasets_views_once_then_padding(dataset):
    """training=False: a Mixture's pass is each dataset's views in turn, in the order evaluating that
    dataset alone gives them (weights apply to training only), then the rest of the last global batch
    as padding; the next pass starts again at the first view."""
    one = sorted(dataset.glob("*.tfrecord"))[0]  # 3 of the 10 videos
    kw = dict(clip_len=2, crop_size=16, training=False, clips_per_video=2, num_crops=3)  # 60 + 18 views
    mixture = dali_video.Mixture([(dataset, None, 3), (one, None, 1)])
    steps = dali_video.steps_per_epoch(mixture, batch_size=7, **kw)
    assert steps == 12  # ceil(78 / 7)
    kw["seed"] = 0
    rows = np.concatenate(reader_batches(mixture, 2 * steps, batch_size=7, **kw))
    first, second = rows[:7 * steps], rows[7 * steps:]
    assert np.array_equal(first, second)
    assert list(first[:, PADDING]) == [0] * 78 + [1] * 6
    assert list(first[:78, DATASET]) == [0] * 60 + [1] * 18
    view = [VIDEO, CLIP, CROP, *(META_COLUMNS.index(c) for c in ("crop_y", "crop_h", "stride"))]
    for files, views, offset in ((dataset, first[:60], 0), (one, first[60:78], 10)):
        alone = np.concatenate(reader_batches(files, -(-len(views) // 7), batch_size=7, **kw))[:len(views)]
        assert np.array_equal(views[:, view] - [offset, 0, 0, 0, 0, 0], alone[:, view])
    with dali_video.clip_pipeline(mixture, batch_size=7, device="cpu", output="jpegs", **kw) as p:
        located = [p.plan.locate(k) for k in range(len(rows))]  # the Python reference: MixPlan.locate
    assert [(d, (0, 10)[d] + q // 6, pad) for d, q, pad in located] == \
        [tuple(r) for r in rows[:, [DATASET, VIDEO, PADDING]]]
    shared = [b for r in (0, 1) for b in reader_batches(mixture, 3, batch_size=3, shard_id=r, num_shards=2, **kw)]
    assert sorted(map(tuple, np.concatenate(shared))) == sorted(map(tuple, first[:18]))  # readers sharing batches


def test_train_resumes_from_another_folder_and_refuses_another_run(dataset, tmp_path, monkeypatch, capsys):
    from dali_video.loader.resume import read_position
    from dali_video.tools.train import main

    args = ["--data", str(dataset), "--cpu", "--steps-per-epoch", "1", "--batch-size", "2", "--clip-len", "2",
            "--crop-size", "16", "--seed", "5"]
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--epochs", "1", "--checkpoint-dir", "ckpt"]) == 0  # a path relative to the cwd
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ckpt = str(tmp_path / "ckpt")
    assert main([*args, "--epochs", "2", "--checkpoint-dir", ckpt]) == 0
    assert f"resuming from {ckpt}: epoch 1, clip 2" in capsys.readouterr().out
    assert read_position(ckpt)["epoch"] == 2
    one_shard = str(sorted(dataset.glob("*.tfrecord"))[0])
    for change, field, way_out in ((["--seed", "6"], "seed was 5, this run's is 6", "--seed"),
                                   (["--data", one_shard], "dataset was", "--data"),
                                   (["--clip-len", "3"], "clips.clip_len was 2, this run's is 3", "clip options"),
                                   (["--split", "train"], "split was None", "--split"),
                                   (["--recipe", "mvit"], "recipe was None, this run's is 'mvit'", "--recipe")):
        assert main([*args, *change, "--epochs", "3", "--checkpoint-dir", ckpt]) == 1
        err = capsys.readouterr().err
        assert f"{ckpt} holds another run: its {field}" in err and f"with the same {way_out}" in err, err
    assert main([*args, "--epochs", "2", "--checkpoint-dir", ckpt]) == 0
    assert (f"nothing left to train: {ckpt} holds a run that finished epoch 2 and --epochs is 2; pass --epochs "
            f"above 2") in capsys.readouterr().out
    assert read_position(ckpt)["epoch"] == 2


def test_average_per_video_refuses_metadata_it_cannot_read():
    with pytest.raises(ValueError, match=r"meta must be clip_dataset's metadata dict or a \[B, 16\] array "
                                         r"\(META_COLUMNS\), got shape \(3, 14\)"):
        dali_video.average_per_video(np.zeros((3, 2)), np.zeros((3, 14), np.int32))
    meta = np.zeros((3, len(META_COLUMNS)), np.int32)
    with pytest.raises(ValueError, match=r"predictions \(\[2\] per batch\) and meta \(\[3\] per batch\) must match"):
        dali_video.average_per_video(np.zeros((2, 2)), meta)
    with pytest.raises(TypeError, match=r"dataset must be what clip_dataset returned \(untransformed\), a "
                                        r"ClipPipeline or a VideoTable \(load_table\), got list"):
        dali_video.average_per_video(np.zeros((3, 2)), meta, dataset=["data/"])


def test_average_per_video_leaves_out_padding_and_clips_that_replaced_damaged_ones():
    # on_corrupt="skip" fills a damaged view's place with another view: counting it would weigh that
    # view twice, so, like padding, it is left out (GPU arrays and CPU dicts alike).
    meta = np.zeros((4, len(META_COLUMNS)), np.int32)
    meta[:, VIDEO] = [0, 1, 1, 0]
    meta[2, META_COLUMNS.index("replaced")] = 1  # in video 1's place: a repeat of video 0's view
    meta[3, PADDING] = 1
    preds = np.array([[1.0], [2.0], [9.0], [7.0]])
    for m in (meta, {name: meta[:, i] for i, name in enumerate(META_COLUMNS)}):
        got = dali_video.average_per_video(preds, m)
        assert got.video.tolist() == [0, 1] and got.count.tolist() == [1, 1] and got.mean[:, 0].tolist() == [1, 2]
