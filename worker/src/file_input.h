// Internal to the worker's readers (data.cc, sparse_data.cc): whole files (plain or gzip) and
// strict text parsing, so every reader refuses the same malformed input with the same words.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "shardps/base/status.h"

namespace shardps::worker::input {

// The whole file. gzip input (detected by the 0x1f 0x8b magic) is inflated, member after member;
// any other file is passed through unchanged. A gzip file must be gzip to its last byte: a
// truncated stream and data after the last member are refused.
Result<std::vector<uint8_t>> ReadAll(const std::string& path);
// The same as text.
Result<std::string> ReadText(const std::string& path);

// "'path'", and "path:line: " for error texts.
std::string Quoted(const std::string& path);
std::string At(const std::string& path, int64_t line);

bool IsSpace(char c);
std::string_view Trim(std::string_view s);

// Integer or float via std::from_chars (locale-independent, no leading spaces, no trailing junk).
// One leading '+' is accepted; floats must be finite.
template <typename T>
bool ParseNumber(std::string_view s, T* out) {
  if (!s.empty() && s.front() == '+') {
    s.remove_prefix(1);
    if (!s.empty() && (s.front() == '+' || s.front() == '-')) return false;
  }
  if (s.empty()) return false;
  T v{};
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return false;
  if constexpr (std::is_floating_point_v<T>) {
    if (!std::isfinite(v)) return false;
  }
  *out = v;
  return true;
}

// Calls fn(line_number, line) for every line of `text` (1-based, "\n" or "\r\n" endings).
template <typename Fn>
Status ForEachLine(std::string_view text, Fn&& fn) {
  if (text.size() >= 3 && static_cast<uint8_t>(text[0]) == 0xEF && static_cast<uint8_t>(text[1]) == 0xBB &&
      static_cast<uint8_t>(text[2]) == 0xBF) {
    text.remove_prefix(3);  // UTF-8 byte order mark
  }
  int64_t line_no = 0;
  size_t b = 0;
  while (b < text.size()) {
    size_t e = text.find('\n', b);
    if (e == std::string_view::npos) e = text.size();
    ++line_no;
    SHARDPS_RETURN_IF_ERROR(fn(line_no, text.substr(b, e - b)));
    b = e + 1;
  }
  return Status::Ok();
}

}  // namespace shardps::worker::input
