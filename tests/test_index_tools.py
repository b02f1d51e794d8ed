"""index_tools: framing, protobuf walk, .idx vs DALI's tool, frame index, verify, other layouts."""
import ast
import gzip
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from dali_video.tools.sample_data import frame_number, frame_pixels
from dali_video.index_tools import FormatError, build, inspect, read_frame_index, verify
from dali_video.index_tools import __main__ as index_cli
from dali_video.index_tools import format as fmt
from dali_video.index_tools.proto import encode_example, walk

from .conftest import ROOT, run_module


def test_encoded_example_parses_in_tensorflow_and_spans_point_at_values():
    frames = [b"\xff\xd8one", b"\xff\xd8" + b"x" * 300]
    data, spans = encode_example({"frames": frames, "class_label": [-7], "filename": [b"v.mp4"]}, track="frames")
    assert [data[o:o + n] for o, n in spans] == frames
    parsed = tf.io.parse_single_example(data, {"frames": tf.io.VarLenFeature(tf.string),
                                               "class_label": tf.io.FixedLenFeature([], tf.int64)})
    assert tf.sparse.to_dense(parsed["frames"]).numpy().tolist() == frames
    assert parsed["class_label"].numpy() == -7


def test_walk_reads_tensorflow_serialised_messages():
    ex = tf.train.Example(features=tf.train.Features(feature={
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[3, -1])),
        "f": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
        "frames": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"ab", b"cde"]))}))
    data = ex.SerializeToString()
    features, lists = walk(data)
    assert features["label"] == ("int64", [3, -1]) and features["f"] == ("float", [0.5]) and lists == {}
    assert [data[o:o + n] for o, n in features["frames"][1]] == [b"ab", b"cde"]
    seq = tf.train.SequenceExample()
    seq.context.feature["clip/label/index"].int64_list.value.append(9)
    for v in (b"p", b"qq"):
        seq.feature_lists.feature_list["image/encoded"].feature.add().bytes_list.value.append(v)
    data = seq.SerializeToString()
    features, lists = walk(data)
    assert features["clip/label/index"] == ("int64", [9])
    assert [data[f[1][0][0]:f[1][0][0] + f[1][0][1]] for f in lists["image/encoded"]] == [b"p", b"qq"]


def test_idx_is_byte_identical_to_dalis_tfrecord2idx(dataset, tmp_path):
    tool = shutil.which("tfrecord2idx") or str(Path(sys.executable).parent / "tfrecord2idx")
    shards = sorted(dataset.glob("*.tfrecord"))
    assert len(shards) == 3
    for shard in shards:
        subprocess.run([tool, str(shard), str(tmp_path / "dali.idx")], check=True, capture_output=True)
        assert (tmp_path / "dali.idx").read_bytes() == fmt.idx_path(shard).read_bytes()


def test_written_dataset_verifies_and_rebuild_gives_same_indexes(dataset_copy):
    for shard in sorted(Path(dataset_copy).glob("*.tfrecord")):
        assert verify(shard) >= 1
        before = fmt.idx_path(shard).read_bytes(), fmt.fidx_path(shard).read_bytes()
        index = build(shard)
        assert fmt.idx_path(shard).read_bytes() == before[0]
        rebuilt = read_frame_index(fmt.fidx_path(shard))
        assert rebuilt.videos == read_frame_index_from_bytes(before[1], shard).videos
        assert len(index.records) == rebuilt.num_records


def read_frame_index_from_bytes(data, shard):
    path = Path(str(shard) + ".orig.fidx")
    path.write_bytes(data)
    return read_frame_index(path)


def _jpeg(k, h=24, w=32):
    return cv2.imencode(".jpg", frame_pixels(k, h, w))[1].tobytes()


