// dali-video's clip reader: a DALI CPU operator, fed by nothing, that emits the JPEG bytes of
// planned clips read from indexed TFRecord shards (see dali_video/loader/sampling.py for the plan's
// specification and dali_video/loader/pipeline.py for its use).
//
// Split by concern, as DALI's readers split loader and parser: plan.h (pure functions, mirrored by
// the Python reference; a property test holds the two equal), checks.h (a frame's bytes), read.h
// (one clip at a time), and here the operator, which runs one task per clip in DALI's thread pool
// and copies the frames out.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dali/pipeline/operator/operator.h"
#include "iterators.h"
#include "plan.h"
#include "read.h"

namespace dali_video {

// The video table this reader reads (table.h), shared with every reader of the same videos; or none
// and why in `missing`. DALI's TF plugin ends the process on a pipeline that fails to build (TF_CHECK_OK),
// so a reader that cannot start (no table: a pipeline deserialized in another process; bad arguments)
// fails at its first run instead.
std::shared_ptr<const Dataset> table_argument(const dali::OpSpec &spec, std::string &missing) {
  try {
    return find_table(spec.GetArgument<std::string>("table"));
  } catch (const std::invalid_argument &e) {
    missing = e.what();
    return nullptr;
  }
}

const Dataset &no_videos() {
  static const Dataset *none = new Dataset;
  return *none;
}

// crop y, x, h, w, flip, label, video (table row), frame, replaced, stride, the colour factors as
// float32 bits (brightness, contrast, saturation, hue), then padding (1: a clip that only fills an
// evaluation pass's last batch), then dataset (a Mixture's, else 0)
constexpr int kMetaColumns = 16;

void check_spec(const Spec &s);

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
  s.global_batch = spec.GetArgument<int>("global_batch");
  const auto area = reals("crop_area", 2), aspect = reals("crop_aspect", 4), jitter = reals("color_jitter", 4);
  DALI_ENFORCE(aspect.size() == 4, "dali-video clip reader: crop_aspect needs low, high and their logarithms");
  s.random_area = !area.empty();
  s.color = !jitter.empty();
  s.area_lo = s.random_area ? area[0] : 1.0;
  s.area_hi = s.random_area ? area[1] : 1.0;
  s.aspect_lo = aspect[0], s.aspect_hi = aspect[1], s.log_aspect_lo = aspect[2], s.log_aspect_hi = aspect[3];
  for (int i = 0; i < 4; ++i) s.jitter[i] = s.color ? jitter[i] : 0.0;
  s.sampling = spec.GetArgument<int>("sampling");
  s.segment_rule = spec.GetArgument<int>("segment_rule");
  s.twice_sample = spec.GetArgument<bool>("twice_sample");
  s.test_views = spec.GetArgument<int>("test_views");
  s.target_fps = spec.GetArgument<float>("target_fps");
  check_spec(s);
  return s;
}

// A plan's options within the ranges ClipConfig checks (a Mixture's datasets arrive as Spec words).
void check_spec(const Spec &s) {
  const int64_t most = 65535;  // as ClipConfig checks; 0.0099 below: 0.01 in float32 is a little less
  DALI_ENFORCE(s.clip_len >= 1 && s.clip_len <= most && s.stride_lo >= 1 && s.stride_hi <= most && s.crop >= 1 &&
               s.crop <= most && s.resize_lo >= 0 && s.resize_hi <= most && s.clips_per_video >= 1 &&
               s.clips_per_video <= most && (s.num_crops == 1 || s.num_crops == 3) && s.global_batch >= 0 &&
               s.aspect_lo >= 0.0099 && s.aspect_hi <= 100 && s.area_lo > 0 && s.area_hi <= 1 &&
               std::fabs(s.log_aspect_lo) <= 5 && std::fabs(s.log_aspect_hi) <= 5 && (s.sampling == kStride ||
               s.sampling == kSegments) && (s.segment_rule == kSlowFastRule || s.segment_rule == kTsnRule) &&
               s.test_views >= kDefaultViews && s.test_views <= kMMAction && s.target_fps >= 0 && s.target_fps <= 1e4,
               "dali-video clip reader: a plan argument is out of range");
}
constexpr int64_t kMaxTries = 100;  // damaged clips in a row before on_corrupt="skip" gives up: not chance

