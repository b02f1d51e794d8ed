"""One frame table and one video table per process, and a damaged frame index that never reads (or
allocates) more than its video holds (issue 25)."""
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import dali_video
from dali_video.index_tools import format as fmt
from dali_video.index_tools import read_frame_index
from dali_video.loader import sampling
from dali_video.tools.bench.scale import _write_shard, make_dataset, tiny_jpeg

# Readers of one global batch in one process, each reading 20 batches (every shard): the RSS each adds,
# and how often each .fidx is mapped.
READERS = """
import json, sys
import dali_video
from dali_video.tools.bench.measure import rss_mb
data, readers = sys.argv[1], int(sys.argv[2])
added, kept = [], []
for k in range(readers):
    before = rss_mb()
    p = dali_video.clip_pipeline(data, batch_size=8, clip_len=4, crop_size=16, device="cpu", output="jpegs", seed=0,
                                 shard_id=k, num_shards=readers)
    for _ in range(20):
        p.pipeline.run()
    kept.append(p)
    added.append(rss_mb() - before)
maps = [line.split()[-1] for line in open("/proc/self/maps") if line.rstrip().endswith(".fidx")]
print(json.dumps({"added_mb": added, "fidx_maps": maps}))
"""


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """6000 videos of 128 frames in 4 shards (135 MB): 12 MB of frame rows, which each reader used to copy."""
    return make_dataset(tmp_path_factory.mktemp("wide"), videos=6000, frames=128, shards=4, workers=1)


