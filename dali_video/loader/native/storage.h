// dali-video's clip reader: where a shard's bytes come from: a local file (pread), or an object in
// S3 or GCS (s3://bucket/key, gs://bucket/key) through DALI's FileStream, which the wheel exports.
// Opened with the object's size known (the reader's shard_sizes argument) FileStream sends no HEAD;
// one SeekRead + Read is one GET with a Range header.
//
// Retries: the clients retry by themselves (the AWS SDK's default strategy: 5xx, throttling, network
// errors, up to 10 times with backoff from 25 ms, each try given up after 3 s without a byte;
// google-cloud-cpp: 5xx/429 and transport errors for at most DALI_GCS_REQUEST_TIMEOUT_SEC, 60 s,
// waiting 1 s, 2 s, ..., a stalled transfer given up after as long). But DALI's S3 read lands the
// body in the caller's buffer, and the SDK's retry reuses that buffer: after a 503 or 500 answer, or
// a body cut short, the retried GET gets its 206 and still fails ("Failed to flush response stream";
// a reset is retried fine). So a failed S3 read is tried again here with a fresh buffer, a few times
// with exponential backoff, unless its error is one that a retry cannot mend (a missing object or
// bucket, refused credentials, a range past the object's end); GCS reads are left to their client.
// tests/test_storage_reader.py shows each case in the proxy's log.
//
// A deadline of our own (io_timeout): a store that stops answering keeps a read inside its client for
// minutes (a proxy holding connections open: each S3 try ends after 3 s, then the SDK and this file
// try again). So each read of an object runs on a thread of its own that owns its buffer and its
// stream (shared with the waiter); the waiter gives up after io_timeout seconds, or at once when the
// reader closes, the process exits or Ctrl-C comes, and the read, abandoned, ends in its client's own
// time with nothing of the waiter's left to touch. Nothing ever joins such a thread.
//
// What fails reaches the caller as a ReadError naming the byte range; `storage` tells a store's
// failure (no answer, refused, reset, 5xx after the retries, a missing object) from damaged data (an
// object shorter than its index says), which on_corrupt="skip" alone may skip. The clients' messages
// carry no credentials.
// Included once, by clip_reader.cc (one translation unit).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "checks.h"
#include "dali/util/file.h"

namespace dali_video {

struct ReadError {
  std::string message;
  bool storage = false;  // the store failed or did not answer: not damaged data, never skipped
};

// Why waits for reads end before the reads do: the process exits (Python's atexit), Ctrl-C (a SIGINT
// handler chained before Python's counts them: the reads waited on when one comes end, later ones go
// on), or their reader closes (its Closing, set by the operator's destructor or by Python's close).
std::atomic<bool> g_exiting{false};
std::atomic<uint64_t> g_interrupts{0};
std::atomic<int> g_fetching{0};  // reads of objects running, abandoned ones included

struct Closing {
  std::atomic<bool> set{false};
};

bool is_url(const std::string &name) { return name.find("://") != std::string::npos; }

// An error that says the object is shorter than its index: damaged data, not a store's failure.
bool past_end(const std::string &error) {
  for (const char *code : {"InvalidRange", "outside of the file", "[OUT_OF_RANGE]"})
    if (error.find(code) != std::string::npos) return true;
  return false;
}

// Whether a client's error is one that trying again cannot mend (S3's error codes, GCS's status codes).
bool permanent(const std::string &error) {
  if (past_end(error)) return true;
  for (const char *code : {"NoSuchKey", "NoSuchBucket", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId",
                           "[NOT_FOUND]", "[PERMISSION_DENIED]", "[UNAUTHENTICATED]", "[INVALID_ARGUMENT]"})
    if (error.find(code) != std::string::npos) return true;
  return false;
}

std::string byte_range(u64 start, u64 end) {
  return "bytes [" + std::to_string(start) + ", " + std::to_string(end) + ")";
}

// The store behind an object's URL, as errors name it: its bucket and, when the environment points
// the client elsewhere, the endpoint.
std::string store_of(const std::string &url) {
  const size_t end = url.find('/', url.find("://") + 3);
  const char *endpoint = std::getenv(url.rfind("s3://", 0) == 0 ? "AWS_ENDPOINT_URL" : "DALI_GCS_ENDPOINT_URL");
  return url.substr(0, end) + (endpoint && *endpoint ? std::string(" (endpoint ") + endpoint + ")" : "");
}

// What an error about the object `name` begins with when its store failed: the store, for an object in
// a bucket (a local file's error names its path already).
std::string store_failed(const std::string &name) {
  return is_url(name) ? "the store " + store_of(name) + " failed: " : "";
}

// One ranged read of an object, run by a thread of its own and shared with whoever waits for it: the
// bytes land in `data`, which the read owns, so that a read abandoned by its waiter writes into
// nothing the waiter frees.
struct Fetch {
  std::mutex lock;
  std::condition_variable done;
  bool finished = false, abandoned = false;
  size_t got = 0;
  int attempts = 0;
  std::string error;  // the client's last error; "" once read
  std::vector<uint8_t> data;
};

constexpr int kAttempts = 5;  // reads of one S3 range: waits of 0.1, 0.2, 0.4, 0.8 s between them

// Runs on the thread start_fetch started, and ends the count of reads running that start_fetch began.
void run_fetch(Fetch &f, const std::string &url, u64 size, u64 offset, size_t n) {
  struct Uncount {
    ~Uncount() { --g_fetching; }
  } uncount;
  const int attempts = url.rfind("s3://", 0) == 0 ? kAttempts : 1;
  for (int attempt = 1;; ++attempt) {
    std::string error;
    size_t got = 0;
    try {  // one ranged GET (FileStream::Read returns fewer bytes only at the object's end)
      auto stream = dali::FileStream::Open(url, {false, false, false}, size);
      stream->SeekRead(static_cast<ptrdiff_t>(offset));
      got = stream->Read(f.data.data(), n);
    } catch (const std::exception &e) {
      error = *e.what() ? e.what() : "an error without a message";
    } catch (...) {
      error = "an exception of an unknown type from the store's client";
    }
    std::unique_lock<std::mutex> hold(f.lock);
    if (error.empty() || attempt >= attempts || permanent(error) || f.abandoned) {
      f.got = got, f.error = error, f.attempts = attempt, f.finished = true;
      f.done.notify_all();
      return;
    }
    hold.unlock();
    std::this_thread::sleep_for(std::chrono::milliseconds(100 << (attempt - 1)));
  }
}

// Starts reading bytes [offset, offset + n) of the object at `url` (`size` bytes) on a thread of its own.
std::shared_ptr<Fetch> start_fetch(const std::string &url, u64 size, u64 offset, size_t n) {
  if (g_exiting) throw ReadError{"reading " + byte_range(offset, offset + n) + ": the process is exiting", true};
  auto f = std::make_shared<Fetch>();
  f->data.resize(n);
  ++g_fetching;  // counted before the thread starts: exit must not miss a read that is just starting
  try {
    std::thread([f, url, size, offset, n] { run_fetch(*f, url, size, offset, n); }).detach();
  } catch (...) {
    --g_fetching;
    throw;
  }
  return f;
}

// Waits for a read: its bytes into buf (returns how many there were), or a ReadError when it failed,
// when `timeout` seconds pass first, or when the wait is cut short (see Closing).
size_t finish_fetch(Fetch &f, void *buf, u64 offset, size_t n, double timeout, const Closing *closing) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout);
  const uint64_t interrupts = g_interrupts.load();
  const std::string range = byte_range(offset, offset + n);
  std::unique_lock<std::mutex> hold(f.lock);
  while (!f.finished) {
    const char *why = g_exiting ? "the process is exiting"
        : g_interrupts.load() != interrupts ? "interrupted (Ctrl-C)"
        : closing && closing->set ? "the reader is closing"
        : std::chrono::steady_clock::now() >= deadline ? "" : nullptr;
    if (why) {
      f.abandoned = true;  // its thread ends in the client's own time; nothing waits for it
      if (*why) throw ReadError{"reading " + range + " abandoned: " + why, true};
      char seconds[32];
      std::snprintf(seconds, sizeof(seconds), "%g", timeout);
      throw ReadError{"reading " + range + ": no answer within io_timeout (" + seconds + " s): the store stopped "
                      "answering", true};
    }
    f.done.wait_for(hold, std::chrono::milliseconds(50));  // wait_for: see ReadAhead::wait
  }
  if (!f.error.empty())
    throw ReadError{"reading " + range + " failed" +
                    (f.attempts > 1 ? " " + std::to_string(f.attempts) + " times" : "") + ": " + f.error,
                    !past_end(f.error)};
  std::memcpy(buf, f.data.data(), f.got);
  return f.got;
}

