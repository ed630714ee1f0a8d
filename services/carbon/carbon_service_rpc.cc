// The RPC handlers of CarbonAccountServiceImpl: who may call what
// (carbon.proto's access rules), request checks, and the translation to the
// ledgers, the alarm engine and the factor registry.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "carbon_service.h"
#include "cityos/event.h"
#include "cityos/grpc_util.h"
#include "cityos/id.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "factors.h"
#include "incentives.h"
#include "ledger.h"

namespace cityos::carbon {
namespace {

template <typename F>
grpc::Status Run(F&& f) {
  return ToGrpcStatus(f());
}

absl::Status NotFoundAccount(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("account \"", id, "\" not found"));
}

absl::Status NeedRole(const Principal& p, const std::string& what,
                      const std::string& role) {
  return absl::PermissionDeniedError(
      absl::StrCat(p.SpiffeId(), " may not ", what, ": needs the role ", role));
}

struct Range {
  absl::Time from = absl::InfinitePast();
  absl::Time to = absl::InfiniteFuture();
};

// A TimeRange; with `require_both`, both ends must be set and end > start.
absl::StatusOr<Range> RangeOf(const common::v1::TimeRange& r,
                              const std::string& field, bool require_both) {
  Range out;
  if (r.has_start()) {
    CITYOS_ASSIGN_OR_RETURN(
        out.from, TimestampFromProto(r.start(), absl::StrCat(field, ".start")));
  } else if (require_both) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".start is required"));
  }
  if (r.has_end()) {
    CITYOS_ASSIGN_OR_RETURN(
        out.to, TimestampFromProto(r.end(), absl::StrCat(field, ".end")));
  } else if (require_both) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".end is required"));
  }
  if (out.to <= out.from) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": end must be after start"));
  }
  return out;
}

absl::StatusOr<size_t> PageOffset(const std::string& token) {
  if (token.empty()) return 0;
  size_t n = 0;
  if (!absl::SimpleAtoi(token, &n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_token \"", token, "\" is not valid"));
  }
  return n;
}

absl::StatusOr<size_t> PageSize(int32_t size) {
  if (size < 0 || size > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", size, ": must be 0-1000"));
  }
  return size == 0 ? 100 : static_cast<size_t>(size);
}

}  // namespace

// ---- access
// --------------------------------------------------------------------

absl::StatusOr<Principal> CarbonAccountServiceImpl::Caller(
    grpc::ServerContext* ctx) const {
  if (!started_.load() || stopped_.load()) {
    return absl::UnavailableError("the carbon account is not running");
  }
  return deps_.resolver(ctx);
}

bool CarbonAccountServiceImpl::IsAdmin(const Principal& p) {
  return p.HasRole(kAdminRole);
}

bool CarbonAccountServiceImpl::IsViewer(const Principal& p) {
  return p.HasRole(kViewerRole) || p.HasRole(kAdminRole);
}

bool CarbonAccountServiceImpl::CanRead(const Principal& p,
                                       const v1::Account& a) const {
  if (IsViewer(p)) return true;
  if (a.kind() == v1::ACCOUNT_KIND_INDIVIDUAL) {
    return p.kind == PrincipalKind::kUser && !a.data_subject().empty() &&
           a.data_subject() == p.name;
  }
  return !a.org().empty() && a.org() == p.org;
}

bool CarbonAccountServiceImpl::CanManage(const Principal& p,
                                         const v1::Account& a) const {
  if (IsAdmin(p)) return true;
  if (a.kind() == v1::ACCOUNT_KIND_INDIVIDUAL) {
    return p.kind == PrincipalKind::kUser && a.data_subject() == p.name;
  }
  return !a.org().empty() && a.org() == p.org;
}

absl::StatusOr<v1::Account> CarbonAccountServiceImpl::ReadableAccount(
    const Principal& p, const std::string& id) const {
  if (id.empty()) return absl::InvalidArgumentError("account_id is required");
  absl::StatusOr<v1::Account> a = ledger_->GetAccount(id);
  if (!a.ok()) {
    if (absl::IsNotFound(a.status())) return NotFoundAccount(id);
    return a.status();
  }
  if (!CanRead(p, *a)) return NotFoundAccount(id);
  return a;
}

