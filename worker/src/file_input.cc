#include "file_input.h"

#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <new>

namespace shardps::worker::input {

std::string Quoted(const std::string& path) { return "'" + path + "'"; }

// ---------------------------------------------------------------------------------------------
// Whole-file reading. gzip input (detected by the 0x1f 0x8b magic) is inflated, member after
// member; any other file is passed through unchanged, so one path serves both. A gzip file must be
// gzip to its last byte: a truncated stream and data after the last member (trailing garbage,
// which zlib's gz* calls silently ignore) are refused.

Result<std::vector<uint8_t>> ReadAll(const std::string& path) {
  if (path.empty()) return InvalidArgument("no file name given");
  errno = 0;
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rbe"), &std::fclose);
  if (!f) {
    const int e = errno;
    std::string why = e != 0 ? std::strerror(e) : "out of memory";
    if (e == ENOENT || e == ENOTDIR) return NotFound("cannot open " + Quoted(path) + ": " + why);
    return IoError("cannot open " + Quoted(path) + ": " + why);
  }
  constexpr size_t kIn = size_t{1} << 20;     // read the file in 1 MiB blocks
  constexpr size_t kBlock = size_t{1} << 24;  // and grow the output 16 MiB at a time at least
  std::vector<uint8_t> in, out;
  size_t size = 0;      // bytes of `out` in use
  uint64_t offset = 0;  // file offset of in[0]
  auto read_block = [&](size_t* n) -> Status {
    *n = std::fread(in.data(), 1, in.size(), f.get());
    if (*n == 0 && std::ferror(f.get())) {
      return IoError("reading " + Quoted(path) + " failed after " + std::to_string(offset) + " bytes: " + std::strerror(errno));
    }
    return Status::Ok();
  };
  z_stream zs{};
  bool z_open = false;
  struct ZEnd {
    z_stream* zs;
    bool* open;
    ~ZEnd() {
      if (*open) inflateEnd(zs);
    }
  } z_end{&zs, &z_open};
  try {
    in.resize(kIn);
    size_t n = 0;
    SHARDPS_RETURN_IF_ERROR(read_block(&n));
    const bool gz = n >= 2 && in[0] == 0x1f && in[1] == 0x8b;
    if (!gz) {
      while (n > 0) {
        if (out.size() - size < n) out.resize(std::max(out.size() * 2, size + std::max(n, kBlock)));
        std::memcpy(out.data() + size, in.data(), n);
        size += n;
        offset += n;
        SHARDPS_RETURN_IF_ERROR(read_block(&n));
      }
      out.resize(size);
      return out;
    }
    if (inflateInit2(&zs, 15 + 16) != Z_OK) return ResourceExhausted("zlib cannot start inflating " + Quoted(path));
    z_open = true;
    bool in_member = true;
    while (n > 0) {
      zs.next_in = in.data();
      zs.avail_in = static_cast<uInt>(n);
      while (zs.avail_in > 0) {
        if (!in_member) {
          // After a member only another member may follow.
          const bool magic = zs.next_in[0] == 0x1f && (zs.avail_in < 2 || zs.next_in[1] == 0x8b);
          if (!magic) {
            const uint64_t at = offset + static_cast<uint64_t>(zs.next_in - in.data());
            return DataLoss(Quoted(path) + ": trailing garbage at byte offset " + std::to_string(at) +
                            " after the end of the gzip data (" + std::to_string(size) +
                            " decompressed bytes); the file is damaged or not one gzip file");
          }
          inflateReset(&zs);
          in_member = true;
        }
        if (out.size() - size < kBlock) out.resize(std::max(out.size() * 2, size + kBlock));
        zs.next_out = out.data() + size;
        zs.avail_out = static_cast<uInt>(std::min<size_t>(out.size() - size, UINT32_MAX));
        const int r = inflate(&zs, Z_NO_FLUSH);
        size = static_cast<size_t>(zs.next_out - out.data());
        if (r == Z_STREAM_END) {
          in_member = false;
        } else if (r == Z_BUF_ERROR) {
          if (zs.avail_out != 0) break;  // needs more input
        } else if (r != Z_OK) {
          return DataLoss(Quoted(path) + ": gzip decompression failed after " + std::to_string(size) +
                          " bytes: " + (zs.msg ? zs.msg : "error " + std::to_string(r)));
        }
      }
      offset += n;
      SHARDPS_RETURN_IF_ERROR(read_block(&n));
    }
    if (in_member) {
      return DataLoss(Quoted(path) + ": unexpected end of file after " + std::to_string(size) +
                      " decompressed bytes (truncated or corrupt gzip file)");
    }
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory reading " + Quoted(path) + " (" + std::to_string(size) + " bytes read)");
  }
  out.resize(size);
  return out;
}

// Text parsing helpers (strict: the whole token must be a number).

std::string At(const std::string& path, int64_t line) { return path + ":" + std::to_string(line) + ": "; }


bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}


Result<std::string> ReadText(const std::string& path) {
  SHARDPS_ASSIGN_OR_RETURN(std::vector<uint8_t> b, ReadAll(path));
  return std::string(b.begin(), b.end());
}

}  // namespace shardps::worker::input
