// AuditLog::Query: filters, paging and the checkpoints of a page.
#include "absl/strings/str_cat.h"
#include "audit_test_util.h"
#include "cityos/clock.h"
#include "cityos/proto_time.h"
#include "cityos/signing.h"
#include "gmock/gmock.h"

namespace cityos {
namespace {

using exchange::v1::AuditEntry;

const absl::Time kStart = absl::FromUnixSeconds(1800000000);

std::string Spiffe(const std::string& org, const std::string& name) {
  return absl::StrCat("spiffe://demo.city/org/", org, "/svc/", name);
}

// 60 entries, one per second from kStart: entry i (1-based) is by
// principal p(i % 3) of org (i % 3 == 2 ? "police" : "hospital-a"), about
// person "u(i % 4)", action read (even i) or publish (odd i), severity
// HIGH every 10th, NOTICE every 3rd, INFO otherwise.
class AuditQueryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AuditOptions o;
    o.dir = tmp_.path();
    o.node = "n1";
    o.clock = &clock_;
    o.checkpoint_every = 10;
    o.checkpoint_interval = absl::Hours(1);
    auto log = AuditLog::Open(o);
    ASSERT_TRUE(log.ok()) << log.status();
    log_ = std::move(*log);
    for (int i = 1; i <= 60; ++i) {
      clock_.Set(kStart + absl::Seconds(i));
      AuditEntry e = audit_test::MakeEntry(Principal(i), i % 2 == 0 ? "read" : "publish",
                                           absl::StrCat(i), Severity(i));
      e.set_data_subject(absl::StrCat("u", i % 4));
      log_->Append(e);
    }
    ASSERT_EQ(*log_->Flush(), 60u);
  }
  static std::string Principal(int i) {
    return Spiffe(i % 3 == 2 ? "police" : "hospital-a", absl::StrCat("p", i % 3));
  }
  static exchange::v1::Severity Severity(int i) {
    if (i % 10 == 0) return exchange::v1::SEVERITY_HIGH;
    if (i % 3 == 0) return exchange::v1::SEVERITY_NOTICE;
    return exchange::v1::SEVERITY_INFO;
  }
  // Sequences of every page of `q`, paging through.
  std::vector<uint64_t> All(AuditQuery q, size_t* pages = nullptr) {
    std::vector<uint64_t> out;
    size_t n = 0;
    for (;;) {
      auto page = log_->Query(q);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok()) break;
      ++n;
      for (const auto& e : page->entries) out.push_back(e.sequence());
      if (page->next_after_sequence == 0) break;
      EXPECT_EQ(page->next_after_sequence, page->entries.back().sequence());
      q.after_sequence = page->next_after_sequence;
    }
    if (pages != nullptr) *pages = n;
    return out;
  }
  static std::vector<uint64_t> Where(const std::function<bool(int)>& pred) {
    std::vector<uint64_t> out;
    for (int i = 1; i <= 60; ++i) {
      if (pred(i)) out.push_back(i);
    }
    return out;
  }

  testing::TempDir tmp_;
  SimulatedClock clock_{kStart};
  std::unique_ptr<AuditLog> log_;
};

TEST_F(AuditQueryTest, ByPrincipal) {
  AuditQuery q;
  q.principal = Spiffe("hospital-a", "p1");
  EXPECT_EQ(All(q), Where([](int i) { return i % 3 == 1; }));
  q.principal = Spiffe("hospital-a", "nobody");
  EXPECT_TRUE(All(q).empty());
}

TEST_F(AuditQueryTest, ByDataSubject) {
  AuditQuery q;
  q.data_subject = "u2";
  EXPECT_EQ(All(q), Where([](int i) { return i % 4 == 2; }));
  q.principal = Spiffe("hospital-a", "p0");
  EXPECT_EQ(All(q), Where([](int i) { return i % 4 == 2 && i % 3 == 0; }));
}

TEST_F(AuditQueryTest, ByTimeRange) {
  AuditQuery q;
  q.from = kStart + absl::Seconds(10);
  q.to = kStart + absl::Seconds(15);  // exclusive
  EXPECT_EQ(All(q), (std::vector<uint64_t>{10, 11, 12, 13, 14}));
  q.data_subject = "u1";
  EXPECT_EQ(All(q), (std::vector<uint64_t>{13}));
  q = AuditQuery();
  q.to = kStart + absl::Seconds(1);
  EXPECT_TRUE(All(q).empty());
  // Entry times come from the clock when unset.
  auto page = log_->Query({});
  EXPECT_EQ(*TimestampFromProto(page->entries[4].time(), "time"), kStart + absl::Seconds(5));
}

