// File: services/carbon/credits.h
//
// Green-behaviour credits of individual carbon accounts (issue 7, part 3):
// configurable rules (grams CO2 per action or per km, caps per day / month),
// the mapping from exchange-delivered mobility and payment events to
// behaviours, and the credit ledger (SQLite `credits.db`).
//
//   CITYOS_ASSIGN_OR_RETURN(std::vector<CreditRule> rules,
//       ParseCreditRulesCsv("config/carbon/green-behaviour-credits.csv", "ant_forest"));
//   CITYOS_ASSIGN_OR_RETURN(auto ledger, CreditLedger::Open(dir + "/credits.db", rules, tz, clock));
//   CITYOS_ASSIGN_OR_RETURN(std::optional<Behaviour> b, BehaviourFromEvent(delivery.event()));
//   if (b) CITYOS_ASSIGN_OR_RETURN(auto credit,
//       ledger->Credit("person/" + event.data_subject(), *b, decision.consent_id(), event.id()));
//
// Behaviour mapping (BehaviourFromEvent; the payload is the event's
// `proto_data` Any, its type taken from the Any's type URL):
//   cityos.mobility.v1.Trip
//     WALK            -> `walking_day`, quantity = distance_m / 1000, unit `km`
//     BICYCLE         -> `cycling_km`,  quantity = distance_m / 1000, unit `km`
//     anything else   -> not a green behaviour here. Transit (BUS, METRO, ...)
//                        is credited only from TransitRide, which carries the
//                        ticketing transaction id, so that a journey app's Trip
//                        and the ticket of the same ride never both count. E_BIKE
//                        is motorised and not "cycling".
//     time = end_time (else start_time, else event time); region =
//     origin.region, else destination.region, else event.region; dedup key
//     `<provider>/<trip_id>`.
//   cityos.mobility.v1.TransitRide
//     METRO -> `metro_ride`, BUS -> `bus_ride`, TRAM -> `tram_ride` (1 `ride`);
//     other modes -> not a green behaviour. time = boarding_time; region =
//     boarding_stop.region, else event.region; amount = fare; dedup key
//     `<operator_org>/<ride_id>`.
//   cityos.payments.v1.GreenPayment (1 action each; region = event.region)
//     OFFLINE_PAYMENT     -> `offline_payment` (unit `payment`, amount = amount)
//     UTILITY_BILL        -> `utility_bill_payment` (unit `bill`, account_ref =
//                            utility_account_ref, required)
//     ONLINE_REGISTRATION -> `hospital_registration_online` (unit `registration`)
//     E_TICKET            -> `e_ticket` (unit `ticket`; the reference CSV has no
//                            rule for it, so it earns only with a configured rule)
//     E_INVOICE           -> `e_invoice` (unit `invoice`), dedup key
//                            `payment/<payment_id>`: the same invoice delivered
//                            as an EInvoice carrying that payment_id is a duplicate.
//     Other kinds' dedup key: `<provider>/<payment_id>`.
//   cityos.payments.v1.EInvoice
//     -> `e_invoice` (unit `invoice`, amount = total_amount), time = issue_time,
//     region = event.region, dedup key `payment/<payment_id>` when payment_id is
//     set, else `invoice/<seller_tax_id>/<invoice_id>`.
//   Any other payload type (or no proto_data) -> nullopt.
//
// Walking (`walking_day`, Ant Forest: 296 g per day): a DAY rule. Walking trips
// are recorded with their km; the trip with which the person's walked distance
// on that city day first reaches the rule's `day_threshold_km` earns the rule's
// grams once (296 g); trips before it are recorded with 0 g (not capped: the
// threshold is not reached yet), trips after it with 0 g and capped=true. So a
// day earns at most grams_per_unit, whatever the cap text says; a grams-per-day
// cap (the CSV's "296 g per day") is enforced on top.
//
// Caps (all in the city time zone, per account and behaviour, counting only
// credits that earned grams): max_per_day / max_per_month actions,
// max_grams_per_day / max_grams_per_month, one utility bill per account
// reference per month, and a minimum payment amount. A credit over a cap, or
// a payment below the minimum, is still recorded, with capped=true and the
// reduced (possibly zero) grams, so the person sees why; it also keeps the
// transaction from being credited again.
#ifndef CITYOS_SERVICES_CARBON_CREDITS_H_
#define CITYOS_SERVICES_CARBON_CREDITS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/carbon/v1/carbon.pb.h"
#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/clock.h"
#include "cityos/event/v1/event.pb.h"
#include "regions.h"

