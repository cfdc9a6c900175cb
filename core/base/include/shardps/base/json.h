// A JSON string literal for `s`: quotes and backslashes escaped, control characters as \uXXXX.
// The project writes its small JSON documents (summaries, listings, safetensors headers) by hand.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace shardps {

inline std::string JsonQuote(std::string_view s) {
  std::string o = "\"";
  for (char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      o += '\\';
      o += ch;
    } else if (ch == '\n') {
      o += "\\n";
    } else if (ch == '\t') {
      o += "\\t";
    } else if (ch == '\r') {
      o += "\\r";
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", u);
      o += buf;
    } else {
      o += ch;
    }
  }
  return o + "\"";
}

}  // namespace shardps
