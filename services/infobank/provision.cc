// Provision history: the exchange's audit entries about a person, as
// consent.v1.ProvisionRecord, newest first.
#include "provision.h"

#include <charconv>
#include <deque>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cityos/principal.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"

namespace cityos::infobank {
namespace {

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
// Audit entries read per AuditLog::Query call while scanning.
constexpr size_t kScanBatch = 1000;
constexpr std::string_view kTokenPrefix = "ph1:";

// Access decisions carry the exchange action in lower case; everything else
// in the log (consent.grant, policy.load, explain, ...) is not a provision.
exchange::v1::Action ActionOf(std::string_view action) {
  if (action == "publish") return exchange::v1::ACTION_PUBLISH;
  if (action == "subscribe") return exchange::v1::ACTION_SUBSCRIBE;
  if (action == "read") return exchange::v1::ACTION_READ;
  if (action == "history") return exchange::v1::ACTION_HISTORY;
  return exchange::v1::ACTION_UNSPECIFIED;
}

}  // namespace

consent::v1::ProvisionRecord ToProvisionRecord(const exchange::v1::AuditEntry& entry) {
  consent::v1::ProvisionRecord r;
  *r.mutable_time() = entry.time();
  r.set_recipient(entry.principal());
  if (auto p = Principal::FromSpiffeId(entry.principal()); p.ok()) r.set_recipient_org(p->org);
  r.set_resource(entry.resource());
  // The audit entry does not carry the data category; the resource (subject
  // or type/id) names what was accessed.
  r.set_purpose(entry.purpose());
  r.set_action(ActionOf(entry.action()));
  r.set_decision(entry.decision());
  r.set_consent_id(entry.consent_id());
  r.set_emergency_id(entry.emergency_id());
  r.set_audit_sequence(entry.sequence());
  return r;
}

absl::StatusOr<consent::v1::GetProvisionHistoryResponse> ProvisionHistory(
    AuditLog& audit, std::string_view data_subject,
    const consent::v1::GetProvisionHistoryRequest& request) {
  if (data_subject.empty()) {
    return absl::InvalidArgumentError("provision history needs a data_subject");
  }
  if (request.page_size() < 0 || request.page_size() > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", request.page_size(), " is not in [0, ", kMaxPageSize, "]"));
  }
  const size_t page_size =
      static_cast<size_t>(request.page_size() == 0 ? kDefaultPageSize : request.page_size());
  uint64_t before = UINT64_MAX;  // records with a smaller audit sequence
  if (!request.page_token().empty()) {
    const std::string& t = request.page_token();
    uint64_t v = 0;
    const char* begin = t.data() + std::min(t.size(), kTokenPrefix.size());
    auto [p, ec] = std::from_chars(begin, t.data() + t.size(), v);
    if (t.rfind(kTokenPrefix, 0) != 0 || ec != std::errc() || p != t.data() + t.size() || v == 0) {
      return absl::InvalidArgumentError(absl::StrCat("bad page_token \"", t, "\""));
    }
    before = v;
  }
  AuditQuery q;
  q.data_subject = std::string(data_subject);
  if (request.range().has_start()) {
    CITYOS_ASSIGN_OR_RETURN(q.from, TimestampFromProto(request.range().start(), "range.start"));
  }
  if (request.range().has_end()) {
    CITYOS_ASSIGN_OR_RETURN(q.to, TimestampFromProto(request.range().end(), "range.end"));
  }
  q.limit = kScanBatch;

  // The log is read oldest first; the page is the newest `page_size`
  // matching entries below `before`, so keep a window of page_size + 1 (the
  // extra one tells whether an older page exists).
  std::deque<exchange::v1::AuditEntry> window;
  bool done = false;
  while (!done) {
    CITYOS_ASSIGN_OR_RETURN(AuditPage page, audit.Query(q));
    for (exchange::v1::AuditEntry& e : page.entries) {
      if (e.sequence() >= before) {
        done = true;
        break;
      }
      if (ActionOf(e.action()) == exchange::v1::ACTION_UNSPECIFIED) continue;
      if (request.decision() != exchange::v1::EFFECT_UNSPECIFIED &&
          e.decision() != request.decision()) {
        continue;
      }
      window.push_back(std::move(e));
      if (window.size() > page_size + 1) window.pop_front();
    }
    if (page.next_after_sequence == 0 || page.entries.empty()) break;
    q.after_sequence = page.next_after_sequence;
  }
  consent::v1::GetProvisionHistoryResponse out;
  const bool more = window.size() > page_size;
  if (more) window.pop_front();
  for (auto it = window.rbegin(); it != window.rend(); ++it) {
    *out.add_records() = ToProvisionRecord(*it);
  }
  if (more && !window.empty()) {
    out.set_next_page_token(absl::StrCat(absl::string_view(kTokenPrefix.data(), kTokenPrefix.size()), window.front().sequence()));
  }
  return out;
}

}  // namespace cityos::infobank