// Clips read ahead by threads of the reader's own (io_threads): while DALI decodes one batch, the
// next batches' clips are read, so a store's latency (a bucket: tens of ms a request) is hidden by
// io_threads requests in flight, not by DALI's num_threads, which also sizes the GPU decoder's thread
// pool and buffers (resources.py). A batch's clips are a function of its first position alone, so
// reading ahead changes no clip.
class ReadAhead {
 public:
  using Fill = std::function<void(Clip &, std::string &, int64_t)>;  // clip, its error, its position
  struct Batch {
    int64_t first = 0;
    std::vector<Clip> clips;
    std::vector<std::string> errors;
    size_t left = 0;  // clips not yet read
  };

  ReadAhead(int threads, Fill fill) : fill_(std::move(fill)) {
    try {
      for (int k = 0; k < threads; ++k) threads_.emplace_back([this] { work(); });
    } catch (const std::system_error &e) {  // a pids or memory limit: joinable threads left would abort
      stop();
      DALI_FAIL("dali-video clip reader: cannot start io_threads (" + std::to_string(threads) + ") threads, " +
                std::to_string(threads_.size()) + " started: " + e.what() + "; pass a lower io_threads");
    }
  }

  ~ReadAhead() { stop(); }

  size_t queued() const { return batches_.size(); }  // batches_ changes on the operator's thread only

  // Queues the clips at positions first .. first + size - 1.
  void submit(int64_t first, int size) {
    auto batch = std::make_unique<Batch>();
    batch->first = first;
    batch->clips.resize(size);
    batch->errors.assign(size, "");
    batch->left = size;
    std::lock_guard<std::mutex> hold(lock_);
    for (int i = 0; i < size; ++i) jobs_.push_back({batch.get(), i});
    batches_.push_back(std::move(batch));
    wake_.notify_all();
  }

  // The oldest queued batch, once its clips are read.
  std::unique_ptr<Batch> take() {
    std::unique_lock<std::mutex> hold(lock_);
    wait(done_, hold, [&] { return batches_.front()->left == 0; });
    auto batch = std::move(batches_.front());
    batches_.pop_front();
    return batch;
  }

 private:
  struct Job {
    Batch *batch;
    int i;
  };

  void stop() {
    {
      std::lock_guard<std::mutex> hold(lock_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread &t : threads_) t.join();
  }

  // condition_variable::wait through wait_for: GCC 12's libstdc++ exports wait(unique_lock&) at
  // GLIBCXX_3.4.30 (a manylinux_2_35 wheel: not RHEL 9's glibc 2.34), wait_for is inline.
  template <typename Ready>
  static void wait(std::condition_variable &cv, std::unique_lock<std::mutex> &hold, Ready ready) {
    while (!ready()) cv.wait_for(hold, std::chrono::seconds(1));
  }

  void work() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> hold(lock_);
        wait(wake_, hold, [&] { return stop_ || !jobs_.empty(); });
        if (stop_) return;
        job = jobs_.front();
        jobs_.pop_front();
      }
      try {  // fill catches everything; an exception here would end the process
        fill_(job.batch->clips[job.i], job.batch->errors[job.i], job.batch->first + job.i);
      } catch (...) {
        job.batch->errors[job.i] = "dali-video clip reader: an unexpected error reading clip " +
                                   std::to_string(job.batch->first + job.i);
      }
      {
        std::lock_guard<std::mutex> hold(lock_);
        --job.batch->left;
      }
      done_.notify_all();
    }
  }

  Fill fill_;
  std::mutex lock_;
  std::condition_variable wake_, done_;
  std::deque<Job> jobs_;
  std::deque<std::unique_ptr<Batch>> batches_;
  bool stop_ = false;
  std::vector<std::thread> threads_;  // last: joined before the queues they use are destroyed
};