// How long a read of an object may take, and what cuts its wait short: one reader's.
struct Waits {
  double timeout = 60;  // seconds (io_timeout)
  const Closing *closing = nullptr;
};

// One shard (or its .fidx) open for reading by one thread: a local file, or an object of known size.
class Object {
 public:
  // size: the object's size; for a local file 0 (then taken from the file). why: what a failure to
  // open means to the caller ("cannot read video 'a.mp4'").
  Object(const std::string &name, u64 size, const std::string &why, Waits waits = {})
      : name_(name), size_(size), waits_(waits) {
    if (is_url(name)) return;  // each read opens its own stream (with the size known, no request)
    fd_ = open(name.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st{};
    if (fd_ < 0 || fstat(fd_, &st) != 0) throw ReadError{name + ": " + why + ": " + std::strerror(errno), true};
    size_ = static_cast<u64>(st.st_size);
  }
  Object(const Object &) = delete;
  Object &operator=(const Object &) = delete;
  ~Object() {
    if (fd_ >= 0) close(fd_);
  }
  u64 size() const { return size_; }
  bool remote() const { return fd_ < 0; }

  // Reads bytes [offset, offset + n); returns how many there were (fewer: the object ends early).
  // A failure throws a ReadError whose message the caller prefixes with the object's name.
  size_t read(void *buf, size_t n, u64 offset) {
    if (!remote()) return pread_all(buf, n, offset);
    return finish(*start(offset, n), buf, offset, n);
  }

  // An object's read started, to finish later: several run at once.
  std::shared_ptr<Fetch> start(u64 offset, size_t n) const { return start_fetch(name_, size_, offset, n); }
  size_t finish(Fetch &f, void *buf, u64 offset, size_t n) const {
    return finish_fetch(f, buf, offset, n, waits_.timeout, waits_.closing);
  }

 private:
  size_t pread_all(void *buf, size_t n, u64 offset) {
    auto *p = static_cast<uint8_t *>(buf);
    size_t done = 0;
    while (done < n) {
      const ssize_t got = pread(fd_, p + done, n - done, static_cast<off_t>(offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0)
        throw ReadError{"reading " + byte_range(offset, offset + n) + " failed: " + std::strerror(errno), true};
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
    return done;
  }

  std::string name_;
  u64 size_;
  Waits waits_;
  int fd_ = -1;
};

}  // namespace dali_video