def _write_tf_layout(path, layout, videos=3, frames=12):
    with tf.io.TFRecordWriter(str(path)) as w:
        for v in range(videos):
            jpegs = [_jpeg(k) for k in range(frames + v)]
            if layout == "sequence_example":
                ex = tf.train.SequenceExample()
                ex.context.feature["clip/label/index"].int64_list.value.append(v)
                for j in jpegs:
                    ex.feature_lists.feature_list["image/encoded"].feature.add().bytes_list.value.append(j)
            else:
                feats = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))}
                if layout == "example":
                    feats["frames"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=jpegs))
                else:
                    for k, j in enumerate(jpegs):
                        feats[f"frames/{k:04d}"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[j]))
                ex = tf.train.Example(features=tf.train.Features(feature=feats))
            w.write(ex.SerializeToString())
    return path


@pytest.mark.parametrize("layout", ["example", "frame_features", "sequence_example"])
def test_build_indexes_tensorflow_written_layouts(tmp_path, layout):
    shard = _write_tf_layout(tmp_path / "tf.tfrecord", layout)
    run_module("dali_video.index_tools", "build", shard)
    assert verify(shard) == 3
    index = read_frame_index(fmt.fidx_path(shard))
    assert index.layout == layout
    assert index.videos["label"] == [0, 1, 2] and index.videos["num_frames"] == [12, 13, 14]
    assert index.videos["height"] == [24, 24, 24] and index.videos["width"] == [32, 32, 32]
    rows = index.read_rows(0, index.num_frame_rows)
    data = shard.read_bytes()
    decoded = [frame_number(cv2.imdecode(np.frombuffer(data[r["offset"]:r["offset"] + r["length"]], np.uint8),
                                         cv2.IMREAD_COLOR_RGB)) for r in rows]
    assert decoded == list(range(12)) + list(range(13)) + list(range(14))


def _flip(path, offset):
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0x40
    Path(path).write_bytes(bytes(data))


def test_verify_names_file_record_and_offset_of_damage(dataset_copy):
    shard = sorted(Path(dataset_copy).glob("*.tfrecord"))[0]
    index = read_frame_index(fmt.fidx_path(shard))
    second = index.videos["record_offset"][1]
    pristine = shard.read_bytes()
    cases = {
        second + 3: r"record 1 at byte %d: length field fails its CRC" % second,  # length field
        second + 9: r"record 1 at byte %d: length field fails its CRC" % second,  # its CRC
        second + 500: r"record 1 at byte %d: data fails its CRC" % second,  # payload
    }
    for offset, message in cases.items():
        shard.write_bytes(pristine)
        _flip(shard, offset)
        with pytest.raises(FormatError, match=message):
            verify(shard)
    shard.write_bytes(pristine[:-10])
    with pytest.raises(FormatError, match="stale frame index"):
        verify(shard)
    shard.write_bytes(pristine)
    fmt.idx_path(shard).write_text("0 12\ngarbage line\n")
    with pytest.raises(FormatError, match="line 2 is not '<offset> <size>'"):
        verify(shard)


def test_verify_reports_gzip_and_missing_index(tmp_path, dataset):
    shard = sorted(Path(dataset).glob("*.tfrecord"))[0]
    gz = tmp_path / "g.tfrecord"
    gz.write_bytes(gzip.compress(shard.read_bytes()))
    proc = run_module("dali_video.index_tools", "build", gz, check=False)
    assert proc.returncode == 1 and "GZIP-compressed" in proc.stderr and str(gz) in proc.stderr
    plain = tmp_path / "p.tfrecord"
    shutil.copy(shard, plain)
    proc = run_module("dali_video.index_tools", "verify", plain, check=False)
    assert proc.returncode == 1 and "missing; build it with: dali-video-index build" in proc.stderr


