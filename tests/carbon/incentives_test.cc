// Tests of the incentive ledger (services/carbon/incentives.h): points with
// carried remainders, coupons per month, loan tiers reversed by compensating
// entries on restatement, statements, persistence.
#include "incentives.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "cityos/clock.h"
#include "cityos/proto_time.h"
#include "testutil.h"

namespace cityos::carbon {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

absl::TimeZone Shanghai() {
  absl::TimeZone tz;
  EXPECT_TRUE(absl::LoadTimeZone("Asia/Shanghai", &tz));
  return tz;
}

absl::Time Local(int y, int mo, int d, int h = 12) {
  return absl::FromCivil(absl::CivilSecond(y, mo, d, h, 0, 0), Shanghai());
}

v1::GreenCredit CreditOf(std::string id, double grams, absl::Time t,
                         std::string account = "person/p1") {
  v1::GreenCredit c;
  c.set_credit_id(std::move(id));
  c.set_account_id(std::move(account));
  c.set_behaviour("metro_ride");
  c.set_credited_g(grams);
  TimestampToProto(t, c.mutable_time());
  return c;
}

v1::Grade GradeOf(std::string id, int level, int year, std::string restatement = "",
                  std::string account = "ent-1") {
  v1::Grade g;
  g.set_grade_id(std::move(id));
  g.set_account_id(std::move(account));
  g.set_level(level);
  TimestampToProto(Local(year, 1, 1, 0), g.mutable_period()->mutable_start());
  TimestampToProto(Local(year + 1, 1, 1, 0), g.mutable_period()->mutable_end());
  g.set_restatement_id(std::move(restatement));
  return g;
}

class IncentiveLedgerTest : public ::testing::Test {
 protected:
  void Open(IncentiveRules rules) {
    rules_ = rules;
    ledger_.reset();
    auto l = IncentiveLedger::Open(dir_.File("incentives.db"), rules, &clock_);
    ASSERT_TRUE(l.ok()) << l.status();
    ledger_ = *std::move(l);
  }
  std::vector<v1::IncentiveEntry> Credit(const v1::GreenCredit& c) {
    auto r = ledger_->OnCredit(c);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::vector<v1::IncentiveEntry>{};
  }
  std::vector<v1::IncentiveEntry> Grade(const v1::Grade& g) {
    auto r = ledger_->OnGrade(g);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::vector<v1::IncentiveEntry>{};
  }
  int64_t Balance(const std::string& account = "person/p1") {
    auto b = ledger_->PointsBalance(account);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *b : -1;
  }
  static IncentiveRules Tiers() {
    IncentiveRules r;
    r.loan_tier_by_level = {{1, "green-A"}, {2, "green-B"}, {3, "standard"}, {4, "watch"}, {5, "restricted"}};
    r.tz = Shanghai();
    return r;
  }

  testing::TempDir dir_;
  SimulatedClock clock_{absl::FromUnixSeconds(1767225600)};
  IncentiveRules rules_;
  std::unique_ptr<IncentiveLedger> ledger_;
};

TEST_F(IncentiveLedgerTest, PointsCarryRemainders) {
  IncentiveRules r;
  r.points_per_kg = 1;
  Open(r);
  EXPECT_THAT(Credit(CreditOf("c1", 600, Local(2026, 1, 5))), IsEmpty());  // 0.6 kg
  auto e = Credit(CreditOf("c2", 600, Local(2026, 1, 5)));                   // 1.2 kg
  ASSERT_THAT(e, SizeIs(1));
  EXPECT_EQ(e[0].kind(), v1::INCENTIVE_KIND_POINTS);
  EXPECT_EQ(e[0].points(), 1);
  EXPECT_EQ(e[0].source_id(), "c2");
  EXPECT_EQ(e[0].rule_id(), "points-per-kg");
  EXPECT_EQ(e[0].account_id(), "person/p1");
  e = Credit(CreditOf("c3", 900, Local(2026, 1, 6)));  // 2.1 kg
  ASSERT_THAT(e, SizeIs(1));
  EXPECT_EQ(e[0].points(), 1);
  EXPECT_EQ(Balance(), 2);
  // A zero-gram (capped) credit books nothing.
  EXPECT_THAT(Credit(CreditOf("c4", 0, Local(2026, 1, 6))), IsEmpty());
  // Another person's remainder is their own.
  EXPECT_THAT(Credit(CreditOf("c5", 900, Local(2026, 1, 6), "person/p2")), IsEmpty());
  EXPECT_EQ(Balance("person/p2"), 0);
}

TEST_F(IncentiveLedgerTest, FractionalRateLosesAndInventsNothing) {
  IncentiveRules r;
  r.points_per_kg = 10;  // 52 g = 0.52 points
  Open(r);
  double total_g = 0;
  for (int i = 0; i < 97; ++i) {
    const double g = (i % 3 == 0) ? 52 : (i % 3 == 1 ? 80 : 37.5);
    total_g += g;
    Credit(CreditOf(absl::StrCat("c", i), g, Local(2026, 1, 1 + i % 28)));
    ASSERT_EQ(Balance(), static_cast<int64_t>(std::floor(total_g / 1000.0 * 10 + 1e-9))) << i;
  }
}

TEST_F(IncentiveLedgerTest, SameCreditBooksOnce) {
  IncentiveRules r;
  r.points_per_kg = 1;
  Open(r);
  ASSERT_THAT(Credit(CreditOf("c1", 2500, Local(2026, 1, 5))), SizeIs(1));
  EXPECT_THAT(Credit(CreditOf("c1", 2500, Local(2026, 1, 5))), IsEmpty());
  EXPECT_EQ(Balance(), 2);
  auto bad = ledger_->OnCredit(CreditOf("", 10, Local(2026, 1, 5)));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  bad = ledger_->OnCredit(CreditOf("c9", -1, Local(2026, 1, 5)));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("credited_g"));
}

