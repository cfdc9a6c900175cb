// shardps ckpt: inspect the checkpoints of a directory.
//   shardps ckpt list DIR [--json]
//   shardps ckpt verify DIR [VERSION]
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>

#include "commands.h"
#include "shardps/core/checkpoint.h"

namespace shardps::tools {
namespace {

int Usage() {
  std::cerr << "usage: shardps ckpt list DIR [--json]\n"
               "       shardps ckpt verify DIR [VERSION]   (exit 1 on any problem)\n";
  return 2;
}

std::string Escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') o += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) continue;
    o += ch;
  }
  return o;
}

int List(const std::string& dir, bool json) {
  const auto all = ListCheckpoints(dir, /*verify=*/true);
  if (json) {
    std::ostringstream o;
    o << "[";
    for (size_t i = 0; i < all.size(); ++i) {
      const auto& v = all[i];
      o << (i ? "," : "") << "{\"version\":" << v.version << ",\"path\":\"" << Escape(v.path) << "\",\"valid\":"
        << (v.status.ok() ? "true" : "false") << ",\"step\":" << v.manifest.step() << ",\"epoch\":" << v.manifest.epoch()
        << ",\"bytes\":" << v.bytes << ",\"servers\":" << v.manifest.num_servers() << ",\"workers\":" << v.manifest.num_workers()
        << ",\"created_unix_ms\":" << v.manifest.created_unix_ms() << ",\"error\":\""
        << (v.status.ok() ? "" : Escape(v.status.message())) << "\"}";
    }
    o << "]";
    std::cout << o.str() << std::endl;
    return 0;
  }
  std::printf("%-9s %-6s %10s %8s %12s  %s\n", "version", "valid", "step", "servers", "bytes", "problem");
  for (const auto& v : all) {
    std::printf("%-9llu %-6s %10llu %8u %12llu  %s\n", static_cast<unsigned long long>(v.version), v.status.ok() ? "yes" : "NO",
                static_cast<unsigned long long>(v.manifest.step()), v.manifest.num_servers(),
                static_cast<unsigned long long>(v.bytes), v.status.ok() ? "" : v.status.message().c_str());
  }
  return 0;
}

int Verify(const std::string& dir, const std::string& version) {
  int bad = 0, total = 0;
  if (!version.empty()) {
    auto v = ResolveCheckpoint(dir + "@" + version, nullptr);
    if (!v.ok()) {
      std::cerr << "shardps ckpt verify: " << v.status().message() << "\n";
      return 1;
    }
    std::cout << v->path << ": OK (step " << v->manifest.step() << ", " << v->bytes << " bytes)\n";
    return 0;
  }
  for (auto& v : ListCheckpoints(dir, /*verify=*/true)) {
    ++total;
    if (v.status.ok()) {
      std::cout << v.path << ": OK (step " << v.manifest.step() << ", " << v.bytes << " bytes)\n";
    } else {
      ++bad;
      std::cout << v.path << ": BAD: " << v.status.message() << "\n";
    }
  }
  if (total == 0) {
    std::cerr << "shardps ckpt verify: no checkpoint versions in '" << dir << "'\n";
    return 1;
  }
  return bad == 0 ? 0 : 1;
}

}  // namespace

int CkptMain(int argc, char** argv) {
  if (argc < 3) return Usage();
  const std::string cmd = argv[1], dir = argv[2];
  if (cmd == "list") {
    if (argc > 4 || (argc == 4 && std::string(argv[3]) != "--json")) return Usage();
    return List(dir, argc == 4);
  }
  if (cmd == "verify") {
    if (argc > 4) return Usage();
    return Verify(dir, argc == 4 ? argv[3] : "");
  }
  return Usage();
}

}  // namespace shardps::tools
