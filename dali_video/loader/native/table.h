// dali-video's clip reader: the tables a reader reads, one copy per process.
//
// A dataset's video table (Dataset: its shards and one entry per video) is made once per process
// from Python (dali_video_table_make, see dali_video/loader/native/table.py) and shared by every
// reader of the same videos: each GPU's, validation's, a dataset iterated again. Each shard's frame
// table (the .fidx rows, 16 bytes a frame) is loaded on first use and shared by every video table
// that names the same index: a local .fidx is mapped, so that every process on the host shares its
// pages; an object in a bucket is read whole, in one request. Either way its CRC32C (the index
// header's) is checked once, before any row is used, so a damaged index is an error naming it, never
// a read of bytes the video does not hold (locate in read.h bounds each read by the video's record).
// Included once, by clip_reader.cc (one translation unit).
#pragma once

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "checks.h"
#include "plan.h"
#include "storage.h"

namespace dali_video {

struct Row {  // one frame of the frame index (.fidx), as stored (little-endian)
  u64 offset;
  uint32_t length, crc;
};
static_assert(sizeof(Row) == 16);

// One shard's frame table, checked against its CRC32C: mapped from a local file, or read whole.
// dali-video's tools replace an index whole (a new file, renamed into place), which leaves a mapping
// of the old one intact; a file truncated in place under a running reader would end it (SIGBUS).
class FrameTable {
 public:
  // fidx: the .fidx path or URL; offset, rows, crc: its header's frame_table_offset,
  // num_frame_rows, frame_table_crc; shard: for the error's way out.
  // waits: the first reader's (an object's read: its io_timeout and Closing).
  FrameTable(const std::string &fidx, u64 offset, u64 rows, uint32_t crc, const std::string &shard,
             const Waits &waits)
      : rows_(rows) {
    const u64 n = rows * sizeof(Row);
    const std::string rebuild = "; rebuild it with: dali-video-index build " + shard;
    if (n && !is_url(fidx)) {
      const int fd = open(fidx.c_str(), O_RDONLY | O_CLOEXEC);
      struct stat st{};
      if (fd < 0 || fstat(fd, &st) != 0) {  // as Object's: a missing mount is not damaged data
        const std::string why = std::strerror(errno);
        if (fd >= 0) close(fd);
        throw ReadError{fidx + ": cannot read the frame table: " + why, true};
      }
      if (static_cast<u64>(st.st_size) < offset + n) {
        close(fd);
        throw ReadError{fidx + ": truncated frame table: " + byte_range(offset, offset + n) + " wanted, the file "
                        "holds " + std::to_string(st.st_size) + " bytes" + rebuild};
      }
      const u64 page = static_cast<u64>(sysconf(_SC_PAGESIZE)), start = offset / page * page;
      map_len_ = offset + n - start;
      map_ = mmap(nullptr, map_len_, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
      close(fd);
      if (map_ == MAP_FAILED) {
        map_ = nullptr;
        throw ReadError{fidx + ": cannot map the frame table: " + std::strerror(errno), true};
      }
      data_ = reinterpret_cast<const Row *>(static_cast<const uint8_t *>(map_) + (offset - start));
    } else if (n) {
      copy_.resize(rows);
      size_t got;
      try {
        Object file(fidx, offset + n, "cannot read the frame table", waits);
        got = file.read(copy_.data(), n, offset);
      } catch (const ReadError &e) {
        throw ReadError{(e.storage ? store_failed(fidx) : "") + fidx + ": cannot read the frame table: " + e.message,
                        e.storage};
      }
      if (got != n)
        throw ReadError{fidx + ": truncated frame table: " + byte_range(offset, offset + n) + " wanted" + rebuild};
      data_ = copy_.data();
    }
    if (crc32c(reinterpret_cast<const uint8_t *>(data_), n) != crc)
      throw ReadError{fidx + ": the frame table fails its CRC32C (a damaged index, or one changed while read)" +
                      rebuild};
  }
  FrameTable(const FrameTable &) = delete;
  FrameTable &operator=(const FrameTable &) = delete;
  ~FrameTable() {
    if (map_) munmap(map_, map_len_);
  }
  const Row *rows() const { return data_; }
  u64 size() const { return rows_; }

 private:
  u64 rows_;
  const Row *data_ = nullptr;
  void *map_ = nullptr;
  size_t map_len_ = 0;
  std::vector<Row> copy_;  // an object's rows (in a bucket)
};

// The frame table of an index, shared by every reader in the process while one uses it. Keyed by
// the index's identity: path, table offset, rows and CRC, and for a local file its inode, size and
// modification time (a rebuilt index is a new table).
std::shared_ptr<const FrameTable> frame_table(const std::string &fidx, u64 offset, u64 rows, uint32_t crc,
                                              const std::string &shard, const Waits &waits) {
  // Never destroyed: a reader's thread may still ask while statics are destroyed at exit.
  static auto &lock = *new std::mutex;
  static auto &tables = *new std::map<std::string, std::weak_ptr<const FrameTable>>;
  std::string key = fidx + "\n" + std::to_string(offset) + " " + std::to_string(rows) + " " + std::to_string(crc);
  struct stat st{};
  if (!is_url(fidx) && stat(fidx.c_str(), &st) == 0)
    key += " " + std::to_string(st.st_dev) + " " + std::to_string(st.st_ino) + " " + std::to_string(st.st_size) +
           " " + std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
  {
    std::lock_guard<std::mutex> hold(lock);
    if (auto found = tables[key].lock()) return found;
  }
  auto made = std::make_shared<const FrameTable>(fidx, offset, rows, crc, shard, waits);  // outside the lock
  std::lock_guard<std::mutex> hold(lock);
  for (auto it = tables.begin(); it != tables.end();)  // forget tables no reader uses any more
    it = it->second.expired() ? tables.erase(it) : std::next(it);
  if (auto found = tables[key].lock()) return found;  // another thread made it meanwhile
  tables[key] = made;
  return made;
}

// What the operator reads: the shards and their frame tables, and one entry per video (columns:
// add one here and in kVideoColumns / table.py's VIDEO_COLUMNS).
struct Dataset {
  struct Slot {  // a shard's frame table, loaded on first use
    std::timed_mutex lock;  // timed: a reader waiting for another's load stops when it closes
    std::shared_ptr<const FrameTable> table;
    std::atomic<int> failures{0};  // the store's failures to read it: who waited meanwhile gets the last
    std::string failure;
    std::string damage;  // its bytes were wrong (CRC, size): every later clip of the shard gets this at once
  };
  std::vector<std::string> shards, filenames;  // a shard's local path, or its s3:// or gs:// URL
  std::vector<u64> shard_size, table_offset, table_rows;  // bytes; its frame table's place in its .fidx, rows
  std::vector<uint32_t> table_crc;
  std::vector<int> shard, label, table_row;
  std::vector<int64_t> row;  // the item's first frame in its shard's frame table
  std::vector<int64_t> first;  // that frame's number in its video (a segment's first frame; 0 for a whole video)
  std::vector<Video> videos;
  std::vector<u64> record_start, record_end;  // the video's record: no read goes outside these bytes
  int64_t label_width = 0;  // class ids per item of its label heads, side by side (-1 pads)
  std::vector<int32_t> head_labels;  // [videos, label_width]
  std::unique_ptr<Slot[]> slots;  // one per shard
};

// The frame table of shard `shard` of d, loaded (and checked) on first use.
const FrameTable &shard_table(const Dataset &d, int shard, const Waits &waits) {
  Dataset::Slot &slot = d.slots[shard];
  const int failures = slot.failures;
  std::unique_lock<std::timed_mutex> hold(slot.lock, std::defer_lock);  // other shards' first reads go on
  while (!hold.try_lock_for(std::chrono::milliseconds(50)))  // another reader loads it, perhaps from a hung store
    if (waits.closing && waits.closing->set)
      throw ReadError{d.shards[shard] + ".fidx: waiting for the frame table abandoned: the reader is closing", true};
  if (slot.table) return *slot.table;
  // The store failed while this thread waited: its failure, not another io_timeout per waiting clip.
  if (slot.failures != failures) throw ReadError{slot.failure, true};
  if (!slot.damage.empty()) throw ReadError{slot.damage, false};  // not read and checked again per clip
  try {
    slot.table = frame_table(d.shards[shard] + ".fidx", d.table_offset[shard], d.table_rows[shard],
                             d.table_crc[shard], d.shards[shard], waits);
  } catch (const ReadError &e) {
    if (waits.closing && waits.closing->set) throw;  // this reader's wait was cut short: the others read it
    if (e.storage)
      slot.failure = e.message, ++slot.failures;
    else
      slot.damage = e.message;
    throw;
  }
  return *slot.table;
}

// The columns of dali_video_table_make's videos, in order (table.py's VIDEO_COLUMNS).
enum VideoColumn {
  kShard, kRow, kFrames, kHeight, kWidth, kLabel, kTableRow, kRecordStart, kRecordEnd, kFirst, kVideoColumns
};

// A Dataset from the columns Python hands over (see dali_video_table_make); throws std::invalid_argument
// naming the first value out of range.
std::shared_ptr<const Dataset> make_dataset(int64_t num_shards, const char *const *shards, const int64_t *shard_columns,
                                            int64_t num_videos, const int64_t *columns, const double *fps,
                                            const char *names, int64_t names_len, int64_t label_width,
                                            const int64_t *head_labels) {
  auto d = std::make_shared<Dataset>();
  auto fail = [](const std::string &what) { throw std::invalid_argument("dali-video clip reader: " + what); };
  for (int64_t s = 0; s < num_shards; ++s) {
    const int64_t *c = shard_columns + 4 * s;  // table offset, rows, CRC, shard size
    if (c[0] < 0 || c[1] < 0 || c[2] < 0 || c[2] > UINT32_MAX || c[3] < 0)
      fail("a shard's frame table is out of range");
    d->shards.push_back(shards[s]);
    d->table_offset.push_back(u64(c[0]));
    d->table_rows.push_back(u64(c[1]));
    d->table_crc.push_back(uint32_t(c[2]));
    d->shard_size.push_back(u64(c[3]));
  }
  for (int64_t v = 0; v < num_videos; ++v) {
    const int64_t *c = columns + kVideoColumns * v;
    // Frame sides up to JPEG's 65535 keep the plan's products (sides x scales) inside int64.
    if (c[kShard] < 0 || c[kShard] >= num_shards || c[kRow] < 0 || c[kFrames] < 1 || c[kHeight] < 1 ||
        c[kWidth] < 1 || c[kHeight] > 65535 || c[kWidth] > 65535 || c[kLabel] < INT32_MIN || c[kLabel] > INT32_MAX ||
        c[kTableRow] < 0 || c[kTableRow] > INT32_MAX || !(fps[v] >= 0 && fps[v] <= 1e6) || c[kFirst] < 0 ||
        c[kFirst] > c[kRow] || c[kFirst] + c[kFrames] > INT32_MAX)
      fail("video " + std::to_string(v) + ": its shard, row, size, label, fps or first frame is out of range");
    const int s = int(c[kShard]);
    if (u64(c[kRow]) + u64(c[kFrames]) > d->table_rows[s])  // its frames' rows lie in its shard's table
      fail(d->shards[s] + ".fidx: video " + std::to_string(v) + "'s frames lie past the frame table's " +
           std::to_string(d->table_rows[s]) + " rows");
    if (c[kRecordStart] < 0 || c[kRecordEnd] < c[kRecordStart] || u64(c[kRecordEnd]) > d->shard_size[s])
      fail(d->shards[s] + ": video " + std::to_string(v) + "'s record lies outside the shard's " +
           std::to_string(d->shard_size[s]) + " bytes");
    d->shard.push_back(int(c[kShard]));
    d->row.push_back(c[kRow]);
    d->first.push_back(c[kFirst]);
    d->videos.push_back({c[kFrames], c[kHeight], c[kWidth], fps[v]});
    d->label.push_back(int(c[kLabel]));
    d->table_row.push_back(int(c[kTableRow]));
    d->record_start.push_back(u64(c[kRecordStart]));
    d->record_end.push_back(u64(c[kRecordEnd]));
  }
  for (int64_t start = 0; start <= names_len;) {
    const char *end = static_cast<const char *>(std::memchr(names + start, '\n', names_len - start));
    const int64_t stop = end ? end - names : names_len;
    d->filenames.emplace_back(names + start, stop - start);
    start = stop + 1;
  }
  if (num_videos < 1 || d->filenames.size() != size_t(num_videos)) fail("the videos' names disagree with the videos");
  if (label_width < 0) fail("the label heads' width is negative");
  d->label_width = label_width;
  for (int64_t k = 0; k < num_videos * label_width; ++k) {
    if (head_labels[k] < -1 || head_labels[k] > INT32_MAX)
      fail("video " + std::to_string(k / label_width) + ": a class id of its label heads is out of range");
    d->head_labels.push_back(int32_t(head_labels[k]));
  }
  d->slots = std::make_unique<Dataset::Slot[]>(num_shards);
  return d;
}

// The video tables of this process: by key (Python's digest of the videos), while a reader or a
// Python hold uses them; a hold (a handle) keeps one alive between the pipeline's build and its readers.
struct Tables {
  std::mutex lock;
  std::map<std::string, std::weak_ptr<const Dataset>> by_key;
  std::map<int64_t, std::shared_ptr<const Dataset>> holds;
  int64_t next = 0;

