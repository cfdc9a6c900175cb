#include "shardps/secagg/random_source.h"

#include <openssl/rand.h>

#include <algorithm>

#include "crypto.h"

namespace shardps::secagg {

Status SystemRandomSource::Fill(std::span<uint8_t> out) {
  // RAND_bytes takes an int length.
  constexpr size_t kChunk = size_t{1} << 30;
  for (size_t at = 0; at < out.size(); at += kChunk) {
    const size_t n = std::min(kChunk, out.size() - at);
    if (RAND_bytes(out.data() + at, static_cast<int>(n)) != 1) return Internal("RAND_bytes failed");
  }
  return Status::Ok();
}

ChaCha20RandomSource::ChaCha20RandomSource(const std::array<uint8_t, 32>& key) : key_(key) {}

ChaCha20RandomSource ChaCha20RandomSource::FromSeed(uint64_t seed) {
  std::array<uint8_t, 32> key{};
  for (int i = 0; i < 8; ++i) key[i] = static_cast<uint8_t>(seed >> (8 * i));
  return ChaCha20RandomSource(key);
}

ChaCha20RandomSource::~ChaCha20RandomSource() { internal::Wipe(key_.data(), key_.size()); }
ChaCha20RandomSource::ChaCha20RandomSource(ChaCha20RandomSource&&) noexcept = default;
ChaCha20RandomSource& ChaCha20RandomSource::operator=(ChaCha20RandomSource&&) noexcept = default;

Status ChaCha20RandomSource::Fill(std::span<uint8_t> out) {
  if (!stream_) {
    SHARDPS_ASSIGN_OR_RETURN(stream_, internal::ChaCha20Stream::Create(key_, internal::Nonce12{}, 0));
  }
  return stream_->Next(out);
}

}  // namespace shardps::secagg
