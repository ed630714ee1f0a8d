// ConsentIndex: the consent hook's semantics (recipient org or category,
// purpose, data category by dotted prefix, sensitive and profiling flags,
// expiry) and ConsentStore round trips, without a node.
#include "consent_checker.h"

#include <gtest/gtest.h>

#include "cityos/principal.h"
#include "cityos/proto_time.h"
#include "consent_store.h"
#include "testutil.h"

namespace cityos::infobank {
namespace {

using consent::v1::Consent;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

Consent MakeConsent(const std::string& id, const std::string& person, const std::string& org) {
  Consent c;
  c.set_consent_id(id);
  c.set_data_subject(person);
  c.set_recipient_org(org);
  c.add_purposes("elderly_care");
  c.add_data_categories("care");
  c.set_state(consent::v1::CONSENT_STATE_ACTIVE);
  return c;
}

ConsentAnswer Check(ConsentIndex& index, const std::string& org, const std::string& person,
                    const std::string& purpose, const std::string& category,
                    bool sensitive = false, bool profiling = false, absl::Time t = kNow) {
  Principal p{.trust_domain = "local", .org = org, .name = "svc"};
  return index.Check({.recipient = &p,
                      .purpose = purpose,
                      .data_subject = person,
                      .data_category = category,
                      .sensitive = sensitive,
                      .profiling = profiling,
                      .time = t});
}

TEST(CategoryCoversTest, EqualOrDottedPrefixOnly) {
  EXPECT_TRUE(CategoryCovers("health", "health"));
  EXPECT_TRUE(CategoryCovers("health", "health.vitals"));
  EXPECT_TRUE(CategoryCovers("health.vitals", "health.vitals.bp"));
  EXPECT_FALSE(CategoryCovers("health", "healthcare"));
  EXPECT_FALSE(CategoryCovers("health.vitals", "health"));
  EXPECT_FALSE(CategoryCovers("", "health"));
  EXPECT_FALSE(CategoryCovers("health", ""));
}

TEST(ConsentIndexTest, GrantsOnlyTheConsentedRecipientPurposeAndCategory) {
  ConsentIndex index;
  index.Put(MakeConsent("c1", "p-1", "care-center"));
  ConsentAnswer a = Check(index, "care-center", "p-1", "elderly_care", "care.alerts");
  EXPECT_TRUE(a.granted) << a.reason;
  EXPECT_EQ(a.consent_id, "c1");
  EXPECT_EQ(a.valid_until, absl::InfiniteFuture());

  a = Check(index, "care-center", "p-1", "research", "care.alerts");
  EXPECT_FALSE(a.granted);
  EXPECT_EQ(a.reason, "no active consent for purpose research");
  a = Check(index, "insurer", "p-1", "elderly_care", "care.alerts");
  EXPECT_FALSE(a.granted);
  EXPECT_EQ(a.reason, "no active consent for recipient insurer");
  a = Check(index, "care-center", "p-1", "elderly_care", "health.vitals");
  EXPECT_FALSE(a.granted);
  EXPECT_EQ(a.reason, "no active consent for data category health.vitals");
  EXPECT_FALSE(Check(index, "care-center", "p-2", "elderly_care", "care.alerts").granted);
}

TEST(ConsentIndexTest, SensitiveAndProfilingNeedTheirOwnConsent) {
  ConsentIndex index;
  index.Put(MakeConsent("c1", "p-1", "care-center"));
  ConsentAnswer a = Check(index, "care-center", "p-1", "elderly_care", "care", true);
  EXPECT_FALSE(a.granted);
  EXPECT_EQ(a.reason, "no explicit consent to sensitive data");
  a = Check(index, "care-center", "p-1", "elderly_care", "care", false, true);
  EXPECT_FALSE(a.granted);
  EXPECT_EQ(a.reason, "no explicit consent to profiling for purpose elderly_care");

  Consent c = MakeConsent("c1", "p-1", "care-center");
  c.set_sensitive(true);
  c.set_profiling(true);
  index.Put(c);  // replaces c1
  EXPECT_EQ(index.size(), 1u);
  EXPECT_TRUE(Check(index, "care-center", "p-1", "elderly_care", "care", true, true).granted);
}

TEST(ConsentIndexTest, ExpiryEndsTheConsentAndIsTheAnswersValidUntil) {
  ConsentIndex index;
  Consent c = MakeConsent("c1", "p-1", "care-center");
  TimestampToProto(kNow + absl::Minutes(5), c.mutable_expire_time());
  index.Put(c);
  ConsentAnswer a = Check(index, "care-center", "p-1", "elderly_care", "care");
  EXPECT_TRUE(a.granted);
  EXPECT_EQ(a.valid_until, kNow + absl::Minutes(5));
  a = Check(index, "care-center", "p-1", "elderly_care", "care", false, false,
            kNow + absl::Minutes(5));
  EXPECT_FALSE(a.granted);
  EXPECT_EQ(a.reason, "the consent expired");

  std::optional<absl::Time> next;
  EXPECT_TRUE(index.Expired(kNow, &next).empty());
  EXPECT_EQ(next, kNow + absl::Minutes(5));
  auto due = index.Expired(kNow + absl::Minutes(6), &next);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].second, "c1");
}

