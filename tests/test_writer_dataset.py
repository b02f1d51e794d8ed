"""writer: one dataset per output folder (issue 17.1), and only video containers become videos (17.4)."""
import json
import wave

import cv2
import numpy as np
import pytest

from dali_video.index_tools import FormatError, read_frame_index
from dali_video.index_tools import format as fmt
from dali_video.tools.sample_data import make_folder_dataset, make_video
from dali_video.writer import EncodeOptions, WriteError, from_folder, plan_dataset

from .conftest import run_module

KINETICS = ("animation", "bowling", "cooking")


def _kinetics(root):
    """Trimmed Kinetics clips of three classes, one train and one val video each, and their CSV."""
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i, label in enumerate(KINETICS):
        for split in ("train", "val"):
            make_video(root / "videos" / f"{split}{i}_000000_000001.avi", 6)
            rows.append(f"{label},{split}{i},0,1,{split}")
    (root / "k.csv").write_text("\n".join(rows) + "\n")
    return root / "videos", root / "k.csv"


def _files(folder, manifest_times=True):
    """Each file's bytes and time of change (of a manifest, rewritten by a resumed run: if asked)."""
    return {p.name: (p.stat().st_mtime_ns if manifest_times or not p.name.endswith(".manifest.json") else 0,
                     p.read_bytes()) for p in folder.iterdir()}


def _manifest(folder, split):
    return json.loads((folder / f"{split}.manifest.json").read_text())


def test_a_second_dataset_stops_naming_what_differs_and_replace_removes_every_split(tmp_path):
    """The issue's scenario: Kinetics train + val at one size, then a folder of other classes at
    another size, the same shard count, into the same folder."""
    videos, csv = _kinetics(tmp_path)
    data = tmp_path / "data"
    kinetics = (videos, data, "--kinetics", csv, "--resize", "32", "--num-shards", "1")
    run_module("dali_video.writer", *kinetics)
    (data / "notes.txt").write_text("the user's own file")
    (data / ".notes.txt.swp.tmp").write_text("an editor's")
    before = _files(data)

    others = make_folder_dataset(tmp_path / "classvids", videos_per_class=1, classes=("c0", "c1", "c2"), frames=(6, 6))
    proc = run_module("dali_video.writer", others, data, "--resize", "48", "--num-shards", "1", check=False)
    assert proc.returncode == 1
    assert (f"dali-video-write: error: {data} holds another dataset (splits train, val); this run differs:\n"
            "  train: resize_shorter was 32, now 48\n"
            "  train: class 0 was 'animation', now 'c0' (3 class ids differ)\n"
            "  val: resize_shorter was 32, now 48\n"
            "  val: class 0 was 'animation', now 'c0' (3 class ids differ)\n"
            "if this is a split of the same dataset, pass --classes classes.txt, a file naming its classes one a "
            "line in id order: animation, bowling, cooking; else pass --replace (replace=True) to delete its "
            "shards, indexes and manifests of every split and write this dataset, or write to another folder") \
        in proc.stderr
    assert _files(data) == before  # nothing touched

    # Runs of the same dataset proceed: the same command again keeps every shard, and a split of the
    # same classes and options is added.
    run_module("dali_video.writer", *kinetics)
    assert _files(data, manifest_times=False) == {n: (0 if n.endswith(".manifest.json") else t, b)
                                                  for n, (t, b) in before.items()}
    test = make_folder_dataset(tmp_path / "test", videos_per_class=1, classes=KINETICS, frames=(6, 6))
    run_module("dali_video.writer", test, data, "--split", "test", "--resize", "32", "--num-shards", "1")
    assert _manifest(data, "test")["classes"] == {str(i): c for i, c in enumerate(KINETICS)}

    run_module("dali_video.writer", others, data, "--resize", "48", "--num-shards", "1", "--replace")
    assert sorted(p.name for p in data.iterdir()) == [
        ".notes.txt.swp.tmp", "notes.txt", "train-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord.fidx",
        "train-00000-of-00001.tfrecord.idx", "train.manifest.json"]
    assert _manifest(data, "train")["classes"] == {"0": "c0", "1": "c1", "2": "c2"}
    assert _manifest(data, "train")["options"]["resize_shorter"] == 48


