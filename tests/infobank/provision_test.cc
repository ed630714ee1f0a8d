// ProvisionHistory over a real AuditLog: mapping, filters, paging.
#include "provision.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cityos/audit.h"
#include "cityos/clock.h"
#include "cityos/proto_time.h"
#include "gtest/gtest.h"
#include "testutil.h"

namespace cityos::infobank {
namespace {

using ::cityos::testing::TempDir;

constexpr int64_t kT0 = 1800000000;

exchange::v1::AuditEntry Access(int i, const std::string& subject, const std::string& action,
                                exchange::v1::Effect decision) {
  exchange::v1::AuditEntry e;
  TimestampToProto(absl::FromUnixSeconds(kT0 + i), e.mutable_time());
  e.set_principal("spiffe://demo.city/org/hospital-a/svc/ems");
  e.set_action(action);
  e.set_resource(absl::StrCat("health.vitals.", i));
  e.set_purpose("medical_care");
  e.set_decision(decision);
  e.set_data_subject(subject);
  if (decision == exchange::v1::EFFECT_ALLOW) e.set_consent_id(absl::StrCat("consent-", i));
  e.set_count(3);
  return e;
}

class ProvisionHistoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto log = AuditLog::Open({.dir = dir_.File("audit"), .node = "n1", .clock = &clock_});
    ASSERT_TRUE(log.ok()) << log.status();
    audit_ = *std::move(log);
  }
  void TearDown() override {
    if (audit_) (void)audit_->Close();
  }
  TempDir dir_;
  SimulatedClock clock_{absl::FromUnixSeconds(kT0)};
  std::unique_ptr<AuditLog> audit_;
};

TEST_F(ProvisionHistoryTest, MapsEntriesNewestFirstAndOnlyTheirPersonsAccesses) {
  audit_->Append(Access(1, "alice", "read", exchange::v1::EFFECT_ALLOW));
  audit_->Append(Access(2, "bob", "read", exchange::v1::EFFECT_ALLOW));
  audit_->Append(Access(3, "alice", "subscribe", exchange::v1::EFFECT_DENY));
  exchange::v1::AuditEntry grant = Access(4, "alice", "consent.grant",
                                          exchange::v1::EFFECT_UNSPECIFIED);
  audit_->Append(grant);  // not an access: left out
  exchange::v1::AuditEntry emergency = Access(5, "alice", "history", exchange::v1::EFFECT_ALLOW);
  emergency.set_consent_id("");
  emergency.set_emergency_id("em-1");
  audit_->Append(emergency);
  ASSERT_TRUE(audit_->Flush().ok());

  auto h = ProvisionHistory(*audit_, "alice", {});
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->records_size(), 3);
  EXPECT_TRUE(h->next_page_token().empty());
  const auto& newest = h->records(0);
  EXPECT_EQ(newest.action(), exchange::v1::ACTION_HISTORY);
  EXPECT_EQ(newest.emergency_id(), "em-1");
  EXPECT_EQ(newest.time().seconds(), kT0 + 5);
  const auto& denied = h->records(1);
  EXPECT_EQ(denied.action(), exchange::v1::ACTION_SUBSCRIBE);
  EXPECT_EQ(denied.decision(), exchange::v1::EFFECT_DENY);
  const auto& read = h->records(2);
  EXPECT_EQ(read.recipient(), "spiffe://demo.city/org/hospital-a/svc/ems");
  EXPECT_EQ(read.recipient_org(), "hospital-a");
  EXPECT_EQ(read.resource(), "health.vitals.1");
  EXPECT_EQ(read.purpose(), "medical_care");
  EXPECT_EQ(read.action(), exchange::v1::ACTION_READ);
  EXPECT_EQ(read.decision(), exchange::v1::EFFECT_ALLOW);
  EXPECT_EQ(read.consent_id(), "consent-1");
  EXPECT_EQ(read.audit_sequence(), 1u);
  EXPECT_EQ(read.time().seconds(), kT0 + 1);

  consent::v1::GetProvisionHistoryRequest only_denied;
  only_denied.set_decision(exchange::v1::EFFECT_DENY);
  auto d = ProvisionHistory(*audit_, "alice", only_denied);
  ASSERT_TRUE(d.ok());
  ASSERT_EQ(d->records_size(), 1);
  EXPECT_EQ(d->records(0).audit_sequence(), 3u);

  auto none = ProvisionHistory(*audit_, "carol", {});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->records_size(), 0);
}

TEST_F(ProvisionHistoryTest, PagesNewestFirstAcrossScanBatchesAndHonoursTheRange) {
  constexpr int kN = 2500;  // more than one AuditLog::Query batch
  for (int i = 1; i <= kN; ++i) {
    audit_->Append(Access(i, i % 2 ? "alice" : "bob", "read", exchange::v1::EFFECT_ALLOW));
  }
  ASSERT_TRUE(audit_->Flush().ok());
  consent::v1::GetProvisionHistoryRequest req;
  req.set_page_size(400);
  std::vector<uint64_t> seqs;
  int pages = 0;
  do {
    auto h = ProvisionHistory(*audit_, "alice", req);
    ASSERT_TRUE(h.ok()) << h.status();
    for (const auto& r : h->records()) seqs.push_back(r.audit_sequence());
    req.set_page_token(h->next_page_token());
    ++pages;
  } while (!req.page_token().empty() && pages < 20);
  EXPECT_EQ(pages, 4);  // 1250 records / 400
  ASSERT_EQ(seqs.size(), 1250u);
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], kN - 1 - 2 * i) << i;

  consent::v1::GetProvisionHistoryRequest ranged;
  TimestampToProto(absl::FromUnixSeconds(kT0 + 100), ranged.mutable_range()->mutable_start());
  TimestampToProto(absl::FromUnixSeconds(kT0 + 110), ranged.mutable_range()->mutable_end());
  auto h = ProvisionHistory(*audit_, "alice", ranged);
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(h->records_size(), 5);  // 101, 103, ..., 109
  EXPECT_EQ(h->records(0).audit_sequence(), 109u);
  EXPECT_EQ(h->records(4).audit_sequence(), 101u);
}

TEST_F(ProvisionHistoryTest, BadInput) {
  EXPECT_EQ(ProvisionHistory(*audit_, "", {}).status().code(), absl::StatusCode::kInvalidArgument);
  consent::v1::GetProvisionHistoryRequest req;
  req.set_page_token("ph1:x");
  EXPECT_EQ(ProvisionHistory(*audit_, "alice", req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req.set_page_token("");
  req.set_page_size(-1);
  EXPECT_EQ(ProvisionHistory(*audit_, "alice", req).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cityos::infobank
