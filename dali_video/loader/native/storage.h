// dali-video's clip reader: where a shard's bytes come from: a local file (pread), or an object in
// S3 or GCS (s3://bucket/key, gs://bucket/key) through DALI's FileStream, which the wheel exports.
// Opened with the object's size known (the reader's shard_sizes argument) FileStream sends no HEAD;
// one SeekRead + Read is one GET with a Range header.
//
// Retries: the clients retry by themselves (the AWS SDK's default strategy: 5xx, throttling, network
// errors, up to 10 times with backoff from 25 ms; google-cloud-cpp: 5xx/429 and transport errors for
// at most DALI_GCS_REQUEST_TIMEOUT_SEC, 60 s, waiting 1 s, 2 s, ...). But DALI's S3 read lands the
// body in the caller's buffer, and the SDK's retry reuses that buffer: after a 503 or 500 answer, or
// a body cut short, the retried GET gets its 206 and still fails ("Failed to flush response stream";
// a reset is retried fine). So a failed S3 read is tried again here with a fresh buffer, a few times
// with exponential backoff, unless its error is one that a retry cannot mend (a missing object or
// bucket, refused credentials, a range past the object's end); GCS reads are left to their client.
// tests/test_storage_reader.py shows each case in the proxy's log. What still fails reaches the
// caller as a ReadError naming the byte range; the clients' messages carry no credentials.
// Included once, by clip_reader.cc (one translation unit).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>

#include "checks.h"
#include "dali/util/file.h"

namespace dali_video {

struct ReadError {
  std::string message;
};

bool is_url(const std::string &name) { return name.find("://") != std::string::npos; }

constexpr int kAttempts = 5;  // reads of one S3 range: waits of 0.1, 0.2, 0.4, 0.8 s between them

// Whether a client's error is one that trying again cannot mend (S3's error codes, GCS's status codes).
bool permanent(const std::string &error) {
  for (const char *code : {"InvalidRange", "NoSuchKey", "NoSuchBucket", "AccessDenied", "SignatureDoesNotMatch",
                           "InvalidAccessKeyId", "outside of the file", "[NOT_FOUND]", "[PERMISSION_DENIED]",
                           "[UNAUTHENTICATED]", "[OUT_OF_RANGE]", "[INVALID_ARGUMENT]"})
    if (error.find(code) != std::string::npos) return true;
  return false;
}

std::string byte_range(u64 start, u64 end) {
  return "bytes [" + std::to_string(start) + ", " + std::to_string(end) + ")";
}

// One shard (or its .fidx) open for reading by one thread: a local file, or an object of known size.
class Object {
 public:
  // size: the object's size; for a local file 0 (then taken from the file). why: what a failure to
  // open means to the caller ("cannot read video 'a.mp4'").
  Object(const std::string &name, u64 size, const std::string &why) : size_(size) {
    if (!is_url(name)) {
      fd_ = open(name.c_str(), O_RDONLY | O_CLOEXEC);
      struct stat st{};
      if (fd_ < 0 || fstat(fd_, &st) != 0) throw ReadError{name + ": " + why + ": " + std::strerror(errno)};
      size_ = static_cast<u64>(st.st_size);
      return;
    }
    attempts_ = name.rfind("s3://", 0) == 0 ? kAttempts : 1;
    try {
      stream_ = dali::FileStream::Open(name, {false, false, false}, size);
    } catch (const std::exception &e) {
      throw ReadError{name + ": " + why + ": " + e.what()};
    }
  }
  Object(const Object &) = delete;
  Object &operator=(const Object &) = delete;
  ~Object() {
    if (fd_ >= 0) close(fd_);
  }
  u64 size() const { return size_; }

  // Reads bytes [offset, offset + n); returns how many there were (fewer: the object ends early).
  // A failure throws a ReadError whose message the caller prefixes with the object's name.
  size_t read(void *buf, size_t n, u64 offset) {
    if (!stream_) return pread_all(buf, n, offset);
    for (int attempt = 1;; ++attempt) {
      try {  // one ranged GET (FileStream::Read returns fewer bytes only at the object's end)
        stream_->SeekRead(static_cast<ptrdiff_t>(offset));
        return stream_->Read(buf, n);
      } catch (const std::exception &e) {
        if (attempt >= attempts_ || permanent(e.what()))
          throw ReadError{"reading " + byte_range(offset, offset + n) + " failed" +
                          (attempt > 1 ? " " + std::to_string(attempt) + " times" : "") + ": " + e.what()};
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100 << (attempt - 1)));
    }
  }

 private:
  size_t pread_all(void *buf, size_t n, u64 offset) {
    auto *p = static_cast<uint8_t *>(buf);
    size_t done = 0;
    while (done < n) {
      const ssize_t got = pread(fd_, p + done, n - done, static_cast<off_t>(offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0)
        throw ReadError{"reading " + byte_range(offset, offset + n) + " failed: " + std::strerror(errno)};
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
    return done;
  }

  u64 size_;
  int fd_ = -1, attempts_ = 1;
  std::unique_ptr<dali::FileStream> stream_;
};

}  // namespace dali_video