namespace cityos::carbon {

// Default of CreditRule::day_threshold_km for DAY rules read from a CSV.
inline constexpr double kDefaultDayThresholdKm = 3.0;

// One credit rule: what one unit of a behaviour earns, and its caps.
struct CreditRule {
  // Id in GreenCredit.rule_id. Empty: "<scheme>:<behaviour>".
  std::string id;
  // Scheme, e.g. `ant_forest`.
  std::string scheme;
  // Behaviour, e.g. `metro_ride` (as produced by BehaviourFromEvent).
  std::string behaviour;
  // Grams CO2 per unit (> 0).
  double grams_per_unit = 0;
  // Unit: `km` (grams x km), `day` (once per day, see the file comment), or a
  // per-action unit (`ride`, `payment`, `invoice`, `bill`, `registration`,
  // `ticket`, `action`): grams x quantity (quantity is 1 for actions).
  std::string unit;
  // Caps in actions (0 = none).
  int64_t max_per_day = 0;
  int64_t max_per_month = 0;
  // Caps in grams (0 = none).
  double max_grams_per_day = 0;
  double max_grams_per_month = 0;
  // Utility bills: one credit per account reference (account number) per month.
  bool per_account_ref_per_month = false;
  // Payments: minimum amount, minor units of `min_amount_currency` (0 = none);
  // a payment in another currency does not meet it.
  int64_t min_amount_minor = 0;
  std::string min_amount_currency = "CNY";
  // DAY rules: km walked in a day that earns the day's credit (> 0).
  double day_threshold_km = kDefaultDayThresholdKm;
  // Where the figure comes from (CSV column `source`).
  std::string source;
};

// The unit a behaviour is counted in: `km` for `*_km`, `day` for `*_day`,
// `ride` for `*_ride`, `payment` (offline_payment), `bill`
// (utility_bill_payment), `invoice` (e_invoice), `ticket` (e_ticket),
// `registration` (*_registration*), else `action`.
std::string DefaultUnitForBehaviour(std::string_view behaviour);

// Parses a cap text into `rule` (its cap fields, which must be unset).
// Clauses separated by ';':
//   "<N> g per day" | "<N> g per month"         grams caps
//   "<N> per day" | "<N> per month"             action caps (N integer)
//   ... "(payment >= <X> yuan)"                 suffix of any clause: minimum
//                                               payment X CNY (X may have 2 decimals)
//   "one per account number per month"          per-account-reference cap
// Empty (or only spaces) = no cap. INVALID_ARGUMENT quoting the text and the
// clause not understood (a repeated cap of one kind is not understood either).
absl::Status ParseCreditCap(std::string_view text, CreditRule* rule);

// Loads the rules of `scheme` from a CSV in the reference format
// (`scheme,behaviour,grams_co2_per_action,cap,source`; '#' lines are comments,
// a header line starting with `scheme,` is skipped; fields may be quoted per
// RFC 4180, a quote inside an unquoted field is literal). The unit comes from
// DefaultUnitForBehaviour, the id is "<scheme>:<behaviour>". Empty `scheme`:
// every row. NOT_FOUND naming the path if it cannot be read; INVALID_ARGUMENT
// naming `path:line` and the text for a bad row (wrong column count, bad
// grams, a cap ParseCreditCap does not understand, a behaviour twice in the
// scheme) or when no row has the scheme.
absl::StatusOr<std::vector<CreditRule>> ParseCreditRulesCsv(const std::string& path,
                                                            const std::string& scheme);

// A green behaviour extracted from a delivered event.
struct Behaviour {
  // E.g. `metro_ride`, `walking_day`, `cycling_km`.
  std::string behaviour;
  // Amount in `unit` (1 for actions, km for walking / cycling).
  double quantity = 0;
  std::string unit;
  // Transaction id at the source (GreenCredit.source_transaction_id).
  std::string txn_id;
  // Identity for deduplication within the behaviour (see the file comment);
  // empty = txn_id.
  std::string dedup_key;
  // When the behaviour happened.
  absl::Time time = absl::InfinitePast();
  // Region code, e.g. `CN-ZJ-QZ-KC`; may be empty.
  std::string region;
  // Utility bills: the (pseudonymised) account number.
  std::string account_ref;
  // Payments: the amount, minor units of `currency`.
  int64_t amount_minor = 0;
  std::string currency;
};

// The behaviour an event stands for; nullopt when it is not a green
// behaviour (other payload types, modes or kinds; zero distance).
// INVALID_ARGUMENT naming the event id and the field for a payload of one of
// the four types that cannot be parsed or lacks its transaction id, a
// negative or non-finite distance, or a utility bill without
// utility_account_ref. Thread-safe.
absl::StatusOr<std::optional<Behaviour>> BehaviourFromEvent(const event::v1::Event& e);

// The credit ledger: SQLite (WAL) at `db_path`, one row per credit, unique by
// (behaviour, dedup key). Thread-safe (one mutex around the connection).
class CreditLedger {
 public:
  // Opens (creating if missing) the ledger. INVALID_ARGUMENT for a rule
  // without behaviour, with grams_per_unit <= 0 (or non-finite), a DAY rule
  // with day_threshold_km <= 0, negative caps, or two rules for one behaviour
  // (name the rule). `clock` null = real clock (used for ids and for the
  // default end of List ranges).
  static absl::StatusOr<std::unique_ptr<CreditLedger>> Open(const std::string& db_path,
                                                            std::vector<CreditRule> rules,
                                                            absl::TimeZone tz, Clock* clock);
  ~CreditLedger();
  CreditLedger(const CreditLedger&) = delete;
  CreditLedger& operator=(const CreditLedger&) = delete;