bool CarbonAccountServiceImpl::AlarmVisible(const Principal& p,
                                            const v1::Alarm& a) const {
  if (IsViewer(p)) return true;
  if (a.account_id().empty()) return false;  // region plans: viewers only
  absl::StatusOr<v1::Account> acc = ledger_->GetAccount(a.account_id());
  return acc.ok() && CanRead(p, *acc);
}

// ---- accounts
// ------------------------------------------------------------------

grpc::Status CarbonAccountServiceImpl::CreateAccount(
    grpc::ServerContext* ctx, const v1::CreateAccountRequest* req,
    v1::CreateAccountResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    v1::Account a = req->account();
    a.clear_create_time();
    a.clear_close_time();
    switch (a.kind()) {
      case v1::ACCOUNT_KIND_ENTERPRISE:
        if (!IsAdmin(caller))
          return NeedRole(caller, "create enterprise accounts", kAdminRole);
        if (a.org().empty()) {
          return absl::InvalidArgumentError(
              "account.org: required for an enterprise (its principals' "
              "certificate org)");
        }
        break;
      case v1::ACCOUNT_KIND_SITE:
      case v1::ACCOUNT_KIND_LINE:
      case v1::ACCOUNT_KIND_METER: {
        if (a.parent_id().empty()) {
          return absl::InvalidArgumentError(
              "account.parent_id: required for sites, lines and meters");
        }
        absl::StatusOr<v1::Account> parent = ledger_->GetAccount(a.parent_id());
        if (!parent.ok() || !CanRead(caller, *parent)) {
          return absl::NotFoundError(
              absl::StrCat("parent account \"", a.parent_id(), "\" not found"));
        }
        if (!CanManage(caller, *parent)) {
          return absl::PermissionDeniedError(
              absl::StrCat(caller.SpiffeId(), " may not add accounts under ",
                           a.parent_id(), ": only its enterprise (org ",
                           parent->org(), ") or carbon-admin"));
        }
        if (!a.org().empty() && a.org() != parent->org()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "account.org \"", a.org(), "\" differs from the parent's org \"",
              parent->org(), "\""));
        }
        a.set_org(parent->org());
        break;
      }
      case v1::ACCOUNT_KIND_INDIVIDUAL: {
        if (!IsAdmin(caller)) {
          if (caller.kind != PrincipalKind::kUser) {
            return absl::PermissionDeniedError(
                absl::StrCat(caller.SpiffeId(),
                             " is not a person: only a person creates their "
                             "individual account"));
          }
          if (!a.data_subject().empty() && a.data_subject() != caller.name) {
            return absl::PermissionDeniedError(absl::StrCat(
                caller.SpiffeId(),
                " may not create the account of data subject ",
                a.data_subject(), ": a person creates only their own"));
          }
          a.set_data_subject(caller.name);
        }
        if (a.data_subject().empty()) {
          return absl::InvalidArgumentError(
              "account.data_subject: required for an individual");
        }
        if (a.account_id().empty())
          a.set_account_id(IndividualAccountId(a.data_subject()));
        if (!a.org().empty()) {
          return absl::InvalidArgumentError(
              "account.org: must be empty for an individual");
        }
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("account.kind: ", v1::AccountKind_Name(a.kind()),
                         " is not a kind of account"));
    }
    CITYOS_ASSIGN_OR_RETURN(*resp->mutable_account(),
                            ledger_->CreateAccount(std::move(a)));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::GetAccount(
    grpc::ServerContext* ctx, const v1::GetAccountRequest* req,
    v1::GetAccountResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    CITYOS_ASSIGN_OR_RETURN(*resp->mutable_account(),
                            ReadableAccount(caller, req->account_id()));
    resp->set_children(ledger_->ChildCount(req->account_id()));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::ListAccounts(
    grpc::ServerContext* ctx, const v1::ListAccountsRequest* req,
    v1::ListAccountsResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    if (!req->region().empty() && regions_.Find(req->region()) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("region \"", req->region(), "\" is unknown"));
    }
    CITYOS_ASSIGN_OR_RETURN(
        *resp, ledger_->ListAccounts(*req, [&](const v1::Account& a) {
          return CanRead(caller, a);
        }));
    return absl::OkStatus();
  });
}

// ---- figures
// -------------------------------------------------------------------