// Readers by the instance argument Python gives each pipeline (ClipPipeline.close closes its own:
// the reads its reader waits for end at once, so that DALI, which waits for the operator's run before
// it deletes a pipeline, deletes it without waiting for a store that does not answer).
std::mutex g_readers_lock;
std::unordered_map<std::string, std::vector<std::weak_ptr<Closing>>> g_readers;

void enroll(const std::string &instance, const std::shared_ptr<Closing> &closing) {
  if (instance.empty()) return;
  std::lock_guard<std::mutex> hold(g_readers_lock);
  auto &readers = g_readers[instance];
  readers.erase(std::remove_if(readers.begin(), readers.end(), [](auto &r) { return r.expired(); }), readers.end());
  readers.push_back(closing);
}

class ClipReader : public dali::Operator<dali::CPUBackend> {
 public:
  explicit ClipReader(const dali::OpSpec &spec)
      : Operator(spec), table_(table_argument(spec, failure_)), d_(table_ ? *table_ : no_videos()) {
    if (!table_) return;  // RunImpl says why (see table_argument)
    try {
      configure(spec);
    } catch (const std::exception &e) {
      failure_ = e.what();  // said now too: what fails next in the build (threads, memory) may hide it
      std::cerr << "dali-video clip reader: cannot read: " << failure_ << std::endl;
    }
  }

