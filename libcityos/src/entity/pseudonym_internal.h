// Internal: HMAC-SHA256 pseudonyms on the hot path.
#ifndef CITYOS_ENTITY_PSEUDONYM_INTERNAL_H_
#define CITYOS_ENTITY_PSEUDONYM_INTERNAL_H_

#include <openssl/evp.h>

#include <string>
#include <string_view>

namespace cityos::entity_internal {

std::string Base64UrlUnpadded(const unsigned char* data, size_t n);
// Raw 32-byte HMAC-SHA256.
std::string HmacSha256(std::string_view key, std::string_view data);

// HMAC-SHA256 with the keyed inner and outer states precomputed; gives the
// same pseudonyms as PseudonymKey::Pseudonymize. Thread-safe (const).
class FastHmacSha256 {
 public:
  explicit FastHmacSha256(std::string_view key);
  ~FastHmacSha256();
  FastHmacSha256(const FastHmacSha256&) = delete;
  FastHmacSha256& operator=(const FastHmacSha256&) = delete;
  // base64url (unpadded) HMAC-SHA256 of `value`.
  std::string Pseudonymize(std::string_view value) const;

 private:
  EVP_MD* md_;
  EVP_MD_CTX* inner_;
  EVP_MD_CTX* outer_;
};

}  // namespace cityos::entity_internal

#endif  // CITYOS_ENTITY_PSEUDONYM_INTERNAL_H_