grpc::Status CarbonAccountServiceImpl::GetEmissions(
    grpc::ServerContext* ctx, const v1::GetEmissionsRequest* req,
    v1::GetEmissionsResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    CITYOS_RETURN_IF_ERROR(ReadableAccount(caller, req->account_id()).status());
    if (req->granularity() == v1::GRANULARITY_UNSPECIFIED) {
      return absl::InvalidArgumentError("granularity is required");
    }
    CITYOS_ASSIGN_OR_RETURN(Range r, RangeOf(req->range(), "range", true));
    CITYOS_ASSIGN_OR_RETURN(
        std::vector<v1::EmissionTotal> totals,
        ledger_->Emissions(req->account_id(), req->granularity(), r.from, r.to,
                           req->as_reported()));
    for (v1::EmissionTotal& t : totals) *resp->add_totals() = std::move(t);
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::ListEmissionRecords(
    grpc::ServerContext* ctx, const v1::ListEmissionRecordsRequest* req,
    v1::ListEmissionRecordsResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    CITYOS_RETURN_IF_ERROR(ReadableAccount(caller, req->account_id()).status());
    CITYOS_ASSIGN_OR_RETURN(*resp, ledger_->ListRecords(*req));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::ListQuarantinedReadings(
    grpc::ServerContext* ctx, const v1::ListQuarantinedReadingsRequest* req,
    v1::ListQuarantinedReadingsResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    if (req->account_id().empty()) {
      // Every quarantined reading, including those of unknown meters.
      if (!IsViewer(caller)) {
        return NeedRole(caller, "list the quarantine of every account",
                        kViewerRole);
      }
    } else {
      CITYOS_RETURN_IF_ERROR(
          ReadableAccount(caller, req->account_id()).status());
    }
    CITYOS_ASSIGN_OR_RETURN(*resp, ledger_->ListQuarantine(*req));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::ListGreenCredits(
    grpc::ServerContext* ctx, const v1::ListGreenCreditsRequest* req,
    v1::ListGreenCreditsResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    CITYOS_ASSIGN_OR_RETURN(v1::Account a,
                            ReadableAccount(caller, req->account_id()));
    if (a.kind() != v1::ACCOUNT_KIND_INDIVIDUAL) {
      return absl::InvalidArgumentError(absl::StrCat(
          "account \"", a.account_id(), "\" is not an individual account"));
    }
    CITYOS_ASSIGN_OR_RETURN(*resp, credits_->List(*req));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::GetRegionEmissions(
    grpc::ServerContext* ctx, const v1::GetRegionEmissionsRequest* req,
    v1::GetRegionEmissionsResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    if (!IsViewer(caller))
      return NeedRole(caller, "read region emissions", kViewerRole);
    const RegionInfo* info = regions_.Find(req->region());
    if (info == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("region \"", req->region(), "\" is unknown"));
    }
    if (req->granularity() == v1::GRANULARITY_UNSPECIFIED) {
      return absl::InvalidArgumentError("granularity is required");
    }
    CITYOS_ASSIGN_OR_RETURN(Range r, RangeOf(req->range(), "range", true));
    std::vector<std::string> codes = {req->region()};
    if (req->include_subregions()) {
      for (std::string& c : regions_.Children(req->region()))
        codes.push_back(std::move(c));
    }
    for (const std::string& code : codes) {
      v1::RegionEmissions* out = resp->add_regions();
      out->set_region(code);
      const RegionInfo* ri = regions_.Find(code);
      out->set_name(ri != nullptr ? ri->name : code);
      CITYOS_ASSIGN_OR_RETURN(
          std::vector<v1::EmissionTotal> totals,
          ledger_->RegionEmissions(code, req->granularity(), r.from, r.to,
                                   req->as_reported()));
      for (v1::EmissionTotal& t : totals) *out->add_totals() = std::move(t);
      out->set_credited_g(credits_->RegionTotalG(regions_, code, r.from, r.to));
    }
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::GetIndustryEmissions(
    grpc::ServerContext* ctx, const v1::GetIndustryEmissionsRequest* req,
    v1::GetIndustryEmissionsResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    if (!IsViewer(caller))
      return NeedRole(caller, "read industry emissions", kViewerRole);
    if (!req->region().empty() && regions_.Find(req->region()) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("region \"", req->region(), "\" is unknown"));
    }
    if (req->granularity() == v1::GRANULARITY_UNSPECIFIED) {
      return absl::InvalidArgumentError("granularity is required");
    }
    CITYOS_ASSIGN_OR_RETURN(Range r, RangeOf(req->range(), "range", true));
    CITYOS_ASSIGN_OR_RETURN(*resp,
                            ledger_->IndustryEmissions(*req, r.from, r.to));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::GetRanking(
    grpc::ServerContext* ctx, const v1::GetRankingRequest* req,
    v1::GetRankingResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    if (!IsViewer(caller))
      return NeedRole(caller, "read rankings", kViewerRole);
    if (!req->region().empty() && regions_.Find(req->region()) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("region \"", req->region(), "\" is unknown"));
    }
    CITYOS_RETURN_IF_ERROR(RangeOf(req->period(), "period", true).status());
    CITYOS_ASSIGN_OR_RETURN(*resp, ledger_->Ranking(*req));
    return absl::OkStatus();
  });
}

// ---- plans and alarms
// ------------------------------------------------------------

grpc::Status CarbonAccountServiceImpl::SetPlan(grpc::ServerContext* ctx,
                                               const v1::SetPlanRequest* req,
                                               v1::SetPlanResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    // May the caller manage the plan's target?
    auto check_target = [&](const v1::Plan& p) -> absl::Status {
      switch (p.target_case()) {
        case v1::Plan::kAccountId: {
          CITYOS_ASSIGN_OR_RETURN(v1::Account a,
                                  ReadableAccount(caller, p.account_id()));
          if (a.kind() != v1::ACCOUNT_KIND_ENTERPRISE &&
              a.kind() != v1::ACCOUNT_KIND_SITE &&
              a.kind() != v1::ACCOUNT_KIND_LINE) {
            return absl::InvalidArgumentError(
                absl::StrCat("plan.account_id \"", p.account_id(),
                             "\": plans budget enterprises, sites or lines"));
          }
          if (!CanManage(caller, a)) {
            return absl::PermissionDeniedError(
                absl::StrCat(caller.SpiffeId(), " may not manage the plans of ",
                             p.account_id()));
          }
          return absl::OkStatus();
        }
        case v1::Plan::kRegion:
          if (!IsAdmin(caller))
            return NeedRole(caller, "manage region plans", kAdminRole);
          if (regions_.Find(p.region()) == nullptr) {
            return absl::InvalidArgumentError(
                absl::StrCat("plan.region \"", p.region(), "\" is unknown"));
          }
          return absl::OkStatus();
        default:
          return absl::InvalidArgumentError(
              "plan: a target (account_id or region) is required");
      }
    };
    const v1::Plan& plan = req->plan();
    if (!plan.plan_id().empty()) {
      absl::StatusOr<v1::Plan> current = alarms_->GetPlan(plan.plan_id());
      if (!current.ok()) return current.status();
      if (!PlanVisible(caller, *current)) {
        return absl::NotFoundError(
            absl::StrCat("plan \"", plan.plan_id(), "\" not found"));
      }
      CITYOS_RETURN_IF_ERROR(check_target(*current));
    }
    CITYOS_RETURN_IF_ERROR(check_target(plan));
    CITYOS_ASSIGN_OR_RETURN(*resp->mutable_plan(),
                            alarms_->SetPlan(plan, caller.SpiffeId()));
    return absl::OkStatus();
  });
}