  ~ClipReader() override {
    closing_->set = true;  // reads waited for end now, not at io_timeout
    ahead_.reset();
  }

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &, const dali::Workspace &) override { return false; }

  void RunImpl(dali::Workspace &ws) override {
    if (!failure_.empty()) DALI_FAIL(failure_);
    const int requested = ws.GetRequestedBatchSize(0);
    const int batch = per_clip_ ? requested : requested / static_cast<int>(s_.clip_len);
    DALI_ENFORCE(per_clip_ || requested % s_.clip_len == 0,
                 "dali-video clip reader: the batch size must be a multiple of clip_len");
    DALI_ENFORCE(s_.training || !s_.global_batch || s_.global_batch == int64_t{batch} * num_shards_,
                 "dali-video clip reader: global_batch must be the batch size times num_shards");
    if (ahead_) {
      // This batch and enough after it for io_threads clips in flight beyond it.
      while (ahead_->queued() < 1 + static_cast<size_t>((io_threads_ + batch - 1) / batch))
        ahead_->submit(claim(batch), batch);
      auto read = ahead_->take();
      DALI_ENFORCE(read->clips.size() == static_cast<size_t>(batch),
                   "dali-video clip reader: io_threads needs the same batch size at every iteration");
      std::swap(clips_, read->clips);
      std::swap(errors_, read->errors);
    } else {
      clips_.resize(batch);
      errors_.assign(batch, "");
      const int64_t first = claim(batch);
      auto &pool = ws.GetThreadPool();
      for (int i = 0; i < batch; ++i)
        pool.AddWork([this, i, first](int) { fill(clips_[i], errors_[i], first + i); }, -i);
      pool.RunAll();
    }
    for (const std::string &e : errors_)
      if (!e.empty()) DALI_FAIL(e);
    emit(ws, batch);
  }

 private:
  // The reader's arguments, checked; throws naming the first that is wrong.
  void configure(const dali::OpSpec &spec) {
    s_ = read_spec(spec);
    per_clip_ = spec.GetArgument<bool>("per_clip");
    skip_ = spec.GetArgument<bool>("skip_corrupt");
    pad_ = spec.GetArgument<bool>("pad");
    positions_ = spec.GetArgument<bool>("positions");
    heads_ = spec.GetArgument<bool>("heads");
    DALI_ENFORCE(!(per_clip_ && (positions_ || heads_)), "dali-video clip reader: positions and heads need "
                 "per_clip=False");
    flip_columns_ = spec.GetArgument<int>("flip_columns");
    DALI_ENFORCE(flip_columns_ >= 0 && flip_columns_ <= d_.label_width,
                 "dali-video clip reader: flip_columns is out of the label heads' columns");
    shard_id_ = spec.GetArgument<int>("shard_id");
    num_shards_ = spec.GetArgument<int>("num_shards");
    next_ = spec.GetArgument<int64_t>("initial_clip");
    io_threads_ = spec.GetArgument<int>("io_threads");
    DALI_ENFORCE(io_threads_ >= 0, "dali-video clip reader: io_threads must be 0 or more");
    waits_.timeout = spec.GetArgument<float>("io_timeout");
    DALI_ENFORCE(waits_.timeout > 0, "dali-video clip reader: io_timeout must be above 0");
    waits_.closing = closing_.get();
    enroll(spec.GetArgument<std::string>("instance"), closing_);
    enroll_built(closing_);  // a TF iterator's: closed when the iterator is deleted (iterators.h)
    throw_at_ = spec.GetArgument<int64_t>("test_throw_at");
    throw_ = spec.GetArgument<std::string>("test_throw");
    read_parts(spec);
    if (io_threads_ > 0)
      ahead_ = std::make_unique<ReadAhead>(io_threads_, [this](Clip &c, std::string &error, int64_t position) {
        fill(c, error, position);
      });
    // Each dataset's own pairs (a Mixture's recipes differ): a clip's label swaps by its dataset's only.
    const auto pairs = spec.GetRepeatedArgument<int>("flip_label_pairs");
    auto datasets = spec.GetRepeatedArgument<int>("flip_pair_datasets");
    if (datasets.empty()) datasets.assign(pairs.size() / 2, 0);
    DALI_ENFORCE(pairs.size() % 2 == 0 && datasets.size() * 2 == pairs.size(),
                 "dali-video clip reader: flip_label_pairs must hold (a, b) pairs, one flip_pair_datasets each");
    swap_.resize(parts_.size());
    for (size_t k = 0; k < pairs.size(); k += 2) {
      const int d = datasets[k / 2];
      DALI_ENFORCE(d >= 0 && static_cast<size_t>(d) < parts_.size(),
                   "dali-video clip reader: a flip pair's dataset is out of range");
      swap_[d][pairs[k]] = pairs[k + 1];
      swap_[d][pairs[k + 1]] = pairs[k];
    }
  }

  // The position of this reader's share of the next global batch, which it then passes.
  int64_t claim(int batch) {
    const int64_t first = next_ + static_cast<int64_t>(shard_id_) * batch;
    next_ += static_cast<int64_t>(batch) * num_shards_;
    return first;
  }

  // Reads the clip at `position` (slot r of its period, clip q of that slot's dataset) into c, or its
  // error; with skip_corrupt, a damaged clip gives way to the next ones of its dataset's epoch.
  void fill(Clip &c, std::string &error, int64_t position) {
    const auto [d, q, pads] = locate(position);
    const Part &part = parts_[d];
    // epoch_length: one dataset's evaluation passes are padded to whole global batches (a Mixture's
    // datasets carry global_batch 0: locate pads its pass)
    const int64_t items = epoch_length(part.spec, part.count), epoch_start = q - q % items;
    c.dataset = d;
    for (int64_t tries = 0; tries < std::min(items, kMaxTries); ++tries) {
      c.plan = plan_clip(part.spec, d_.videos.data() + part.first, part.count,
                         epoch_start + (q - epoch_start + tries) % items);
      c.plan.video += part.first;
      // A replacement fills this position: it is padding as this position is, not as its source was.
      c.plan.padding = pads || q % items >= items_per_epoch(part.spec, part.count);
      c.replaced = static_cast<int>(tries);
      try {
        if (position == throw_at_) throw_for_test();
        read_clip(d_, waits_, part.spec, c);
        error.clear();
        return;
      } catch (const ReadError &e) {
        if (!skip_ || e.storage) {  // a store's failure is not a damaged clip: never skipped
          error = e.message;
          return;
        }
        std::cerr << "dali-video: on_corrupt='skip': replacing a clip: " << e.message << std::endl;
        error = "on_corrupt='skip' gave up after " + std::to_string(tries + 1) +
                     " damaged clips in a row; last: " + e.message;
      } catch (const std::exception &e) {  // anything else (memory, a bug) names the video and fails the
        error = cannot_read(c) + e.what();  // run: on a thread of the reader's own it would end the process
        return;
      } catch (...) {
        error = cannot_read(c) + "an exception of an unknown type";
        return;
      }
    }
  }

  // How an error of clip c that is no ReadError begins: its shard and video.
  std::string cannot_read(const Clip &c) const {
    return "dali-video clip reader: " + d_.shards[d_.shard[c.plan.video]] + ": video '" + d_.filenames[c.plan.video] +
           "': cannot read the clip: ";
  }

  // The test_throw argument's exception (tests/test_faults.py: none may end the process).
  [[noreturn]] void throw_for_test() const {
    if (throw_ == "bad_alloc") throw std::bad_alloc();
    throw 42;  // not an exception class at all
  }

  // The dataset, its clip position and whether the clip only pads a Mixture's evaluation pass, of
  // `position` (MixPlan.locate in sampling.py): in training, slot r of its period (one dataset: itself);
  // a Mixture's evaluation pass holds each dataset's views in turn, padded to whole global batches.
  std::tuple<int, int64_t, bool> locate(int64_t position) const {
    if (s_.training || !mixed_) {
      const int64_t period = slot_.size(), r = position % period;
      return {slot_[r], position / period * weight_[slot_[r]] + rank_[r], false};
    }
    auto views = [](const Part &p) { return items_per_epoch(p.spec, p.count); };
    int64_t total = 0;
    for (const Part &p : parts_) total += views(p);
    const int64_t q = position % padded(total, s_.global_batch);
    int64_t j = q % total;
    int d = 0;
    for (; j >= views(parts_[d]); ++d) j -= views(parts_[d]);
    return {d, j, q >= total};
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
    if (positions_) {  // each frame's position t in its clip: the predicate that regroups frames into clips
      auto &pos = ws.Output<dali::CPUBackend>(2);
      pos.Resize(dali::uniform_list_shape(batch * T, dali::TensorShape<>{}), DALI_INT32);
      for (int i = 0; i < batch; ++i)
        for (int64_t t = 0; t < T; ++t) *pos.mutable_tensor<int32_t>(sample(i, t)) = static_cast<int32_t>(t);
    }
    if (heads_) {  // each frame's clip's class ids of every label head (the first flip_columns swapped as label)
      auto &ids = ws.Output<dali::CPUBackend>(2 + positions_);
      const int64_t W = d_.label_width;
      ids.Resize(dali::uniform_list_shape(batch * T, {W}), DALI_INT32);
      for (int i = 0; i < batch; ++i) {
        const int32_t *row = d_.head_labels.data() + clips_[i].plan.video * W;
        for (int64_t t = 0; t < T; ++t) {
          int32_t *out = ids.mutable_tensor<int32_t>(sample(i, t));
          for (int64_t k = 0; k < W; ++k) out[k] = k < flip_columns_ ? swapped(clips_[i], row[k]) : row[k];
        }
      }
    }
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
              int32_t(p.y), int32_t(p.x), int32_t(p.h), int32_t(p.w), int32_t(p.flip), label(c),
              d_.table_row[p.video], int32_t(d_.first[p.video] + c.frames[t]), c.replaced, int32_t(p.stride)};
          for (int k = 0; k < 4; ++k) {
            const float factor = static_cast<float>(p.color[k]);
            std::memcpy(&values[10 + k], &factor, sizeof(factor));
          }
          values[14] = int32_t(p.padding);
          values[15] = c.dataset;
          std::memcpy(meta.mutable_tensor<int32_t>(sample(i, t)), values, sizeof(values));
        }
      }, -i);
    }
    pool.RunAll();
  }

  // The datasets read: a Mixture's (Spec words, videos per dataset, the schedule's slots), or the one.
  void read_parts(const dali::OpSpec &spec) {
    const auto words = spec.GetRepeatedArgument<int64_t>("parts");
    const auto counts = spec.GetRepeatedArgument<int64_t>("part_videos");
    slot_ = spec.GetRepeatedArgument<int>("mix_slots");
    mixed_ = !words.empty();
    if (!mixed_) {
      parts_ = {{s_, 0, static_cast<int64_t>(d_.videos.size())}};
      slot_ = {0};
    }
    constexpr size_t kWords = sizeof(Spec) / 8;
    DALI_ENFORCE(words.size() == counts.size() * kWords && (words.empty() || !slot_.empty()),
                 "dali-video clip reader: the mixture arguments disagree in length");
    for (size_t k = 0, first = 0; k < counts.size(); first += counts[k++]) {
      Part part{{}, static_cast<int64_t>(first), counts[k]};
      std::memcpy(&part.spec, words.data() + k * kWords, sizeof(Spec));
      check_spec(part.spec);
      DALI_ENFORCE(part.count >= 1 && static_cast<int64_t>(first) + part.count <= static_cast<int64_t>(d_.videos.size())
                   && part.spec.clip_len == s_.clip_len,
                   "dali-video clip reader: a mixture's dataset is out of range");
      parts_.push_back(part);
    }
    DALI_ENFORCE(parts_.back().first + parts_.back().count == static_cast<int64_t>(d_.videos.size()),
                 "dali-video clip reader: the mixture's datasets do not cover the videos");
    std::vector<int64_t> seen(parts_.size(), 0);
    for (int d : slot_) {
      DALI_ENFORCE(d >= 0 && static_cast<size_t>(d) < parts_.size(),
                   "dali-video clip reader: a mix slot is out of range");
      rank_.push_back(seen[d]++);
    }
    weight_ = seen;
    for (const Part &part : parts_) {
      DALI_ENFORCE(weight_[&part - parts_.data()] >= 1, "dali-video clip reader: a mixture's dataset has no slot");
      for (int64_t v = part.first; v < part.first + part.count; ++v)
        DALI_ENFORCE(part.spec.target_fps == 0 || d_.videos[v].fps > 0,
                     "dali-video clip reader: target_fps needs every video's fps");
    }
  }

  // A flipped clip's label, swapped when its dataset's flip_label_pairs pair it (left/right classes).
  int32_t label(const Clip &c) const { return swapped(c, d_.label[c.plan.video]); }

  // Class l of clip c, swapped when c is flipped and its dataset's flip_label_pairs pair l.
  int32_t swapped(const Clip &c, int32_t l) const {
    const auto &swap = swap_[c.dataset];
    const auto it = c.plan.flip ? swap.find(l) : swap.end();
    return it == swap.end() ? l : it->second;
  }

  struct Part {
    Spec spec;
    int64_t first, count;  // its videos: rows first..first+count-1
  };

  std::shared_ptr<Closing> closing_ = std::make_shared<Closing>();  // first: read waits see it to the end
  std::string failure_;  // why the reader cannot read: no table_, or its arguments (before table_: its initializer writes it)
  std::shared_ptr<const Dataset> table_;  // held while this reader lives (shared with the process's readers)
  const Dataset &d_;
  Waits waits_;  // io_timeout, and this reader's Closing
  Spec s_{};
  std::vector<Part> parts_;
  bool mixed_ = false;  // a Mixture's datasets (Spec words), not the one dataset of s_
  std::vector<int> slot_;  // the dataset of each slot of the mixture's period
  std::vector<int64_t> rank_, weight_;  // a slot's rank among its dataset's slots; slots per dataset
  std::vector<std::unordered_map<int32_t, int32_t>> swap_;  // per dataset
  bool per_clip_ = false, skip_ = false, pad_ = false, positions_ = false, heads_ = false;
  int flip_columns_ = 0;  // the label heads' columns that flip_label_pairs swap (the first head's)
  int shard_id_ = 0, num_shards_ = 1;
  int64_t next_ = 0;  // position of this reader's next batch (to read) in the global clip sequence
  std::vector<Clip> clips_;  // the batch being emitted (without read-ahead, kept: buffers keep capacity)
  std::vector<std::string> errors_;
  int io_threads_ = 0;
  int64_t throw_at_ = -1;
  std::string throw_;
  std::unique_ptr<ReadAhead> ahead_;  // last: its threads stop before the members fill reads go
};

}  // namespace dali_video

