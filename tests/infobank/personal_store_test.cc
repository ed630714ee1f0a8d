// PersonalStore: encryption at rest, master key handling, export, and
// crypto-shredding (copies of the ciphertexts taken before the deletion stay
// unreadable with every key left on disk).
#include "personal_store.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <openssl/evp.h>

#include "absl/strings/str_cat.h"
#include "cityos/clock.h"
#include "gtest/gtest.h"
#include "testutil.h"

namespace cityos::infobank {
namespace {

using ::cityos::testing::ReadFile;
using ::cityos::testing::TempDir;

event::v1::Event MakeEvent(const std::string& id, const std::string& subject,
                           const std::string& text) {
  event::v1::Event e;
  e.set_id(id);
  e.set_source("urn:cityos:test");
  e.set_type("cityos.health.v1.VitalSigns");
  e.set_subject("health.vitals.ward1");
  e.set_data_subject(subject);
  e.set_text_data(text);
  return e;
}

// Independent AES-256-GCM opener (nonce || ciphertext || tag), so that the
// test does not trust the code under test to say what is decryptable.
bool GcmOpen(const std::string& key, const std::string& sealed, const std::string& aad,
             std::string* out) {
  if (key.size() != 32 || sealed.size() < 28) return false;
  const size_t n = sealed.size() - 28;
  out->assign(n, '\0');
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  int len = 0;
  std::string tag = sealed.substr(12 + n);
  bool ok =
      EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, nullptr) == 1 &&
      EVP_DecryptInit_ex(c, nullptr, nullptr, reinterpret_cast<const unsigned char*>(key.data()),
                         reinterpret_cast<const unsigned char*>(sealed.data())) == 1 &&
      EVP_DecryptUpdate(c, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) == 1 &&
      EVP_DecryptUpdate(c, reinterpret_cast<unsigned char*>(out->data()), &len,
                        reinterpret_cast<const unsigned char*>(sealed.data()) + 12,
                        static_cast<int>(n)) == 1 &&
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag.data()) == 1 &&
      EVP_DecryptFinal_ex(c, reinterpret_cast<unsigned char*>(out->data()) + len, &len) == 1;
  EVP_CIPHER_CTX_free(c);
  return ok;
}

std::string KeyAad(const std::string& subject) {
  return std::string("cityos.pds.key") + std::string(1, '\0') + subject;
}
std::string RecordAad(const std::string& subject, const std::string& record_id) {
  return subject + std::string(1, '\0') + record_id;
}

struct Row {
  std::string a, b, c;
};
// Rows of a query over a database file (read directly, as an attacker with
// the file would).
std::vector<Row> Rows(const std::string& db_path, const std::string& sql) {
  std::vector<Row> out;
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << sql;
  auto col = [&](int i) {
    if (i >= sqlite3_column_count(s)) return std::string();
    const void* p = sqlite3_column_blob(s, i);
    return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(s, i))
             : std::string();
  };
  while (s && sqlite3_step(s) == SQLITE_ROW) out.push_back(Row{col(0), col(1), col(2)});
  sqlite3_finalize(s);
  sqlite3_close(db);
  return out;
}