bool CarbonAccountServiceImpl::PlanVisible(const Principal& p,
                                           const v1::Plan& plan) const {
  if (IsViewer(p)) return true;
  if (plan.target_case() != v1::Plan::kAccountId) return false;
  absl::StatusOr<v1::Account> a = ledger_->GetAccount(plan.account_id());
  return a.ok() && CanRead(p, *a);
}

grpc::Status CarbonAccountServiceImpl::ListPlans(
    grpc::ServerContext* ctx, const v1::ListPlansRequest* req,
    v1::ListPlansResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    if (!req->account_id().empty() && !req->region().empty()) {
      return absl::InvalidArgumentError(
          "account_id and region are exclusive: give one");
    }
    if (!req->account_id().empty()) {
      CITYOS_RETURN_IF_ERROR(
          ReadableAccount(caller, req->account_id()).status());
    }
    if (!req->region().empty()) {
      if (!IsViewer(caller))
        return NeedRole(caller, "read region plans", kViewerRole);
      if (regions_.Find(req->region()) == nullptr) {
        return absl::NotFoundError(
            absl::StrCat("region \"", req->region(), "\" not found"));
      }
    }
    for (v1::Plan& p : alarms_->ListPlans(*req)) {
      if (PlanVisible(caller, p)) *resp->add_plans() = std::move(p);
    }
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::DeletePlan(
    grpc::ServerContext* ctx, const v1::DeletePlanRequest* req,
    v1::DeletePlanResponse*) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    absl::StatusOr<v1::Plan> plan = alarms_->GetPlan(req->plan_id());
    if (!plan.ok() || !PlanVisible(caller, *plan)) {
      return absl::NotFoundError(
          absl::StrCat("plan \"", req->plan_id(), "\" not found"));
    }
    if (plan->target_case() == v1::Plan::kAccountId) {
      absl::StatusOr<v1::Account> a = ledger_->GetAccount(plan->account_id());
      if (!a.ok() || !CanManage(caller, *a)) {
        return absl::PermissionDeniedError(
            absl::StrCat(caller.SpiffeId(), " may not delete the plans of ",
                         plan->account_id()));
      }
    } else if (!IsAdmin(caller)) {
      return NeedRole(caller, "delete region plans", kAdminRole);
    }
    return alarms_->DeletePlan(req->plan_id());
  });
}