// The plan alone, for the property test that holds it equal to the Python reference:
// spec as in struct Spec, videos as (num_frames, height, width, fps bits) rows, out as struct Plan, and the
// clip's clip_len frame numbers into frames.
extern "C" int dali_video_plan(const int64_t *spec, const int64_t *videos, int64_t n, int64_t position,
                               int64_t *out, int64_t *frames) {
  dali_video::Spec s;
  std::memcpy(&s, spec, sizeof(s));
  const auto *v = reinterpret_cast<const dali_video::Video *>(videos);
  const auto p = dali_video::plan_clip(s, v, n, position);
  std::memcpy(out, &p, sizeof(p));
  for (int64_t t = 0; t < s.clip_len; ++t) frames[t] = dali_video::frame_number(s, p, v[p.video], t);
  return 0;
}

// Python's atexit: every wait for a read ends now (nothing may wait for a store at exit), and no
// read starts.
// A read abandoned inside a store's client may still run then: the clients' static destructors, which
// run after Python's exit, would tear the client down under it and abort the process ("pure virtual
// method called"). So, registered now (after the clients' statics: it runs before their
// destructors), a handler ends the process with Python's exit status at once while such a read runs.
extern "C" void dali_video_exiting() {
  dali_video::g_exiting = true;
  on_exit([](int status, void *) {
    if (dali_video::g_fetching > 0) {
      std::fflush(nullptr);
      _exit(status);
    }
  }, nullptr);
}