@pytest.mark.parametrize("name", ["train.tfrecord", "train.tfrecord.gz", "train.gz"])
def test_the_gzip_hint_decompresses_without_destroying_the_shard(tmp_path, dataset, name):
    """Issue 29.5: the hint was `gunzip -c train.tfrecord > train.tfrecord`, which empties the file first."""
    shard = sorted(Path(dataset).glob("*.tfrecord"))[0]
    gz = tmp_path / name
    gz.write_bytes(gzip.compress(shard.read_bytes()))
    with pytest.raises(FormatError, match=r"GZIP-compressed.*Decompress it \((gunzip -c .*)\) and index that") as e:
        build(gz)
    command = re.search(r"Decompress it \((gunzip -c .*)\) and index that", str(e.value))[1]
    subprocess.run(command, shell=True, cwd=tmp_path, check=True)
    plain = tmp_path / "train.tfrecord"
    assert plain.read_bytes() == shard.read_bytes()
    assert len(build(plain).records) == len(build(shard).records)


def test_inspect_refuses_a_stale_index_as_verify_does(dataset, tmp_path, capsys):
    """Issue 29.3: a shard replaced by another next to the index built for the first."""
    first, second = sorted(Path(dataset).glob("*.tfrecord"))[:2]
    shard = tmp_path / "train.tfrecord"
    for suffix in ("", fmt.IDX_SUFFIX, fmt.FIDX_SUFFIX):
        shutil.copy(str(first) + suffix, str(shard) + suffix)
    shutil.copy(second, shard)
    assert second.stat().st_size != first.stat().st_size
    stale = (rf"train\.tfrecord\.fidx: stale frame index: the shard is {second.stat().st_size} bytes, "
             rf"the index was built")
    for check in (verify, lambda s: inspect([s])):
        with pytest.raises(FormatError, match=stale):
            check(shard)
    assert index_cli.main(["inspect", str(tmp_path)]) == 1
    assert re.search(f"dali-video-index inspect: error: .*{stale}", capsys.readouterr().err)


def test_build_rejects_records_without_frames(tmp_path):
    path = tmp_path / "nf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(tf.train.Example(features=tf.train.Features(feature={
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))})).SerializeToString())
    with pytest.raises(FormatError, match="no record holds video frames"):
        build(path)
    path.write_bytes(fmt.encode_record(b"\x08\x01garbage that is not a protobuf"))
    with pytest.raises(FormatError, match="record 0 at byte 0"):
        build(path)


def test_inspect_table(dataset):
    text = inspect([dataset])
    assert "TOTAL" in text and "48x64 (10)" in text
    assert "label histogram" in text and " a " in text and " b " in text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_walk_raises_only_format_errors(data):
    try:
        walk(data)
    except FormatError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 63))
def test_record_scan_and_frame_index_raise_only_format_errors(tmp_path_factory, data, cut):
    path = tmp_path_factory.mktemp("fuzz") / "f.tfrecord"
    path.write_bytes(fmt.encode_record(b"hello") + data)
    try:
        list(fmt.scan_records(path))
    except FormatError:
        pass
    fidx = fmt.encode_frame_index(shard_size=1, num_records=1, layout="example", frames_key="frames",
                                  videos={c: [0] for c in fmt.VIDEO_COLUMNS}, rows=np.empty(0, fmt.FRAME_ROW))
    mutated = bytearray(fidx[:cut] + data + fidx[cut + len(data):])
    path.write_bytes(bytes(mutated))
    try:
        read_frame_index(path)
    except FormatError:
        pass


def test_huge_length_field_is_rejected_without_allocating(tmp_path):
    import struct
    head = struct.pack("<Q", 1 << 63)
    path = tmp_path / "huge.tfrecord"
    path.write_bytes(head + struct.pack("<I", fmt.masked_crc(head)) + b"x" * 20)
    with pytest.raises(FormatError, match="runs past the end of the file"):
        list(fmt.scan_records(path))


# Where the installed packages' sources live: dali_video.writer and dali_video.index_tools are the
# repository's top-level writer/ and index_tools/ (pyproject.toml's package-dir).
PACKAGE_DIRS = {("dali_video", "writer"): Path(ROOT, "writer"), ("dali_video", "index_tools"): Path(ROOT, "index_tools"),
                ("dali_video",): Path(ROOT, "dali_video")}