def test_same_split_with_other_inputs_seed_or_shard_count_is_refused(tmp_path):
    videos = make_folder_dataset(tmp_path / "v", videos_per_class=2, frames=(6, 8))
    data = tmp_path / "data"
    run_module("dali_video.writer", videos, data, "--resize", "0", "--num-shards", "2")

    def refused(*args):
        proc = run_module("dali_video.writer", videos, data, "--resize", "0", *args, check=False)
        assert proc.returncode == 1, proc.stdout
        return proc.stderr

    assert "train: num_shards was 2, now 3 (train-00000-of-00002.tfrecord, ...)" in refused("--num-shards", "3")
    assert "train: seed was 0, now 1" in refused("--num-shards", "2", "--seed", "1")
    make_video(videos / "a" / "new.avi", 6)
    assert ("train: 2 of its 2 shards were written from other videos than this run plans "
            "(train-00000-of-00002.tfrecord, ...)") in refused("--num-shards", "2")
    assert "train: quality was 90, now 50" in refused("--num-shards", "2", "--quality", "50")


def test_an_unfinished_run_of_other_options_is_refused_and_beam_plans_alike(tmp_path):
    """Without a manifest (a run killed before its end) the shards' own indexes say what they hold."""
    videos = make_folder_dataset(tmp_path / "v", videos_per_class=2, frames=(6, 8))
    data = tmp_path / "data"
    run_module("dali_video.writer", videos, data, "--resize", "0", "--num-shards", "2")
    (data / "train.manifest.json").unlink()
    proc = run_module("dali_video.writer", videos, data, "--resize", "24", "--num-shards", "2", "--runner", "beam",
                      check=False)
    assert proc.returncode == 1 and "train: resize_shorter was 0, now 24" in proc.stderr
    specs, failures = from_folder(videos, "train")
    with pytest.raises(WriteError, match=r"train: resize_shorter was 0, now 24\n"):
        plan_dataset(specs, data, EncodeOptions(resize_shorter=24), num_shards=2)
    (data / "val.manifest.json").write_text("{")
    with pytest.raises(FormatError, match=r"val\.manifest\.json: not a dali-video manifest \(.*\); pass --replace"):
        plan_dataset(specs, data, EncodeOptions(resize_shorter=0), num_shards=2)
    plan = plan_dataset(specs, data, EncodeOptions(resize_shorter=24), num_shards=2, replace=True)
    assert sorted(p.name for p in data.iterdir()) == []
    assert [s.name for s in plan.shards] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]


def test_a_split_of_some_classes_is_told_to_pass_the_class_file_first(tmp_path):
    """29.7: a val split holding 2 of the 3 classes numbers them otherwise; --replace would delete train."""
    train = make_folder_dataset(tmp_path / "train", videos_per_class=1, classes=("animal", "movie", "outdoor"),
                                frames=(6, 6))
    val = make_folder_dataset(tmp_path / "val", videos_per_class=1, classes=("animal", "outdoor"), frames=(6, 6))
    data = tmp_path / "data"
    run_module("dali_video.writer", train, data, "--resize", "0", "--num-shards", "1")
    proc = run_module("dali_video.writer", val, data, "--split", "val", "--resize", "0", "--num-shards", "1",
                      check=False)
    assert proc.returncode == 1
    assert ("  train: class 1 was 'movie', now 'outdoor'\n"
            "if this is a split of the same dataset, pass --classes classes.txt, a file naming its classes one a "
            "line in id order: animal, movie, outdoor; else pass --replace (replace=True)") in proc.stderr
    (tmp_path / "classes.txt").write_text("animal\nmovie\noutdoor\n")
    run_module("dali_video.writer", val, data, "--split", "val", "--resize", "0", "--num-shards", "1",
               "--classes", tmp_path / "classes.txt")
    assert sorted(p.name for p in data.glob("*.tfrecord")) == ["train-00000-of-00001.tfrecord",
                                                               "val-00000-of-00001.tfrecord"]


