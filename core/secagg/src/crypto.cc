#include "crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <climits>
#include <string>

namespace shardps::secagg::internal {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); }
};
struct KdfFree {
  void operator()(EVP_KDF* p) const { EVP_KDF_free(p); }
};
struct KdfCtxFree {
  void operator()(EVP_KDF_CTX* p) const { EVP_KDF_CTX_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;

// "INTERNAL: <what> failed (<OpenSSL's reason>)"; clears OpenSSL's error queue.
Status OpenSslError(const std::string& what) {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  std::string reason = "no OpenSSL error recorded";
  if (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    reason = buf;
  }
  return Internal(what + " failed (" + reason + ")");
}

}  // namespace

void Wipe(void* p, size_t n) { OPENSSL_cleanse(p, n); }

Result<Key32> X25519PublicKey(const Key32& private_key) {
  Pkey key(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, private_key.data(), private_key.size()));
  if (!key) return OpenSslError("X25519 private key import");
  Key32 pub{};
  size_t len = pub.size();
  if (EVP_PKEY_get_raw_public_key(key.get(), pub.data(), &len) != 1 || len != pub.size()) {
    return OpenSslError("X25519 public key derivation");
  }
  return pub;
}

Result<Key32> X25519Agree(const Key32& private_key, const Key32& peer_public_key) {
  Pkey mine(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, private_key.data(), private_key.size()));
  if (!mine) return OpenSslError("X25519 private key import");
  Pkey peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public_key.data(), peer_public_key.size()));
  if (!peer) return OpenSslError("X25519 public key import");
  PkeyCtx ctx(EVP_PKEY_CTX_new(mine.get(), nullptr));
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1) return OpenSslError("X25519 context setup");
  if (EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1) return OpenSslError("X25519 peer key");
  Key32 shared{};
  size_t len = shared.size();
  if (EVP_PKEY_derive(ctx.get(), shared.data(), &len) != 1 || len != shared.size()) {
    // OpenSSL refuses a peer key of small order (the shared secret would be all zeros).
    ERR_clear_error();
    return InvalidArgument("X25519 refused the peer's public key (a small-order point?)");
  }
  return shared;
}

Result<Key32> HkdfSha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt, std::span<const uint8_t> info) {
  std::unique_ptr<EVP_KDF, KdfFree> kdf(EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_HKDF, nullptr));
  if (!kdf) return OpenSslError("fetching HKDF");
  std::unique_ptr<EVP_KDF_CTX, KdfCtxFree> ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return OpenSslError("HKDF context");
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(ikm.data()), ikm.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()), salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(info.data()), info.size()),
      OSSL_PARAM_construct_end(),
  };
  Key32 out{};
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) return OpenSslError("HKDF-SHA256");
  return out;
}

Result<std::unique_ptr<ChaCha20Stream>> ChaCha20Stream::Create(const Key32& key, const Nonce12& nonce,
                                                                uint32_t counter) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return OpenSslError("ChaCha20 context");
  // OpenSSL's ChaCha20 IV: the 32-bit block counter (little-endian), then the 96-bit nonce.
  uint8_t iv[16];
  for (int i = 0; i < 4; ++i) iv[i] = static_cast<uint8_t>(counter >> (8 * i));
  for (size_t i = 0; i < nonce.size(); ++i) iv[4 + i] = nonce[i];
  if (EVP_EncryptInit_ex(ctx.get(), EVP_chacha20(), nullptr, key.data(), iv) != 1) {
    return OpenSslError("ChaCha20 setup");
  }
  return std::unique_ptr<ChaCha20Stream>(new ChaCha20Stream(ctx.release()));
}

ChaCha20Stream::~ChaCha20Stream() { EVP_CIPHER_CTX_free(static_cast<EVP_CIPHER_CTX*>(ctx_)); }

