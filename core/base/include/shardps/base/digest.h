// SHA-256 (OpenSSL libcrypto), incremental.
//
//   Sha256 h;
//   h.Update(bytes.data(), bytes.size());
//   std::string hex = h.HexDigest();   // 64 lowercase hex characters
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace shardps {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t n);
  // Finishes the digest; Update must not be called afterwards.
  std::string HexDigest();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shardps