  // Whether a rule prices `behaviour`.
  bool HasRule(std::string_view behaviour) const;
  const std::vector<CreditRule>& rules() const { return rules_; }

  // Credits `b` to `account_id` under consent `consent_id` from event
  // `event_id`. Returns the recorded credit (capped=true with reduced or zero
  // grams when a cap or the minimum amount limited it); nullopt, recording
  // nothing, for a transaction already credited to this account or a
  // behaviour no rule prices (see HasRule). FAILED_PRECONDITION naming
  // consent_id when it is empty, or when the transaction was credited to
  // another account; INVALID_ARGUMENT for an empty account id, behaviour or
  // txn id, a bad quantity or time, a unit the rule does not take, a utility
  // bill without account_ref. Nothing is recorded on error.
  absl::StatusOr<std::optional<v1::GreenCredit>> Credit(const std::string& account_id,
                                                        const Behaviour& b,
                                                        const std::string& consent_id,
                                                        const std::string& event_id);

  // Credits of r.account_id() (required) whose behaviour time lies in
  // r.range() (unset end: now), newest first (behaviour time, then recording
  // order), paged (page_size 0 = 100, at most 1000); total_g sums the whole
  // range. INVALID_ARGUMENT for a bad page size or token or range.
  absl::StatusOr<v1::ListGreenCreditsResponse> List(const v1::ListGreenCreditsRequest& r) const;

  // Grams credited for behaviour in [from, to) in `region` and the regions
  // below it (per `tree`). Credits without a region are not counted.
  double RegionTotalG(const RegionTree& tree, std::string_view region, absl::Time from,
                      absl::Time to) const;

  // Grams credited to `account_id` for behaviour in [from, to).
  double AccountTotalG(std::string_view account_id, absl::Time from, absl::Time to) const;

 private:
  class Impl;
  CreditLedger(std::unique_ptr<Impl> impl, std::vector<CreditRule> rules);
  std::unique_ptr<Impl> impl_;
  const std::vector<CreditRule> rules_;
};

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_CREDITS_H_