grpc::Status CarbonAccountServiceImpl::ListAlarms(
    grpc::ServerContext* ctx, const v1::ListAlarmsRequest* req,
    v1::ListAlarmsResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    if (!req->account_id().empty()) {
      CITYOS_RETURN_IF_ERROR(
          ReadableAccount(caller, req->account_id()).status());
    }
    if (!req->region().empty() && regions_.Find(req->region()) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("region \"", req->region(), "\" is unknown"));
    }
    CITYOS_ASSIGN_OR_RETURN(*resp,
                            alarms_->ListAlarms(*req, [&](const v1::Alarm& a) {
                              return AlarmVisible(caller, a);
                            }));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::AcknowledgeAlarm(
    grpc::ServerContext* ctx, const v1::AcknowledgeAlarmRequest* req,
    v1::AcknowledgeAlarmResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    absl::StatusOr<v1::Alarm> alarm = alarms_->GetAlarm(req->alarm_id());
    if (!alarm.ok() || !AlarmVisible(caller, *alarm)) {
      return absl::NotFoundError(
          absl::StrCat("alarm \"", req->alarm_id(), "\" not found"));
    }
    if (!IsAdmin(caller)) {
      absl::StatusOr<v1::Account> a =
          alarm->account_id().empty()
              ? absl::StatusOr<v1::Account>(absl::NotFoundError(""))
              : ledger_->GetAccount(alarm->account_id());
      if (!a.ok() || a->org().empty() || a->org() != caller.org) {
        return absl::PermissionDeniedError(
            absl::StrCat(caller.SpiffeId(),
                         " may not acknowledge this alarm: only the account's "
                         "enterprise or carbon-admin"));
      }
    }
    CITYOS_ASSIGN_OR_RETURN(
        *resp->mutable_alarm(),
        alarms_->Acknowledge(req->alarm_id(), caller.SpiffeId(), req->note()));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::WatchAlarms(
    grpc::ServerContext* ctx, const v1::WatchAlarmsRequest* req,
    grpc::ServerWriter<v1::WatchAlarmsResponse>* writer) {
  absl::StatusOr<Principal> caller = Caller(ctx);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (!req->account_id().empty()) {
    absl::Status s = ReadableAccount(*caller, req->account_id()).status();
    if (!s.ok()) return ToGrpcStatus(s);
  }
  if (!req->region().empty() && regions_.Find(req->region()) == nullptr) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("region \"", req->region(), "\" is unknown")));
  }
  AlarmWatchFilter filter;
  filter.account_id = req->account_id();
  filter.region = req->region();
  const Principal who = *caller;
  filter.visible = [this, who](const v1::Alarm& a) {
    return AlarmVisible(who, a);
  };
  std::shared_ptr<AlarmWatcher> watcher = watchers_->Register(filter);
  struct Unregister {
    AlarmWatchers* hub;
    std::shared_ptr<AlarmWatcher> w;
    ~Unregister() { hub->Unregister(w); }
  } unregister{watchers_.get(), watcher};
  if (req->include_open()) {
    v1::WatchAlarmsResponse first;
    for (v1::Alarm& a : alarms_->OpenAlarms()) {
      if (!watchers_->Matches(filter, a) || !filter.visible(a)) continue;
      v1::AlarmChange* c = first.add_changes();
      c->set_kind(v1::ALARM_CHANGE_KIND_OPEN);
      *c->mutable_alarm() = std::move(a);
    }
    if (!writer->Write(first))
      return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  } else {
    // Tells the client the watch is registered: changes from now on reach it.
    writer->SendInitialMetadata();
  }
  while (!ctx->IsCancelled()) {
    std::vector<v1::AlarmChange> changes =
        watcher->Wait(absl::Now() + absl::Milliseconds(200));
    if (!changes.empty()) {
      v1::WatchAlarmsResponse resp;
      for (v1::AlarmChange& c : changes) *resp.add_changes() = std::move(c);
      if (!writer->Write(resp))
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      continue;
    }
    if (watcher->overflowed()) {
      return grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          "alarm changes overflowed this watcher's queue; watch again with "
          "include_open");
    }
    if (watcher->closed()) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "the node is shutting down; watch again elsewhere");
    }
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
}