def test_readers_in_a_process_share_one_frame_table_and_video_table(wide):
    proc = subprocess.run([sys.executable, "-c", READERS, str(wide), "3"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.splitlines()[-1])
    # Each .fidx mapped once (its pages shared with every process on the host), not copied per reader.
    assert sorted(Path(m).name for m in r["fidx_maps"]) == sorted(p.name for p in wide.glob("*.fidx")), r
    # A further reader adds no table: well under the 12 MB of rows (and the video table) it used to copy.
    assert max(r["added_mb"][1:]) < 5, r


def test_the_video_table_is_read_once_per_process_while_in_use(dataset_copy, monkeypatch):
    reads = []
    read = sampling.read_frame_index
    monkeypatch.setattr(sampling, "read_frame_index", lambda path: reads.append(path) or read(path))
    table = sampling.load_table(dataset_copy)
    first = len(reads)
    assert first == len(list(Path(dataset_copy).glob("*.fidx")))
    assert sampling.load_table(dataset_copy) is table and len(reads) == first  # no index read again
    with dali_video.clip_pipeline(dataset_copy, batch_size=2, clip_len=4, crop_size=16, device="cpu",
                                  output="jpegs", seed=0) as a, \
            dali_video.clip_pipeline(dataset_copy, batch_size=2, clip_len=4, crop_size=16, device="cpu",
                                     output="jpegs", seed=0, shard_id=1, num_shards=2) as b:
        assert a.table is table and b.table is table and len(reads) == first
        assert a.pipeline._dali_video_table.key == b.pipeline._dali_video_table.key  # one native table
        a.pipeline.run(), b.pipeline.run()
    fidx = sorted(Path(dataset_copy).glob("*.fidx"))[0]
    os.utime(fidx, ns=(1, 1))  # a rewritten index (its modification time changed): read again
    assert sampling.load_table(dataset_copy) is not table and len(reads) == 2 * first


def test_the_video_tables_columns_are_the_headers_read_at_once(dataset):
    shards = sampling.shard_files(dataset)
    headers = [read_frame_index(fmt.fidx_path(s)) for s in shards]
    table = sampling.load_table(dataset)
    assert table.frame_start.tolist() == np.concatenate([ix.frame_starts() for ix in headers]).tolist()
    assert table.filename.tolist() == [n for ix in headers for n in ix.videos["filename"]]


def test_headers_read_one_after_another_or_16_at_a_time_alike(dataset, monkeypatch):
    found, pools = sampling.shard_files(dataset), []
    monkeypatch.setattr(sampling, "ThreadPoolExecutor", lambda n: pools.append(n) or ThreadPoolExecutor(n))
    monkeypatch.setattr(sampling, "_WARM_READ", 1e9)  # every shard as from the page cache: one after another
    serial = sampling._shard_indexes(found)
    assert pools == [] and [ix.path for ix, _ in serial] == [fmt.fidx_path(s) for s in found]
    monkeypatch.setattr(sampling, "_WARM_READ", 0.0)  # the first shards slow (a cold cache): the rest 16 at a time
    assert sampling._shard_indexes(found) == serial and pools == [16]


def test_an_idx_is_checked_against_the_frame_index_where_it_says():
    index = SimpleNamespace(num_records=3, videos={"record": [0, 2], "record_offset": [0, 70]})
    records = np.array([[0, 30], [30, 40], [70, 10]])
    assert sampling._records_match(records, index)
    assert not sampling._records_match(records[:2], index)  # a record short
    assert not sampling._records_match(records + [[0, 0], [0, 0], [1, 0]], index)  # moved
    index.videos["record"] = [0, 3]  # past the .idx's records
    assert not sampling._records_match(records, index)
    assert sampling._records_match(records[:0], SimpleNamespace(num_records=0, videos={"record": [], "record_offset": []}))


def test_the_readers_names_are_one_line_each():
    from dali_video.loader.dataset import _name_lines

    assert _name_lines(["a.mp4", "b\nc.mp4", "é.mp4"]) == "a.mp4\nb\\nc.mp4\né.mp4".encode()
    assert _name_lines(["a.mp4", 7]) == b"a.mp4\n7"
    assert _name_lines(["\n"]) == b"\\n"
    assert _name_lines([]) == b""


def test_a_mixtures_readers_share_one_table(dataset):
    mixture = dali_video.Mixture([(dataset, dali_video.ClipConfig(clip_len=4, crop_size=16), 2),
                                  (dataset, dali_video.ClipConfig(clip_len=4, crop_size=16, stride=2), 1)])
    kw = dict(batch_size=2, device="cpu", output="jpegs", seed=0, num_shards=2)
    with dali_video.clip_pipeline(mixture, shard_id=0, **kw) as a, \
            dali_video.clip_pipeline(mixture, shard_id=1, **kw) as b:
        assert a.table is b.table and len(a.table) == 2 * len(sampling.load_table(dataset))
        assert a.pipeline._dali_video_table.key == b.pipeline._dali_video_table.key
        a.pipeline.run(), b.pipeline.run()


def _damage(shard: Path, video: int, frame: int, *, keep_crc: bool) -> tuple[int, int]:
    """Flip the highest bit of frame ``frame``'s offset (of ``video``) that keeps it inside the shard;
    ``keep_crc``: the frame table's CRC left as it was (else rewritten to match, as a buggy indexer would).
    Returns the video's record (offset, length)."""
    path = fmt.fidx_path(shard)
    index = read_frame_index(path)
    rows = index.read_rows(0, index.num_frame_rows).copy()
    row = index.frame_starts()[video] + frame
    size = shard.stat().st_size
    offset, length = int(rows[row]["offset"]), int(rows[row]["length"])
    bit = max(b for b in range(63) if not offset >> b & 1 and (offset | 1 << b) + length <= size)
    rows[row]["offset"] = offset | 1 << bit
    if keep_crc:
        with open(path, "r+b") as f:
            f.seek(index.frame_table_offset + row * fmt.FRAME_ROW.itemsize)
            f.write(rows[row:row + 1].tobytes())
    else:
        path.write_bytes(fmt.encode_frame_index(
            shard_size=index.shard_size, num_records=index.num_records, layout=index.layout,
            frames_key=index.frames_key, videos=index.videos, rows=rows, notes=index.notes))
    return index.videos["record_offset"][video], index.videos["record_length"][video]


def _first_clip(files) -> tuple[int, list]:
    """The first clip's video and frame numbers (evaluation, clip_len 4)."""
    with dali_video.clip_pipeline(files, batch_size=1, clip_len=4, crop_size=16, device="cpu", training=False,
                                  output="jpegs", seed=0) as p:
        meta = p.pipeline.run()[1].as_array()
    column = dali_video.META_COLUMNS.index
    return int(meta[0, column("video")]), [int(f) for f in meta[:, column("frame")]]


@pytest.mark.parametrize("keep_crc", [True, False])
def test_a_damaged_local_frame_table_names_its_shard(dataset_copy, keep_crc):
    video, frames = _first_clip(dataset_copy)
    table = sampling.load_table(dataset_copy)
    shard = Path(fmt.shard_of(table.shards[table.shard[video]].path))
    _damage(shard, int(video - np.flatnonzero(table.shard == table.shard[video])[0]), frames[-1], keep_crc=keep_crc)
    message = (rf"{shard}\.fidx: the frame table fails its CRC32C .* rebuild it with: dali-video-index build {shard}"
               if keep_crc else rf"{shard}: video .* frame {frames[-1]} at byte \d+: lies outside its video's record")
    with pytest.raises(RuntimeError, match=message):
        _first_clip(dataset_copy)


# Reads the pristine copy, then the damaged one, in one process: its peak RSS after each, and the error.
DAMAGED = """
import json, resource, sys
import dali_video
def run(url):
    with dali_video.clip_pipeline(url, batch_size=2, clip_len=4, crop_size=16, device="cpu", training=False,
                                  output="jpegs", seed=0, io_threads=0) as p:
        for _ in range(3):
            p.pipeline.run()
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
run(sys.argv[1])
pristine, error = peak(), None
try:
    run(sys.argv[2])
except RuntimeError as e:
    error = str(e)
print(json.dumps({"pristine_mb": pristine, "damaged_mb": peak(), "error": error}))
"""


@pytest.mark.parametrize("keep_crc", [True, False])
def test_a_flipped_bit_in_a_bucket_frame_index_reads_nothing_beyond_its_video(s3, tmp_path, keep_crc):
    # One shard of 40 videos of 11,000 tiny frames (72 MB): a flipped high bit of an offset points 64 MB on.
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    shard = pristine / fmt.shard_name("train", 0, 1)
    _write_shard((shard, 0, 40, 11_000, tiny_jpeg()))
    damaged = Path(shutil.copytree(pristine, tmp_path / "damaged")) / shard.name
    video, frames = _first_clip(pristine)
    start, length = _damage(damaged, video, frames[-1], keep_crc=keep_crc)
    urls = [s3.upload(pristine, "pristine"), s3.upload(damaged.parent, "damaged")]
    s3.server.clear_log()
    proc = subprocess.run([sys.executable, "-c", DAMAGED, *urls], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.splitlines()[-1])
    url = f"{urls[1]}/{shard.name}"
    assert r["error"] and url in r["error"], r  # an error naming the shard
    assert r["damaged_mb"] - r["pristine_mb"] < 50, r
    ranges = [[int(x) for x in g["range"].split("=")[1].split("-")] for g in s3.server.requests()["log"]
              if g["method"] == "GET" and g["path"].endswith(f"damaged/{shard.name}")]
    assert all(end - first + 1 <= length for first, end in ranges), (ranges, length)


SKIPPING = """
import sys
import dali_video
try:
    with dali_video.clip_pipeline(sys.argv[1], batch_size=2, clip_len=4, crop_size=16, device="cpu",
                                  output="jpegs", seed=0, io_threads=0, on_corrupt="skip") as p:
        p.pipeline.run()
except RuntimeError as e:
    print(str(e).splitlines()[0][:300])
"""


def test_a_frame_table_failing_its_crc_is_read_once_not_again_per_clip(s3, tmp_path):
    """on_corrupt="skip" tries other clips of the shard; its damaged frame table is not fetched and checked
    again for each (its failure is kept for the shard): one GET of it, beside load_table's of its header."""
    shard = tmp_path / "data" / fmt.shard_name("train", 0, 1)
    shard.parent.mkdir()
    _write_shard((shard, 0, 6, 40, tiny_jpeg()))
    _damage(shard, 0, 3, keep_crc=True)
    url = s3.upload(shard.parent, "crc")
    s3.server.clear_log()
    proc = subprocess.run([sys.executable, "-c", SKIPPING, url], capture_output=True, text=True)
    assert "fails its CRC32C" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    gets = [g for g in s3.server.requests()["log"] if g["method"] == "GET" and g["path"].endswith(".fidx")]
    assert len(gets) <= 2, gets