def test_the_manifest_holds_classes_in_one_form_and_old_lists_still_read(tmp_path):
    """29.14: classes was a list for folder input and a dict for CSV input (ids with gaps)."""
    videos = make_folder_dataset(tmp_path / "v", videos_per_class=1, classes=("a", "b"), frames=(6, 6))
    (tmp_path / "list.csv").write_text("path,label\na/a_000.avi,3\nb/b_000.avi,7\n")
    run_module("dali_video.writer", videos, tmp_path / "folder", "--resize", "0")
    run_module("dali_video.writer", "--csv", tmp_path / "list.csv", videos, tmp_path / "csv", "--resize", "0")
    assert _manifest(tmp_path / "folder", "train")["classes"] == {"0": "a", "1": "b"}
    assert _manifest(tmp_path / "csv", "train")["classes"] == {"3": "3", "7": "7"}
    manifest = _manifest(tmp_path / "folder", "train")  # as earlier releases wrote it
    (tmp_path / "folder" / "train.manifest.json").write_text(json.dumps({**manifest, "classes": ["a", "b"]}))
    assert fmt.manifest_classes({"classes": ["a", "b"]}) == fmt.manifest_classes(manifest) == {0: "a", 1: "b"}
    proc = run_module("dali_video.writer", videos, tmp_path / "folder", "--resize", "0")
    assert "resuming: 1 of 1 shards already complete" in proc.stderr


def test_the_same_command_after_rebuilding_the_indexes_keeps_every_shard(tmp_path):
    """29.6: docs/formats.md recommends `dali-video-index build` after upgrades; the rebuilt frame index
    must keep the writer's notes, or the writer refuses its own dataset."""
    videos = make_folder_dataset(tmp_path / "v", videos_per_class=2, frames=(6, 8))
    data = tmp_path / "data"
    write = (videos, data, "--resize", "0", "--num-shards", "2", "--workers", "1")
    run_module("dali_video.writer", *write)
    before = _files(data, manifest_times=False)
    notes = [read_frame_index(fmt.fidx_path(s)).notes for s in sorted(data.glob("*.tfrecord"))]
    run_module("dali_video.index_tools", "build", data)
    assert [read_frame_index(fmt.fidx_path(s)).notes for s in sorted(data.glob("*.tfrecord"))] == notes
    proc = run_module("dali_video.writer", *write)
    assert "resuming: 2 of 2 shards already complete" in proc.stderr
    # 29.14: a run that reuses every shard says so, with no rate (it was "27118 frames/s")
    assert proc.stdout.endswith(f"reused all 2 shards, complete from an earlier run (4 videos, "
                                f"{_manifest(data, 'train')['frames']} frames): nothing to write in {data}\n")
    assert "frames/s" not in proc.stdout
    assert {n: b for n, (_, b) in _files(data, manifest_times=False).items()} == \
        {n: b for n, (_, b) in before.items()}


# ---------------------------------------------------------------- only video containers (17.4)

def test_images_and_text_in_a_class_folder_are_skipped_with_reasons_and_printed(tmp_path):
    root = tmp_path / "v"
    make_video(root / "a" / "clip.avi", 6)
    make_video(tmp_path / "x.avi", 7).rename(root / "a" / "renamed.bin")  # a video whatever its name
    cv2.imwrite(str(root / "a" / "thumbnail.png"), np.zeros((48, 64, 3), np.uint8))
    (root / "a" / "poster.mp4").write_bytes(cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes())
    (root / "a" / "notes.txt").write_text("shot on a phone\n")
    proc = run_module("dali_video.writer", root, tmp_path / "out", "--resize", "0")
    reasons = {f["filename"]: f["reason"] for f in _manifest(tmp_path / "out", "train")["failures"]}
    assert reasons == {
        "a/thumbnail.png": "not a video: a PNG image, not a video container (MP4/MOV, Matroska/WebM, AVI, "
                           "MPEG-TS/PS, FLV, ASF/WMV, Ogg, Y4M)",
        "a/poster.mp4": "not a video: a JPEG image, not a video container (MP4/MOV, Matroska/WebM, AVI, "
                        "MPEG-TS/PS, FLV, ASF/WMV, Ogg, Y4M)",
        "a/notes.txt": "not a video: text, not a video container (MP4/MOV, Matroska/WebM, AVI, "
                       "MPEG-TS/PS, FLV, ASF/WMV, Ogg, Y4M)"}
    for name, reason in reasons.items():
        assert f"  skipped {name}: {reason}\n" in proc.stdout
    written = {n for s in (tmp_path / "out").glob("*.tfrecord")
               for n in read_frame_index(fmt.fidx_path(s)).videos["filename"]}
    assert written == {"a/clip.avi", "a/renamed.bin"}