// ClipPipeline.close: the readers of this instance stop waiting for reads.
extern "C" void dali_video_close(const char *instance) {
  std::lock_guard<std::mutex> hold(dali_video::g_readers_lock);
  auto it = dali_video::g_readers.find(instance);
  if (it == dali_video::g_readers.end()) return;
  for (auto &r : it->second)
    if (auto closing = r.lock()) closing->set = true;
  dali_video::g_readers.erase(it);
}

// Ctrl-C: SIGINT's handler (Python's, installed before) is chained after one that counts the
// interrupts, so that a wait for a read that hangs ends and Python can raise KeyboardInterrupt.
namespace {
struct sigaction g_python_sigint;
void on_sigint(int sig, siginfo_t *info, void *context) {
  dali_video::g_interrupts.fetch_add(1);  // lock-free: safe in a signal handler
  const struct sigaction &prev = g_python_sigint;
  if (prev.sa_flags & SA_SIGINFO) {
    if (prev.sa_sigaction) prev.sa_sigaction(sig, info, context);
  } else if (prev.sa_handler == SIG_DFL) {
    signal(SIGINT, SIG_DFL);
    raise(SIGINT);
  } else if (prev.sa_handler != SIG_IGN && prev.sa_handler) {
    prev.sa_handler(sig);
  }
}
}  // namespace

