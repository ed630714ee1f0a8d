// Shared helpers of the exchange's entity and wire tests: obligations to
// apply, and a field-by-field comparison of two ResourceViews.
#ifndef CITYOS_TESTS_EXCHANGE_EXCHANGE_TEST_UTIL_H_
#define CITYOS_TESTS_EXCHANGE_EXCHANGE_TEST_UTIL_H_

#include <string>
#include <vector>

#include "cityos/exchange/v1/exchange.pb.h"
#include "cityos/policy.h"
#include "gtest/gtest.h"

namespace cityos::exchange_test {

// A redaction of `paths`.
inline exchange::v1::Obligation Redact(const std::vector<std::string>& paths) {
  exchange::v1::Obligation o;
  o.set_kind(exchange::v1::OBLIGATION_KIND_REDACT);
  for (const auto& p : paths) o.add_field_paths(p);
  return o;
}

// Every attribute a decision can read, compared one by one (so a failure
// names the attribute).
inline void ExpectSameResource(const ResourceView& got, const ResourceView& want) {
  EXPECT_EQ(got.domain, want.domain);
  EXPECT_EQ(got.type, want.type);
  EXPECT_EQ(got.subject, want.subject);
  EXPECT_EQ(got.classification, want.classification);
  EXPECT_EQ(got.owner, want.owner);
  EXPECT_EQ(got.region, want.region);
  EXPECT_EQ(got.jurisdiction, want.jurisdiction);
  EXPECT_EQ(got.data_subject, want.data_subject);
  EXPECT_EQ(got.entity_id, want.entity_id);
  EXPECT_EQ(got.location, want.location);
}

}  // namespace cityos::exchange_test

#endif  // CITYOS_TESTS_EXCHANGE_EXCHANGE_TEST_UTIL_H_