TEST(PersonalStoreTest, PutExportRoundTripOldestFirstAndEncryptedAtRest) {
  TempDir dir;
  SimulatedClock clock(absl::FromUnixSeconds(1800000000));
  auto store = PersonalStore::Open(dir.path(), &clock);
  ASSERT_TRUE(store.ok()) << store.status();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE((*store)->Put(MakeEvent(absl::StrCat("e", i), "alice",
                                        absl::StrCat("SECRET-PULSE-", i))).ok());
  }
  ASSERT_TRUE((*store)->Put(MakeEvent("b0", "bob", "BOB-SECRET")).ok());
  auto alice = (*store)->Export("alice");
  ASSERT_TRUE(alice.ok()) << alice.status();
  ASSERT_EQ(alice->size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ((*alice)[i].id(), absl::StrCat("e", i));
    EXPECT_EQ((*alice)[i].text_data(), absl::StrCat("SECRET-PULSE-", i));
  }
  auto nobody = (*store)->Export("carol");
  ASSERT_TRUE(nobody.ok());
  EXPECT_TRUE(nobody->empty());

  // Nothing in the files is plaintext; both files are 0600.
  const std::string db = ReadFile(dir.File("personal.db"));
  EXPECT_EQ(db.find("SECRET-PULSE"), std::string::npos);
  EXPECT_EQ(db.find("BOB-SECRET"), std::string::npos);
  if (std::filesystem::exists(dir.File("personal.db-wal"))) {
    const std::string wal = ReadFile(dir.File("personal.db-wal"));
    EXPECT_EQ(wal.find("SECRET-PULSE"), std::string::npos);
    EXPECT_EQ(wal.find("BOB-SECRET"), std::string::npos);
  }
  struct stat st{};
  ASSERT_EQ(::stat(dir.File("master.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 32);
  ASSERT_EQ(::stat(dir.File("personal.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0077, 0u);

  // Reopen: same master key, same data.
  store->reset();
  auto again = PersonalStore::Open(dir.path(), &clock);
  ASSERT_TRUE(again.ok()) << again.status();
  auto alice2 = (*again)->Export("alice");
  ASSERT_TRUE(alice2.ok()) << alice2.status();
  EXPECT_EQ(alice2->size(), 5u);
}

TEST(PersonalStoreTest, EventWithoutDataSubjectIsInvalid) {
  TempDir dir;
  auto store = PersonalStore::Open(dir.path(), nullptr);
  ASSERT_TRUE(store.ok());
  auto st = (*store)->Put(MakeEvent("x", "", "t"));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ((*store)->Delete("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PersonalStoreTest, RefusesAMasterKeyReadableByOthers) {
  TempDir dir;
  { ASSERT_TRUE(PersonalStore::Open(dir.path(), nullptr).ok()); }
  ASSERT_EQ(::chmod(dir.File("master.key").c_str(), 0644), 0);
  auto store = PersonalStore::Open(dir.path(), nullptr);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("chmod 600"), absl::string_view::npos)
      << store.status();
  ASSERT_EQ(::chmod(dir.File("master.key").c_str(), 0600), 0);
  EXPECT_TRUE(PersonalStore::Open(dir.path(), nullptr).ok());
}

TEST(PersonalStoreTest, MissingOrWrongMasterKeyIsNotSilentlyReplaced) {
  TempDir dir;
  {
    auto store = PersonalStore::Open(dir.path(), nullptr);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->Put(MakeEvent("e", "alice", "x")).ok());
  }
  const std::string key = ReadFile(dir.File("master.key"));
  std::filesystem::remove(dir.File("master.key"));
  auto missing = PersonalStore::Open(dir.path(), nullptr);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDataLoss) << missing.status();
  EXPECT_FALSE(std::filesystem::exists(dir.File("master.key")));

  // A different 32-byte key: the data key does not unwrap.
  std::string other = key;
  other[0] = static_cast<char>(other[0] ^ 1);
  ::cityos::testing::WriteFile(dir.File("master.key"), other);
  ::chmod(dir.File("master.key").c_str(), 0600);
  auto wrong = PersonalStore::Open(dir.path(), nullptr);
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  EXPECT_EQ((*wrong)->Export("alice").status().code(), absl::StatusCode::kDataLoss);
  wrong->reset();

  ::cityos::testing::WriteFile(dir.File("master.key"), "short");
  ::chmod(dir.File("master.key").c_str(), 0600);
  EXPECT_EQ(PersonalStore::Open(dir.path(), nullptr).status().code(), absl::StatusCode::kDataLoss);
}

TEST(PersonalStoreTest, TamperedCiphertextIsDataLossNamingTheRecord) {
  TempDir dir;
  {
    auto store = PersonalStore::Open(dir.path(), nullptr);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->Put(MakeEvent("e", "alice", "hello")).ok());
  }
  auto rows = Rows(dir.File("personal.db"), "SELECT record_id FROM records");
  ASSERT_EQ(rows.size(), 1u);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(dir.File("personal.db").c_str(), &db), SQLITE_OK);
  // Flip one ciphertext byte (after the 12-byte nonce).
  ASSERT_EQ(sqlite3_exec(db,
                         "UPDATE records SET sealed = substr(sealed, 1, 12) || "
                         "x'FF' || substr(sealed, 14)",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto store = PersonalStore::Open(dir.path(), nullptr);
  ASSERT_TRUE(store.ok());
  auto out = (*store)->Export("alice");
  ASSERT_EQ(out.status().code(), absl::StatusCode::kDataLoss) << out.status();
  EXPECT_NE(out.status().message().find(rows[0].a), absl::string_view::npos) << out.status();
}

TEST(PersonalStoreTest, RecordMovedToAnotherPersonFailsAuthentication) {
  TempDir dir;
  {
    auto store = PersonalStore::Open(dir.path(), nullptr);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->Put(MakeEvent("a", "alice", "alice data")).ok());
    ASSERT_TRUE((*store)->Put(MakeEvent("b", "bob", "bob data")).ok());
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(dir.File("personal.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE records SET data_subject = 'bob'", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto store = PersonalStore::Open(dir.path(), nullptr);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->Export("bob").status().code(), absl::StatusCode::kDataLoss);
}

TEST(PersonalStoreTest, DeleteShredsTheKeyAndACopyTakenBeforeStaysUnreadable) {
  TempDir dir;
  SimulatedClock clock(absl::FromUnixSeconds(1800000000));
  auto store = PersonalStore::Open(dir.path(), &clock);
  ASSERT_TRUE(store.ok()) << store.status();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*store)->Put(MakeEvent(absl::StrCat("a", i), "alice", "ALICE-VITALS")).ok());
  }
  ASSERT_TRUE((*store)->Put(MakeEvent("b0", "bob", "BOB-VITALS")).ok());

  // A backup taken before the deletion (SQLite online backup API, so the
  // copy is consistent).
  const std::string backup = dir.File("backup.db");
  {
    sqlite3* src = nullptr;
    sqlite3* dst = nullptr;
    ASSERT_EQ(sqlite3_open_v2(dir.File("personal.db").c_str(), &src, SQLITE_OPEN_READONLY,
                              nullptr),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_open(backup.c_str(), &dst), SQLITE_OK);
    sqlite3_backup* b = sqlite3_backup_init(dst, "main", src, "main");
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(sqlite3_backup_step(b, -1), SQLITE_DONE);
    sqlite3_backup_finish(b);
    sqlite3_close(dst);
    sqlite3_close(src);
  }

  auto deleted = (*store)->Delete("alice");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 3u);
  auto exp = (*store)->Export("alice");
  EXPECT_EQ(exp.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(exp.status().message().find("deleted"), absl::string_view::npos) << exp.status();
  auto put = (*store)->Put(MakeEvent("late", "alice", "x"));
  EXPECT_EQ(put.code(), absl::StatusCode::kFailedPrecondition) << put;
  EXPECT_EQ(*(*store)->Delete("alice"), 0u);
  EXPECT_TRUE(*(*store)->IsDeleted("alice"));
  EXPECT_FALSE(*(*store)->IsDeleted("bob"));
  // Others are untouched.
  auto bob = (*store)->Export("bob");
  ASSERT_TRUE(bob.ok()) << bob.status();
  ASSERT_EQ(bob->size(), 1u);
  EXPECT_EQ((*bob)[0].text_data(), "BOB-VITALS");

  // Every key still on disk: the master key, and every data key wrapped in
  // the current database (unwrapped with the master key).
  const std::string master = ReadFile(dir.File("master.key"));
  std::vector<std::string> keys_on_disk = {master};
  for (const Row& r : Rows(dir.File("personal.db"), "SELECT data_subject, wrapped FROM data_keys")) {
    std::string k;
    ASSERT_TRUE(GcmOpen(master, r.b, KeyAad(r.a), &k)) << r.a;
    keys_on_disk.push_back(k);
  }
  EXPECT_EQ(keys_on_disk.size(), 2u);  // master + bob's
  EXPECT_TRUE(Rows(dir.File("personal.db"),
                   "SELECT data_subject FROM data_keys WHERE data_subject = 'alice'")
                  .empty());
  EXPECT_TRUE(Rows(dir.File("personal.db"),
                   "SELECT record_id FROM records WHERE data_subject = 'alice'")
                  .empty());

  auto old_records = Rows(backup, "SELECT record_id, sealed FROM records WHERE data_subject = 'alice'");
  ASSERT_EQ(old_records.size(), 3u);
  // Positive control: with alice's wrapped key from the backup the records
  // DO open, so the negative check below can fail.
  auto old_key = Rows(backup, "SELECT data_subject, wrapped FROM data_keys WHERE data_subject = 'alice'");
  ASSERT_EQ(old_key.size(), 1u);
  std::string alice_key;
  ASSERT_TRUE(GcmOpen(master, old_key[0].b, KeyAad("alice"), &alice_key));
  std::string plain;
  ASSERT_TRUE(GcmOpen(alice_key, old_records[0].b, RecordAad("alice", old_records[0].a), &plain));
  EXPECT_NE(plain.find("ALICE-VITALS"), std::string::npos);

  for (const Row& rec : old_records) {
    for (const std::string& key : keys_on_disk) {
      std::string out;
      EXPECT_FALSE(GcmOpen(key, rec.b, RecordAad("alice", rec.a), &out));
    }
  }
  // secure_delete: neither the wrapped key nor the ciphertexts linger in the
  // live file's free pages.
  const std::string live = ReadFile(dir.File("personal.db"));
  EXPECT_EQ(live.find(old_key[0].b), std::string::npos);
  for (const Row& rec : old_records) EXPECT_EQ(live.find(rec.b), std::string::npos);
  if (std::filesystem::exists(dir.File("personal.db-wal"))) {
    const std::string wal = ReadFile(dir.File("personal.db-wal"));
    EXPECT_EQ(wal.find(old_key[0].b), std::string::npos);
    for (const Row& rec : old_records) EXPECT_EQ(wal.find(rec.b), std::string::npos);
  }

  // The tombstone survives a reopen.
  store->reset();
  auto reopened = PersonalStore::Open(dir.path(), &clock);
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ((*reopened)->Export("alice").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*reopened)->Put(MakeEvent("late", "alice", "x")).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace cityos::infobank