// ---- grades and incentives
// ----------------------------------------------------------

std::optional<v1::Grade> CarbonAccountServiceImpl::FindGrade(
    const std::string& account_id, absl::Time t, bool as_reported) const {
  absl::MutexLock lock(&state_mu_);
  // Candidates: the account's grades (as reported: those not produced by a
  // restatement) whose period contains t, or of the latest period.
  std::vector<const v1::Grade*> candidates;
  absl::Time latest = absl::InfinitePast();
  for (const auto& [id, g] : grades_) {
    if (g.account_id() != account_id) continue;
    if (as_reported && !g.restatement_id().empty()) continue;
    const absl::Time s = ToAbslTime(g.period().start());
    const absl::Time e = ToAbslTime(g.period().end());
    if (t != absl::InfiniteFuture() && !(s <= t && t < e)) continue;
    candidates.push_back(&g);
    latest = std::max(latest, s);
  }
  // The latest computed grade of that period (a later value added or a
  // restatement replaces an earlier grade).
  const v1::Grade* best = nullptr;
  for (const v1::Grade* g : candidates) {
    if (ToAbslTime(g->period().start()) != latest) continue;
    if (best == nullptr) {
      best = g;
      continue;
    }
    const absl::Time bt = ToAbslTime(best->compute_time());
    const absl::Time gt = ToAbslTime(g->compute_time());
    if (gt > bt || (gt == bt && g->grade_id() > best->grade_id())) best = g;
  }
  if (best == nullptr) return std::nullopt;
  return *best;
}