extern "C" int dali_video_watch_sigint() {
  static std::once_flag once;
  static int result = 0;
  std::call_once(once, [] {
    struct sigaction ours{};
    ours.sa_sigaction = on_sigint;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&ours.sa_mask);
    result = sigaction(SIGINT, &ours, &g_python_sigint);
  });
  return result;
}

// The JPEG check alone, for the property test that holds it equal to index_tools' jpeg_problem (which
// dali-video-index verify runs): the problem ("" when none), cut to cap - 1 bytes, NUL-terminated.
extern "C" void dali_video_jpeg_problem(const uint8_t *p, size_t n, int64_t height, int64_t width, char *out,
                                        size_t cap) {
  const std::string problem = dali_video::jpeg_problem(p, n, height, width);
  const size_t k = std::min(problem.size(), cap - 1);
  std::memcpy(out, problem.data(), k);
  out[k] = 0;
}

namespace dali {

DALI_REGISTER_OPERATOR(DaliVideoClips, dali_video::ClipReader, CPU);

DALI_SCHEMA(DaliVideoClips)
    .DocStr("Reads planned clips of JPEG frames from indexed TFRecord shards (dali-video's reader). "
            "Outputs the exact JPEG bytes per frame and int32 metadata (crop y, x, h, w, flip, label, "
            "video, frame, replaced, stride, the float32 bits of brightness, contrast, saturation, hue, padding and "
            "dataset): "
            "per frame, or with per_clip one JPEG output per frame position and the metadata per clip.")
    .NumInput(0)
    .OutputFn([](const dali::OpSpec &spec) {
      if (spec.GetArgument<bool>("per_clip")) return spec.GetArgument<int>("clip_len") + 1;
      return 2 + spec.GetArgument<bool>("positions") + spec.GetArgument<bool>("heads");
    })
    .AddArg("table", "The key of the video table to read, made in this process by dali_video's clip_pipeline "
            "(dali_video/loader/native/table.py): the shards, their frame indexes and the videos.", DALI_STRING)
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
    .AddOptionalArg("global_batch", "Evaluation: clips per global batch (batch size x num_shards); each pass is "
                    "padded to whole global batches with clips marked as padding. 0: no padding.", 0)
    .AddOptionalArg("shard_id", "This reader's share of each global batch.", 0)
    .AddOptionalArg("num_shards", "Readers sharing each global batch.", 1)
    .AddOptionalArg<int64_t>("initial_clip", "Position of the first clip in the global sequence.", int64_t{0})
    .AddOptionalArg("per_clip", "One JPEG output per frame position, metadata per clip.", false)
    .AddOptionalArg("positions", "A third output: each frame's position in its clip (int32 scalar), per frame.",
                    false)
    .AddOptionalArg("heads", "One more output: per frame, its clip's class ids of every label head side by side "
                    "(int32 [label width], -1 padded; the video table's head labels).", false)
    .AddOptionalArg("flip_columns", "The label heads' columns (the first head's) whose class ids a flipped clip "
                    "swaps by flip_label_pairs, as the label.", 0)
    .AddOptionalArg("pad", "Zero-pad every frame's bytes to the batch's longest (uniform shapes, for TensorFlow).",
                    false)
    .AddOptionalArg("sampling", "0: T frames a stride apart; 1: one frame from each of T segments.", 0)
    .AddOptionalArg("segment_rule", "Segments: 0 SlowFast's get_seq_frames, 1 TSN (MMAction2's SampleFrames).", 0)
    .AddOptionalArg("twice_sample", "TSN evaluation: odd views take the segments' starts.", false)
    .AddOptionalArg("test_views", "Evaluation views: 0 default, 1 slowfast, 2 slowfast_offset, 3 mmaction.", 0)
    .AddOptionalArg("target_fps", "Sample at this frame rate (each video's fps); 0: as stored.", 0.f)
    .AddOptionalArg("flip_label_pairs", "Label pairs (a, b, c, d, ...) that a flipped clip swaps.", std::vector<int>{})
    .AddOptionalArg("flip_pair_datasets", "The dataset of each flip label pair (empty: all the first's).",
                    std::vector<int>{})
    .AddOptionalArg("parts", "A Mixture: each dataset's plan (struct Spec as int64 words).", std::vector<int64_t>{})
    .AddOptionalArg("part_videos", "A Mixture: videos per dataset (in the videos' order).", std::vector<int64_t>{})
    .AddOptionalArg("mix_slots", "A Mixture: the dataset of each slot of one period.", std::vector<int>{})
    .AddOptionalArg("skip_corrupt", "Replace a damaged clip by the next ones instead of failing.", false)
    .AddOptionalArg("io_threads", "Read the next batches' clips ahead with this many threads of the reader's "
                    "own (requests in flight to a bucket); 0: read each batch in DALI's thread pool.", 0)
    .AddOptionalArg("io_timeout", "Seconds a read of an object in a bucket may take, retries included, before "
                    "the run fails naming the store.", 60.f)
    .AddOptionalArg("instance", "A name that dali_video_close(name) closes this reader by.", std::string())
    .AddOptionalArg<int64_t>("test_throw_at", "For tests: the clip position whose read throws test_throw.",
                             int64_t{-1})
    .AddOptionalArg("test_throw", "For tests: bad_alloc, or anything else for an int.",
                    std::string());

}  // namespace dali