  int64_t hold(const std::shared_ptr<const Dataset> &d) {
    holds[next] = d;
    return next++;
  }
};

Tables &tables() {
  static Tables *t = new Tables;  // never destroyed: readers may outlive static destruction at exit
  return *t;
}

// The video table under `key`, or an error saying how a reader gets one.
std::shared_ptr<const Dataset> find_table(const std::string &key) {
  Tables &t = tables();
  std::lock_guard<std::mutex> hold(t.lock);
  auto it = t.by_key.find(key);
  std::shared_ptr<const Dataset> d = it == t.by_key.end() ? nullptr : it->second.lock();
  if (!d)
    throw std::invalid_argument("dali-video clip reader: no video table '" + key + "' in this process: the reader's "
                                "table is made by dali_video's clip_pipeline (or clip_dataset) in the same process, "
                                "and lives as long as the pipeline it returned");
  return d;
}

}  // namespace dali_video

// A hold on the video table under `key`, if this process has it: a handle for dali_video_table_release,
// else -1 (then make it).
extern "C" int64_t dali_video_table_hold(const char *key) {
  auto &t = dali_video::tables();
  std::lock_guard<std::mutex> hold(t.lock);
  auto it = t.by_key.find(key);
  auto d = it == t.by_key.end() ? nullptr : it->second.lock();
  return d ? t.hold(d) : -1;
}

// Makes the video table `key` (see make_dataset: shard_columns [num_shards, 4], columns [num_videos,
// kVideoColumns], names '\n'-separated, head_labels [num_videos, label_width]) and returns a hold on it;
// -1 and the reason in error (cap bytes).
extern "C" int64_t dali_video_table_make(const char *key, int64_t num_shards, const char *const *shards,
                                         const int64_t *shard_columns, int64_t num_videos, const int64_t *columns,
                                         const double *fps, const char *names, int64_t names_len,
                                         int64_t label_width, const int64_t *head_labels, char *error, int64_t cap) {
  try {
    auto d = dali_video::make_dataset(num_shards, shards, shard_columns, num_videos, columns, fps, names, names_len,
                                      label_width, head_labels);
    auto &t = dali_video::tables();
    std::lock_guard<std::mutex> hold(t.lock);
    for (auto it = t.by_key.begin(); it != t.by_key.end();)
      it = it->second.expired() ? t.by_key.erase(it) : std::next(it);
    auto &slot = t.by_key[key];
    if (auto found = slot.lock()) return t.hold(found);  // made by another thread meanwhile
    slot = d;
    return t.hold(d);
  } catch (const std::exception &e) {
    std::snprintf(error, cap, "%s", e.what());
    return -1;
  }
}

extern "C" void dali_video_table_release(int64_t handle) {
  auto &t = dali_video::tables();
  std::shared_ptr<const dali_video::Dataset> last;  // destroyed after the lock is let go
  std::lock_guard<std::mutex> hold(t.lock);
  auto it = t.holds.find(handle);
  if (it == t.holds.end()) return;
  last = std::move(it->second);
  t.holds.erase(it);
}
