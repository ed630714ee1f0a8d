// SqliteStmt::ForEachRow (services/infobank/sqlite_util.h), which the
// information bank and the carbon account use to read tables.
#include "sqlite_util.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace cityos::infobank {
namespace {

class SqliteStmtTest : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(sqlite3_open(":memory:", &db_), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db_,
                           "CREATE TABLE t (n INTEGER, s TEXT);"
                           "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
  }
  void TearDown() override { sqlite3_close(db_); }
  sqlite3* db_ = nullptr;
};

TEST_F(SqliteStmtTest, ForEachRowVisitsEveryRowInOrder) {
  SqliteStmt q(db_, "SELECT n, s FROM t ORDER BY n", "t");
  std::vector<std::string> seen;
  ASSERT_TRUE(q.ForEachRow([&]() -> absl::Status {
                 seen.push_back(std::to_string(q.ColInt(0)) + q.ColText(1));
                 return absl::OkStatus();
               }).ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"1a", "2b", "3c"}));
}

TEST_F(SqliteStmtTest, ForEachRowStopsAtTheFirstErrorOfTheCallback) {
  SqliteStmt q(db_, "SELECT n FROM t ORDER BY n", "t");
  int calls = 0;
  absl::Status s = q.ForEachRow([&]() -> absl::Status {
    ++calls;
    if (q.ColInt(0) == 2) return absl::DataLossError("row 2 is bad");
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), "row 2 is bad");
  EXPECT_EQ(calls, 2);
}

TEST_F(SqliteStmtTest, ForEachRowReportsAStatementThatDidNotPrepare) {
  SqliteStmt q(db_, "SELECT nope FROM missing", "my table");
  int calls = 0;
  absl::Status s = q.ForEachRow([&]() -> absl::Status {
    ++calls;
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("my table: "), std::string::npos) << s;
  EXPECT_NE(s.message().find("missing"), std::string::npos) << s;
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace cityos::infobank
