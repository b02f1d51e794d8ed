// dali-video's clip reader: the clip plan (pure functions). The specification is in
// dali_video/loader/sampling.py, whose Python reference a property test holds equal to this.
// Included once, by clip_reader.cc (one translation unit).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace dali_video {

using u64 = uint64_t;

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

int64_t round_even(double v) {  // Python's round and numpy's around: halves to even (v >= 0)
  const double f = std::floor(v), d = v - f;  // both exact
  const int64_t i = static_cast<int64_t>(f);
  return d > 0.5 || (d == 0.5 && (i & 1)) ? i + 1 : i;
}

double exp_plan(double v) {  // e**v from + * / in a fixed order: libm's exp may differ between machines
  int k = 0;
  while (std::fabs(v) > 0.5) v /= 2, ++k;
  double r = 1.0;
  for (int i = 12; i >= 1; --i) r = 1.0 + v * r / i;
  while (k--) r = r * r;
  return r;
}

enum ShortVideos : int64_t { kRepeatLast = 0, kLoop = 1, kSkip = 2 };
enum Sampling : int64_t { kStride = 0, kSegments = 1 };
enum SegmentRule : int64_t { kSlowFastRule = 0, kTsnRule = 1 };
enum TestViews : int64_t { kDefaultViews = 0, kSlowFastViews = 1, kSlowFastOffset = 2, kMMAction = 3 };

struct Spec {  // the order of fields is the order of the spec array dali_video_plan takes
  int64_t seed, training, clip_len, stride_lo, stride_hi, crop, resize_lo, resize_hi, short_videos,
      clips_per_video, num_crops, flip, random_area, color, global_batch, sampling, segment_rule, twice_sample,
      test_views;
  double area_lo, area_hi, aspect_lo, aspect_hi, log_aspect_lo, log_aspect_hi, jitter[4], target_fps;  // 0: off
};
static_assert(sizeof(Spec) == 30 * 8);

struct Video {
  int64_t num_frames, height, width;
  double fps;  // 0: unknown
};

struct Plan {
  int64_t video, start, stride, y, x, h, w, flip, padding;
  double color[4];  // brightness, contrast, saturation, hue (a fraction of the colour circle)
  int64_t view;  // evaluation: the clip's temporal view (0..clips_per_video-1)
  u64 draws;  // the clip's random bits, for its frame numbers
};

int64_t items_per_epoch(const Spec &s, int64_t n) {
  return n * s.clips_per_video * (s.training ? 1 : s.num_crops);
}

// `items` rounded up to whole global batches g (0: not padded).
int64_t padded(int64_t items, int64_t g) { return g ? (items + g - 1) / g * g : items; }

