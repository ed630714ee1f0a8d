#include "consent_checker.h"

#include <algorithm>
#include <utility>

#include "cityos/proto_time.h"

namespace cityos::infobank {
namespace {

absl::string_view A(std::string_view s) { return {s.data(), s.size()}; }

bool Contains(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

bool CategoryCovers(std::string_view granted, std::string_view category) {
  if (granted.empty() || category.size() < granted.size()) return false;
  if (category.substr(0, granted.size()) != granted) return false;
  return category.size() == granted.size() || category[granted.size()] == '.';
}

ConsentAnswer ConsentIndex::Check(const ConsentQuery& query) {
  ConsentAnswer answer;
  if (query.recipient == nullptr || query.data_subject.empty()) {
    answer.reason = "no data subject or recipient to check consent for";
    return answer;
  }
  const std::string& org = query.recipient->org;
  // Which test failed last, for the most useful reason.
  enum { kNone, kRecipient, kPurpose, kCategory, kSensitive, kProfiling, kExpired } miss = kNone;
  absl::ReaderMutexLock lock(&mu_);
  auto it = by_subject_.find(A(query.data_subject));
  if (it != by_subject_.end()) {
    const std::vector<std::string>* categories = nullptr;
    const Entry* best = nullptr;
    for (const auto& e : it->second) {
      if (!e->org.empty() ? e->org != org : [&] {
            if (categories == nullptr) {
              auto c = org_categories_.find(org);
              if (c == org_categories_.end()) return true;
              categories = &c->second;
            }
            return !Contains(*categories, e->category);
          }()) {
        miss = std::max(miss, kRecipient);
        continue;
      }
      if (!Contains(e->purposes, query.purpose)) {
        miss = std::max(miss, kPurpose);
        continue;
      }
      if (std::none_of(e->data_categories.begin(), e->data_categories.end(),
                       [&](const std::string& c) { return CategoryCovers(c, query.data_category); })) {
        miss = std::max(miss, kCategory);
        continue;
      }
      if (query.sensitive && !e->sensitive) {
        miss = std::max(miss, kSensitive);
        continue;
      }
      if (query.profiling && !e->profiling) {
        miss = std::max(miss, kProfiling);
        continue;
      }
      if (e->expire <= query.time) {
        miss = std::max(miss, kExpired);
        continue;
      }
      if (best == nullptr || e->expire > best->expire) best = e.get();
    }
    if (best != nullptr) {
      answer.granted = true;
      answer.consent_id = best->consent_id;
      answer.valid_until = best->expire;
      return answer;
    }
  }
  const std::string purpose(query.purpose);
  switch (miss) {
    case kNone:
      answer.reason = "no active consent of the data subject";
      break;
    case kRecipient:
      answer.reason = "no active consent for recipient " + org;
      break;
    case kPurpose:
      answer.reason = "no active consent for purpose " + purpose;
      break;
    case kCategory:
      answer.reason = "no active consent for data category " + std::string(query.data_category);
      break;
    case kSensitive:
      answer.reason = "no explicit consent to sensitive data";
      break;
    case kProfiling:
      answer.reason = "no explicit consent to profiling for purpose " + purpose;
      break;
    case kExpired:
      answer.reason = "the consent expired";
      break;
  }
  return answer;
}

void ConsentIndex::Put(const consent::v1::Consent& consent) {
  if (consent.state() != consent::v1::CONSENT_STATE_ACTIVE) {
    Remove(consent.data_subject(), consent.consent_id());
    return;
  }
  auto e = std::make_shared<Entry>();
  e->consent_id = consent.consent_id();
  e->org = consent.recipient_org();
  e->category = consent.recipient_category();
  e->purposes.assign(consent.purposes().begin(), consent.purposes().end());
  e->data_categories.assign(consent.data_categories().begin(), consent.data_categories().end());
  if (consent.has_expire_time()) {
    absl::StatusOr<absl::Time> t = TimestampFromProto(consent.expire_time(), "expire_time");
    e->expire = t.ok() ? *t : absl::InfinitePast();  // unreadable: never grants
  }
  e->sensitive = consent.sensitive();
  e->profiling = consent.profiling();
  absl::MutexLock lock(&mu_);
  Entries& list = by_subject_[consent.data_subject()];
  for (auto& old : list) {
    if (old->consent_id == e->consent_id) {
      old = std::move(e);
      return;
    }
  }
  list.push_back(std::move(e));
}

void ConsentIndex::Remove(std::string_view data_subject, std::string_view consent_id) {
  absl::MutexLock lock(&mu_);
  auto it = by_subject_.find(A(data_subject));
  if (it == by_subject_.end()) return;
  Entries& list = it->second;
  list.erase(std::remove_if(list.begin(), list.end(),
                            [&](const auto& e) { return e->consent_id == consent_id; }),
             list.end());
  if (list.empty()) by_subject_.erase(it);
}

void ConsentIndex::SetCategories(std::map<std::string, std::vector<std::string>> members) {
  absl::flat_hash_map<std::string, std::vector<std::string>> by_org;
  for (const auto& [category, orgs] : members) {
    for (const std::string& org : orgs) by_org[org].push_back(category);
  }
  absl::MutexLock lock(&mu_);
  org_categories_ = std::move(by_org);
}

std::vector<std::pair<std::string, std::string>> ConsentIndex::Expired(
    absl::Time now, std::optional<absl::Time>* next) {
  std::vector<std::pair<std::string, std::string>> out;
  next->reset();
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [subject, list] : by_subject_) {
    for (const auto& e : list) {
      if (e->expire == absl::InfiniteFuture()) continue;
      if (e->expire <= now) {
        out.emplace_back(subject, e->consent_id);
      } else if (!next->has_value() || e->expire < **next) {
        *next = e->expire;
      }
    }
  }
  return out;
}

size_t ConsentIndex::size() const {
  absl::ReaderMutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [subject, list] : by_subject_) n += list.size();
  return n;
}

}  // namespace cityos::infobank
