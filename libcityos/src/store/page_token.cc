#include "store/page_token.h"

#include <openssl/evp.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "core/strings.h"

namespace cityos::store_internal {
namespace {

constexpr char kFormat = 1;
constexpr size_t kFingerprintSize = 16;

}  // namespace

std::string Fingerprint(std::initializer_list<std::string_view> parts) {
  // Fetched once: EVP_sha256() makes EVP_Digest look the implementation up
  // on every call (OpenSSL 3), a few microseconds per page. The digest
  // context is kept per thread (EVP_Digest allocates and frees one per
  // call), and the parts are fed to it as they are, not copied into one
  // buffer first.
  static EVP_MD* const kSha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  struct CtxFree {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
  };
  thread_local std::unique_ptr<EVP_MD_CTX, CtxFree> tl_ctx(EVP_MD_CTX_new());
  unsigned char digest[EVP_MAX_MD_SIZE] = {};
  unsigned int digest_size = 0;
  bool ok = tl_ctx != nullptr &&
            EVP_DigestInit_ex2(tl_ctx.get(), kSha256 != nullptr ? kSha256 : EVP_sha256(), nullptr);
  for (std::string_view part : parts) {
    unsigned char size[8];
    const uint64_t n = part.size();
    for (int i = 0; i < 8; ++i) size[i] = static_cast<unsigned char>(n >> (8 * i));
    ok = ok && EVP_DigestUpdate(tl_ctx.get(), size, sizeof(size)) &&
         EVP_DigestUpdate(tl_ctx.get(), part.data(), part.size());
  }
  ok = ok && EVP_DigestFinal_ex(tl_ctx.get(), digest, &digest_size);
  if (!ok || digest_size < kFingerprintSize) {
    // Not expected (no allocation failed, SHA-256 is always there): the
    // one-shot digest, with a context of its own.
    std::string input;
    for (std::string_view part : parts) {
      const uint64_t n = part.size();
      for (int i = 0; i < 8; ++i) input.push_back(static_cast<char>(n >> (8 * i)));
      input.append(part);
    }
    EVP_Digest(input.data(), input.size(), digest, &digest_size, EVP_sha256(), nullptr);
  }
  return std::string(reinterpret_cast<const char*>(digest), kFingerprintSize);
}

std::string EncodePageToken(std::string_view fingerprint, std::string_view cursor) {
  std::string raw;
  raw.reserve(1 + fingerprint.size() + cursor.size());
  raw.push_back(kFormat);
  raw.append(fingerprint);
  raw.append(cursor);
  std::string token;
  absl::WebSafeBase64Escape(raw, &token);
  return token;
}

absl::StatusOr<std::string> DecodePageToken(std::string_view token, std::string_view fingerprint) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(AV(token), &raw) || raw.size() <= 1 + kFingerprintSize ||
      raw[0] != kFormat) {
    return absl::InvalidArgumentError("malformed page token");
  }
  if (std::string_view(raw).substr(1, kFingerprintSize) != fingerprint) {
    return absl::InvalidArgumentError("page token belongs to another query");
  }
  return raw.substr(1 + kFingerprintSize);
}

}  // namespace cityos::store_internal
