// Per-recipient pseudonyms (HMAC-SHA256) and location coarsening
// (cityos/entity.h; the maths are in docs/entities.md).
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>

#include "cityos/entity.h"
#include "entity/pseudonym_internal.h"

namespace cityos {
namespace entity_internal {

namespace {
constexpr char kBase64Url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
}  // namespace

std::string Base64UrlUnpadded(const unsigned char* data, size_t n) {
  std::string out;
  out.reserve((n * 4 + 2) / 3);
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t{data[i]} << 16) | (uint32_t{data[i + 1]} << 8) | data[i + 2];
    out.push_back(kBase64Url[(v >> 18) & 63]);
    out.push_back(kBase64Url[(v >> 12) & 63]);
    out.push_back(kBase64Url[(v >> 6) & 63]);
    out.push_back(kBase64Url[v & 63]);
  }
  if (n - i == 1) {
    uint32_t v = uint32_t{data[i]} << 16;
    out.push_back(kBase64Url[(v >> 18) & 63]);
    out.push_back(kBase64Url[(v >> 12) & 63]);
  } else if (n - i == 2) {
    uint32_t v = (uint32_t{data[i]} << 16) | (uint32_t{data[i + 1]} << 8);
    out.push_back(kBase64Url[(v >> 18) & 63]);
    out.push_back(kBase64Url[(v >> 12) & 63]);
    out.push_back(kBase64Url[(v >> 6) & 63]);
  }
  return out;
}

std::string HmacSha256(std::string_view key, std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &len);
  return std::string(reinterpret_cast<const char*>(mac), len);
}

// HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)), with K padded to the
// 64-byte block. The two keyed prefixes are absorbed once; each message
// then costs two digest copies and the compression of its own blocks, which
// is several times cheaper than OpenSSL 3's one-shot HMAC (it fetches the
// MAC implementation on every call).
FastHmacSha256::FastHmacSha256(std::string_view key) {
  unsigned char block[64] = {0};
  if (key.size() > sizeof(block)) {
    unsigned int len = 0;
    EVP_Digest(key.data(), key.size(), block, &len, EVP_sha256(), nullptr);
  } else {
    std::copy(key.begin(), key.end(), block);
  }
  unsigned char pad[64];
  md_ = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  inner_ = EVP_MD_CTX_new();
  outer_ = EVP_MD_CTX_new();
  for (int i = 0; i < 64; ++i) pad[i] = block[i] ^ 0x36;
  EVP_DigestInit_ex(inner_, md_, nullptr);
  EVP_DigestUpdate(inner_, pad, sizeof(pad));
  for (int i = 0; i < 64; ++i) pad[i] = block[i] ^ 0x5c;
  EVP_DigestInit_ex(outer_, md_, nullptr);
  EVP_DigestUpdate(outer_, pad, sizeof(pad));
}

FastHmacSha256::~FastHmacSha256() {
  EVP_MD_CTX_free(inner_);
  EVP_MD_CTX_free(outer_);
  EVP_MD_free(md_);
}

std::string FastHmacSha256::Pseudonymize(std::string_view value) const {
  // One scratch context per thread: EVP_MD_CTX_copy_ex into it reuses its
  // allocation.
  struct Scratch {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ~Scratch() { EVP_MD_CTX_free(ctx); }
  };
  thread_local Scratch scratch;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_MD_CTX_copy_ex(scratch.ctx, inner_);
  EVP_DigestUpdate(scratch.ctx, value.data(), value.size());
  EVP_DigestFinal_ex(scratch.ctx, digest, &len);
  EVP_MD_CTX_copy_ex(scratch.ctx, outer_);
  EVP_DigestUpdate(scratch.ctx, digest, len);
  EVP_DigestFinal_ex(scratch.ctx, digest, &len);
  return Base64UrlUnpadded(digest, len);
}

}  // namespace entity_internal

PseudonymKey PseudonymKey::ForRecipient(std::string_view node_secret,
                                        std::string_view recipient_org) {
  std::string label = "cityos-pseudonym:";
  label.append(recipient_org);
  return PseudonymKey(entity_internal::HmacSha256(node_secret, label));
}

std::string PseudonymKey::Pseudonymize(std::string_view value) const {
  std::string mac = entity_internal::HmacSha256(key_, value);
  return entity_internal::Base64UrlUnpadded(reinterpret_cast<const unsigned char*>(mac.data()),
                                            mac.size());
}

namespace {

constexpr double kMetresPerDegree = 111320.0;
constexpr double kDegToRad = M_PI / 180.0;

// The centre of the cell of `step` degrees holding `x`, cells counted from
// `lo`; the last cell is cut at `hi` and its centre is that of the cut cell.
double CellCentre(double x, double lo, double hi, double step, double* cell_lo) {
  double index = std::floor((x - lo) / step);
  double max_index = std::ceil((hi - lo) / step) - 1;
  index = std::clamp(index, 0.0, std::max(0.0, max_index));
  double start = lo + index * step;
  double end = std::min(hi, start + step);
  if (cell_lo != nullptr) *cell_lo = start;
  return (start + end) / 2;
}

}  // namespace

common::v1::GeoPoint CoarsenLocation(const common::v1::GeoPoint& p, double cell_m) {
  if (!(cell_m > 0) || !std::isfinite(cell_m) || !std::isfinite(p.latitude()) ||
      !std::isfinite(p.longitude())) {
    return p;
  }
  common::v1::GeoPoint out;
  double lat_step = cell_m / kMetresPerDegree;
  double lat = CellCentre(std::clamp(p.latitude(), -90.0, 90.0), -90, 90, lat_step, nullptr);
  // Longitude cells are `cell_m` wide at the latitude band's centre; near the
  // poles a band is one cell around the whole earth.
  double cos_lat = std::cos(lat * kDegToRad);
  double lon_step = cos_lat > 0 ? cell_m / (kMetresPerDegree * cos_lat) : 360.0;
  lon_step = std::min(lon_step, 360.0);
  double lon = CellCentre(std::clamp(p.longitude(), -180.0, 180.0), -180, 180, lon_step, nullptr);
  out.set_latitude(lat);
  out.set_longitude(lon);
  return out;
}

}  // namespace cityos
