"""The loader as a new user meets it (issue 17, points 2, 6, 7, 9 and 10): split names, class spaces,
the device, steps per epoch, clips longer than videos, and the messages."""
import ctypes
import gzip
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dali_video
from dali_video.index_tools import FormatError, build, verify
from dali_video.index_tools import __main__ as index_cli
from dali_video.index_tools import format as fmt
from dali_video.index_tools.proto import encode_example
from dali_video.loader import dataset as dataset_module
from dali_video.loader import native
from dali_video.loader.gpu import usable_gpus
from dali_video.loader.sampling import SplitError, load_table
from dali_video.tools import train
from dali_video.tools.sample_data import frame_pixels

from .conftest import ROOT

SMALL = dict(clip_len=4, crop_size=16)


def _copy_shard(src: Path, dst: Path) -> Path:
    """A writer's shard and its indexes under another name (as a user might rename or collect them)."""
    for suffix in ("", fmt.IDX_SUFFIX, fmt.FIDX_SUFFIX):
        shutil.copy(str(src) + suffix, str(dst) + suffix)
    return dst


def _user_shard(path: Path, classes, bad_frame: int | None = None) -> Path:
    """A shard a user's own script wrote (video ``v<i>`` per (label, class text); in video 1, frame
    ``bad_frame`` is no JPEG at all), indexed by dali-video-index."""
    with open(path, "wb") as f:
        for i, (label, text) in enumerate(classes):
            jpegs = [cv2.imencode(".jpg", frame_pixels(k, 48, 64))[1].tobytes() for k in range(8)]
            if i == 1 and bad_frame is not None:
                jpegs[bad_frame] = b"\xff\xd8" + bytes(range(7, 250)) + b"\xff\xd9"
            data, _ = encode_example({"frames": jpegs, "class_label": [label], "class_text": [text.encode()],
                                      "filename": [f"v{i}".encode()]})
            f.write(fmt.encode_record(data))
    build(path)
    return path


# ---------------------------------------------------------------- 17.2 split names and class spaces

@pytest.mark.parametrize("name, split", [
    ("train.tfrecord", "train"), ("train-3.tfrecord", "train"), ("train_003.tfrecord", "train"),
    ("kinetics-train-00001.tfrecord", "train"), ("train-00000-of-00008.tfrecord", "train"),
    ("my-val-00002-of-00004.tfrecord", "my-val"), ("validation.tfrecord", "validation"),
    ("k400_test_0.tfrecord", "test"), ("videos.tfrecord", None), ("trains.tfrecord", None)])
def test_split_is_read_from_common_shard_names(name, split):
    assert fmt.split_of(name) == split


def test_a_folder_of_user_named_splits_is_refused_whole_and_read_by_split(dataset, tmp_path, caplog):
    shards = sorted(Path(dataset).glob("*.tfrecord"))
    _copy_shard(shards[0], tmp_path / "train.tfrecord")
    _copy_shard(shards[1], tmp_path / "val.tfrecord")
    with pytest.raises(SplitError, match=r"holds the splits \['train', 'val'\]: pass split=\.\.\. to pick one"):
        load_table(tmp_path)
    with caplog.at_level(logging.INFO, logger="dali_video"):
        table = load_table(tmp_path, "train")
    assert len(table) == len(load_table(shards[0]))
    assert f"{tmp_path}: reading 1 file of split 'train': train.tfrecord" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"no shards of split 'test' in .* \(it holds \['train', 'val'\]\)"):
        load_table(tmp_path, "test")
    assert len(load_table(f"{tmp_path}/*.tfrecord", "val")) == len(load_table(shards[1]))  # globs too


def test_files_of_different_class_spaces_are_refused_unless_asked(dataset, tmp_path):
    for shard in Path(dataset).glob("*.tfrecord"):  # the writer's: label 0 is class "a", 1 is "b"
        _copy_shard(shard, tmp_path / shard.name)
    _user_shard(tmp_path / "train-extra.tfrecord", [(0, "animation"), (1, "b")])
    with pytest.raises(ValueError, match=r"label 0 is class 'a' in \S+train-00000-of-00003\.tfrecord but "
                                         r"'animation' in \S+train-extra\.tfrecord: the files hold different class "
                                         r"spaces; .* or pass mixed_classes=True"):
        load_table(tmp_path)
    assert len(load_table(tmp_path, mixed_classes=True)) == len(load_table(dataset)) + 2
    (tmp_path / "train-extra.tfrecord").unlink()
    _user_shard(tmp_path / "train-extra.tfrecord", [(2, "a")])  # a class under another label
    with pytest.raises(ValueError, match=r"class 'a' is label 0 in \S+train-00000-of-00003\.tfrecord but label 2 "
                                         r"in \S+train-extra\.tfrecord"):
        dali_video.steps_per_epoch(tmp_path, batch_size=2, **SMALL)


# ---------------------------------------------------------------- 17.6 the device