TEST_F(IncentiveLedgerTest, CouponEveryNKgInAMonth) {
  IncentiveRules r;
  r.points_per_kg = 0;
  r.coupon_every_kg = 1;
  r.coupon_value.set_currency_code("CNY");
  r.coupon_value.set_amount_minor(500);
  r.tz = Shanghai();
  Open(r);
  EXPECT_THAT(Credit(CreditOf("c1", 400, Local(2026, 1, 10))), IsEmpty());
  EXPECT_THAT(Credit(CreditOf("c2", 400, Local(2026, 1, 11))), IsEmpty());
  auto e = Credit(CreditOf("c3", 400, Local(2026, 1, 12)));  // 1.2 kg in January
  ASSERT_THAT(e, SizeIs(1));
  EXPECT_EQ(e[0].kind(), v1::INCENTIVE_KIND_COUPON);
  EXPECT_EQ(e[0].coupon_value().currency_code(), "CNY");
  EXPECT_EQ(e[0].coupon_value().amount_minor(), 500);
  EXPECT_THAT(e[0].coupon_id(), ::testing::StartsWith("cpn-"));
  EXPECT_EQ(e[0].source_id(), "c3");
  EXPECT_EQ(e[0].points(), 0);
  // February (Shanghai: 00:30 on Feb 1 is still January in UTC) starts at zero.
  EXPECT_THAT(Credit(CreditOf("c4", 900, Local(2026, 2, 1, 0))), IsEmpty());
  // A late January credit completes January's second coupon.
  auto late = Credit(CreditOf("c5", 800, Local(2026, 1, 30)));  // 2.0 kg in January
  ASSERT_THAT(late, SizeIs(1));
  // One large credit may earn several coupons, each with its own id.
  auto big = Credit(CreditOf("c6", 3100, Local(2026, 2, 2)));  // February: 4.0 kg
  ASSERT_THAT(big, SizeIs(4));
  std::set<std::string> ids{e[0].coupon_id(), late[0].coupon_id()};
  for (const auto& c : big) ids.insert(c.coupon_id());
  EXPECT_THAT(ids, SizeIs(6));
  EXPECT_EQ(Balance(), 0);
}

