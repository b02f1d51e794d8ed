// dali-video's clip reader: a DALI CPU operator, fed by nothing, that emits the JPEG bytes of
// planned clips read from indexed TFRecord shards (see dali_video/sampling.py for the plan's
// specification and dali_video/pipeline.py for its use).
//
// Layout: the plan (pure functions, mirrored by the Python reference; a property test holds the
// two equal), the read and the checks (one clip at a time, each a short function), then the
// operator, which runs one task per clip in DALI's thread pool and copies the frames out.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dali/pipeline/operator/operator.h"

namespace dali_video {

using u64 = uint64_t;

// ------------------------------------------------------------------ the plan

u64 mix(u64 x) {  // splitmix64's finaliser: a bijection of 64-bit words that scatters every bit
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

u64 hash(u64 h, u64 v) { return mix(h ^ mix(v)); }

int64_t uniform(u64 h, int64_t m) {  // an integer in [0, m) from 64 random bits
  return static_cast<int64_t>((static_cast<unsigned __int128>(h) * static_cast<u64>(m)) >> 64);
}

int64_t round_div(int64_t a, int64_t b) { return (2 * a + b) / (2 * b); }  // a/b, halves up

// A keyed bijection of [0, n): a 4-round Feistel network on 2*half bits, cycle-walked into range.
int64_t permute(int64_t x, int64_t n, u64 key) {
  int half = 1;
  while ((int64_t{1} << (2 * half)) < n) ++half;
  const u64 mask = (u64{1} << half) - 1;
  u64 y = static_cast<u64>(x);
  do {
    u64 l = y >> half, r = y & mask;
    for (u64 round = 0; round < 4; ++round) {
      u64 t = l ^ (hash(hash(key, round), r) & mask);
      l = r;
      r = t;
    }
    y = (l << half) | r;
  } while (y >= static_cast<u64>(n));
  return static_cast<int64_t>(y);
}

double unit(u64 h) { return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)

int64_t round_half(double v) { return static_cast<int64_t>(v + 0.5); }  // v >= 0

double exp_plan(double v) {  // e**v from + * / in a fixed order: libm's exp may differ between machines
  int k = 0;
  while (std::fabs(v) > 0.5) v /= 2, ++k;
  double r = 1.0;
  for (int i = 12; i >= 1; --i) r = 1.0 + v * r / i;
  while (k--) r = r * r;
  return r;
}

enum ShortVideos : int64_t { kRepeatLast = 0, kLoop = 1, kSkip = 2 };

struct Spec {  // the order of fields is the order of the spec array dali_video_plan takes
  int64_t seed, training, clip_len, stride_lo, stride_hi, crop, resize_lo, resize_hi, short_videos,
      clips_per_video, num_crops, flip, random_area, color;
  double area_lo, area_hi, aspect_lo, aspect_hi, log_aspect_lo, log_aspect_hi, jitter[4];
};
static_assert(sizeof(Spec) == 24 * 8);

struct Video {
  int64_t num_frames, height, width;
};

struct Plan {
  int64_t video, start, stride, y, x, h, w, flip;
  double color[4];  // brightness, contrast, saturation, hue (a fraction of the colour circle)
};

int64_t items_per_epoch(const Spec &s, int64_t n) {
  return n * s.clips_per_video * (s.training ? 1 : s.num_crops);
}

// A training window (y, x, h, w) in the resized rh x rw frame: c x c at a random spot, or a random
// resized crop's window (the centre of the frame, clamped to the aspect range, if no try fits).
void train_window(const Spec &s, int64_t rh, int64_t rw, u64 draws, Plan &p) {
  p.h = p.w = s.crop;
  if (s.random_area) {
    bool fits = false;
    for (u64 t = 0; t < 10 && !fits; ++t) {
      const double area = static_cast<double>(rh * rw) *
                          (s.area_lo + unit(hash(hash(draws, 7), t)) * (s.area_hi - s.area_lo));
      const double q = exp_plan(s.log_aspect_lo + unit(hash(hash(draws, 8), t)) * (s.log_aspect_hi - s.log_aspect_lo));
      p.w = round_half(std::sqrt(area * q));
      p.h = round_half(std::sqrt(area / q));
      fits = p.h >= 1 && p.h <= rh && p.w >= 1 && p.w <= rw;
    }
    if (!fits) {
      const double frame = static_cast<double>(rw) / static_cast<double>(rh);
      p.h = rh, p.w = rw;
      if (frame < s.aspect_lo)
        p.h = std::min(rh, std::max<int64_t>(1, round_half(static_cast<double>(rw) / s.aspect_lo)));
      else if (frame > s.aspect_hi)
        p.w = std::min(rw, std::max<int64_t>(1, round_half(static_cast<double>(rh) * s.aspect_hi)));
      p.y = (rh - p.h) / 2;
      p.x = (rw - p.w) / 2;
      return;
    }
  }
  p.y = uniform(hash(draws, 2), rh - p.h + 1);
  p.x = uniform(hash(draws, 3), rw - p.w + 1);
}

// Centred, or one of three spots along the longer side.
void eval_window(const Spec &s, int64_t rh, int64_t rw, int64_t crop, Plan &p) {
  const int64_t c = s.crop;
  p.h = p.w = c;
  p.y = (rh - c) / 2;
  p.x = (rw - c) / 2;
  if (s.num_crops == 3) {
    int64_t &along = rh >= rw ? p.y : p.x;
    const int64_t room = (rh >= rw ? rh : rw) - c;
    along = crop == 0 ? 0 : crop == 1 ? room / 2 : room;
  }
}

void color(const Spec &s, u64 draws, Plan &p) {
  const double *j = s.jitter;
  const double lo[4] = {std::max(0.0, 1.0 - j[0]), std::max(0.0, 1.0 - j[1]), std::max(0.0, 1.0 - j[2]), -j[3]};
  const double hi[4] = {1.0 + j[0], 1.0 + j[1], 1.0 + j[2], j[3]};
  for (int i = 0; i < 4; ++i) p.color[i] = lo[i] + unit(hash(draws, 10 + i)) * (hi[i] - lo[i]);
}

// Clip `position` of the endless sequence over `n` videos (epoch after epoch).
Plan plan_clip(const Spec &s, const Video *videos, int64_t n, int64_t position) {
  const int64_t items = items_per_epoch(s, n);
  const int64_t epoch = position / items, j = position % items;
  const u64 seed = static_cast<u64>(s.seed);
  Plan p{0, 0, 0, 0, 0, 0, 0, 0, {1.0, 1.0, 1.0, 0.0}};
  int64_t clip = 0, crop = 0;
  if (s.training) {
    p.video = permute(j / s.clips_per_video, n, hash(hash(seed, 1), epoch));
  } else {
    p.video = j / (s.clips_per_video * s.num_crops);
    clip = j / s.num_crops % s.clips_per_video;
    crop = j % s.num_crops;
  }
  const u64 draws = hash(hash(hash(seed, 2), epoch), j);
  const Video &v = videos[p.video];
  p.stride = s.training ? s.stride_lo + uniform(hash(draws, 5), s.stride_hi - s.stride_lo + 1) : s.stride_lo;
  const int64_t r = s.training ? s.resize_lo + uniform(hash(draws, 6), s.resize_hi - s.resize_lo + 1) : s.resize_lo;
  const int64_t room = std::max<int64_t>(v.num_frames - (s.clip_len - 1) * p.stride - 1, 0);
  if (s.training)
    p.start = uniform(hash(draws, 1), room + 1);
  else
    p.start = s.clips_per_video == 1 ? room / 2 : round_div(clip * room, s.clips_per_video - 1);
  const int64_t shorter = std::min(v.height, v.width);
  const int64_t rh = r ? round_div(v.height * r, shorter) : v.height;
  const int64_t rw = r ? round_div(v.width * r, shorter) : v.width;
  if (s.training) {
    train_window(s, rh, rw, draws, p);
    p.flip = s.flip ? uniform(hash(draws, 4), 2) : 0;
    if (s.color) color(s, draws, p);
  } else {
    eval_window(s, rh, rw, crop, p);
  }
  if (r) {  // back to stored pixels: the window that resizing would have turned into this one
    p.h = std::min(v.height, std::max<int64_t>(1, round_div(p.h * shorter, r)));
    p.w = std::min(v.width, std::max<int64_t>(1, round_div(p.w * shorter, r)));
    p.y = std::min(round_div(p.y * shorter, r), v.height - p.h);
    p.x = std::min(round_div(p.x * shorter, r), v.width - p.w);
  }
  return p;
}

int64_t frame_number(const Spec &s, const Plan &p, int64_t num_frames, int64_t t) {
  const int64_t f = p.start + t * p.stride;
  return s.short_videos == kLoop ? f % num_frames : std::min(f, num_frames - 1);
}

// ------------------------------------------------------------------ the checks

uint32_t crc32c_soft(uint32_t crc, const uint8_t *p, size_t n) {
  static const auto table = [] {
    std::vector<uint32_t> t(256);
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  while (n--) crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_hard(uint32_t crc, const uint8_t *p, size_t n) {
  u64 c = crc;
  for (; n >= 8; n -= 8, p += 8) {
    u64 word;
    std::memcpy(&word, p, 8);
    c = __builtin_ia32_crc32di(c, word);
  }
  crc = static_cast<uint32_t>(c);
  for (; n; --n) crc = __builtin_ia32_crc32qi(crc, *p++);
  return crc;
}
#endif

uint32_t crc32c(const uint8_t *p, size_t n) {
#if defined(__x86_64__)
  static const bool hard = __builtin_cpu_supports("sse4.2");
  if (hard) return ~crc32c_hard(~0u, p, n);
#endif
  return ~crc32c_soft(~0u, p, n);
}

// Why a JPEG's markers do not promise a height x width picture, or "" (never reads past n).
std::string jpeg_problem(const uint8_t *p, size_t n, int64_t height, int64_t width) {
  if (n < 4 || p[0] != 0xFF || p[1] != 0xD8) return "is not a valid JPEG (not a JPEG (no SOI marker))";
  if (p[n - 2] != 0xFF || p[n - 1] != 0xD9) return "is not a complete JPEG (no end-of-image marker)";
  size_t i = 2;
  while (i + 4 <= n) {
    if (p[i] != 0xFF) return "is not a valid JPEG (JPEG marker expected at byte " + std::to_string(i) + ")";
    const uint8_t marker = p[i + 1];
    if (marker == 0xFF) {
      ++i;
      continue;
    }
    if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
      if (i + 9 > n) break;
      const int64_t h = p[i + 5] << 8 | p[i + 6], w = p[i + 7] << 8 | p[i + 8];
      if (height && width && (h != height || w != width))
        return "is " + std::to_string(w) + "x" + std::to_string(h) + ", the video is " +
               std::to_string(width) + "x" + std::to_string(height);
      return "";
    }
    i += 2 + (p[i + 2] << 8 | p[i + 3]);
  }
  return "is not a valid JPEG (JPEG has no frame header (SOF))";
}

// ------------------------------------------------------------------ the read

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
  for (int64_t t = 0; t < s.clip_len; ++t) c.frames[t] = frame_number(s, p, v.num_frames, t);
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

// ------------------------------------------------------------------ the operator

// The videos, one text line each ("shard row num_frames height width label table_row"), and their
// names one per line: two string arguments serialize far smaller and faster than per-video lists
// (82 MB and 4.6 s at 300k videos, through DALI's pipeline protobuf).
void parse_videos(const std::string &text, const std::string &names, Dataset &d) {
  const char *p = text.c_str();
  while (*p) {
    int64_t v[7];
    for (int64_t &x : v) {
      char *end;
      x = std::strtoll(p, &end, 10);
      DALI_ENFORCE(end != p, "dali-video clip reader: malformed 'videos' argument");
      p = end;
    }
    // Frame sides up to JPEG's 65535 keep the plan's products (sides x scales) inside int64.
    DALI_ENFORCE(v[0] >= 0 && static_cast<size_t>(v[0]) < d.shards.size() && v[1] >= 0 && v[2] >= 1 &&
                 v[3] >= 1 && v[4] >= 1 && v[3] <= 65535 && v[4] <= 65535,
                 "dali-video clip reader: a video's shard, row or size is out of range");
    d.shard.push_back(v[0]);
    d.row.push_back(v[1]);
    d.videos.push_back({v[2], v[3], v[4]});
    d.label.push_back(v[5]);
    d.table_row.push_back(v[6]);
    while (*p == '\n' || *p == ' ') ++p;
  }
  for (size_t start = 0; start <= names.size();) {
    const size_t end = std::min(names.find('\n', start), names.size());
    d.filenames.push_back(names.substr(start, end - start));
    start = end + 1;
  }
  DALI_ENFORCE(!d.videos.empty() && d.filenames.size() == d.videos.size() && d.table_offset.size() == d.shards.size(),
               "dali-video clip reader: the per-video arguments disagree in length");
}

// crop y, x, h, w, flip, label, video (table row), frame, replaced, stride, then the colour factors as
// float32 bits (brightness, contrast, saturation, hue)
constexpr int kMetaColumns = 14;

// The plan's options from the operator's arguments: ranges as (low, high) pairs, real values as the
// float32 DALI passes (the Python reference plans with the same float32 values).
Spec read_spec(const dali::OpSpec &spec) {
  auto pair = [&](const char *name) {
    const auto v = spec.GetRepeatedArgument<int>(name);
    DALI_ENFORCE(v.size() == 2 && v[0] <= v[1],
                 std::string("dali-video clip reader: ") + name + " must be a (low, high) pair");
    return std::pair<int64_t, int64_t>(v[0], v[1]);
  };
  auto reals = [&](const char *name, size_t n) {
    auto v = spec.GetRepeatedArgument<float>(name);
    DALI_ENFORCE(v.empty() || v.size() == n, std::string("dali-video clip reader: ") + name + " has the wrong length");
    return v;
  };
  Spec s{};
  s.seed = spec.GetArgument<int64_t>("plan_seed");
  s.training = spec.GetArgument<bool>("training");
  s.clip_len = spec.GetArgument<int>("clip_len");
  std::tie(s.stride_lo, s.stride_hi) = pair("stride");
  std::tie(s.resize_lo, s.resize_hi) = pair("resize_shorter");
  s.crop = spec.GetArgument<int>("crop_size");
  s.short_videos = spec.GetArgument<int>("short_videos");
  s.clips_per_video = spec.GetArgument<int>("clips_per_video");
  s.num_crops = spec.GetArgument<int>("num_crops");
  s.flip = spec.GetArgument<bool>("flip");
  const auto area = reals("crop_area", 2), aspect = reals("crop_aspect", 4), jitter = reals("color_jitter", 4);
  DALI_ENFORCE(aspect.size() == 4, "dali-video clip reader: crop_aspect needs low, high and their logarithms");
  s.random_area = !area.empty();
  s.color = !jitter.empty();
  s.area_lo = s.random_area ? area[0] : 1.0;
  s.area_hi = s.random_area ? area[1] : 1.0;
  s.aspect_lo = aspect[0], s.aspect_hi = aspect[1], s.log_aspect_lo = aspect[2], s.log_aspect_hi = aspect[3];
  for (int i = 0; i < 4; ++i) s.jitter[i] = s.color ? jitter[i] : 0.0;
  const int64_t most = 65535;  // as ClipConfig checks; 0.0099 below: 0.01 in float32 is a little less
  DALI_ENFORCE(s.clip_len >= 1 && s.clip_len <= most && s.stride_lo >= 1 && s.stride_hi <= most && s.crop >= 1 &&
               s.crop <= most && s.resize_lo >= 0 && s.resize_hi <= most && s.clips_per_video >= 1 &&
               s.clips_per_video <= most && (s.num_crops == 1 || s.num_crops == 3) &&
               s.aspect_lo >= 0.0099 && s.aspect_hi <= 100 && s.area_lo > 0 && s.area_hi <= 1 &&
               std::fabs(s.log_aspect_lo) <= 5 && std::fabs(s.log_aspect_hi) <= 5,
               "dali-video clip reader: a plan argument is out of range");
  return s;
}
constexpr int64_t kMaxTries = 100;  // damaged clips in a row before on_corrupt="skip" gives up: not chance

class ClipReader : public dali::Operator<dali::CPUBackend> {
 public:
  explicit ClipReader(const dali::OpSpec &spec) : Operator(spec) {
    d_.shards = spec.GetRepeatedArgument<std::string>("shards");
    for (int64_t offset : spec.GetRepeatedArgument<int64_t>("table_offset")) d_.table_offset.push_back(offset);
    parse_videos(spec.GetArgument<std::string>("videos"), spec.GetArgument<std::string>("filenames"), d_);
    s_ = read_spec(spec);
    per_clip_ = spec.GetArgument<bool>("per_clip");
    skip_ = spec.GetArgument<bool>("skip_corrupt");
    pad_ = spec.GetArgument<bool>("pad");
    shard_id_ = spec.GetArgument<int>("shard_id");
    num_shards_ = spec.GetArgument<int>("num_shards");
    next_ = spec.GetArgument<int64_t>("initial_clip");
  }

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &, const dali::Workspace &) override { return false; }

  void RunImpl(dali::Workspace &ws) override {
    const int requested = ws.GetRequestedBatchSize(0);
    const int batch = per_clip_ ? requested : requested / static_cast<int>(s_.clip_len);
    DALI_ENFORCE(per_clip_ || requested % s_.clip_len == 0,
                 "dali-video clip reader: the batch size must be a multiple of clip_len");
    clips_.resize(batch);
    errors_.assign(batch, "");
    const int64_t first = next_ + static_cast<int64_t>(shard_id_) * batch;
    next_ += static_cast<int64_t>(batch) * num_shards_;
    auto &pool = ws.GetThreadPool();
    for (int i = 0; i < batch; ++i)
      pool.AddWork([this, i, first](int) { fill(i, first + i); }, -i);
    pool.RunAll();
    for (const std::string &e : errors_)
      if (!e.empty()) DALI_FAIL(e);
    emit(ws, batch);
  }

 private:
  // Reads clip i (at `position`); with skip_corrupt, a damaged clip gives way to the next ones.
  void fill(int i, int64_t position) {
    Clip &c = clips_[i];
    const int64_t n = d_.videos.size(), items = items_per_epoch(s_, n);
    const int64_t epoch_start = position - position % items;
    for (int64_t tries = 0; tries < std::min(items, kMaxTries); ++tries) {
      c.plan = plan_clip(s_, d_.videos.data(), n, epoch_start + (position - epoch_start + tries) % items);
      c.replaced = static_cast<int>(tries);
      try {
        read_clip(d_, s_, c);
        errors_[i].clear();
        return;
      } catch (const ReadError &e) {
        if (!skip_) {
          errors_[i] = e.message;
          return;
        }
        std::cerr << "dali-video: on_corrupt='skip': replacing a clip: " << e.message << std::endl;
        errors_[i] = "on_corrupt='skip' gave up after " + std::to_string(tries + 1) +
                     " damaged clips in a row (a missing mount or shard?); last: " + e.message;
      }
    }
  }

  void emit(dali::Workspace &ws, int batch) {
    const int64_t T = s_.clip_len;
    // Frame t of clip i: per clip, sample i of JPEG output t; else sample i*T + t of output 0.
    auto output = [&](int64_t t) { return per_clip_ ? t : 0; };
    auto sample = [&](int i, int64_t t) { return per_clip_ ? i : i * T + t; };
    auto &meta = ws.Output<dali::CPUBackend>(per_clip_ ? T : 1);
    meta.Resize(dali::uniform_list_shape(per_clip_ ? batch : batch * T, {kMetaColumns}), DALI_INT32);
    int64_t longest = 0;
    for (int i = 0; i < batch; ++i)
      for (int64_t t = 0; t < T; ++t) longest = std::max(longest, clips_[i].length[t]);
    std::vector<dali::TensorListShape<>> shapes(output(T - 1) + 1,
                                                dali::TensorListShape<>(per_clip_ ? batch : batch * T, 1));
    for (int i = 0; i < batch; ++i)
      for (int64_t t = 0; t < T; ++t)
        shapes[output(t)].set_tensor_shape(sample(i, t), {pad_ ? longest : clips_[i].length[t]});
    for (size_t o = 0; o < shapes.size(); ++o) ws.Output<dali::CPUBackend>(o).Resize(shapes[o], DALI_UINT8);
    auto &pool = ws.GetThreadPool();
    for (int i = 0; i < batch; ++i) {
      pool.AddWork([&, i](int) {
        const Clip &c = clips_[i];
        const Plan &p = c.plan;
        for (int64_t t = 0; t < T; ++t) {
          uint8_t *out = ws.Output<dali::CPUBackend>(output(t)).mutable_tensor<uint8_t>(sample(i, t));
          std::memcpy(out, c.data.data() + c.start[t], c.length[t]);
          if (pad_) std::memset(out + c.length[t], 0, longest - c.length[t]);
          if (per_clip_ && t) continue;  // per clip, the metadata is the first frame's
          int32_t values[kMetaColumns] = {
              int32_t(p.y), int32_t(p.x), int32_t(p.h), int32_t(p.w), int32_t(p.flip), d_.label[p.video],
              d_.table_row[p.video], int32_t(c.frames[t]), c.replaced, int32_t(p.stride)};
          for (int k = 0; k < 4; ++k) {
            const float factor = static_cast<float>(p.color[k]);
            std::memcpy(&values[10 + k], &factor, sizeof(factor));
          }
          std::memcpy(meta.mutable_tensor<int32_t>(sample(i, t)), values, sizeof(values));
        }
      }, -i);
    }
    pool.RunAll();
  }

  Dataset d_;
  Spec s_{};
  bool per_clip_ = false, skip_ = false, pad_ = false;
  int shard_id_ = 0, num_shards_ = 1;
  int64_t next_ = 0;  // position of this reader's next batch in the global clip sequence
  std::vector<Clip> clips_;  // kept between batches: their buffers keep their capacity
  std::vector<std::string> errors_;
};

}  // namespace dali_video

// The plan alone, for the property test that holds it equal to the Python reference:
// spec as in struct Spec, videos as (num_frames, height, width) triples, out as struct Plan.
extern "C" int dali_video_plan(const int64_t *spec, const int64_t *videos, int64_t n, int64_t position,
                               int64_t *out) {
  dali_video::Spec s;
  std::memcpy(&s, spec, sizeof(s));
  const auto p = dali_video::plan_clip(s, reinterpret_cast<const dali_video::Video *>(videos), n, position);
  std::memcpy(out, &p, sizeof(p));
  return 0;
}

namespace dali {

DALI_REGISTER_OPERATOR(DaliVideoClips, dali_video::ClipReader, CPU);

DALI_SCHEMA(DaliVideoClips)
    .DocStr("Reads planned clips of JPEG frames from indexed TFRecord shards (dali-video's reader). "
            "Outputs the exact JPEG bytes per frame and int32 metadata (crop y, x, h, w, flip, label, "
            "video, frame, replaced, stride, and the float32 bits of brightness, contrast, saturation, hue): "
            "per frame, or with per_clip one JPEG output per frame position and the metadata per clip.")
    .NumInput(0)
    .OutputFn([](const dali::OpSpec &spec) {
      return spec.GetArgument<bool>("per_clip") ? spec.GetArgument<int>("clip_len") + 1 : 2;
    })
    .AddArg("shards", "Shard paths.", DALI_STRING_VEC)
    .AddArg("table_offset", "Byte offset of each shard's frame table in its .fidx.", DALI_INT64_VEC)
    .AddArg("videos", "One line per video: its shard, the row of its first frame in the shard's frame table, "
            "frames, height, width, label and row in the dataset's video table.", DALI_STRING)
    .AddArg("filenames", "The videos' names, one per line (for error messages).", DALI_STRING)
    .AddArg("plan_seed", "Seed of the clip plan.", DALI_INT64)
    .AddArg("training", "Random clips (else evaluation views).", DALI_BOOL)
    .AddArg("clip_len", "Frames per clip.", DALI_INT32)
    .AddOptionalArg("stride", "Frame step within a clip: (low, high), drawn per clip in training.",
                    std::vector<int>{1, 1})
    .AddArg("crop_size", "Crop size after resizing.", DALI_INT32)
    .AddOptionalArg("resize_shorter", "Shorter side after resizing: (low, high), drawn per clip in training; "
                    "(0, 0): as stored.", std::vector<int>{0, 0})
    .AddOptionalArg("crop_area", "Random resized crop: (low, high) fraction of the frame's area; empty: off.",
                    std::vector<float>{})
    .AddOptionalArg("crop_aspect", "Random resized crop: aspect (low, high) and the float32 logarithms of both.",
                    std::vector<float>{1.f, 1.f, 0.f, 0.f})
    .AddOptionalArg("flip", "Flip half the training clips.", true)
    .AddOptionalArg("color_jitter", "Brightness, contrast, saturation and hue jitter; empty: off.",
                    std::vector<float>{})
    .AddOptionalArg("short_videos", "0 repeat_last, 1 loop, 2 skip.", 0)
    .AddOptionalArg("clips_per_video", "Clips per video and epoch.", 1)
    .AddOptionalArg("num_crops", "Evaluation crops per clip (1 or 3).", 1)
    .AddOptionalArg("shard_id", "This reader's share of each global batch.", 0)
    .AddOptionalArg("num_shards", "Readers sharing each global batch.", 1)
    .AddOptionalArg<int64_t>("initial_clip", "Position of the first clip in the global sequence.", 0)
    .AddOptionalArg("per_clip", "One JPEG output per frame position, metadata per clip.", false)
    .AddOptionalArg("pad", "Zero-pad every frame's bytes to the batch's longest (uniform shapes, for TensorFlow).",
                    false)
    .AddOptionalArg("skip_corrupt", "Replace a damaged clip by the next ones instead of failing.", false);

}  // namespace dali
