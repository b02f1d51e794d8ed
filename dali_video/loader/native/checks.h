// dali-video's clip reader: the checks of a frame's bytes (CRC32C, JPEG markers); never
// reads past the bytes it is given.
// Included once, by clip_reader.cc (one translation unit).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace dali_video {

using u64 = uint64_t;

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

}  // namespace dali_video