@pytest.mark.skipif(usable_gpus()[0] > 0, reason="a GPU is usable here")
def test_without_a_gpu_auto_reads_on_the_cpu_and_gpu_says_why_not(dataset, caplog):
    with pytest.raises(ValueError, match=r"device='gpu' but this host has no usable GPU \(.+\); pass device='cpu'"):
        dali_video.clip_dataset(dataset, batch_size=2, device="gpu", **SMALL)
    dataset_module._say_cpu.cache_clear()  # once per process: another test may have said it
    with caplog.at_level(logging.WARNING, logger="dali_video"):
        clips, labels = next(iter(dali_video.clip_dataset(dataset, batch_size=2, seed=0, **SMALL)))
    assert clips.shape == (2, 4, 16, 16, 3) and "/device:CPU:0" in clips.device
    assert caplog.text.count("device='auto': no usable GPU") == 1


# ---------------------------------------------------------------- 17.7 steps per epoch

def test_the_dataset_answers_its_steps_per_epoch(dataset):
    ds = dali_video.clip_dataset(dataset, batch_size=4, device="cpu", recipe="mvit", clip_len=4, crop_size=16)
    videos = len(load_table(dataset))
    assert dali_video.steps_per_epoch(ds) == math.ceil(videos * 2 / 4)  # mvit: 2 clips per video
    assert dali_video.steps_per_epoch(ds) == dali_video.steps_per_epoch(dataset, batch_size=4, recipe="mvit",
                                                                         clip_len=4, crop_size=16)
    with pytest.raises(TypeError, match=r"steps_per_epoch\(dataset\) takes no other arguments"):
        dali_video.steps_per_epoch(ds, batch_size=4)
    with pytest.raises(TypeError, match="not made by dali_video.clip_dataset, or was transformed after"):
        dali_video.steps_per_epoch(ds.prefetch(1))


# ---------------------------------------------------------------- 17.9 clips longer than videos

def test_videos_shorter_than_a_clip_are_counted_once_and_skip_leaving_none_says_so(dataset, caplog):
    frames = load_table(dataset).num_frames
    with caplog.at_level(logging.WARNING, logger="dali_video"):
        dali_video.steps_per_epoch(dataset, batch_size=2, clip_len=15, stride=2, crop_size=16)
    short = int((frames < 29).sum())
    assert 0 < short < len(frames)
    assert caplog.text.count(f"{short} of {len(frames)} videos are shorter than the clip span (29 frames: clip_len "
                             f"15, stride 2); short_videos='repeat_last': their clips repeat the last frame") == 1
    longest = int(frames.max())
    with pytest.raises(ValueError, match=rf"every video is shorter than the clip span \({longest + 1} frames: "
                                         rf"clip_len {longest + 1}, stride 1\): the nearest to fit, '\S+', has "
                                         rf"{longest} frames of the {longest + 1} its clips read; pass a smaller "
                                         rf"clip_len or stride, or short_videos="):
        dali_video.steps_per_epoch(dataset, batch_size=2, clip_len=longest + 1, crop_size=16, short_videos="skip")


# ---------------------------------------------------------------- 17.10 messages

def test_a_mistyped_path_says_it_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dat_k/: no such file or folder"):
        load_table(f"{tmp_path}/dat_k/")


def test_verify_rejects_a_frame_that_is_not_a_jpeg(tmp_path, capsys):
    shard = _user_shard(tmp_path / "c.tfrecord", [(0, "a"), (1, "b"), (2, "c")], bad_frame=4)
    want = r"c\.tfrecord: video 'v1' frame 4 at byte \d+: is not a valid JPEG \(JPEG marker expected at byte 2\)"
    with pytest.raises(FormatError, match=want):
        verify(shard)
    assert index_cli.main(["verify", str(shard)]) == 1
    assert "dali-video-index verify: error: " in capsys.readouterr().err


_check_c = ctypes.CDLL(str(native.load())).dali_video_jpeg_problem
_check_c.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int64, ctypes.c_char_p,
                     ctypes.c_size_t]
_JPEG = cv2.imencode(".jpg", frame_pixels(3, 24, 32))[1].tobytes()


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, len(_JPEG)), flips=st.lists(st.tuples(st.integers(0, len(_JPEG) - 1),
                                                                 st.integers(0, 255)), max_size=3),
       size=st.sampled_from([(0, 0), (24, 32), (32, 24)]), tail=st.booleans())
def test_verify_checks_jpegs_as_the_loader_does(cut, flips, size, tail):
    data = bytearray(_JPEG[:cut])
    for at, value in flips:
        if at < len(data):
            data[at] = value
    data = bytes(data) + (b"\xff\xd9" if tail else b"")
    out = ctypes.create_string_buffer(512)
    _check_c(data, len(data), *size, out, len(out))
    assert fmt.jpeg_problem(data, *size) == out.value.decode()


