// A fresh, empty directory for one test, removed with everything in it when the object goes.
//
//   testing::ScratchDir scratch("shardps_storage");   // e.g. /tmp/shardps_storage_Ab12Cd
//   std::string file = scratch.string() + "/a.bin";
//
// The name is unique (mkdtemp) under the system temp directory (TMPDIR, else /tmp); the directory
// is private to the user (mode 0700). Failing to create it throws, which fails the test that made it.
#pragma once

#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace shardps::testing {

class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix = "shardps") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "_XXXXXX")).string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) {
      throw std::system_error(errno, std::generic_category(), "cannot create a scratch directory " + tmpl);
    }
    path_ = buf.data();
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string string() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace shardps::testing