TEST_F(AuditQueryTest, ByActionSeverityAndOrg) {
  AuditQuery q;
  q.action = "read";
  EXPECT_EQ(All(q), Where([](int i) { return i % 2 == 0; }));
  q = AuditQuery();
  q.min_severity = exchange::v1::SEVERITY_NOTICE;
  EXPECT_EQ(All(q), Where([](int i) { return i % 10 == 0 || i % 3 == 0; }));
  q.min_severity = exchange::v1::SEVERITY_HIGH;
  EXPECT_EQ(All(q), (std::vector<uint64_t>{10, 20, 30, 40, 50, 60}));
  q = AuditQuery();
  q.principal_org = "police";
  EXPECT_EQ(All(q), Where([](int i) { return i % 3 == 2; }));
  q.action = "publish";
  EXPECT_EQ(All(q), Where([](int i) { return i % 3 == 2 && i % 2 == 1; }));
  q = AuditQuery();
  q.principal_org = "fire-dept";
  EXPECT_TRUE(All(q).empty());
  q = AuditQuery();
  q.action = "delete";
  EXPECT_TRUE(All(q).empty());
}

TEST_F(AuditQueryTest, Paging) {
  AuditQuery q;
  q.limit = 7;
  size_t pages = 0;
  EXPECT_EQ(All(q, &pages), Where([](int) { return true; }));
  EXPECT_EQ(pages, 9u);  // 8 full pages and 4 left
  q.limit = 10;
  All(q, &pages);
  EXPECT_EQ(pages, 6u);  // exactly full: the last page knows it is the last
  q = AuditQuery();
  q.principal = Spiffe("police", "p2");
  q.limit = 3;
  EXPECT_EQ(All(q), Where([](int i) { return i % 3 == 2; }));
  q = AuditQuery();
  q.after_sequence = 58;
  auto page = log_->Query(q);
  ASSERT_EQ(page->entries.size(), 2u);
  EXPECT_EQ(page->next_after_sequence, 0u);
}

TEST_F(AuditQueryTest, PageCarriesTheCheckpointsThatCoverIt) {
  auto seqs = [](const AuditPage& p) {
    std::vector<uint64_t> out;
    for (const auto& c : p.checkpoints) out.push_back(c.sequence());
    return out;
  };
  AuditQuery q;
  q.after_sequence = 2;
  q.limit = 7;  // 3..9
  auto page = log_->Query(q);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(seqs(*page), (std::vector<uint64_t>{10}));
  q.after_sequence = 9;  // 10..16
  EXPECT_EQ(seqs(*log_->Query(q)), (std::vector<uint64_t>{10, 20}));
  q.after_sequence = 0;
  q.limit = 100;
  page = log_->Query(q);
  EXPECT_EQ(seqs(*page), (std::vector<uint64_t>{10, 20, 30, 40, 50, 60}));
  // A client can check them with the public key alone.
  for (const auto& c : page->checkpoints) {
    EXPECT_EQ(c.hash(), page->entries[c.sequence() - 1].hash());
    EXPECT_TRUE(VerifyEd25519(log_->public_key_pem(),
                              audit_internal::CheckpointMessage(c.sequence(), c.hash()),
                              c.signature())
                    .ok());
  }
  // Entries past the newest checkpoint: none to show yet.
  log_->Append(audit_test::MakeEntry(Spiffe("x", "y"), "read"));
  ASSERT_EQ(*log_->Flush(), 61u);
  q.after_sequence = 60;
  EXPECT_TRUE(seqs(*log_->Query(q)).empty());
}

// Times given by the caller need not follow the sequence (e.g. aggregated
// entries carry the start of their window): the time filter still holds.
TEST(AuditQuery, TimeRangeWithCallerTimesOutOfOrder) {
  testing::TempDir tmp;
  AuditOptions o;
  o.dir = tmp.path();
  auto log = AuditLog::Open(o);
  ASSERT_TRUE(log.ok());
  const int offsets[] = {5, 1, 9, 3, 7, 2};
  for (int off : offsets) {
    AuditEntry e = audit_test::MakeEntry(Spiffe("a", "b"), "publish", absl::StrCat(off));
    e.set_count(10);
    TimestampToProto(kStart + absl::Seconds(off), e.mutable_time());
    (*log)->Append(e);
  }
  ASSERT_EQ(*(*log)->Flush(), 6u);
  AuditQuery q;
  q.from = kStart + absl::Seconds(2);
  q.to = kStart + absl::Seconds(6);
  auto page = (*log)->Query(q);
  ASSERT_TRUE(page.ok());
  std::vector<std::string> reasons;
  for (const auto& e : page->entries) reasons.push_back(e.reason());
  EXPECT_EQ(reasons, (std::vector<std::string>{"5", "3", "2"}));
  EXPECT_EQ(page->entries[0].count(), 10u);
}

}  // namespace
}  // namespace cityos