def test_a_corrupt_frame_reaches_the_user_as_its_message_alone(tmp_path, capfd):
    shard = _user_shard(tmp_path / "c.tfrecord", [(0, "a"), (1, "b"), (2, "c")], bad_frame=4)
    want = r"\S+c\.tfrecord: video 'v1' frame 4 at byte \d+: is not a valid JPEG \(JPEG marker expected at byte 2\)"
    ds = dali_video.clip_dataset([shard], batch_size=3, clip_len=8, crop_size=16, training=False, device="cpu")
    with pytest.raises(dali_video.ReaderError) as error:
        with dali_video.reader_errors():
            next(iter(ds))
    assert re.fullmatch(want, str(error.value))
    capfd.readouterr()
    assert train.main(["--data", str(tmp_path), "--cpu", "--epochs", "1", "--batch-size", "3", "--clip-len", "8",
                       "--crop-size", "16"]) == 1
    err = capfd.readouterr().err  # DALI's TF plugin also prints its whole error, to stdout (dali_dataset_op.cc)
    assert re.search(f"^dali-video-train: error: {want}$", err, re.M) and "Traceback" not in err


def test_the_cli_says_split_and_that_a_path_does_not_exist(dataset, tmp_path, capsys):
    shards = sorted(Path(dataset).glob("*.tfrecord"))
    _copy_shard(shards[0], tmp_path / "train.tfrecord")
    _copy_shard(shards[1], tmp_path / "val.tfrecord")
    assert train.main(["--data", str(tmp_path), "--cpu"]) == 1
    assert f"dali-video-train: error: {tmp_path} holds the splits ['train', 'val']: pass --split to pick one" \
        in capsys.readouterr().err
    assert train.main(["--data", "dat_k/", "--cpu"]) == 1
    assert "dali-video-train: error: dat_k/: no such file or folder" in capsys.readouterr().err


@pytest.mark.skipif(usable_gpus()[0] > 0, reason="a GPU is usable here")
def test_train_doctor_and_bench_print_no_cuinit_line_without_a_gpu():
    """TensorFlow's "failed call to cuInit" on every start says only that this host has no GPU."""
    env = {k: v for k, v in {**os.environ, "PYTHONPATH": ROOT}.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)

    trained = run("-m", "dali_video.train_input", "--data", "dat_k/", "--cpu")
    doctor = run("-m", "dali_video.tools.doctor", "--seconds", "0.2")
    bench = run("-c", "import os, dali_video.tools.bench.bench; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    assert "cuInit" not in trained.stderr + doctor.stderr
    # 29.13: nor the lines TensorFlow's libraries log while they load, each twice
    assert not re.search("cudart_stub|oneDNN|absl::InitializeLog", trained.stderr + doctor.stderr)
    assert "dat_k/: no such file or folder" in trained.stderr and doctor.returncode == 0
    assert bench.stdout == "3\n"  # the bench's level before it starts TensorFlow: train's, that hides the line


# ---------------------------------------------------------------- issue 29: round two

def test_the_loader_says_a_shard_is_compressed_rather_than_unindexed(dataset, tmp_path, capsys):
    """29.5: TensorFlow writes GZIP TFRecords without a .gz suffix; building their index fails too."""
    shard = sorted(Path(dataset).glob("*.tfrecord"))[0]
    (tmp_path / "train.tfrecord").write_bytes(gzip.compress(shard.read_bytes()))
    want = r"train\.tfrecord: the file is GZIP-compressed; .* Decompress it \(gunzip -c train\.tfrecord > "
    with pytest.raises(FormatError, match=want):
        load_table(tmp_path)
    assert train.main(["--data", str(tmp_path), "--cpu"]) == 1
    assert re.search("dali-video-train: error: .*" + want, capsys.readouterr().err)


def test_the_cli_holds_tensorflows_loading_lines_to_its_log_level_a_users_level_kept():
    """29.13: "oneDNN custom operations are on" (on every host) and, without a GPU, "cudart_stub.cc: Could
    not find cuda drivers", twice each, were printed whatever TF_CPP_MIN_LOG_LEVEL said."""
    env = {k: v for k, v in {**os.environ, "PYTHONPATH": ROOT}.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def train(**more):
        return subprocess.run([sys.executable, "-m", "dali_video.train_input", "--data", "dat_k/", "--cpu"], cwd=ROOT,
                              capture_output=True, text=True, env={**env, **more}, timeout=300).stderr

    quiet = train()
    assert "dali-video-train: error: dat_k/: no such file or folder\n" in quiet
    assert not re.search("oneDNN|absl::InitializeLog|cudart_stub", quiet), quiet
    shown = train(TF_CPP_MIN_LOG_LEVEL="0")  # the user's level: every line, as TensorFlow logs them
    assert len(re.findall(r"^I\d{4} .*port\.cc:\d+\] oneDNN custom operations are on", shown, re.M)) == 2