// Positions in an epoch: in evaluation, padded to whole global batches.
int64_t epoch_length(const Spec &s, int64_t n) {
  const int64_t items = items_per_epoch(s, n);
  return s.training ? items : padded(items, s.global_batch);
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

// Centred, or one of three spots along the longer side: SlowFast's uniform_crop (slowfast/datasets/
// cv2_transform.py) centres with ceil((L - S) / 2); MMAction2's ThreeCrop takes left, right (2 * ((L - S) // 2)),
// middle; both go along the height only when it is strictly longer.
void eval_window(const Spec &s, int64_t rh, int64_t rw, int64_t crop, Plan &p) {
  const int64_t c = s.crop, up = s.test_views == kSlowFastViews || s.test_views == kSlowFastOffset;
  p.h = p.w = c;
  p.y = (rh - c + up) / 2;
  p.x = (rw - c + up) / 2;
  if (s.num_crops == 3) {
    const bool tall = s.test_views == kDefaultViews ? rh >= rw : rh > rw;
    int64_t &along = tall ? p.y : p.x;
    const int64_t room = (tall ? rh : rw) - c;
    if (s.test_views == kMMAction)
      along = crop == 0 ? 0 : crop == 1 ? room / 2 * 2 : room / 2;
    else
      along = crop == 0 ? 0 : crop == 1 ? (room + up) / 2 : room;
  }
}

// With target_fps, the stored frames a clip spans (SlowFast decoder.py: sampling_rate * num_frames /
// target_fps * fps, at least 1).
double fps_span(const Spec &s, int64_t stride, const Video &v) {
  return std::max(1.0, static_cast<double>(stride * s.clip_len) / s.target_fps * v.fps);
}

// The first frame of evaluation view `view` of K, `room` frames of slack (an integer without target_fps).
double view_start(const Spec &s, int64_t view, double room) {
  const int64_t K = s.clips_per_video;
  const bool offset = s.test_views == kSlowFastOffset || (s.test_views == kMMAction && s.target_fps > 0);
  if (s.test_views == kSlowFastViews) return room * static_cast<double>(view) / static_cast<double>(K);
  if (offset) return K == 1 ? std::floor(room / 2) : static_cast<double>(view) * std::floor(room / (K - 1));
  if (s.test_views == kMMAction)
    return K == 1 ? std::floor(room / 2) : static_cast<double>(round_even(view * (room / (K - 1))));
  const int64_t r = static_cast<int64_t>(room);
  return static_cast<double>(K == 1 ? r / 2 : round_div(view * r, K - 1));
}

// Frame i of T segments of a video of n frames (SlowFast ssv2.py get_seq_frames; MMAction2 SampleFrames
// with clip_len=1 for the TSN rule), in Python's double arithmetic, operation for operation.
int64_t segment_frame(const Spec &s, const Plan &p, int64_t n, int64_t i) {
  const int64_t T = s.clip_len;
  const u64 h = hash(hash(p.draws, 9), static_cast<u64>(i));
  if (s.segment_rule == kSlowFastRule) {
    const double size = static_cast<double>(n - 1) / static_cast<double>(T);
    const int64_t a = round_even(size * static_cast<double>(i)), b = round_even(size * static_cast<double>(i + 1));
    return s.training ? a + uniform(h, b - a + 1) : (a + b) / 2;
  }
  if (s.training) {
    const int64_t a = n / T;
    return a > 0 ? i * a + uniform(h, a) : round_even(static_cast<double>(i) * (static_cast<double>(n) / T));
  }
  const double a = static_cast<double>(n) / static_cast<double>(T), base = a * static_cast<double>(i);
  return static_cast<int64_t>(s.twice_sample && p.view % 2 ? base : base + a / 2);
}

void color(const Spec &s, u64 draws, Plan &p) {
  const double *j = s.jitter;
  const double lo[4] = {std::max(0.0, 1.0 - j[0]), std::max(0.0, 1.0 - j[1]), std::max(0.0, 1.0 - j[2]), -j[3]};
  const double hi[4] = {1.0 + j[0], 1.0 + j[1], 1.0 + j[2], j[3]};
  for (int i = 0; i < 4; ++i) p.color[i] = lo[i] + unit(hash(draws, 10 + i)) * (hi[i] - lo[i]);
}

// Frame t of the clip (stored frame number): see the specification.
int64_t frame_number(const Spec &s, const Plan &p, const Video &v, int64_t t) {
  const int64_t n = v.num_frames;
  int64_t f = p.start + t * p.stride;
  if (s.sampling == kStride && s.target_fps > 0) {
    // floor(linspace(start, start + span - 1, T))[t], as numpy computes it
    const double span = fps_span(s, p.stride, v), room = std::max(static_cast<double>(n) - span, 0.0);
    const double start = s.training ? static_cast<double>(uniform(hash(p.draws, 1), static_cast<int64_t>(room) + 1))
                                    : view_start(s, p.view, room);
    const double end = start + span - 1;
    const int64_t div = s.clip_len - 1;  // numpy's linspace: t * step + start, the last one exactly `end`
    const double at = t == div && div ? end : div ? static_cast<double>(t) * ((end - start) / div) + start : start;
    f = static_cast<int64_t>(std::floor(at));
  } else if (s.sampling == kSegments) {
    f = segment_frame(s, p, n, t);  // TSN's rule can round past the end of videos shorter than T/2
  }
  // Past the end only in videos shorter than the clip's extent (sampling.py: clip_extent).
  return s.short_videos == kLoop ? f % n : std::min(f, n - 1);
}

// Clip `position` of the endless sequence over `n` videos (epoch after epoch).
Plan plan_clip(const Spec &s, const Video *videos, int64_t n, int64_t position) {
  const int64_t items = items_per_epoch(s, n), length = epoch_length(s, n);
  const int64_t epoch = position / length, j = position % length % items;
  const u64 seed = static_cast<u64>(s.seed);
  Plan p{0, 0, 0, 0, 0, 0, 0, 0, position % length >= items, {1.0, 1.0, 1.0, 0.0}, 0, 0};
  int64_t crop = 0;
  if (s.training) {
    p.video = permute(j / s.clips_per_video, n, hash(hash(seed, 1), epoch));
  } else {
    p.video = j / (s.clips_per_video * s.num_crops);
    p.view = j / s.num_crops % s.clips_per_video;
    crop = j % s.num_crops;
  }
  const u64 draws = p.draws = hash(hash(hash(seed, 2), epoch), j);
  const Video &v = videos[p.video];
  p.stride = s.training ? s.stride_lo + uniform(hash(draws, 5), s.stride_hi - s.stride_lo + 1) : s.stride_lo;
  const int64_t r = s.training ? s.resize_lo + uniform(hash(draws, 6), s.resize_hi - s.resize_lo + 1) : s.resize_lo;
  const int64_t room = std::max<int64_t>(v.num_frames - (s.clip_len - 1) * p.stride - 1, 0);
  if (s.sampling == kStride && !(s.target_fps > 0))
    p.start = s.training ? uniform(hash(draws, 1), room + 1) : static_cast<int64_t>(view_start(s, p.view, room));
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
  if (s.sampling == kSegments) p.stride = 0;
  if (s.sampling == kSegments || s.target_fps > 0) p.start = frame_number(s, p, v, 0);
  return p;
}

}  // namespace dali_video
