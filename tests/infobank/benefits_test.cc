// BenefitLedger: rules, idempotent credits (also under racing retries on
// several connections), balance and statement paging.
#include "benefits.h"

#include <sys/stat.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cityos/clock.h"
#include "cityos/proto_time.h"
#include "gtest/gtest.h"
#include "testutil.h"

namespace cityos::infobank {
namespace {

using ::cityos::testing::TempDir;

std::vector<BenefitRule> Rules() {
  return {{"medical_care", "health", 10, "health-care"},
          {"research", "", 3, ""},
          {"", "mobility.trips", 1, ""}};
}

TEST(BenefitLedgerTest, FirstMatchingRulePricesAProvision) {
  TempDir dir;
  SimulatedClock clock(absl::FromUnixSeconds(1800000000));
  auto ledger = BenefitLedger::Open(dir.File("benefits.db"), Rules(), &clock);
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  auto e = (*ledger)->CreditProvision("p1", "alice", "hospital-a", "medical_care",
                                      "health.vitals", "c1");
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE(e->has_value());
  EXPECT_EQ((*e)->points(), 10);
  EXPECT_EQ((*e)->balance(), 10);
  EXPECT_EQ((*e)->rule_id(), "health-care");
  EXPECT_EQ((*e)->kind(), consent::v1::BENEFIT_ENTRY_KIND_PROVISION);
  EXPECT_EQ((*e)->idempotency_key(), "p1");
  EXPECT_EQ((*e)->consent_id(), "c1");
  EXPECT_EQ((*e)->recipient_org(), "hospital-a");
  EXPECT_FALSE((*e)->entry_id().empty());

  // `health` does not cover `healthcare.x`; research matches any category.
  auto none = (*ledger)->CreditProvision("p2", "alice", "x", "medical_care", "healthcare.x", "c");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto r = (*ledger)->CreditProvision("p3", "alice", "uni", "research", "health.vitals", "c2");
  ASSERT_TRUE(r.ok() && r->has_value());
  EXPECT_EQ((*r)->points(), 3);
  EXPECT_EQ((*r)->balance(), 13);
  EXPECT_EQ((*r)->rule_id(), "research:");
  auto m = (*ledger)->CreditProvision("p4", "alice", "bus", "mobility_operations",
                                      "mobility.trips", "c3");
  ASSERT_TRUE(m.ok() && m->has_value());
  EXPECT_EQ((*m)->balance(), 14);

  auto bal = (*ledger)->Balance("alice");
  ASSERT_TRUE(bal.ok());
  EXPECT_EQ(bal->balance(), 14);
  EXPECT_EQ(bal->last_entry_id(), (*m)->entry_id());
  EXPECT_EQ(bal->as_of().seconds(), 1800000000);
  EXPECT_EQ((*ledger)->Balance("nobody")->balance(), 0);
  struct stat st{};
  ASSERT_EQ(::stat(dir.File("benefits.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0077, 0u);
}

TEST(BenefitLedgerTest, BadInputIsRejected) {
  TempDir dir;
  EXPECT_EQ(BenefitLedger::Open(dir.File("a.db"), {{"research", "", 0, ""}}, nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BenefitLedger::Open(dir.File("b.db"), {{"a", "", 1, "x"}, {"b", "", 1, "x"}}, nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto ledger = BenefitLedger::Open(dir.File("c.db"), Rules(), nullptr);
  ASSERT_TRUE(ledger.ok());
  EXPECT_EQ((*ledger)->CreditProvision("", "alice", "o", "research", "x", "c").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*ledger)->CreditProvision("p", "", "o", "research", "x", "c").status().code(),
            absl::StatusCode::kInvalidArgument);
  consent::v1::GetBenefitStatementRequest req;
  req.set_page_token("garbage");
  EXPECT_EQ((*ledger)->Statement(req, "alice").status().code(),
            absl::StatusCode::kInvalidArgument);
  req.clear_page_token();
  req.set_page_size(1001);
  EXPECT_EQ((*ledger)->Statement(req, "alice").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BenefitLedgerTest, RetriedProvisionNeverPaysTwiceAndSurvivesReopen) {
  TempDir dir;
  auto ledger = BenefitLedger::Open(dir.File("benefits.db"), Rules(), nullptr);
  ASSERT_TRUE(ledger.ok());
  auto first = (*ledger)->CreditProvision("audit:42", "alice", "uni", "research", "x", "c");
  auto again = (*ledger)->CreditProvision("audit:42", "alice", "uni", "research", "x", "c");
  ASSERT_TRUE(first.ok() && again.ok());
  EXPECT_EQ((*first)->entry_id(), (*again)->entry_id());
  EXPECT_EQ((*ledger)->Balance("alice")->balance(), 3);
  // Another person cannot reuse the provision id.
  EXPECT_EQ((*ledger)->CreditProvision("audit:42", "bob", "uni", "research", "x", "c")
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  ledger->reset();
  auto reopened = BenefitLedger::Open(dir.File("benefits.db"), Rules(), nullptr);
  ASSERT_TRUE(reopened.ok());
  auto third = (*reopened)->CreditProvision("audit:42", "alice", "uni", "research", "x", "c");
  ASSERT_TRUE(third.ok());
  EXPECT_EQ((*third)->entry_id(), (*first)->entry_id());
  EXPECT_EQ((*reopened)->Balance("alice")->balance(), 3);
}

TEST(BenefitLedgerTest, ConcurrentRetriesFromEightThreadsPayExactlyOnce) {
  TempDir dir;
  // Two ledgers (two SQLite connections) on one file, so that the retries
  // race through the database, not only through one object's mutex.
  auto a = BenefitLedger::Open(dir.File("benefits.db"), Rules(), nullptr);
  auto b = BenefitLedger::Open(dir.File("benefits.db"), Rules(), nullptr);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  constexpr int kThreads = 8;
  constexpr int kProvisions = 50;
  std::atomic<int> errors{0};
  std::vector<std::set<std::string>> seen(kThreads);
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      BenefitLedger* l = (t % 2 == 0) ? a->get() : b->get();
      while (!go.load()) std::this_thread::yield();
      for (int p = 0; p < kProvisions; ++p) {
        auto e = l->CreditProvision(absl::StrCat("prov-", p), "alice", "hospital-a",
                                    "medical_care", "health.vitals", "c1");
        if (!e.ok() || !e->has_value()) {
          ++errors;
          continue;
        }
        seen[t].insert(absl::StrCat(p, "=", (*e)->entry_id()));
      }
    });
  }
  go = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  // Every thread saw the same entry for each provision.
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(seen[t], seen[0]);
  EXPECT_EQ((*a)->Balance("alice")->balance(), 10 * kProvisions);
  consent::v1::GetBenefitStatementRequest req;
  req.set_page_size(1000);
  auto st = (*b)->Statement(req, "alice");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->entries_size(), kProvisions);
  EXPECT_EQ(st->credited(), 10 * kProvisions);
  // Balances form a running total (no lost update between connections).
  for (int i = 0; i < st->entries_size(); ++i) {
    EXPECT_EQ(st->entries(i).balance(), 10 * (kProvisions - i));
  }
}

TEST(BenefitLedgerTest, StatementIsNewestFirstPagedAndRanged) {
  TempDir dir;
  SimulatedClock clock(absl::FromUnixSeconds(1800000000));
  auto ledger = BenefitLedger::Open(dir.File("benefits.db"), Rules(), &clock);
  ASSERT_TRUE(ledger.ok());
  for (int i = 0; i < 25; ++i) {
    ASSERT_TRUE((*ledger)
                    ->CreditProvision(absl::StrCat("p", i), "alice", "uni", "research", "x", "c")
                    .ok());
    ASSERT_TRUE(
        (*ledger)->CreditProvision(absl::StrCat("q", i), "bob", "uni", "research", "x", "c").ok());
    clock.Advance(absl::Minutes(1));
  }
  consent::v1::GetBenefitStatementRequest req;
  req.set_page_size(10);
  std::vector<std::string> keys;
  int pages = 0;
  do {
    auto st = (*ledger)->Statement(req, "alice");
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->credited(), 75);
    EXPECT_EQ(st->debited(), 0);
    for (const auto& e : st->entries()) keys.push_back(e.idempotency_key());
    req.set_page_token(st->next_page_token());
    ++pages;
  } while (!req.page_token().empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(keys.size(), 25u);
  for (int i = 0; i < 25; ++i) EXPECT_EQ(keys[i], absl::StrCat("p", 24 - i));

  // Range [t0+5min, t0+10min): entries 5..9.
  consent::v1::GetBenefitStatementRequest ranged;
  TimestampToProto(absl::FromUnixSeconds(1800000000) + absl::Minutes(5),
                   ranged.mutable_range()->mutable_start());
  TimestampToProto(absl::FromUnixSeconds(1800000000) + absl::Minutes(10),
                   ranged.mutable_range()->mutable_end());
  auto st = (*ledger)->Statement(ranged, "alice");
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(st->entries_size(), 5);
  EXPECT_EQ(st->entries(0).idempotency_key(), "p9");
  EXPECT_EQ(st->entries(4).idempotency_key(), "p5");
  EXPECT_EQ(st->credited(), 15);
  EXPECT_TRUE(st->next_page_token().empty());
}

}  // namespace
}  // namespace cityos::infobank
