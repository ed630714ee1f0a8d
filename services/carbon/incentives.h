// File: services/carbon/incentives.h
//
// The incentive ledger (issue 7, part 6): points and coupons for people from
// their green credits, green-loan tiers for enterprises from their grades.
// SQLite `incentives.db`; entries are never changed: a restated grade that
// changes the tier books a compensating entry (reverses_entry_id,
// restatement_id) and then the new tier.
//
//   IncentiveRules rules;
//   rules.points_per_kg = 10;                        // 10 points per kg CO2
//   rules.coupon_every_kg = 5;                       // a coupon per 5 kg in a month
//   rules.coupon_value.set_currency_code("CNY"); rules.coupon_value.set_amount_minor(500);
//   rules.loan_tier_by_level = {{1, "green-A"}, {2, "green-B"}, {3, "standard"}};
//   rules.tz = city_tz;
//   CITYOS_ASSIGN_OR_RETURN(auto ledger, IncentiveLedger::Open(dir + "/incentives.db", rules, clock));
//   CITYOS_ASSIGN_OR_RETURN(auto entries, ledger->OnCredit(credit));
//
// Points: an account's points are floor(total kg credited x points_per_kg);
// each credit books the difference to what was booked before, so fractional
// remainders carry over to the next credit and no point is lost or invented
// (grams are kept as integer milligrams, so the sum is exact).
// Coupons: per account and calendar month (of the credit's behaviour time, in
// `tz`), every full `coupon_every_kg` kg credited books one COUPON with a new
// coupon id `cpn-<uuid>` and `coupon_value`.
// Loan tiers: one LOAN_TIER entry per enterprise and grade period. A grade
// for a period that has none books one; a later grade for the same period
// (a restatement, or a recomputation) with the same tier books nothing, with
// a different tier reverses the period's entry (a LOAN_TIER entry carrying
// the old tier, reverses_entry_id and the grade's restatement_id) and books
// the new one. The current tier is that of the latest graded period.
#ifndef CITYOS_SERVICES_CARBON_INCENTIVES_H_
#define CITYOS_SERVICES_CARBON_INCENTIVES_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/carbon/v1/carbon.pb.h"
#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/clock.h"
#include "cityos/common/v1/common.pb.h"

namespace cityos::carbon {

struct IncentiveRules {
  // Points per kg CO2 credited (>= 0; 0 = no points). Default: 1.
  double points_per_kg = 1.0;
  // Every full `coupon_every_kg` kg credited in a month earns a coupon (>= 0;
  // 0 = no coupons). Default: 0.
  double coupon_every_kg = 0;
  // What a coupon is worth (currency required when coupons are on).
  common::v1::Money coupon_value;
  // Green-loan tier per grade level 1..5; a level not in the map books no
  // tier entry.
  std::map<int, std::string> loan_tier_by_level;
  // The city time zone: months of the coupon rule. Default: UTC.
  absl::TimeZone tz = absl::UTCTimeZone();
  // Ids of the rules in IncentiveEntry.rule_id.
  std::string points_rule_id = "points-per-kg";
  std::string coupon_rule_id = "coupon-per-kg-month";
  std::string loan_tier_rule_id = "loan-tier-by-level";
};

// Thread-safe (one mutex around the connection).
class IncentiveLedger {
 public:
  // Opens (creating if missing). INVALID_ARGUMENT for a negative or
  // non-finite points_per_kg / coupon_every_kg, coupons without a currency or
  // with a value <= 0, a level outside 1..5 or an empty tier. `clock` null =
  // real clock (booking times, ids).
  static absl::StatusOr<std::unique_ptr<IncentiveLedger>> Open(const std::string& db_path,
                                                               IncentiveRules rules, Clock* clock);
  ~IncentiveLedger();
  IncentiveLedger(const IncentiveLedger&) = delete;
  IncentiveLedger& operator=(const IncentiveLedger&) = delete;

  // Books the points and coupons `credit` earns (possibly none). A credit
  // already processed (same credit_id) books nothing and returns {}.
  // INVALID_ARGUMENT for an empty credit_id or account_id, a negative or
  // non-finite credited_g, or a bad time.
  absl::StatusOr<std::vector<v1::IncentiveEntry>> OnCredit(const v1::GreenCredit& credit);

  // Books the loan tier of `grade` per the rules in the file comment; returns
  // the entries booked (none, one, or reversal + new tier). A grade already
  // processed (same grade_id) books nothing. INVALID_ARGUMENT for an empty
  // grade_id or account_id, a level outside 1..5 or a missing period start.
  absl::StatusOr<std::vector<v1::IncentiveEntry>> OnGrade(const v1::Grade& grade);

  // Entries of r.account_id() (required) booked in r.range() (unset bounds:
  // unbounded), newest first, paged (page_size 0 = 100, at most 1000);
  // points_balance over all entries; loan_tier current.
  // INVALID_ARGUMENT for a bad page size or token or range.
  absl::StatusOr<v1::GetIncentiveStatementResponse> Statement(
      const v1::GetIncentiveStatementRequest& r) const;

  // The account's points balance and current loan tier ("" if none).
  absl::StatusOr<int64_t> PointsBalance(const std::string& account_id) const;
  absl::StatusOr<std::string> CurrentLoanTier(const std::string& account_id) const;

 private:
  class Impl;
  explicit IncentiveLedger(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_INCENTIVES_H_