Status ChaCha20Stream::Next(std::span<uint8_t> out) {
  // The keystream is the encryption of zeros; EVP updates take int lengths.
  auto* ctx = static_cast<EVP_CIPHER_CTX*>(ctx_);
  constexpr size_t kChunk = size_t{1} << 20;
  for (size_t at = 0; at < out.size(); at += kChunk) {
    const size_t n = std::min(kChunk, out.size() - at);
    std::fill_n(out.data() + at, n, uint8_t{0});
    int len = 0;
    if (EVP_EncryptUpdate(ctx, out.data() + at, &len, out.data() + at, static_cast<int>(n)) != 1 ||
        static_cast<size_t>(len) != n) {
      return OpenSslError("ChaCha20 keystream");
    }
  }
  return Status::Ok();
}

Result<std::vector<uint8_t>> AeadSeal(const Key32& key, const Nonce12& nonce, std::span<const uint8_t> ad,
                                      std::span<const uint8_t> plaintext) {
  if (plaintext.size() > INT_MAX / 2 || ad.size() > INT_MAX / 2) return InvalidArgument("AEAD input too long");
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return OpenSslError("ChaCha20-Poly1305 context");
  if (EVP_EncryptInit_ex(ctx.get(), EVP_chacha20_poly1305(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, static_cast<int>(nonce.size()), nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce.data()) != 1) {
    return OpenSslError("ChaCha20-Poly1305 setup");
  }
  std::vector<uint8_t> out(plaintext.size() + kAeadTagBytes);
  int len = 0;
  if (!ad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &len, ad.data(), static_cast<int>(ad.size())) != 1) {
    return OpenSslError("ChaCha20-Poly1305 associated data");
  }
  if (EVP_EncryptUpdate(ctx.get(), out.data(), &len, plaintext.data(), static_cast<int>(plaintext.size())) != 1 ||
      static_cast<size_t>(len) != plaintext.size()) {
    return OpenSslError("ChaCha20-Poly1305 encryption");
  }
  int tail = 0;
  if (EVP_EncryptFinal_ex(ctx.get(), out.data() + len, &tail) != 1 || tail != 0) {
    return OpenSslError("ChaCha20-Poly1305 final");
  }
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, static_cast<int>(kAeadTagBytes),
                          out.data() + plaintext.size()) != 1) {
    return OpenSslError("ChaCha20-Poly1305 tag");
  }
  return out;
}

Result<std::vector<uint8_t>> AeadOpen(const Key32& key, const Nonce12& nonce, std::span<const uint8_t> ad,
                                      std::span<const uint8_t> sealed) {
  if (sealed.size() < kAeadTagBytes) return DataLoss("ciphertext shorter than its tag");
  if (sealed.size() > INT_MAX / 2 || ad.size() > INT_MAX / 2) return InvalidArgument("AEAD input too long");
  const size_t n = sealed.size() - kAeadTagBytes;
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return OpenSslError("ChaCha20-Poly1305 context");
  if (EVP_DecryptInit_ex(ctx.get(), EVP_chacha20_poly1305(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, static_cast<int>(nonce.size()), nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce.data()) != 1) {
    return OpenSslError("ChaCha20-Poly1305 setup");
  }
  std::vector<uint8_t> out(n);
  int len = 0;
  if (!ad.empty() && EVP_DecryptUpdate(ctx.get(), nullptr, &len, ad.data(), static_cast<int>(ad.size())) != 1) {
    return OpenSslError("ChaCha20-Poly1305 associated data");
  }
  if (EVP_DecryptUpdate(ctx.get(), out.data(), &len, sealed.data(), static_cast<int>(n)) != 1 ||
      static_cast<size_t>(len) != n) {
    return OpenSslError("ChaCha20-Poly1305 decryption");
  }
  uint8_t tag[kAeadTagBytes];
  std::copy_n(sealed.data() + n, kAeadTagBytes, tag);
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, static_cast<int>(kAeadTagBytes), tag) != 1) {
    return OpenSslError("ChaCha20-Poly1305 tag");
  }
  int tail = 0;
  if (EVP_DecryptFinal_ex(ctx.get(), out.data() + len, &tail) != 1) {
    ERR_clear_error();
    Wipe(out.data(), out.size());
    return DataLoss("the ciphertext does not authenticate (tampered, or not encrypted for this key, round and pair)");
  }
  return out;
}

}  // namespace shardps::secagg::internal