TEST_F(IncentiveLedgerTest, LoanTierReversedOnRestatement) {
  Open(Tiers());
  auto first = Grade(GradeOf("g-2025", 2, 2025));
  ASSERT_THAT(first, SizeIs(1));
  EXPECT_EQ(first[0].kind(), v1::INCENTIVE_KIND_LOAN_TIER);
  EXPECT_EQ(first[0].loan_tier(), "green-B");
  EXPECT_EQ(first[0].source_id(), "g-2025");
  EXPECT_TRUE(first[0].reverses_entry_id().empty());

  // The same tier after a restatement: nothing.
  EXPECT_THAT(Grade(GradeOf("g-2025-r1", 2, 2025, "rst-1")), IsEmpty());

  // A restatement that changes the tier: compensating entry, then the new tier.
  clock_.Advance(absl::Hours(1));
  auto restated = Grade(GradeOf("g-2025-r2", 3, 2025, "rst-2"));
  ASSERT_THAT(restated, SizeIs(2));
  EXPECT_EQ(restated[0].reverses_entry_id(), first[0].entry_id());
  EXPECT_EQ(restated[0].loan_tier(), "green-B");
  EXPECT_EQ(restated[0].restatement_id(), "rst-2");
  EXPECT_THAT(restated[0].description(), HasSubstr("rst-2"));
  EXPECT_EQ(restated[1].loan_tier(), "standard");
  EXPECT_EQ(restated[1].restatement_id(), "rst-2");
  EXPECT_TRUE(restated[1].reverses_entry_id().empty());

  v1::GetIncentiveStatementRequest req;
  req.set_account_id("ent-1");
  auto st = ledger_->Statement(req);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->loan_tier(), "standard");
  ASSERT_EQ(st->entries_size(), 3);  // newest first; the first entry is unchanged
  EXPECT_EQ(st->entries(0).entry_id(), restated[1].entry_id());
  EXPECT_EQ(st->entries(1).entry_id(), restated[0].entry_id());
  EXPECT_EQ(st->entries(2).entry_id(), first[0].entry_id());
  EXPECT_EQ(st->entries(2).loan_tier(), "green-B");
  EXPECT_TRUE(st->entries(2).restatement_id().empty());

  // The next year's grade becomes the current tier; restating 2025 back to
  // level 2 reverses the restated entry but leaves the current tier alone.
  ASSERT_THAT(Grade(GradeOf("g-2026", 1, 2026)), SizeIs(1));
  auto back = Grade(GradeOf("g-2025-r3", 2, 2025, "rst-3"));
  ASSERT_THAT(back, SizeIs(2));
  EXPECT_EQ(back[0].reverses_entry_id(), restated[1].entry_id());
  auto tier = ledger_->CurrentLoanTier("ent-1");
  ASSERT_TRUE(tier.ok());
  EXPECT_EQ(*tier, "green-A");

  // A grade seen before books nothing; bad grades are refused.
  EXPECT_THAT(Grade(GradeOf("g-2026", 4, 2026)), IsEmpty());
  auto bad = ledger_->OnGrade(GradeOf("g-x", 7, 2026));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("level 7"));
}

TEST_F(IncentiveLedgerTest, StatementPagesAndBalance) {
  IncentiveRules r = Tiers();
  r.points_per_kg = 1;
  Open(r);
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(absl::Minutes(1));
    ASSERT_THAT(Credit(CreditOf(absl::StrCat("c", i), 1000, Local(2026, 1, 5))), SizeIs(1));
  }
  v1::GetIncentiveStatementRequest req;
  req.set_account_id("person/p1");
  req.set_page_size(2);
  std::vector<std::string> sources;
  for (int page = 0; page < 5; ++page) {
    auto st = ledger_->Statement(req);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->points_balance(), 5);
    EXPECT_EQ(st->loan_tier(), "");
    for (const auto& e : st->entries()) sources.push_back(e.source_id());
    if (st->next_page_token().empty()) break;
    req.set_page_token(st->next_page_token());
  }
  EXPECT_EQ(sources, (std::vector<std::string>{"c4", "c3", "c2", "c1", "c0"}));

  v1::GetIncentiveStatementRequest bad;
  bad.set_account_id("person/p1");
  bad.set_page_token("ie1:x");
  EXPECT_EQ(ledger_->Statement(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(IncentiveLedgerTest, PersistsAcrossReopen) {
  IncentiveRules r = Tiers();
  r.points_per_kg = 1;
  Open(r);
  Credit(CreditOf("c1", 700, Local(2026, 1, 5)));
  Grade(GradeOf("g-2025", 1, 2025));
  Open(r);
  // The 0.7 kg remainder survived: 0.7 + 0.4 = 1.1 kg -> 1 point.
  auto e = Credit(CreditOf("c2", 400, Local(2026, 1, 5)));
  ASSERT_THAT(e, SizeIs(1));
  EXPECT_EQ(e[0].points(), 1);
  EXPECT_THAT(Credit(CreditOf("c1", 700, Local(2026, 1, 5))), IsEmpty());
  auto tier = ledger_->CurrentLoanTier("ent-1");
  ASSERT_TRUE(tier.ok());
  EXPECT_EQ(*tier, "green-A");
  auto restated = Grade(GradeOf("g-2025-r", 3, 2025, "rst-1"));
  ASSERT_THAT(restated, SizeIs(2));
}

TEST(IncentiveLedgerOpen, RejectsBadRules) {
  testing::TempDir dir;
  SimulatedClock clock;
  IncentiveRules r;
  r.points_per_kg = -1;
  EXPECT_EQ(IncentiveLedger::Open(dir.File("i.db"), r, &clock).status().code(),
            absl::StatusCode::kInvalidArgument);
  r.points_per_kg = 1;
  r.coupon_every_kg = 5;  // no coupon value
  auto noval = IncentiveLedger::Open(dir.File("i.db"), r, &clock);
  EXPECT_EQ(noval.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(noval.status().message(), HasSubstr("coupon_value"));
  r.coupon_every_kg = 0;
  r.loan_tier_by_level = {{6, "x"}};
  auto level = IncentiveLedger::Open(dir.File("i.db"), r, &clock);
  EXPECT_EQ(level.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(level.status().message(), HasSubstr("level 6"));
}

}  // namespace
}  // namespace cityos::carbon
