// The personal data store: per-person data keys wrapped by a master key,
// records sealed with AES-256-GCM, deletion by crypto-shredding. See
// personal_store.h for the key hierarchy.
#include "personal_store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/id.h"
#include "cityos/status.h"
#include "sqlite_util.h"

namespace cityos::infobank {
namespace {

constexpr size_t kKeyBytes = 32;
constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;

absl::string_view AVs(std::string_view s) { return {s.data(), s.size()}; }

// Key material that is wiped when it goes out of scope.
class SecretKey {
 public:
  SecretKey() : bytes_(kKeyBytes, '\0') {}
  explicit SecretKey(std::string bytes) : bytes_(std::move(bytes)) {}
  SecretKey(SecretKey&& other) noexcept : bytes_(std::move(other.bytes_)) {}
  SecretKey& operator=(SecretKey&& other) noexcept {
    Wipe();
    bytes_ = std::move(other.bytes_);
    return *this;
  }
  ~SecretKey() { Wipe(); }
  const unsigned char* data() const {
    return reinterpret_cast<const unsigned char*>(bytes_.data());
  }
  unsigned char* mutable_data() { return reinterpret_cast<unsigned char*>(bytes_.data()); }
  size_t size() const { return bytes_.size(); }

 private:
  void Wipe() {
    if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  }
  std::string bytes_;
};

struct CtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CtxDeleter>;

// AES-256-GCM: returns nonce || ciphertext || tag with a fresh random nonce.
absl::StatusOr<std::string> Seal(const SecretKey& key, std::string_view plaintext,
                                 std::string_view aad) {
  std::string out(kNonceBytes + plaintext.size() + kTagBytes, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  if (RAND_bytes(o, kNonceBytes) != 1) return absl::InternalError("RAND_bytes failed");
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (!ctx ||
      EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), o) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), o + kNonceBytes, &len,
                        reinterpret_cast<const unsigned char*>(plaintext.data()),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), o + kNonceBytes + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes,
                          o + kNonceBytes + plaintext.size()) != 1) {
    return absl::InternalError("AES-256-GCM encryption failed");
  }
  return out;
}

// Inverse of Seal. Returns false when authentication fails (wrong key,
// modified bytes, wrong AAD).
bool Unseal(const SecretKey& key, std::string_view sealed, std::string_view aad, std::string* out) {
  if (sealed.size() < kNonceBytes + kTagBytes) return false;
  const auto* s = reinterpret_cast<const unsigned char*>(sealed.data());
  const size_t ct_len = sealed.size() - kNonceBytes - kTagBytes;
  out->assign(ct_len, '\0');
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  std::string tag(sealed.substr(kNonceBytes + ct_len));
  if (!ctx ||
      EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), s) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(out->data()), &len,
                        s + kNonceBytes, static_cast<int>(ct_len)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag.data()) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out->data()) + len, &len) !=
          1) {
    OPENSSL_cleanse(out->data(), out->size());
    out->clear();
    return false;
  }
  return true;
}

std::string KeyAad(std::string_view data_subject) {
  return absl::StrCat("cityos.pds.key", absl::string_view("\0", 1), AVs(data_subject));
}
std::string RecordAad(std::string_view data_subject, std::string_view record_id) {
  return absl::StrCat(AVs(data_subject), absl::string_view("\0", 1), AVs(record_id));
}

absl::Status Errno(std::string_view what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(AVs(what), " ", path, ": ", std::strerror(errno)));
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", path);
  std::string out;
  char buf[256];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return Errno("cannot read", path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > 4096) break;
  }
  OPENSSL_cleanse(buf, sizeof buf);
  ::close(fd);
  return out;
}

absl::StatusOr<SecretKey> ReadMasterKey(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return Errno("cannot stat", path);
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "master key %s is readable by group or others (mode %04o): run `chmod 600 %s`", path,
        st.st_mode & 07777, path));
  }
  CITYOS_ASSIGN_OR_RETURN(std::string bytes, ReadSmallFile(path));
  if (bytes.size() != kKeyBytes) {
    size_t n = bytes.size();
    OPENSSL_cleanse(bytes.data(), bytes.size());
    return absl::DataLossError(
        absl::StrCat("master key ", path, " has ", n, " bytes, expected ", kKeyBytes));
  }
  return SecretKey(std::move(bytes));
}

