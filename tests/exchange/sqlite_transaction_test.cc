// store_internal::Transaction (libcityos/src/store/sqlite.h): its destructor
// rolls back without allocating (a bad_alloc thrown from a destructor would
// terminate the process), also when the ROLLBACK fails, and the rollback
// takes effect.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>

#include "store/sqlite.h"
#include "testutil.h"

namespace {
// Counts operator new calls made on the thread while counting is on.
thread_local bool counting = false;
thread_local int allocations = 0;
}  // namespace

// The replacements pair malloc with free; GCC 12 cannot see that operator new
// below is the malloc it pairs with and warns about every delete.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  if (counting) ++allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace cityos::store_internal {
namespace {

int64_t CountRows(SqliteConnection* conn) {
  auto stmt = conn->Prepare("SELECT COUNT(*) FROM t");
  EXPECT_TRUE(stmt.ok()) << stmt.status();
  if (!stmt.ok()) return -1;
  auto row = stmt->Step("count");
  EXPECT_TRUE(row.ok() && *row);
  return stmt->ColumnInt64(0);
}

class TransactionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto conn = SqliteConnection::Open(dir_.File("t.db"), {});
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = *std::move(conn);
    ASSERT_TRUE(conn_->Exec("CREATE TABLE t(x INTEGER)", "create").ok());
  }
  testing::TempDir dir_;
  std::unique_ptr<SqliteConnection> conn_;
};

// The first transaction of a fresh connection: nothing cached before Begin.
TEST_F(TransactionTest, DestructorRollsBackWithoutAllocating) {
  std::optional<Transaction> tx;
  {
    auto begun = Transaction::Begin(conn_.get(), "BEGIN IMMEDIATE");
    ASSERT_TRUE(begun.ok()) << begun.status();
    tx.emplace(*std::move(begun));
  }
  ASSERT_TRUE(conn_->Exec("INSERT INTO t VALUES(1)", "insert").ok());
  allocations = 0;
  counting = true;
  tx.reset();
  counting = false;
  EXPECT_EQ(allocations, 0);
  EXPECT_EQ(CountRows(conn_.get()), 0);  // rolled back
  EXPECT_TRUE(sqlite3_get_autocommit(conn_->db()) != 0);  // no transaction open
}

// A ROLLBACK that fails (the transaction already ended behind its back):
// ignored, and still no allocation (no error status is built).
TEST_F(TransactionTest, FailedRollbackInDestructorDoesNotAllocate) {
  std::optional<Transaction> tx;
  {
    auto begun = Transaction::Begin(conn_.get(), "BEGIN");
    ASSERT_TRUE(begun.ok()) << begun.status();
    tx.emplace(*std::move(begun));
  }
  ASSERT_TRUE(conn_->Exec("INSERT INTO t VALUES(1)", "insert").ok());
  ASSERT_TRUE(conn_->Exec("COMMIT", "commit behind its back").ok());
  allocations = 0;
  counting = true;
  tx.reset();
  counting = false;
  EXPECT_EQ(allocations, 0);
  EXPECT_EQ(CountRows(conn_.get()), 1);
  // The connection still works: a next transaction commits.
  auto again = Transaction::Begin(conn_.get(), "BEGIN IMMEDIATE");
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE(conn_->Exec("INSERT INTO t VALUES(2)", "insert").ok());
  ASSERT_TRUE(again->Commit().ok());
  EXPECT_EQ(CountRows(conn_.get()), 2);
}

}  // namespace
}  // namespace cityos::store_internal
