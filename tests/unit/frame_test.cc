// Framing: EncodeFrame / DecodeFramePrefix / DecodeFrame / VerifyPayload, round trips and every
// malformed input the decoder has to reject without crashing.
#include "shardps/net/frame.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "shardps/base/crc32c.h"

// ---- allocation probe: the largest single allocation made while tracking is on ----
namespace {
std::atomic<bool> g_track_allocs{false};
std::atomic<size_t> g_max_alloc{0};
}  // namespace

// noinline: keeps GCC's -Wmismatched-new-delete from pairing an inlined malloc/free with new/delete.
[[gnu::noinline]] void* operator new(std::size_t n) {
  if (g_track_allocs.load(std::memory_order_relaxed)) {
    size_t m = g_max_alloc.load(std::memory_order_relaxed);
    while (n > m && !g_max_alloc.compare_exchange_weak(m, n)) {
    }
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace shardps {
namespace {

constexpr size_t kPrefix = kFramePrefixBytes;

void Put16(std::vector<uint8_t>& b, size_t at, uint16_t v) {
  for (int i = 0; i < 2; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put64(std::vector<uint8_t>& b, size_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t Get16(const std::vector<uint8_t>& b, size_t at) {
  return static_cast<uint16_t>(b[at] | (b[at + 1] << 8));
}
uint32_t Get32(const std::vector<uint8_t>& b, size_t at) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | b[at + i];
  return v;
}
uint64_t Get64(const std::vector<uint8_t>& b, size_t at) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[at + i];
  return v;
}

// Recomputes the frame CRC (prefix bytes [0,28) + everything after the prefix) and writes it
// little-endian at byte 28, so a deliberately altered frame gets past the CRC check.
void Reseal(std::vector<uint8_t>& f) {
  uint32_t crc = Crc32c(f.data(), 28);
  crc = Crc32cExtend(crc, f.data() + kPrefix, f.size() - kPrefix);
  Put32(f, 28, crc);
}

wire::Header FullHeader() {
  wire::Header h;
  h.set_op(wire::PUSH_PULL);
  h.set_request_id(0x0123456789ABCDEFull);
  h.set_sender(-7);
  h.set_table(3);
  h.set_chunk(12);
  h.set_key_begin(1'000'000);
  h.set_key_end(1'262'144);
  h.set_step(987654321);
  h.set_dtype(wire::F32);
  h.set_codec(0);  // the identity codec
  h.set_element_count(262144);
  h.set_reply_to(wire::PULL);
  h.set_error_code(5);
  h.set_error("checksum mismatch on chunk 12");
  h.set_timeout_ms(30'000);
  h.set_layout_digest(0xFEDCBA9876543210ull);
  h.set_barrier_id(42);
  return h;
}

std::vector<uint8_t> Payload(size_t n) {
  std::vector<uint8_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(i * 31 + 7);
  return p;
}

std::vector<uint8_t> ValidFrame(bool checksum = true) {
  const std::vector<uint8_t> payload = Payload(64);
  return EncodeFrame(FullHeader(), payload, checksum);
}

bool IsDecodeError(StatusCode c) { return c == StatusCode::kDataLoss || c == StatusCode::kResourceExhausted; }

void ExpectHeadersEqual(const wire::Header& a, const wire::Header& b) {
  EXPECT_EQ(a.op(), b.op());
  EXPECT_EQ(a.request_id(), b.request_id());
  EXPECT_EQ(a.sender(), b.sender());
  EXPECT_EQ(a.table(), b.table());
  EXPECT_EQ(a.chunk(), b.chunk());
  EXPECT_EQ(a.key_begin(), b.key_begin());
  EXPECT_EQ(a.key_end(), b.key_end());
  EXPECT_EQ(a.step(), b.step());
  EXPECT_EQ(a.dtype(), b.dtype());
  EXPECT_EQ(a.codec(), b.codec());
  EXPECT_EQ(a.element_count(), b.element_count());
  EXPECT_EQ(a.reply_to(), b.reply_to());
  EXPECT_EQ(a.error_code(), b.error_code());
  EXPECT_EQ(a.error(), b.error());
  EXPECT_EQ(a.timeout_ms(), b.timeout_ms());
  EXPECT_EQ(a.layout_digest(), b.layout_digest());
  EXPECT_EQ(a.barrier_id(), b.barrier_id());
  EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString());
}

// ---------------------------------------------------------------- round trips

TEST(FrameTest, PrefixLayout) {
  const wire::Header h = FullHeader();
  const std::vector<uint8_t> payload = Payload(100);
  const std::vector<uint8_t> f = EncodeFrame(h, payload, /*checksum_payload=*/true);
  ASSERT_EQ(f.size(), kPrefix + h.ByteSizeLong());
  EXPECT_EQ(f[0], 'S');
  EXPECT_EQ(f[1], 'P');
  EXPECT_EQ(f[2], 'S');
  EXPECT_EQ(f[3], 'F');
  EXPECT_EQ(Get32(f, 0), kFrameMagic);
  EXPECT_EQ(Get16(f, 4), kFrameVersion);
  EXPECT_EQ(Get16(f, 6), kFrameFlagPayloadCrc);
  EXPECT_EQ(Get32(f, 8), h.ByteSizeLong());
  EXPECT_EQ(Get32(f, 12), 0u);
  EXPECT_EQ(Get64(f, 16), 100u);
  EXPECT_EQ(Get32(f, 24), Crc32c(payload.data(), payload.size()));
  uint32_t crc = Crc32c(f.data(), 28);
  crc = Crc32cExtend(crc, f.data() + kPrefix, f.size() - kPrefix);
  EXPECT_EQ(Get32(f, 28), crc);
  // The header bytes are the protobuf serialization.
  EXPECT_EQ(std::string(f.begin() + kPrefix, f.end()), h.SerializeAsString());
}

TEST(FrameTest, RoundTripAllFieldsWithPayloadCrc) {
  const wire::Header h = FullHeader();
  const std::vector<uint8_t> payload = Payload(1000);
  const std::vector<uint8_t> f = EncodeFrame(h, payload, true);
  Result<Frame> r = DecodeFrame(f, FrameLimits{});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ExpectHeadersEqual(r->header, h);
  EXPECT_EQ(r->payload_bytes, 1000u);
  ASSERT_TRUE(r->payload_crc.has_value());
  EXPECT_EQ(*r->payload_crc, Crc32c(payload.data(), payload.size()));
  EXPECT_TRUE(VerifyPayload(*r, payload).ok());
}

TEST(FrameTest, RoundTripWithoutPayloadCrc) {
  const wire::Header h = FullHeader();
  const std::vector<uint8_t> payload = Payload(1000);
  const std::vector<uint8_t> f = EncodeFrame(h, payload, false);
  EXPECT_EQ(Get16(f, 6), 0u);
  EXPECT_EQ(Get32(f, 24), 0u);
  Result<Frame> r = DecodeFrame(f, FrameLimits{});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ExpectHeadersEqual(r->header, h);
  EXPECT_EQ(r->payload_bytes, 1000u);
  EXPECT_FALSE(r->payload_crc.has_value());
  EXPECT_TRUE(VerifyPayload(*r, payload).ok());
}

TEST(FrameTest, RoundTripEmptyHeaderAndPayload) {
  const wire::Header h;  // all defaults: serializes to zero bytes
  const std::vector<uint8_t> f = EncodeFrame(h, {}, true);
  ASSERT_EQ(f.size(), kPrefix);
  EXPECT_EQ(Get32(f, 8), 0u);
  Result<Frame> r = DecodeFrame(f, FrameLimits{});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->header.op(), wire::OP_UNSPECIFIED);
  EXPECT_EQ(r->payload_bytes, 0u);
  ASSERT_TRUE(r->payload_crc.has_value());
  EXPECT_EQ(*r->payload_crc, 0u);
  EXPECT_TRUE(VerifyPayload(*r, {}).ok());
}

TEST(FrameTest, RoundTripEveryOp) {
  for (int op = wire::Op_MIN; op <= wire::Op_MAX; ++op) {
    wire::Header h;
    h.set_op(static_cast<wire::Op>(op));
    h.set_request_id(static_cast<uint64_t>(op) * 1000 + 1);
    const std::vector<uint8_t> payload = Payload(static_cast<size_t>(op));
    for (bool checksum : {false, true}) {
      Result<Frame> r = DecodeFrame(EncodeFrame(h, payload, checksum), FrameLimits{});
      ASSERT_TRUE(r.ok()) << "op " << op << ": " << r.status().ToString();
      EXPECT_EQ(r->header.op(), h.op());
      EXPECT_EQ(r->header.request_id(), h.request_id());
      EXPECT_EQ(r->payload_bytes, payload.size());
      EXPECT_EQ(r->payload_crc.has_value(), checksum);
      EXPECT_TRUE(VerifyPayload(*r, payload).ok());
    }
  }
}

TEST(FrameTest, RoundTripJobAgreement) {
  // The TCP job agreement has its own op and fields; values are signed (a version, or -1 for a
  // process that failed).
  for (int64_t value : {int64_t{-1}, int64_t{0}, int64_t{1}, INT64_MIN, INT64_MAX}) {
    wire::Header h;
    h.set_op(wire::JOB_AGREE);
    h.set_sender(3);
    h.set_agree_round(7);
    h.set_agree_reduce(wire::AGREE_MAX);
    h.set_agree_value(value);
    Result<Frame> r = DecodeFrame(EncodeFrame(h, {}, false), FrameLimits{});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->header.op(), wire::JOB_AGREE);
    EXPECT_EQ(r->header.agree_round(), 7u);
    EXPECT_EQ(r->header.agree_reduce(), wire::AGREE_MAX);
    EXPECT_EQ(r->header.agree_value(), value);
    EXPECT_EQ(r->header.step(), 0u);  // nothing travels in the fields of other ops
    EXPECT_EQ(r->header.barrier_id(), 0u);
  }
}

TEST(FrameTest, DecodeFramePrefixReportsFields) {
  const wire::Header h = FullHeader();
  const std::vector<uint8_t> payload = Payload(77);
  const std::vector<uint8_t> f = EncodeFrame(h, payload, true);
  // Only the 32 prefix bytes are needed.
  Result<FramePrefix> p = DecodeFramePrefix(std::span<const uint8_t>(f.data(), kPrefix), FrameLimits{});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->version, kFrameVersion);
  EXPECT_EQ(p->flags, kFrameFlagPayloadCrc);
  EXPECT_EQ(p->header_bytes, h.ByteSizeLong());
  EXPECT_EQ(p->payload_bytes, 77u);
  EXPECT_EQ(p->payload_crc, Crc32c(payload.data(), payload.size()));
  EXPECT_EQ(p->frame_crc, Get32(f, 28));
}

TEST(FrameTest, VerifyPayloadDetectsCorruption) {
  const std::vector<uint8_t> payload = Payload(256);
  Result<Frame> r = DecodeFrame(EncodeFrame(FullHeader(), payload, true), FrameLimits{});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  for (size_t bit = 0; bit < payload.size() * 8; bit += 13) {
    std::vector<uint8_t> bad = payload;
    bad[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    Status s = VerifyPayload(*r, bad);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << "bit " << bit;
    EXPECT_FALSE(s.message().empty());
  }
}

TEST(FrameTest, VerifyPayloadWithoutCrcAcceptsAnyBytesOfTheRightLength) {
  const std::vector<uint8_t> payload = Payload(256);
  Result<Frame> r = DecodeFrame(EncodeFrame(FullHeader(), payload, false), FrameLimits{});
  ASSERT_TRUE(r.ok());
  std::vector<uint8_t> other = payload;
  other[10] ^= 0xFF;
  EXPECT_TRUE(VerifyPayload(*r, other).ok());
}

TEST(FrameTest, VerifyPayloadDetectsWrongLength) {
  const std::vector<uint8_t> payload = Payload(256);
  for (bool checksum : {false, true}) {
    Result<Frame> r = DecodeFrame(EncodeFrame(FullHeader(), payload, checksum), FrameLimits{});
    ASSERT_TRUE(r.ok());
    const std::vector<uint8_t> shorter(payload.begin(), payload.end() - 1);
    std::vector<uint8_t> longer = payload;
    longer.push_back(0);
    for (const std::vector<uint8_t>* p : {&shorter, const_cast<const std::vector<uint8_t>*>(&longer)}) {
      Status s = VerifyPayload(*r, *p);
      EXPECT_EQ(s.code(), StatusCode::kDataLoss);
      EXPECT_FALSE(s.message().empty());
    }
    EXPECT_EQ(VerifyPayload(*r, {}).code(), StatusCode::kDataLoss);
  }
}

// ---------------------------------------------------------------- malformed input

void ExpectDataLoss(const Result<Frame>& r, const std::string& keyword) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().ToString();
  EXPECT_FALSE(r.status().message().empty());
  if (!keyword.empty()) {
    EXPECT_NE(r.status().message().find(keyword), std::string::npos) << r.status().ToString();
  }
}

TEST(FrameMalformedTest, EmptyInput) {
  ExpectDataLoss(DecodeFrame({}, FrameLimits{}), "truncated");
  Result<FramePrefix> p = DecodeFramePrefix({}, FrameLimits{});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kDataLoss);
  EXPECT_FALSE(p.status().message().empty());
}

TEST(FrameMalformedTest, TruncatedAtEveryCutPoint) {
  const std::vector<uint8_t> f = ValidFrame();
  ASSERT_GT(f.size(), kPrefix + 20);  // the header has real bytes to cut into
  for (size_t cut = 0; cut < f.size(); ++cut) {
    const std::vector<uint8_t> part(f.begin(), f.begin() + cut);
    Result<Frame> r = DecodeFrame(part, FrameLimits{});
    SCOPED_TRACE("cut at " + std::to_string(cut));
    ExpectDataLoss(r, "truncated");
    if (cut < kPrefix) {
      Result<FramePrefix> p = DecodeFramePrefix(part, FrameLimits{});
      ASSERT_FALSE(p.ok());
      EXPECT_EQ(p.status().code(), StatusCode::kDataLoss);
    }
  }
  EXPECT_TRUE(DecodeFrame(f, FrameLimits{}).ok());
}

TEST(FrameMalformedTest, BadMagic) {
  for (size_t byte = 0; byte < 4; ++byte) {
    std::vector<uint8_t> f = ValidFrame();
    f[byte] ^= 0x20;
    Reseal(f);
    ExpectDataLoss(DecodeFrame(f, FrameLimits{}), "magic");
    Result<FramePrefix> p = DecodeFramePrefix(f, FrameLimits{});
    EXPECT_EQ(p.status().code(), StatusCode::kDataLoss);
  }
  // Big-endian magic is not the same frame.
  std::vector<uint8_t> f = ValidFrame();
  f[0] = 'F';
  f[1] = 'S';
  f[2] = 'P';
  f[3] = 'S';
  Reseal(f);
  ExpectDataLoss(DecodeFrame(f, FrameLimits{}), "magic");
}

TEST(FrameMalformedTest, BadVersion) {
  for (uint16_t v : {uint16_t{0}, uint16_t{2}, uint16_t{0x0100}, uint16_t{0xFFFF}}) {
    std::vector<uint8_t> f = ValidFrame();
    Put16(f, 4, v);
    Reseal(f);
    SCOPED_TRACE("version " + std::to_string(v));
    ExpectDataLoss(DecodeFrame(f, FrameLimits{}), "version");
  }
}

TEST(FrameMalformedTest, UnknownFlags) {
  for (int bit = 1; bit < 16; ++bit) {
    for (uint16_t base : {uint16_t{0}, kFrameFlagPayloadCrc}) {
      std::vector<uint8_t> f = ValidFrame();
      Put16(f, 6, static_cast<uint16_t>(base | (1u << bit)));
      Reseal(f);
      SCOPED_TRACE("flag bit " + std::to_string(bit));
      ExpectDataLoss(DecodeFrame(f, FrameLimits{}), "flags");
    }
  }
}

TEST(FrameMalformedTest, UnknownFlagsMessageShowsTheFlagsValue) {
  // Regression: the value was once printed in decimal after a "0x" prefix.
  std::vector<uint8_t> f = ValidFrame(false);
  Put16(f, 6, 0x0010);
  Reseal(f);
  Result<Frame> r = DecodeFrame(f, FrameLimits{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message().find("0x16"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("0x10"), std::string::npos) << r.status().message();
}

TEST(FrameMalformedTest, NonZeroReserved) {
  for (uint32_t v : {1u, 0x80u, 0x10000u, 0x80000000u, 0xFFFFFFFFu}) {
    std::vector<uint8_t> f = ValidFrame();
    Put32(f, 12, v);
    Reseal(f);
    SCOPED_TRACE("reserved " + std::to_string(v));
    ExpectDataLoss(DecodeFrame(f, FrameLimits{}), "reserved");
  }
}

TEST(FrameMalformedTest, HugeHeaderLenIsRejectedBeforeAllocating) {
  std::vector<uint8_t> p(kPrefix, 0);
  Put32(p, 0, kFrameMagic);
  Put16(p, 4, kFrameVersion);
  Put16(p, 6, 0);
  Put32(p, 8, 0xFFFFFFFFu);
  Put32(p, 12, 0);
  Put64(p, 16, 0);
  Reseal(p);  // CRC over the prefix alone; the check must fire before the CRC anyway

  g_max_alloc.store(0);
  g_track_allocs.store(true);
  Result<Frame> r = DecodeFrame(p, FrameLimits{});
  Result<FramePrefix> pr = DecodeFramePrefix(p, FrameLimits{});
  g_track_allocs.store(false);

  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
  EXPECT_FALSE(r.status().message().empty());
  ASSERT_FALSE(pr.ok());
  EXPECT_EQ(pr.status().code(), StatusCode::kResourceExhausted);
  // Only small allocations (the error message) happened: nothing sized by header_len.
  EXPECT_LT(g_max_alloc.load(), size_t{4096});
}

TEST(FrameMalformedTest, HeaderLenLimitBoundary) {
  const std::vector<uint8_t> f = ValidFrame();
  const uint32_t header_len = Get32(f, 8);
  FrameLimits at;
  at.max_header_bytes = header_len;
  EXPECT_TRUE(DecodeFrame(f, at).ok());
  FrameLimits below;
  below.max_header_bytes = header_len - 1;
  Result<Frame> r = DecodeFrame(f, below);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_FALSE(r.status().message().empty());

  // Default limit: a prefix announcing exactly the limit is merely truncated; one more is too big.
  std::vector<uint8_t> p(f.begin(), f.begin() + kPrefix);
  Put32(p, 8, FrameLimits{}.max_header_bytes);
  EXPECT_EQ(DecodeFrame(p, FrameLimits{}).status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(DecodeFramePrefix(p, FrameLimits{}).ok());
  Put32(p, 8, FrameLimits{}.max_header_bytes + 1);
  EXPECT_EQ(DecodeFrame(p, FrameLimits{}).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(DecodeFramePrefix(p, FrameLimits{}).status().code(), StatusCode::kResourceExhausted);
}

TEST(FrameMalformedTest, HugePayloadLen) {
  std::vector<uint8_t> f = ValidFrame();
  Put64(f, 16, 0xFFFFFFFFFFFFFFFFull);
  Reseal(f);
  Result<Frame> r = DecodeFrame(f, FrameLimits{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
  EXPECT_FALSE(r.status().message().empty());
  Result<FramePrefix> p = DecodeFramePrefix(f, FrameLimits{});
  EXPECT_EQ(p.status().code(), StatusCode::kResourceExhausted);

  // Exactly the limit is fine, one more is not.
  Put64(f, 16, FrameLimits{}.max_payload_bytes);
  Reseal(f);
  Result<Frame> ok = DecodeFrame(f, FrameLimits{});
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->payload_bytes, FrameLimits{}.max_payload_bytes);
  Put64(f, 16, FrameLimits{}.max_payload_bytes + 1);
  Reseal(f);
  EXPECT_EQ(DecodeFrame(f, FrameLimits{}).status().code(), StatusCode::kResourceExhausted);

  // A custom limit.
  FrameLimits small;
  small.max_payload_bytes = 63;
  EXPECT_EQ(DecodeFrame(ValidFrame(), small).status().code(), StatusCode::kResourceExhausted);
  small.max_payload_bytes = 64;
  EXPECT_TRUE(DecodeFrame(ValidFrame(), small).ok());
}

TEST(FrameMalformedTest, TrailingBytes) {
  for (size_t extra : {size_t{1}, size_t{4}, size_t{100}}) {
    std::vector<uint8_t> f = ValidFrame();
    f.insert(f.end(), extra, 0);
    SCOPED_TRACE("extra " + std::to_string(extra));
    ExpectDataLoss(DecodeFrame(f, FrameLimits{}), "trailing");
  }
}

TEST(FrameMalformedTest, HeaderLenMismatch) {
  // header_len one less than the bytes present: one trailing byte. One more: truncated.
  std::vector<uint8_t> f = ValidFrame();
  const uint32_t len = Get32(f, 8);
  Put32(f, 8, len - 1);
  Reseal(f);
  ExpectDataLoss(DecodeFrame(f, FrameLimits{}), "");
  Put32(f, 8, len + 1);
  Reseal(f);
  ExpectDataLoss(DecodeFrame(f, FrameLimits{}), "truncated");
}

TEST(FrameMalformedTest, EverySingleBitFlipIsRejected) {
  const std::vector<uint8_t> good = ValidFrame();
  ASSERT_TRUE(DecodeFrame(good, FrameLimits{}).ok());
  for (size_t bit = 0; bit < good.size() * 8; ++bit) {
    std::vector<uint8_t> f = good;
    const size_t byte = bit / 8;
    f[byte] ^= static_cast<uint8_t>(1u << (bit % 8));
    Result<Frame> r = DecodeFrame(f, FrameLimits{});
    ASSERT_FALSE(r.ok()) << "bit " << bit << " (byte " << byte << ") flipped and still decoded";
    EXPECT_TRUE(IsDecodeError(r.status().code())) << "bit " << bit << ": " << r.status().ToString();
    EXPECT_FALSE(r.status().message().empty());
    // Bytes whose value is not otherwise validated (payload CRC, frame CRC, header) can only be
    // caught by the frame CRC.
    if (byte >= 24) {
      EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << "bit " << bit;
      EXPECT_NE(r.status().message().find("CRC"), std::string::npos) << "bit " << bit << ": " << r.status().ToString();
    }
  }
}

TEST(FrameMalformedTest, FlippedPayloadCrcFlagIsCaughtByFrameCrc) {
  std::vector<uint8_t> f = ValidFrame(false);
  f[6] ^= 1;  // claim a payload CRC that was never computed
  ExpectDataLoss(DecodeFrame(f, FrameLimits{}), "CRC");
}

TEST(FrameMalformedTest, HeaderNotValidProtobuf) {
  const std::vector<std::vector<uint8_t>> bad_headers = {
      {0x00},                                // field number 0
      {0x08},                                // field 1 varint, value missing
      {0x08, 0x80},                          // varint continues past the end
      {0x0F, 0x01},                          // wire type 7 does not exist
      {0x0E, 0x01},                          // wire type 6 does not exist
      {0x72, 0x05, 'a', 'b'},                // string field 14 announces 5 bytes, 2 follow
      {0x72, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F},  // string length ~4 GiB
      {0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01},  // 11-byte varint
      {0x81, 0x01, 0x00},                    // fixed64 field 16, 7 bytes short
      {0x0B},                                // start group (field 1) never ended
  };
  for (size_t i = 0; i < bad_headers.size(); ++i) {
    std::vector<uint8_t> f(kPrefix, 0);
    Put32(f, 0, kFrameMagic);
    Put16(f, 4, kFrameVersion);
    Put32(f, 8, static_cast<uint32_t>(bad_headers[i].size()));
    f.insert(f.end(), bad_headers[i].begin(), bad_headers[i].end());
    Reseal(f);
    SCOPED_TRACE("bad header #" + std::to_string(i));
    // The prefix is fine and the CRC matches: only the protobuf parse can reject this.
    ASSERT_TRUE(DecodeFramePrefix(f, FrameLimits{}).ok());
    ExpectDataLoss(DecodeFrame(f, FrameLimits{}), "protobuf");
  }
}

TEST(FrameMalformedTest, ResealedFrameDecodes) {
  // Sanity check of the Reseal helper: resealing an untouched frame leaves it valid.
  std::vector<uint8_t> f = ValidFrame();
  const std::vector<uint8_t> before = f;
  Reseal(f);
  EXPECT_EQ(f, before);
  EXPECT_TRUE(DecodeFrame(f, FrameLimits{}).ok());
}

// ---------------------------------------------------------------- randomized

void CheckNoCrash(const std::vector<uint8_t>& bytes) {
  Result<Frame> r = DecodeFrame(bytes, FrameLimits{});
  if (!r.ok()) {
    EXPECT_TRUE(IsDecodeError(r.status().code())) << r.status().ToString();
    EXPECT_FALSE(r.status().message().empty());
  }
  Result<FramePrefix> p = DecodeFramePrefix(bytes, FrameLimits{});
  if (!p.ok()) {
    EXPECT_TRUE(IsDecodeError(p.status().code())) << p.status().ToString();
  }
}

TEST(FrameFuzzTest, RandomBytes) {
  std::mt19937 rng(20240601);
  int accepted = 0;
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> b(rng() % 200);
    for (auto& x : b) x = static_cast<uint8_t>(rng());
    // Half of them get a plausible prefix so decoding gets past the first checks.
    if (i % 2 == 1 && b.size() >= kPrefix) {
      Put32(b, 0, kFrameMagic);
      Put16(b, 4, kFrameVersion);
      Put16(b, 6, static_cast<uint16_t>(rng() % 2));
      Put32(b, 8, static_cast<uint32_t>(b.size() - kPrefix));
      Put32(b, 12, 0);
      Put64(b, 16, rng() % 4096);
      if (i % 4 == 3) Reseal(b);  // a quarter reach the protobuf parser
    }
    CheckNoCrash(b);
    if (DecodeFrame(b, FrameLimits{}).ok()) ++accepted;
  }
  // Random bytes without a correct CRC are never a frame.
  EXPECT_LE(accepted, 500);
}

TEST(FrameFuzzTest, RandomMutationsOfAValidFrame) {
  std::mt19937 rng(7);
  const std::vector<uint8_t> good = ValidFrame();
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> f = good;
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 6) {
        case 0:  // flip a bit
          if (!f.empty()) f[rng() % f.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 1:  // overwrite a byte
          if (!f.empty()) f[rng() % f.size()] = static_cast<uint8_t>(rng());
          break;
        case 2:  // truncate
          f.resize(f.empty() ? 0 : rng() % f.size());
          break;
        case 3:  // append
          for (int k = static_cast<int>(rng() % 16); k > 0; --k) f.push_back(static_cast<uint8_t>(rng()));
          break;
        case 4:  // insert
          f.insert(f.begin() + (f.empty() ? 0 : rng() % f.size()), static_cast<uint8_t>(rng()));
          break;
        case 5:  // erase
          if (!f.empty()) f.erase(f.begin() + rng() % f.size());
          break;
      }
    }
    CheckNoCrash(f);
    // Without a CRC collision, a mutated frame that still decodes is byte-for-byte the original.
    if (DecodeFrame(f, FrameLimits{}).ok()) {
      EXPECT_EQ(f, good) << "mutation " << i;
    }
  }
}

TEST(FrameFuzzTest, RandomResealedHeaderMutations) {
  // Mutate only header bytes and fix up header_len and the CRC, so every input reaches the
  // protobuf parser. Each must decode or fail with DATA_LOSS; never crash.
  std::mt19937 rng(99);
  const std::vector<uint8_t> good = ValidFrame();
  int rejected = 0;
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> f = good;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t hsize = f.size() - kPrefix;
      switch (rng() % 3) {
        case 0:
          if (hsize) f[kPrefix + rng() % hsize] = static_cast<uint8_t>(rng());
          break;
        case 1:
          f.resize(kPrefix + (hsize ? rng() % hsize : 0));
          break;
        case 2:
          f.insert(f.begin() + kPrefix + (hsize ? rng() % hsize : 0), static_cast<uint8_t>(rng()));
          break;
      }
    }
    Put32(f, 8, static_cast<uint32_t>(f.size() - kPrefix));
    Reseal(f);
    ASSERT_TRUE(DecodeFramePrefix(f, FrameLimits{}).ok());
    Result<Frame> r = DecodeFrame(f, FrameLimits{});
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().ToString();
      EXPECT_FALSE(r.status().message().empty());
      ++rejected;
    } else {
      EXPECT_EQ(r->payload_bytes, 64u);
    }
  }
  EXPECT_GT(rejected, 0);  // the parser does reject some of these
}

}  // namespace
}  // namespace shardps