TEST(ConsentIndexTest, RecipientCategoryCoversItsMemberOrgsOnly) {
  ConsentIndex index;
  index.SetCategories({{"hospital", {"quzhou-people-hospital"}}});
  Consent c = MakeConsent("c1", "p-1", "");
  c.set_recipient_category("hospital");
  index.Put(c);
  EXPECT_TRUE(Check(index, "quzhou-people-hospital", "p-1", "elderly_care", "care").granted);
  EXPECT_FALSE(Check(index, "insurer", "p-1", "elderly_care", "care").granted);
}

TEST(ConsentIndexTest, RevokedConsentsLeaveTheIndex) {
  ConsentIndex index;
  Consent c = MakeConsent("c1", "p-1", "care-center");
  index.Put(c);
  c.set_state(consent::v1::CONSENT_STATE_REVOKED);
  index.Put(c);
  EXPECT_EQ(index.size(), 0u);
  EXPECT_FALSE(Check(index, "care-center", "p-1", "elderly_care", "care").granted);
}

TEST(ConsentStoreTest, KeepsConsentsHistoryReceiptsRequestsAndProposalsAcrossReopen) {
  testing::TempDir dir;
  const std::string path = dir.File("consents.db");
  {
    auto store = ConsentStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    Consent c = MakeConsent("c1", "p-1", "care-center");
    consent::v1::ConsentEvent e;
    e.set_kind(consent::v1::CONSENT_EVENT_KIND_GRANTED);
    *e.mutable_consent() = c;
    consent::v1::Receipt r;
    r.set_receipt_id("r1");
    r.set_consent_id("c1");
    ASSERT_TRUE((*store)->Write(c, e, &r, "req-1").ok());
    c.set_state(consent::v1::CONSENT_STATE_REVOKED);
    e.set_kind(consent::v1::CONSENT_EVENT_KIND_REVOKED);
    ASSERT_TRUE((*store)->Write(c, e, nullptr, "").ok());
    // The same request id twice is refused (and rolled back whole).
    Consent other = MakeConsent("c2", "p-1", "care-center");
    EXPECT_FALSE((*store)->Write(other, e, nullptr, "req-1").ok());
    consent::v1::Proposal p;
    p.set_proposal_id("prop-1");
    p.mutable_purpose()->set_name("ads");
    ASSERT_TRUE((*store)->PutProposal(p, ProposalKey(p)).ok());
  }
  auto store = ConsentStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  auto c = (*store)->GetConsent("c1");
  ASSERT_TRUE(c.ok() && c->has_value());
  EXPECT_EQ((*c)->state(), consent::v1::CONSENT_STATE_REVOKED);
  EXPECT_FALSE((*store)->GetConsent("c2")->has_value());
  EXPECT_EQ(**(*store)->ConsentForRequest("p-1", "req-1"), "c1");
  EXPECT_FALSE((*store)->ConsentForRequest("p-2", "req-1")->has_value());
  auto h = (*store)->History("p-1", "");
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(h->size(), 2u);
  EXPECT_EQ((*h)[0].kind(), consent::v1::CONSENT_EVENT_KIND_GRANTED);
  EXPECT_EQ((*h)[1].kind(), consent::v1::CONSENT_EVENT_KIND_REVOKED);
  EXPECT_TRUE((*store)->GetReceipt("r1")->has_value());
  EXPECT_TRUE((*store)->ActiveConsents()->empty());
  auto props = (*store)->Proposals();
  ASSERT_EQ(props->size(), 1u);
  EXPECT_EQ(ProposalKey((*props)[0]), "purpose:ads");
}

}  // namespace
}  // namespace cityos::infobank
