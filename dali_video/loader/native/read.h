// dali-video's clip reader: the read: where a clip's frames lie and one read per run of
// frames, then each frame checked.
// Included once, by clip_reader.cc (one translation unit).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "checks.h"
#include "plan.h"

namespace dali_video {

constexpr int64_t kGap = 64;  // frames closer than this many bytes are fetched in one read
constexpr u64 kMaxFrame = u64{1} << 28;  // a longer "JPEG" is a damaged index, never an allocation

struct Row {  // one frame of the frame index (.fidx), as stored (little-endian)
  u64 offset;
  uint32_t length, crc;
};
static_assert(sizeof(Row) == 16);

struct Fd {  // a file descriptor that closes itself
  int fd;
  explicit Fd(const std::string &path) : fd(open(path.c_str(), O_RDONLY | O_CLOEXEC)) {}
  Fd(const Fd &) = delete;
  Fd &operator=(const Fd &) = delete;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

struct ReadError {
  std::string message;
};

bool read_exactly(int fd, void *buf, size_t n, u64 offset) {
  auto *p = static_cast<uint8_t *>(buf);
  while (n) {
    const ssize_t got = pread(fd, p, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got, n -= static_cast<size_t>(got), offset += static_cast<u64>(got);
  }
  return true;
}

struct Dataset {  // what the operator reads: shards, their frame indexes, one entry per video
  std::vector<std::string> shards, filenames;
  std::vector<int> shard, row, label, table_row;
  std::vector<Video> videos;
  std::vector<int64_t> table_offset;  // where each shard's frame table starts in its .fidx
};

struct Clip {  // one read clip: frame t's bytes are data[start[t], start[t] + length[t])
  Plan plan;
  int replaced = 0;  // damaged clips skipped before this one (on_corrupt="skip")
  std::vector<int64_t> frames, start, length;
  std::vector<uint8_t> data;
};

std::string frame_where(const Dataset &d, const Plan &p, int64_t frame, u64 offset) {
  return d.shards[d.shard[p.video]] + ": video '" + d.filenames[p.video] + "' frame " +
         std::to_string(frame) + " at byte " + std::to_string(offset) + ": ";
}

// The frame index rows of frames first..last of the clip's video, checked against the shard's size.
std::vector<Row> read_rows(const Dataset &d, const Plan &p, int64_t first, int64_t last, u64 shard_size) {
  const std::string &shard = d.shards[d.shard[p.video]];
  Fd fidx(shard + ".fidx");
  std::vector<Row> rows(last - first + 1);
  const u64 at = d.table_offset[d.shard[p.video]] + (d.row[p.video] + first) * sizeof(Row);
  if (fidx.fd < 0 || !read_exactly(fidx.fd, rows.data(), rows.size() * sizeof(Row), at))
    throw ReadError{shard + ".fidx: cannot read the frame rows of video '" + d.filenames[p.video] +
                    "' (" + (fidx.fd < 0 ? std::strerror(errno) : "truncated frame table") + ")"};
  for (size_t k = 0; k < rows.size(); ++k) {
    const Row &r = rows[k];
    if (r.length > kMaxFrame || r.offset > shard_size || r.length > shard_size - r.offset)
      throw ReadError{frame_where(d, p, first + k, r.offset) + "lies past the end of the shard (" +
                      std::to_string(shard_size) + " bytes): stale or corrupt frame index; rebuild it with: "
                      "dali-video-index build " + shard};
  }
  return rows;
}

// Where a clip's frames lie: the shard (open), the frame index rows of its distinct frames (`wanted`,
// ascending) and the byte runs that read them, one per run of frames lying close together.
struct Located {
  Fd file;
  u64 shard_size = 0;
  std::vector<int64_t> wanted;
  std::vector<Row> rows;  // rows[f - wanted.front()] for frame f
  struct Run {
    size_t first, last;  // wanted[first .. last) lie in bytes [start, end)
    u64 start, end;
  };
  std::vector<Run> runs;
  explicit Located(const std::string &shard) : file(shard) {}
  const Row &row(size_t k) const { return rows[wanted[k] - wanted.front()]; }
};

void locate(const Dataset &d, const std::vector<int64_t> &frames, const Plan &p, Located &l) {
  const std::string &shard = d.shards[d.shard[p.video]];
  l.wanted = frames;
  std::sort(l.wanted.begin(), l.wanted.end());
  l.wanted.erase(std::unique(l.wanted.begin(), l.wanted.end()), l.wanted.end());
  struct stat st{};
  if (l.file.fd < 0 || fstat(l.file.fd, &st) != 0)
    throw ReadError{shard + ": cannot read video '" + d.filenames[p.video] + "': " + std::strerror(errno)};
  l.shard_size = static_cast<u64>(st.st_size);
  l.rows = read_rows(d, p, l.wanted.front(), l.wanted.back(), l.shard_size);
  u64 total = 0;
  for (size_t k = 0; k < l.wanted.size();) {  // frames of one video lie in increasing offsets
    Located::Run run{k, k + 1, l.row(k).offset, l.row(k).offset + l.row(k).length};
    for (; run.last < l.wanted.size(); ++run.last) {
      const Row &r = l.row(run.last);
      if (r.offset < run.end || r.offset - run.end > kGap) break;
      run.end = r.offset + r.length;
    }
    total += run.end - run.start;
    if (total > l.shard_size)  // frames of one video share one record
      throw ReadError{frame_where(d, p, l.wanted[k], run.start) + "the frame index rows of this video overlap or "
                      "exceed the shard: corrupt frame index; rebuild it with: dali-video-index build " + shard};
    l.runs.push_back(run);
    k = run.last;
  }
}

// Reads the clip's frames, one pread per run, and checks each.
void read_clip(const Dataset &d, const Spec &s, Clip &c) {
  const Plan &p = c.plan;
  const Video &v = d.videos[p.video];
  c.frames.resize(s.clip_len);
  for (int64_t t = 0; t < s.clip_len; ++t) c.frames[t] = frame_number(s, p, v, t);
  Located l(d.shards[d.shard[p.video]]);
  locate(d, c.frames, p, l);
  std::vector<int64_t> at(l.wanted.size());  // each wanted frame's position in c.data
  c.data.clear();
  for (const Located::Run &run : l.runs) {
    const size_t base = c.data.size();
    c.data.resize(base + (run.end - run.start));
    if (!read_exactly(l.file.fd, c.data.data() + base, run.end - run.start, run.start))
      throw ReadError{frame_where(d, p, l.wanted[run.first], run.start) + "short read: the shard is truncated"};
    for (size_t k = run.first; k < run.last; ++k) at[k] = base + (l.row(k).offset - run.start);
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
