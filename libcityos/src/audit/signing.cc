// Ed25519 keys through OpenSSL 3's EVP interface (cityos/signing.h).
#include "cityos/signing.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "audit/signing_internal.h"
#include "cityos/status.h"
#include "core/file_util.h"
#include "core/strings.h"

namespace cityos {
namespace audit_internal {
namespace {

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
using UniqueBio = std::unique_ptr<BIO, BioDeleter>;
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using UniqueMdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

// The newest OpenSSL error, for messages; clears the queue.
std::string OpenSslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string();
}

std::string PublicKeyPem(EVP_PKEY* key) {
  UniqueBio bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_PUBKEY(bio.get(), key) != 1) return "";
  return BioContents(bio.get());
}

class Ed25519Key final : public SigningKey {
 public:
  explicit Ed25519Key(UniquePkey key)
      : key_(std::move(key)),
        raw_(RawPublicKey(key_.get())),
        pem_(PublicKeyPem(key_.get())),
        id_(Sha256Hex(raw_)) {}

  std::string Sign(std::string_view message) const override {
    UniqueMdCtx ctx(EVP_MD_CTX_new());
    std::string sig(64, '\0');
    size_t len = sig.size();
    // Ed25519 is a one-shot scheme: no digest, EVP_DigestSign in one call.
    if (ctx == nullptr ||
        EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) != 1 ||
        EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                       reinterpret_cast<const unsigned char*>(message.data()),
                       message.size()) != 1) {
      // Only on allocation failure; an empty signature never verifies.
      ERR_clear_error();
      return "";
    }
    sig.resize(len);
    return sig;
  }
  std::string public_key_raw() const override { return raw_; }
  std::string public_key_pem() const override { return pem_; }
  std::string key_id() const override { return id_; }

  // PKCS#8 PEM of the private key.
  absl::StatusOr<std::string> PrivatePem() const {
    UniqueBio bio(BIO_new(BIO_s_mem()));
    if (bio == nullptr ||
        PEM_write_bio_PKCS8PrivateKey(bio.get(), key_.get(), nullptr, nullptr, 0, nullptr,
                                      nullptr) != 1) {
      return absl::InternalError(absl::StrCat("cannot encode key: ", OpenSslError()));
    }
    return BioContents(bio.get());
  }

 private:
  UniquePkey key_;
  std::string raw_, pem_, id_;
};

absl::StatusOr<UniquePkey> GenerateKey() {
  UniquePkey key(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  if (key == nullptr) {
    return absl::InternalError(absl::StrCat("cannot generate Ed25519 key: ", OpenSslError()));
  }
  return key;
}

}  // namespace

absl::StatusOr<UniquePkey> ParseEd25519PublicKey(std::string_view public_key) {
  UniquePkey key;
  if (public_key.size() == 32) {
    key.reset(EVP_PKEY_new_raw_public_key(
        EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(public_key.data()),
        public_key.size()));
  } else {
    UniqueBio bio(BIO_new_mem_buf(public_key.data(), static_cast<int>(public_key.size())));
    if (bio != nullptr) key.reset(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  }
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a public key (PEM or raw 32 bytes): ", OpenSslError()));
  }
  if (EVP_PKEY_get_id(key.get()) != EVP_PKEY_ED25519) {
    return absl::InvalidArgumentError(
        absl::StrCat("public key is ", EVP_PKEY_get0_type_name(key.get()), ", not Ed25519"));
  }
  return key;
}

absl::Status VerifyWithKey(EVP_PKEY* key, std::string_view message, std::string_view signature) {
  UniqueMdCtx ctx(EVP_MD_CTX_new());
  if (ctx == nullptr ||
      EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key) != 1) {
    return absl::InternalError(absl::StrCat("cannot verify: ", OpenSslError()));
  }
  int rc = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                            signature.size(),
                            reinterpret_cast<const unsigned char*>(message.data()),
                            message.size());
  ERR_clear_error();
  if (rc != 1) return absl::UnauthenticatedError("Ed25519 signature does not verify");
  return absl::OkStatus();
}

std::string RawPublicKey(EVP_PKEY* key) {
  std::string raw(32, '\0');
  size_t len = raw.size();
  if (EVP_PKEY_get_raw_public_key(key, reinterpret_cast<unsigned char*>(raw.data()), &len) !=
      1) {
    ERR_clear_error();
    return "";
  }
  raw.resize(len);
  return raw;
}

}  // namespace audit_internal

using audit_internal::Ed25519Key;
using audit_internal::UniquePkey;

absl::StatusOr<std::unique_ptr<SigningKey>> SigningKey::Generate() {
  CITYOS_ASSIGN_OR_RETURN(UniquePkey key, audit_internal::GenerateKey());
  return std::make_unique<Ed25519Key>(std::move(key));
}

absl::StatusOr<std::unique_ptr<SigningKey>> SigningKey::LoadOrCreate(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) {
      return absl::InternalError(
          absl::StrCat("cannot stat signing key ", path, ": ", std::strerror(errno)));
    }
    CITYOS_ASSIGN_OR_RETURN(UniquePkey pkey, audit_internal::GenerateKey());
    auto key = std::make_unique<Ed25519Key>(std::move(pkey));
    CITYOS_ASSIGN_OR_RETURN(std::string pem, key->PrivatePem());
    // The public half first: a crash in between leaves no private key
    // without its .pub (a stray .pub is overwritten on the next try).
    CITYOS_RETURN_IF_ERROR(WriteFileAtomically(path + ".pub", key->public_key_pem(), 0644));
    CITYOS_RETURN_IF_ERROR(WriteSecretFileAtomically(path, pem, 0600));
    return std::unique_ptr<SigningKey>(std::move(key));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "signing key %s has mode %04o: it must not be accessible by group or others; run "
        "`chmod 600 %s`",
        path, st.st_mode & 07777, path));
  }
  CITYOS_ASSIGN_OR_RETURN(std::string pem, ReadFileToString(path));
  audit_internal::UniqueBio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  UniquePkey pkey(bio == nullptr ? nullptr
                                 : PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("signing key ", path,
                                                   " is not a PEM private key: ",
                                                   audit_internal::OpenSslError()));
  }
  if (EVP_PKEY_get_id(pkey.get()) != EVP_PKEY_ED25519) {
    return absl::InvalidArgumentError(absl::StrCat("signing key ", path, " is ",
                                                   EVP_PKEY_get0_type_name(pkey.get()),
                                                   ", not Ed25519"));
  }
  auto key = std::make_unique<Ed25519Key>(std::move(pkey));
  // Restore a missing .pub (e.g. deleted by hand); verifiers need it.
  if (::access((path + ".pub").c_str(), F_OK) != 0) {
    CITYOS_RETURN_IF_ERROR(WriteFileAtomically(path + ".pub", key->public_key_pem(), 0644));
  }
  return std::unique_ptr<SigningKey>(std::move(key));
}

absl::Status VerifyEd25519(std::string_view public_key, std::string_view message,
                           std::string_view signature) {
  CITYOS_ASSIGN_OR_RETURN(UniquePkey key, audit_internal::ParseEd25519PublicKey(public_key));
  return audit_internal::VerifyWithKey(key.get(), message, signature);
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[32];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(md), len));
}

}  // namespace cityos
