// SigningKey, VerifyEd25519 and Sha256Hex (cityos/signing.h).
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include <string>

#include "cityos/signing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testutil.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;

TEST(SigningKey, SignsAndVerifiesWithPemAndRawKey) {
  auto key = SigningKey::Generate();
  ASSERT_TRUE(key.ok()) << key.status();
  const std::string sig = (*key)->Sign("checkpoint 42");
  EXPECT_EQ(sig.size(), 64u);
  EXPECT_EQ((*key)->public_key_raw().size(), 32u);
  EXPECT_THAT((*key)->public_key_pem(), HasSubstr("BEGIN PUBLIC KEY"));
  EXPECT_EQ((*key)->key_id(), Sha256Hex((*key)->public_key_raw()));
  EXPECT_EQ((*key)->key_id().size(), 64u);
  EXPECT_TRUE(VerifyEd25519((*key)->public_key_pem(), "checkpoint 42", sig).ok());
  EXPECT_TRUE(VerifyEd25519((*key)->public_key_raw(), "checkpoint 42", sig).ok());
  EXPECT_EQ(VerifyEd25519((*key)->public_key_pem(), "checkpoint 43", sig).code(),
            absl::StatusCode::kUnauthenticated);
  std::string bad = sig;
  bad[10] ^= 1;
  EXPECT_EQ(VerifyEd25519((*key)->public_key_pem(), "checkpoint 42", bad).code(),
            absl::StatusCode::kUnauthenticated);
  auto other = SigningKey::Generate();
  ASSERT_TRUE(other.ok());
  EXPECT_NE((*other)->key_id(), (*key)->key_id());
  EXPECT_EQ(VerifyEd25519((*other)->public_key_pem(), "checkpoint 42", sig).code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(SigningKey, VerifyRejectsWhatIsNotAnEd25519Key) {
  EXPECT_EQ(VerifyEd25519("not a key", "m", std::string(64, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(VerifyEd25519(std::string(31, 'k'), "m", std::string(64, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
  // An EC public key is a key, but not Ed25519.
  EVP_PKEY* ec = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  ASSERT_NE(ec, nullptr);
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PUBKEY(bio, ec);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  const std::string pem(data, static_cast<size_t>(n));
  BIO_free(bio);
  EVP_PKEY_free(ec);
  absl::Status s = VerifyEd25519(pem, "m", std::string(64, 'x'));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("not Ed25519"));
}

TEST(SigningKey, Sha256HexKnownAnswer) {
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(SigningKey, LoadOrCreateCreatesPrivateFileAndPub) {
  testing::TempDir dir;
  const std::string path = dir.File("sub.key");
  auto key = SigningKey::LoadOrCreate(path);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(testing::FileMode(path), 0600);
  EXPECT_EQ(testing::FileMode(path + ".pub"), 0644);
  EXPECT_EQ(testing::ReadFile(path + ".pub"), (*key)->public_key_pem());
  EXPECT_THAT(testing::ReadFile(path), HasSubstr("BEGIN PRIVATE KEY"));
  // Loading again gives the same key.
  auto again = SigningKey::LoadOrCreate(path);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->key_id(), (*key)->key_id());
  const std::string sig = (*again)->Sign("m");
  EXPECT_TRUE(VerifyEd25519(testing::ReadFile(path + ".pub"), "m", sig).ok());
  // A missing .pub is restored.
  ASSERT_EQ(::unlink((path + ".pub").c_str()), 0);
  ASSERT_TRUE(SigningKey::LoadOrCreate(path).ok());
  EXPECT_EQ(testing::ReadFile(path + ".pub"), (*key)->public_key_pem());
}

TEST(SigningKey, RefusesKeyReadableByOthers) {
  testing::TempDir dir;
  const std::string path = dir.File("signing.key");
  ASSERT_TRUE(SigningKey::LoadOrCreate(path).ok());
  for (mode_t mode : {0640, 0604, 0644, 0660}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    auto key = SigningKey::LoadOrCreate(path);
    ASSERT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition) << mode;
    EXPECT_THAT(key.status().message(), HasSubstr(path));
    EXPECT_THAT(key.status().message(), HasSubstr("chmod 600"));
  }
  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
  EXPECT_THAT(SigningKey::LoadOrCreate(path).status().message(), HasSubstr("0640"));
  ASSERT_EQ(::chmod(path.c_str(), 0400), 0);
  EXPECT_TRUE(SigningKey::LoadOrCreate(path).ok());
}

TEST(SigningKey, RefusesWhatIsNotAnEd25519PrivateKey) {
  testing::TempDir dir;
  const std::string path = dir.File("bad.key");
  testing::WriteFile(path, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  auto key = SigningKey::LoadOrCreate(path);
  EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(key.status().message(), HasSubstr(path));

  EVP_PKEY* ec = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  ASSERT_NE(ec, nullptr);
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PKCS8PrivateKey(bio, ec, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  testing::WriteFile(path, std::string(data, static_cast<size_t>(n)));
  BIO_free(bio);
  EVP_PKEY_free(ec);
  key = SigningKey::LoadOrCreate(path);
  EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(key.status().message(), HasSubstr("not Ed25519"));
}

}  // namespace
}  // namespace cityos