grpc::Status CarbonAccountServiceImpl::GetGrade(grpc::ServerContext* ctx,
                                                const v1::GetGradeRequest* req,
                                                v1::GetGradeResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    CITYOS_ASSIGN_OR_RETURN(v1::Account a,
                            ReadableAccount(caller, req->account_id()));
    if (a.kind() != v1::ACCOUNT_KIND_ENTERPRISE) {
      return absl::InvalidArgumentError(absl::StrCat(
          "account \"", a.account_id(), "\" is not an enterprise"));
    }
    absl::Time t = absl::InfiniteFuture();
    if (req->has_period_time()) {
      CITYOS_ASSIGN_OR_RETURN(
          t, TimestampFromProto(req->period_time(), "period_time"));
    }
    std::optional<v1::Grade> g =
        FindGrade(a.account_id(), t, req->as_reported());
    if (!g.has_value()) {
      return absl::NotFoundError(
          absl::StrCat("no grade of ", a.account_id(),
                       req->has_period_time() ? " for that period" : ""));
    }
    *resp->mutable_grade() = *std::move(g);
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::ListGrades(
    grpc::ServerContext* ctx, const v1::ListGradesRequest* req,
    v1::ListGradesResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    if (!IsViewer(caller)) return NeedRole(caller, "list grades", kViewerRole);
    if (!req->has_period_time())
      return absl::InvalidArgumentError("period_time is required");
    CITYOS_ASSIGN_OR_RETURN(
        absl::Time t, TimestampFromProto(req->period_time(), "period_time"));
    if (!req->region().empty() && regions_.Find(req->region()) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("region \"", req->region(), "\" is unknown"));
    }
    if (req->level() < 0 || req->level() > 5) {
      return absl::InvalidArgumentError(
          absl::StrCat("level ", req->level(), ": must be 0-5"));
    }
    CITYOS_ASSIGN_OR_RETURN(size_t size, PageSize(req->page_size()));
    CITYOS_ASSIGN_OR_RETURN(size_t offset, PageOffset(req->page_token()));
    std::set<std::string> accounts;
    {
      absl::MutexLock lock(&state_mu_);
      for (const auto& [id, g] : grades_) accounts.insert(g.account_id());
    }
    std::vector<v1::Grade> out;
    for (const std::string& id : accounts) {
      std::optional<v1::Grade> g = FindGrade(id, t, false);
      if (!g.has_value()) continue;
      if (req->level() != 0 && g->level() != req->level()) continue;
      absl::StatusOr<v1::Account> a = ledger_->GetAccount(id);
      if (!a.ok()) continue;
      if (!req->region().empty() &&
          !regions_.Covers(req->region(), a->region()))
        continue;
      if (!absl::StartsWith(a->industry_code(), req->industry_code())) continue;
      out.push_back(*std::move(g));
    }
    std::sort(out.begin(), out.end(),
              [](const v1::Grade& x, const v1::Grade& y) {
                if (x.level() != y.level()) return x.level() < y.level();
                if (x.k() != y.k()) return x.k() < y.k();
                return x.account_id() < y.account_id();
              });
    // A token past the end gives an empty last page (no overflow of
    // offset + size for a forged token).
    const size_t first = std::min(offset, out.size());
    const size_t last = first + std::min(size, out.size() - first);
    for (size_t i = first; i < last; ++i) *resp->add_grades() = out[i];
    if (last < out.size()) resp->set_next_page_token(std::to_string(last));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::GetIncentiveStatement(
    grpc::ServerContext* ctx, const v1::GetIncentiveStatementRequest* req,
    v1::GetIncentiveStatementResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    CITYOS_RETURN_IF_ERROR(ReadableAccount(caller, req->account_id()).status());
    CITYOS_ASSIGN_OR_RETURN(*resp, incentives_->Statement(*req));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::GetMonthlyReport(
    grpc::ServerContext* ctx, const v1::GetMonthlyReportRequest* req,
    v1::GetMonthlyReportResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    CITYOS_RETURN_IF_ERROR(ReadableAccount(caller, req->account_id()).status());
    CITYOS_ASSIGN_OR_RETURN(*resp, MonthlyReport(*req));
    return absl::OkStatus();
  });
}

// ---- factors and restatements
// ----------------------------------------------------------