// Creates the master key so that it never exists with looser permissions and
// a concurrent creator cannot replace it: a private temp file (O_EXCL, 0600)
// is written and synced, then hard-linked to the final name (link fails
// rather than overwrite when another process won the race).
absl::StatusOr<SecretKey> LoadOrCreateMasterKey(const std::string& dir, const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) == 0) return ReadMasterKey(path);
  if (errno != ENOENT) return Errno("cannot stat", path);
  SecretKey key;
  if (RAND_bytes(key.mutable_data(), static_cast<int>(key.size())) != 1) {
    return absl::InternalError("RAND_bytes failed");
  }
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot create", tmp);
  size_t off = 0;
  while (off < key.size()) {
    ssize_t n = ::write(fd, key.data() + off, key.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      ::unlink(tmp.c_str());
      return Errno("cannot write", tmp);
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return Errno("cannot sync", tmp);
  }
  ::close(fd);
  const int rc = ::link(tmp.c_str(), path.c_str());
  const int link_errno = errno;
  ::unlink(tmp.c_str());
  if (rc != 0) {
    if (link_errno == EEXIST) return ReadMasterKey(path);  // lost the race: use theirs
    errno = link_errno;
    return Errno("cannot link master key", path);
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return key;
}

class SqlitePersonalStore final : public PersonalStore {
 public:
  SqlitePersonalStore(sqlite3* db, SecretKey master, Clock* clock, std::string db_path)
      : db_(db), master_(std::move(master)), clock_(clock), db_path_(std::move(db_path)) {}
  ~SqlitePersonalStore() override { sqlite3_close(db_); }

  absl::Status Put(const event::v1::Event& event) override {
    const std::string& subject = event.data_subject();
    if (subject.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("event ", event.id(), " has no data_subject: nothing to store it under"));
    }
    std::string plain;
    if (!event.SerializeToString(&plain)) {
      return absl::InvalidArgumentError(absl::StrCat("event ", event.id(), " cannot be serialized"));
    }
    absl::MutexLock lock(&mu_);
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    absl::Status st = PutLocked(subject, plain);
    OPENSSL_cleanse(plain.data(), plain.size());
    if (!st.ok()) {
      (void)Exec("ROLLBACK");
      return st;
    }
    return Exec("COMMIT");
  }

  absl::StatusOr<std::vector<event::v1::Event>> Export(std::string_view data_subject) override {
    absl::MutexLock lock(&mu_);
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN"));
    auto result = ExportLocked(data_subject);
    (void)Exec("COMMIT");
    return result;
  }

  absl::StatusOr<uint64_t> Delete(std::string_view data_subject) override {
    if (data_subject.empty()) return absl::InvalidArgumentError("Delete needs a data_subject");
    absl::MutexLock lock(&mu_);
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    auto result = DeleteLocked(data_subject);
    if (!result.ok()) {
      (void)Exec("ROLLBACK");
      return result.status();
    }
    CITYOS_RETURN_IF_ERROR(Exec("COMMIT"));
    // Move the zeroed pages into the main file and empty the WAL, which
    // still holds the pre-deletion pages (wrapped key, ciphertexts).
    CITYOS_RETURN_IF_ERROR(Exec("PRAGMA wal_checkpoint(TRUNCATE)"));
    return result;
  }

  absl::StatusOr<bool> IsDeleted(std::string_view data_subject) override {
    absl::MutexLock lock(&mu_);
    return TombstoneLocked(data_subject);
  }

 private:
  absl::Status SqlError(std::string_view what) {
    return absl::InternalError(
        absl::StrCat(db_path_, ": ", AVs(what), ": ", sqlite3_errmsg(db_)));
  }
  absl::Status Exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      return absl::InternalError(absl::StrCat(db_path_, ": ", sql, ": ", msg));
    }
    return absl::OkStatus();
  }

  // Returns the deletion time when the person has a tombstone.
  absl::StatusOr<std::optional<int64_t>> TombstoneTime(std::string_view subject)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SqliteStmt s(db_, "SELECT deleted_ns FROM tombstones WHERE data_subject = ?");
    if (!s.ok()) return SqlError("prepare tombstone lookup");
    s.Bind(1, subject);
    int rc = s.Step();
    if (rc == SQLITE_ROW) return std::optional<int64_t>(s.ColInt(0));
    if (rc != SQLITE_DONE) return SqlError("tombstone lookup");
    return std::optional<int64_t>();
  }
  absl::StatusOr<bool> TombstoneLocked(std::string_view subject)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    CITYOS_ASSIGN_OR_RETURN(auto t, TombstoneTime(subject));
    return t.has_value();
  }

  // The person's data key, unwrapped; nullopt when none exists yet.
  absl::StatusOr<std::optional<SecretKey>> LoadDataKey(std::string_view subject)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SqliteStmt s(db_, "SELECT wrapped FROM data_keys WHERE data_subject = ?");
    if (!s.ok()) return SqlError("prepare key lookup");
    s.Bind(1, subject);
    int rc = s.Step();
    if (rc == SQLITE_DONE) return std::optional<SecretKey>();
    if (rc != SQLITE_ROW) return SqlError("key lookup");
    std::string plain;
    if (!Unseal(master_, s.ColBlob(0), KeyAad(subject), &plain) || plain.size() != kKeyBytes) {
      return absl::DataLossError(absl::StrCat(
          "the data key of ", AVs(subject),
          " does not unwrap with the master key (wrong master.key or tampered personal.db)"));
    }
    return std::optional<SecretKey>(SecretKey(std::move(plain)));
  }

  absl::Status PutLocked(const std::string& subject, const std::string& plain)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    CITYOS_ASSIGN_OR_RETURN(bool deleted, TombstoneLocked(subject));
    if (deleted) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the personal data of ", subject,
          " was deleted (data key destroyed): nothing is stored for them any more"));
    }
    CITYOS_ASSIGN_OR_RETURN(std::optional<SecretKey> key, LoadDataKey(subject));
    if (!key.has_value()) {
      SecretKey fresh;
      if (RAND_bytes(fresh.mutable_data(), static_cast<int>(fresh.size())) != 1) {
        return absl::InternalError("RAND_bytes failed");
      }
      CITYOS_ASSIGN_OR_RETURN(
          std::string wrapped,
          Seal(master_,
               std::string_view(reinterpret_cast<const char*>(fresh.data()), fresh.size()),
               KeyAad(subject)));
      SqliteStmt s(db_, "INSERT INTO data_keys(data_subject, wrapped, created_ns) VALUES (?, ?, ?)");
      if (!s.ok()) return SqlError("prepare key insert");
      s.Bind(1, subject);
      s.BindBlob(2, wrapped);
      s.Bind(3, absl::ToUnixNanos(clock_->Now()));
      if (s.Step() != SQLITE_DONE) return SqlError("key insert");
      key.emplace(std::move(fresh));
    }
    const std::string record_id = UuidToString(NewUuidV7At(clock_->Now()));
    CITYOS_ASSIGN_OR_RETURN(std::string sealed,
                            Seal(*key, plain, RecordAad(subject, record_id)));
    SqliteStmt s(db_,
           "INSERT INTO records(record_id, data_subject, sealed, stored_ns) VALUES (?, ?, ?, ?)");
    if (!s.ok()) return SqlError("prepare record insert");
    s.Bind(1, record_id);
    s.Bind(2, subject);
    s.BindBlob(3, sealed);
    s.Bind(4, absl::ToUnixNanos(clock_->Now()));
    if (s.Step() != SQLITE_DONE) return SqlError("record insert");
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<event::v1::Event>> ExportLocked(std::string_view subject)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    CITYOS_ASSIGN_OR_RETURN(auto deleted_at, TombstoneTime(subject));
    if (deleted_at.has_value()) {
      return absl::NotFoundError(absl::StrCat(
          "the personal data of ", AVs(subject), " was deleted at ",
          absl::FormatTime(absl::RFC3339_full, absl::FromUnixNanos(*deleted_at),
                           absl::UTCTimeZone()),
          " (data key destroyed)"));
    }
    std::vector<event::v1::Event> out;
    CITYOS_ASSIGN_OR_RETURN(std::optional<SecretKey> key, LoadDataKey(subject));
    SqliteStmt s(db_, "SELECT record_id, sealed FROM records WHERE data_subject = ? ORDER BY seq");
    if (!s.ok()) return SqlError("prepare export");
    s.Bind(1, subject);
    int rc;
    while ((rc = s.Step()) == SQLITE_ROW) {
      const char* id_text = reinterpret_cast<const char*>(sqlite3_column_text(s.get(), 0));
      std::string record_id = id_text ? id_text : "";
      if (!key.has_value()) {
        return absl::DataLossError(absl::StrCat("record ", record_id, " of ", AVs(subject),
                                                " has no data key to decrypt it"));
      }
      std::string plain;
      if (!Unseal(*key, s.ColBlob(1), RecordAad(subject, record_id), &plain)) {
        return absl::DataLossError(absl::StrCat("record ", record_id, " of ", AVs(subject),
                                                " failed authentication (AES-256-GCM): "
                                                "the ciphertext was modified or moved"));
      }
      event::v1::Event e;
      bool parsed = e.ParseFromString(plain);
      OPENSSL_cleanse(plain.data(), plain.size());
      if (!parsed) {
        return absl::DataLossError(
            absl::StrCat("record ", record_id, " of ", AVs(subject), " is not an event"));
      }
      out.push_back(std::move(e));
    }
    if (rc != SQLITE_DONE) return SqlError("export");
    return out;
  }

  absl::StatusOr<uint64_t> DeleteLocked(std::string_view subject)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    CITYOS_ASSIGN_OR_RETURN(bool deleted, TombstoneLocked(subject));
    if (deleted) return uint64_t{0};
    uint64_t records = 0;
    {
      SqliteStmt s(db_, "DELETE FROM records WHERE data_subject = ?");
      if (!s.ok()) return SqlError("prepare record delete");
      s.Bind(1, subject);
      if (s.Step() != SQLITE_DONE) return SqlError("record delete");
      records = static_cast<uint64_t>(sqlite3_changes(db_));
    }
    {
      // The shredding proper: with the wrapped key gone (and secure_delete
      // zeroing the freed pages) no key able to open the ciphertexts remains,
      // so copies of them (backups, old file copies) are unreadable too.
      SqliteStmt s(db_, "DELETE FROM data_keys WHERE data_subject = ?");
      if (!s.ok()) return SqlError("prepare key delete");
      s.Bind(1, subject);
      if (s.Step() != SQLITE_DONE) return SqlError("key delete");
    }
    SqliteStmt s(db_, "INSERT INTO tombstones(data_subject, deleted_ns, records) VALUES (?, ?, ?)");
    if (!s.ok()) return SqlError("prepare tombstone insert");
    s.Bind(1, subject);
    s.Bind(2, absl::ToUnixNanos(clock_->Now()));
    s.Bind(3, static_cast<int64_t>(records));
    if (s.Step() != SQLITE_DONE) return SqlError("tombstone insert");
    return records;
  }

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
  const SecretKey master_;
  Clock* const clock_;
  const std::string db_path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PersonalStore>> PersonalStore::Open(const std::string& dir,
                                                                   Clock* clock) {
  if (dir.empty()) return absl::InvalidArgumentError("personal data store needs a directory");
  if (clock == nullptr) clock = Clock::Real();
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return Errno("cannot create", dir);
  const std::string db_path = dir + "/personal.db";
  const std::string key_path = dir + "/master.key";

  // Create the database file 0600 before SQLite does (SQLite would use the
  // umask); its journal inherits the mode.
  struct stat st{};
  const bool db_existed = ::stat(db_path.c_str(), &st) == 0;
  if (!db_existed) {
    int fd = ::open(db_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return Errno("cannot create", db_path);
    ::close(fd);
  }
  struct stat kst{};
  const bool key_existed = ::stat(key_path.c_str(), &kst) == 0;

  sqlite3* raw = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = raw ? sqlite3_errmsg(raw) : "out of memory";
    sqlite3_close(raw);
    return absl::InternalError(absl::StrCat("cannot open ", db_path, ": ", msg));
  }
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> db(raw, sqlite3_close);
  sqlite3_busy_timeout(raw, 5000);
  char* err = nullptr;
  // secure_delete: deleted records and keys are overwritten with zeros in the
  // file, not merely unlinked from the b-tree. WAL keeps ingestion cheap
  // (one append per Put); Delete checkpoints and truncates the WAL so the
  // shredded pages do not linger there either.
  const char* schema =
      "PRAGMA secure_delete = ON;"
      "PRAGMA journal_mode = WAL;"
      "PRAGMA synchronous = NORMAL;"
      "CREATE TABLE IF NOT EXISTS data_keys("
      "  data_subject TEXT PRIMARY KEY, wrapped BLOB NOT NULL, created_ns INTEGER NOT NULL);"
      "CREATE TABLE IF NOT EXISTS records("
      "  seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT NOT NULL UNIQUE,"
      "  data_subject TEXT NOT NULL, sealed BLOB NOT NULL, stored_ns INTEGER NOT NULL);"
      "CREATE INDEX IF NOT EXISTS records_by_subject ON records(data_subject, seq);"
      "CREATE TABLE IF NOT EXISTS tombstones("
      "  data_subject TEXT PRIMARY KEY, deleted_ns INTEGER NOT NULL, records INTEGER NOT NULL);";
  if (sqlite3_exec(raw, schema, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("cannot initialise ", db_path, ": ", msg));
  }
  if (!key_existed) {
    // A store holding wrapped keys without its master key must not silently
    // get a new master key: every record would be lost without a word.
    sqlite3_stmt* s = nullptr;
    int64_t n = 0;
    if (sqlite3_prepare_v2(raw, "SELECT COUNT(*) FROM data_keys", -1, &s, nullptr) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW) {
      n = sqlite3_column_int64(s, 0);
    }
    sqlite3_finalize(s);
    if (n > 0) {
      return absl::DataLossError(absl::StrCat(key_path, " is missing but ", db_path, " holds ", n,
                                              " wrapped data keys: restore the master key"));
    }
  }
  CITYOS_ASSIGN_OR_RETURN(SecretKey master, LoadOrCreateMasterKey(dir, key_path));
  return std::unique_ptr<PersonalStore>(
      new SqlitePersonalStore(db.release(), std::move(master), clock, db_path));
}

}  // namespace cityos::infobank