def _imports(path):
    """What the modules at ``path`` (a part of dali_video: ``loader``, ``writer``, ``index_tools``,
    ``tools``, or a module below one) import: those parts and other top-level packages, relative
    imports resolved."""
    root = ("dali_video", Path(path).parts[0])
    root = root if root in PACKAGE_DIRS else ("dali_video",)
    target = Path(PACKAGE_DIRS[root], *Path(path).parts[len(root) - 1:])
    found = set()
    for module in [target] if target.suffix == ".py" else target.rglob("*.py"):
        package = root + module.parent.relative_to(PACKAGE_DIRS[root]).parts  # ("dali_video", "loader", ...)
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
                names = [f"{base}.{node.module}" if node.module and base else node.module or
                         f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for parts in (n.split(".") for n in names):
                found.add(parts[1] if parts[0] == "dali_video" and len(parts) > 1 else parts[0])
    return found


def test_layering():
    """index_tools owns the format and imports no other part; the writer and the loader (the library)
    use it and never each other; the tools use them all; nothing imports the tools."""
    assert not _imports("index_tools") & {"writer", "loader", "tools", "nvidia", "tensorflow"}
    assert not _imports("writer") & {"loader", "tools", "nvidia"}
    assert not _imports("loader") & {"writer", "tools"}
    assert _imports("__init__.py") - {"__future__", "importlib"} == {"loader"}
    library = Path(ROOT, "dali_video", "loader")
    dali_users = {str(p.relative_to(library)) for p in library.rglob("*.py")
                  if "nvidia" in _imports(p.relative_to(library.parent))}
    assert dali_users == {"pipeline.py", "dataset.py", "native/__init__.py"}  # and only dataset.py for the TF plugin
    # setup.py runs the native build from its file, before the package's dependencies are there.
    assert _imports("loader/native/__init__.py") <= set(sys.stdlib_module_names) | {"nvidia"}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), st.one_of(
    st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), min_size=1, max_size=5)), min_size=1, max_size=5))
def test_encode_then_walk_round_trips_and_tensorflow_agrees(features):
    data, _ = encode_example(features)
    walked, _ = walk(data)
    ex = tf.train.Example.FromString(data)
    for key, values in features.items():
        kind, got = walked[key]
        if isinstance(values[0], bytes):
            assert kind == "bytes" and [data[o:o + n] for o, n in got] == values
            assert list(ex.features.feature[key].bytes_list.value) == values
        else:
            assert kind == "int64" and got == values
            assert list(ex.features.feature[key].int64_list.value) == values


@pytest.mark.parametrize("rate", [b"NaN ", b"-1.0", b"1e99", b'"25"'])
def test_a_frame_rate_out_of_range_is_a_corrupt_index_naming_the_file(dataset_copy, rate):
    fidx = sorted(Path(dataset_copy).glob("*.fidx"))[0]
    data = fidx.read_bytes()
    at = data.index(b'"fps": [') + len(b'"fps": [')
    fidx.write_bytes(data[:at] + rate + data[at + 4:])  # the same length: offsets stay right
    with pytest.raises(FormatError, match=rf"{fidx}: video .* has frame rate .*, not in \[0, 1e6\]: corrupt index"):
        read_frame_index(fidx)


def test_an_idx_reads_alike_at_once_and_line_by_line_and_a_number_beyond_int64_is_a_bad_line(tmp_path):
    path = tmp_path / "x.idx"
    for text in (b"0 10\n10 25\n", b"0\t10\r\n10  25"):  # as tfrecord2idx writes it (at once); other spacing
        path.write_bytes(text)
        assert fmt.read_idx_array(path).tolist() == [[0, 10], [10, 25]] and fmt.read_idx(path) == [(0, 10), (10, 25)]
    path.write_bytes(b"")
    assert fmt.read_idx_array(path).shape == (0, 2) and fmt.read_idx(path) == []
    path.write_bytes(b"0 10\n10 " + b"9" * 19 + b"\n")
    with pytest.raises(FormatError, match=r"x\.idx: line 2 is not '<offset> <size>': b'10 9999"):
        fmt.read_idx_array(path)