grpc::Status CarbonAccountServiceImpl::ListEmissionFactors(
    grpc::ServerContext* ctx, const v1::ListEmissionFactorsRequest* req,
    v1::ListEmissionFactorsResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_RETURN_IF_ERROR(Caller(ctx).status());
    for (v1::EmissionFactor& f : factors_->List(*req))
      *resp->add_factors() = std::move(f);
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::AddEmissionFactor(
    grpc::ServerContext* ctx, const v1::AddEmissionFactorRequest* req,
    v1::AddEmissionFactorResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    if (!IsAdmin(caller))
      return NeedRole(caller, "add emission factors", kAdminRole);
    CITYOS_ASSIGN_OR_RETURN(*resp->mutable_factor(),
                            factors_->Add(req->factor(), caller.SpiffeId()));
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::RequestRestatement(
    grpc::ServerContext* ctx, const v1::RequestRestatementRequest* req,
    v1::RequestRestatementResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    if (!IsAdmin(caller))
      return NeedRole(caller, "request restatements", kAdminRole);
    CITYOS_ASSIGN_OR_RETURN(Range range,
                            RangeOf(req->period(), "period", true));
    if (req->account_ids().empty() == req->region().empty()) {
      return absl::InvalidArgumentError(
          "give either account_ids or region (exactly one) as the scope to "
          "restate");
    }
    if (req->reason().empty())
      return absl::InvalidArgumentError("reason is required");
    for (const std::string& id : req->account_ids()) {
      if (!ledger_->GetAccount(id).ok()) return NotFoundAccount(id);
    }
    if (!req->region().empty() && regions_.Find(req->region()) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("region \"", req->region(), "\" is unknown"));
    }
    for (const std::string& id : req->factor_ids()) {
      CITYOS_RETURN_IF_ERROR(factors_->Get(id).status());
    }
    // Scopes overlap when the periods overlap and the accounts or regions
    // intersect (conservatively: any region scope against any account in it).
    auto scope_overlaps = [&](const v1::Restatement& o) {
      const absl::Time os = ToAbslTime(o.period().start());
      const absl::Time oe = ToAbslTime(o.period().end());
      if (!(os < range.to && range.from < oe)) return false;
      auto account_in = [&](const std::string& acc,
                            const v1::Restatement& scope) {
        if (!scope.region().empty())
          return regions_.Covers(scope.region(), ledger_->RegionOf(acc));
        for (const std::string& a : scope.account_ids()) {
          if (ledger_->AccountCovers(a, acc) || ledger_->AccountCovers(acc, a))
            return true;
        }
        return false;
      };
      if (!o.region().empty() && !req->region().empty()) {
        return regions_.Covers(o.region(), req->region()) ||
               regions_.Covers(req->region(), o.region());
      }
      if (!req->region().empty()) {
        v1::Restatement mine;
        mine.set_region(req->region());
        for (const std::string& a : o.account_ids()) {
          if (account_in(a, mine)) return true;
        }
        return false;
      }
      for (const std::string& a : req->account_ids()) {
        if (account_in(a, o)) return true;
      }
      return false;
    };
    const absl::Time now = deps_.clock->Now();
    v1::Restatement r;
    r.set_restatement_id(UuidToString(NewUuidV7At(now)));
    *r.mutable_account_ids() = req->account_ids();
    r.set_region(req->region());
    *r.mutable_period() = req->period();
    *r.mutable_factor_ids() = req->factor_ids();
    r.set_reason(req->reason());
    r.set_state(v1::RESTATEMENT_STATE_PENDING);
    r.set_requested_by(caller.SpiffeId());
    TimestampToProto(now, r.mutable_request_time());
    absl::MutexLock lock(&state_mu_);
    for (const auto& [id, o] : restatements_) {
      if ((o.state() == v1::RESTATEMENT_STATE_PENDING ||
           o.state() == v1::RESTATEMENT_STATE_RUNNING) &&
          scope_overlaps(o)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "restatement ", id, " of an overlapping scope is ",
            o.state() == v1::RESTATEMENT_STATE_RUNNING ? "running"
                                                       : "pending"));
      }
    }
    CITYOS_RETURN_IF_ERROR(StoreRestatementLocked(r));
    restate_queue_.push_back(r.restatement_id());
    *resp->mutable_restatement() = std::move(r);
    return absl::OkStatus();
  });
}

grpc::Status CarbonAccountServiceImpl::GetRestatement(
    grpc::ServerContext* ctx, const v1::GetRestatementRequest* req,
    v1::GetRestatementResponse* resp) {
  return Run([&]() -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(Principal caller, Caller(ctx));
    std::optional<v1::Restatement> r;
    {
      absl::MutexLock lock(&state_mu_);
      auto it = restatements_.find(req->restatement_id());
      if (it != restatements_.end()) r = it->second;
    }
    bool visible = r.has_value() && IsViewer(caller);
    if (r.has_value() && !visible && !r->account_ids().empty()) {
      // The enterprises restated may follow their restatement.
      visible = true;
      for (const std::string& id : r->account_ids()) {
        absl::StatusOr<v1::Account> a = ledger_->GetAccount(id);
        if (!a.ok() || !CanRead(caller, *a)) visible = false;
      }
    }
    if (!visible) {
      return absl::NotFoundError(absl::StrCat(
          "restatement \"", req->restatement_id(), "\" not found"));
    }
    *resp->mutable_restatement() = *std::move(r);
    return absl::OkStatus();
  });
}

}  // namespace cityos::carbon