@pytest.mark.parametrize("runner", ["local", "beam"])
def test_a_split_of_which_no_video_is_written_fails_naming_each_and_leaves_no_shard(tmp_path, runner):
    """29.8: a class folder holding only a text file named .mp4 wrote 0 videos, exit 0, an empty shard."""
    root = tmp_path / "v"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.mp4").write_text("hello\n")
    (root / "a" / "y.avi").write_bytes(b"")
    proc = run_module("dali_video.writer", root, tmp_path / "out", "--runner", runner, "--workers", "1", check=False)
    text = ("no video of split train could be written, all 2 were skipped: a/x.mp4: not a video: text, not a "
            "video container (MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, ASF/WMV, Ogg, Y4M); a/y.avi: not a "
            "video: an empty file, not a video container (MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, ASF/WMV, "
            "Ogg, Y4M); no shard or manifest of it is left")
    assert proc.returncode == 1 and "wrote 0 videos" not in proc.stdout
    assert text in proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []
    (root / "a" / "x.mp4").unlink(), (root / "a" / "y.avi").unlink()
    (root / "a" / ".mp4").write_text("hidden\n")
    proc = run_module("dali_video.writer", root, tmp_path / "out", check=False)
    assert proc.returncode == 1 and (f"dali-video-write: error: no video to write from {root} (its class folders "
                                     f"hold no file; files whose names start with '.' are not read)") in proc.stderr


@pytest.mark.parametrize("ext,fourcc,kind", [
    ("avi", "MJPG", "AVI"), ("mp4", "mp4v", "MP4/MOV"), ("mov", "mp4v", "MP4/MOV"), ("3gp", "mp4v", "MP4/MOV"),
    ("mkv", "MJPG", "Matroska/WebM"), ("webm", "VP80", "Matroska/WebM"), ("flv", "FLV1", "FLV"),
    ("wmv", "WMV2", "ASF/WMV"), ("ts", "mp4v", "MPEG-TS"), ("mpg", "PIM1", "MPEG-PS"), ("y4m", "I420", "Y4M")])
def test_containers_written_by_ffmpeg_are_recognised(tmp_path, ext, fourcc, kind):
    path = tmp_path / f"v.{ext}"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (64, 48))
    if not out.isOpened():
        pytest.skip(f"this OpenCV cannot write {ext}")
    for k in range(3):
        out.write(np.full((48, 64, 3), 40 * k, np.uint8))
    out.release()
    from dali_video.writer.containers import container_of
    assert container_of(path.read_bytes()[:512]) == kind


def test_images_sound_and_empty_files_are_no_containers(tmp_path):
    from dali_video.writer.containers import not_a_video
    image = np.zeros((8, 8, 3), np.uint8)
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(bytes(800))
    heads = {cv2.imencode(".webp", image)[1].tobytes(): "a RIFF 'WEBP' file",
             (tmp_path / "a.wav").read_bytes(): "a RIFF 'WAVE' file",
             cv2.imencode(".bmp", image)[1].tobytes(): "a BMP image",
             cv2.imencode(".tiff", image)[1].tobytes(): "a TIFF image",
             b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic": "a HEIF/AVIF image (brand 'heic')",
             bytes(range(40)): "unknown content (starts 00 01 02 03 04 05 06 07)", b"": "an empty file"}
    for head, what in heads.items():
        assert not_a_video(head[:512]) == f"not a video: {what}, not a video container (MP4/MOV, Matroska/WebM, " \
                                          f"AVI, MPEG-TS/PS, FLV, ASF/WMV, Ogg, Y4M)"
