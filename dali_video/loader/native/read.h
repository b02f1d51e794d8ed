// dali-video's clip reader: the read: where a clip's frames lie and one read per run of
// frames, then each frame checked.
// Included once, by clip_reader.cc (one translation unit).
#pragma once

#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "checks.h"
#include "plan.h"
#include "storage.h"
#include "table.h"

namespace dali_video {

constexpr int64_t kGap = 64;  // local frames closer than this many bytes are fetched in one read
// An object in a bucket: a gap between wanted frames is read through, not split into a second GET,
// when shorter than a request's latency times the bandwidth (~10 ms x ~100 MB/s, 1 MiB), and then
// only while the clip reads at most kMostRead times its own bytes (sparse clips: TimeSformer's 8
// frames 32 apart, TSM's segments): the largest gaps are split first. A dense clip stays one GET.
constexpr u64 kBucketGap = u64{1} << 20;
constexpr u64 kMostRead = 5;  // 1 + 1/kMostRead: the bytes a clip may read, over its frames' own (1.2x)

struct Clip {  // one read clip: frame t's bytes are data[start[t], start[t] + length[t])
  Plan plan;
  int replaced = 0;  // damaged clips skipped before this one (on_corrupt="skip")
  int dataset = 0;  // a Mixture's dataset the clip is drawn from
  std::vector<int64_t> frames, start, length;
  std::vector<uint8_t> data;
};

std::string frame_where(const Dataset &d, const Plan &p, int64_t frame, u64 offset) {
  return d.shards[d.shard[p.video]] + ": video '" + d.filenames[p.video] + "' frame " +
         std::to_string(d.first[p.video] + frame) + " at byte " + std::to_string(offset) + ": ";
}

// Where a clip's frames lie: the frame index rows of its distinct frames (`wanted`, ascending) and the
// byte runs that read them: one per run of frames lying close together, one for an object in a bucket
// (a clip's frames lie in one record, and a request costs far more than the bytes between frames).
struct Located {
  std::vector<int64_t> wanted;
  const Row *rows = nullptr;  // rows[f] for frame f of the video
  struct Run {
    size_t first, last;  // wanted[first .. last) lie in bytes [start, end)
    u64 start, end;
  };
  std::vector<Run> runs;
  const Row &row(size_t k) const { return rows[wanted[k]]; }
};

// Where a new read starts: split[k] for wanted frame k (k >= 1) when the gap before it is not read
// through (kGap locally; in a bucket kBucketGap and kMostRead). Frames out of order split anyway.
std::vector<bool> splits(const Located &l, bool bucket) {
  const size_t n = l.wanted.size();
  std::vector<bool> split(n, false);
  std::vector<std::pair<u64, size_t>> kept;  // (gap, k) read through
  u64 own = 0, through = 0;
  for (size_t k = 0; k < n; ++k) {
    own += l.row(k).length;
    if (k == 0) continue;
    const u64 end = l.row(k - 1).offset + l.row(k - 1).length, at = l.row(k).offset;
    const u64 gap = at >= end ? at - end : 0;
    split[k] = gap > (bucket ? kBucketGap : kGap);
    if (bucket && !split[k] && gap) kept.push_back({gap, k}), through += gap;
  }
  std::sort(kept.begin(), kept.end(), [](auto a, auto b) {  // the largest first; ties in order
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  for (size_t i = 0; i < kept.size() && through > own / kMostRead; ++i) {
    split[kept[i].second] = true;
    through -= kept[i].first;
  }
  return split;
}

void locate(const Dataset &d, const Waits &waits, const std::vector<int64_t> &frames, const Plan &p,
            u64 shard_size, Located &l) {
  const std::string &shard = d.shards[d.shard[p.video]];
  l.wanted = frames;
  std::sort(l.wanted.begin(), l.wanted.end());
  l.wanted.erase(std::unique(l.wanted.begin(), l.wanted.end()), l.wanted.end());
  l.rows = shard_table(d, d.shard[p.video], waits).rows() + d.row[p.video];  // make_dataset bounds its rows
  // Every frame within the video's own record (and that within the shard): a damaged row that passed
  // the table's CRC (or a record the index places wrongly) never makes a read the video does not hold.
  const u64 first = d.record_start[p.video], end = d.record_end[p.video];
  for (size_t k = 0; k < l.wanted.size(); ++k) {
    const Row &r = l.row(k);
    if (r.offset > shard_size || r.length > shard_size - r.offset)
      throw ReadError{frame_where(d, p, l.wanted[k], r.offset) + "lies past the end of the shard (" +
                      std::to_string(shard_size) + " bytes): stale or corrupt frame index; rebuild it with: "
                      "dali-video-index build " + shard};
    if (r.offset < first || r.offset + r.length > end)
      throw ReadError{frame_where(d, p, l.wanted[k], r.offset) + "lies outside its video's record (" +
                      byte_range(first, end) + "): corrupt frame index; rebuild it with: dali-video-index build " +
                      shard};
  }
  const std::vector<bool> split = splits(l, is_url(shard));
  u64 total = 0;
  for (size_t k = 0; k < l.wanted.size();) {  // frames of one video lie in increasing offsets
    Located::Run run{k, k + 1, l.row(k).offset, l.row(k).offset + l.row(k).length};
    for (; run.last < l.wanted.size(); ++run.last) {
      const Row &r = l.row(run.last);
      if (r.offset < run.end || split[run.last]) break;
      run.end = r.offset + r.length;
    }
    total += run.end - run.start;
    if (total > end - first)  // frames of one video share one record
      throw ReadError{frame_where(d, p, l.wanted[k], run.start) + "the frame index rows of this video overlap or "
                      "exceed its record: corrupt frame index; rebuild it with: dali-video-index build " + shard};
    l.runs.push_back(run);
    k = run.last;
  }
}

// Reads the clip's frames, one read per run (an object's runs at once), and checks each.
void read_clip(const Dataset &d, const Waits &waits, const Spec &s, Clip &c) {
  const Plan &p = c.plan;
  const Video &v = d.videos[p.video];
  c.frames.resize(s.clip_len);
  for (int64_t t = 0; t < s.clip_len; ++t) c.frames[t] = frame_number(s, p, v, t);
  const int shard = d.shard[p.video];
  const std::string &name = d.shards[shard];
  Object file(name, d.shard_size[shard], "cannot read video '" + d.filenames[p.video] + "'", waits);
  Located l;
  locate(d, waits, c.frames, p, file.size(), l);
  std::vector<int64_t> at(l.wanted.size());  // each wanted frame's position in c.data
  std::vector<size_t> base(l.runs.size());
  size_t bytes = 0;
  for (size_t i = 0; i < l.runs.size(); ++i) base[i] = bytes, bytes += l.runs[i].end - l.runs[i].start;
  c.data.resize(bytes);
  std::vector<std::shared_ptr<Fetch>> fetches;
  if (file.remote())
    for (const Located::Run &run : l.runs) fetches.push_back(file.start(run.start, run.end - run.start));
  for (size_t i = 0; i < l.runs.size(); ++i) {
    const Located::Run &run = l.runs[i];
    auto where = [&] { return frame_where(d, p, l.wanted[run.first], run.start); };
    size_t got;
    try {
      uint8_t *into = c.data.data() + base[i];
      got = fetches.empty() ? file.read(into, run.end - run.start, run.start)
                            : file.finish(*fetches[i], into, run.start, run.end - run.start);
    } catch (const ReadError &e) {
      for (auto &f : fetches) {  // the other runs' reads: nobody waits for them now
        std::lock_guard<std::mutex> hold(f->lock);
        f->abandoned = true;
      }
      if (e.storage)  // the store's failure, not the clip's: no verify can mend it
        throw ReadError{store_failed(name) + where() + e.message +
                        " (not damaged data: on_corrupt='skip' does not skip it; "
                        "resume when the store answers)", true};
      // a range past the end of an object shorter than its index says
      throw ReadError{where() + e.message + "; check the shard with: dali-video-index verify"};
    }
    if (got != run.end - run.start)
      throw ReadError{where() + "short read: " + byte_range(run.start, run.end) +
                      " wanted, the shard ends at byte " + std::to_string(run.start + got) +
                      " (truncated, or replaced after indexing; check it with: dali-video-index verify)"};
    for (size_t k = run.first; k < run.last; ++k) at[k] = base[i] + (l.row(k).offset - run.start);
  }
  for (size_t k = 0; k < l.wanted.size(); ++k) {
    const Row &r = l.row(k);
    const uint8_t *jpeg = c.data.data() + at[k];
    std::string problem = crc32c(jpeg, r.length) != r.crc
        ? "fails its CRC32C (corrupt, or the shard changed after indexing; check it with: dali-video-index verify)"
        : jpeg_problem(jpeg, r.length, v.height, v.width);
    if (!problem.empty()) throw ReadError{frame_where(d, p, l.wanted[k], r.offset) + problem};
  }
  c.start.resize(s.clip_len);
  c.length.resize(s.clip_len);
  for (int64_t t = 0; t < s.clip_len; ++t) {
    const size_t k = std::lower_bound(l.wanted.begin(), l.wanted.end(), c.frames[t]) - l.wanted.begin();
    c.start[t] = at[k];
    c.length[t] = l.row(k).length;
  }
}

}  // namespace dali_video
