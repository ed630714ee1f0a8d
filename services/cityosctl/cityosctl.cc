#include "cityosctl.h"

#include <google/protobuf/util/json_util.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <map>
#include <iomanip>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/audit.h"
#include "cityos/ca.h"
#include "cityos/exchange/v1/exchange.grpc.pb.h"
#include "cityos/grpc_util.h"
#include "cityos/logging.h"
#include "cityos/observability.h"
#include "cityos/registry/v1/registry.grpc.pb.h"
#include "cityos/tls.h"
#ifdef CITYOS_HAVE_INFOBANK
#include "receipts.h"
#endif

namespace cityos::ctl {

void PrintTable(std::ostream& out, const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(header.size());
  for (size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i)
      w[i] = std::max(w[i], r[i].size());
  auto line = [&](const std::vector<std::string>& r) {
    std::string s;
    for (size_t i = 0; i < r.size(); ++i) {
      s += r[i];
      if (i + 1 < r.size()) s += std::string(w[i] - r[i].size() + 2, ' ');
    }
    out << s << "\n";
  };
  line(header);
  for (const auto& r : rows) line(r);
}

namespace {

using json = nlohmann::json;

// Deadline of each unary call and health probe (--timeout).
absl::Duration g_rpc_timeout = absl::Seconds(10);

// An error that ends the command: printed as "cityosctl: <message>", exit 1.
struct CommandError {
  std::string message;
};

[[noreturn]] void Fail(std::string message) {
  throw CommandError{std::move(message)};
}

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

std::string Upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) {
    return static_cast<char>(std::toupper(c));
  });
  return s;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  return s;
}

// ---- active streaming call (for Ctrl-C) ---------------------------------
std::mutex g_active_mu;
grpc::ClientContext* g_active = nullptr;

class ActiveCall {
 public:
  explicit ActiveCall(grpc::ClientContext* ctx) {
    std::lock_guard<std::mutex> lock(g_active_mu);
    g_active = ctx;
  }
  ~ActiveCall() {
    std::lock_guard<std::mutex> lock(g_active_mu);
    g_active = nullptr;
  }
};

// ---- options shared by every command -------------------------------------
struct Globals {
  std::string context;
  std::string config;
  bool json = false;
};

std::string ConfigPath(const Globals& g) {
  if (!g.config.empty()) return g.config;
  absl::StatusOr<std::string> p = ClientConfigPath();
  if (!p.ok())
    Fail("no context file: " + Msg(p.status()) + " (use --config FILE)");
  return *p;
}

ClientConfig LoadConfigOrFail(const std::string& path) {
  absl::StatusOr<ClientConfig> c = LoadClientConfig(path);
  if (!c.ok()) {
    if (absl::IsNotFound(c.status())) {
      Fail("no context file at " + path +
           " (start a node with `tls: auto`, or pass --config FILE)");
    }
    Fail(Msg(c.status()));
  }
  return *std::move(c);
}

ClientContext CurrentContext(const Globals& g) {
  std::string path = ConfigPath(g);
  ClientConfig config = LoadConfigOrFail(path);
  std::string name = g.context.empty() ? config.current_context : g.context;
  if (name.empty()) Fail(path + ": no current-context; use --context NAME");
  for (const ClientContext& c : config.contexts) {
    if (c.name == name) return c;
  }
  Fail(absl::StrFormat("%s: no context named \"%s\"", path, name));
}

std::shared_ptr<grpc::ChannelCredentials> CredentialsFor(
    const ClientContext& ctx, std::optional<std::string> server_id) {
  auto creds = MakeChannelCredentials(TlsConfigFor(ctx), std::move(server_id));
  if (!creds.ok()) {
    Fail(absl::StrFormat("context \"%s\": bad client certificate setup: %s",
                         ctx.name, Msg(creds.status())));
  }
  return *creds;
}

std::shared_ptr<grpc::Channel> NodeChannel(const ClientContext& ctx) {
  std::optional<std::string> pin;
  if (!ctx.server_id.empty()) pin = ctx.server_id;
  return CreateObservedChannel(ctx.endpoint, CredentialsFor(ctx, pin));
}

void SetDeadline(grpc::ClientContext* c) {
  c->set_deadline(absl::ToChronoTime(absl::Now() + g_rpc_timeout));
}

void Check(const std::string& endpoint, const grpc::Status& s) {
  if (!s.ok()) Fail(DescribeRpcError(endpoint, s));
}

json ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string text;
  auto st = google::protobuf::util::MessageToJsonString(m, &text, opts);
  if (!st.ok()) Fail("cannot convert to JSON: " + std::string(st.message()));
  return json::parse(text);
}

void PrintJson(std::ostream& out, const json& j) { out << j.dump(2) << "\n"; }

std::string FormatTs(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ",
                          absl::FromUnixSeconds(t.seconds()),
                          absl::UTCTimeZone());
}

std::string Join(const google::protobuf::RepeatedPtrField<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s.empty() ? "-" : s;
}

// A table cell or text field: "-" stands for an empty value.
std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

// With --json prints `m` as JSON and returns true; otherwise returns false
// and the caller prints text.
bool PrintedAsJson(const Globals& g, const google::protobuf::Message& m, std::ostream& out) {
  if (!g.json) return false;
  PrintJson(out, ToJson(m));
  return true;
}

// A proto enum value's name without the PREFIX_ every value of its enum has
// (e.g. "STATE_ACTIVE" -> "ACTIVE").
std::string EnumSuffix(std::string name, std::string_view prefix) {
  if (name.rfind(prefix, 0) == 0) name.erase(0, prefix.size());
  return name;
}

// ---- context ---------------------------------------------------------------
void ContextList(const Globals& g, std::ostream& out) {
  std::string path = ConfigPath(g);
  ClientConfig config = LoadConfigOrFail(path);
  if (g.json) {
    json j{{"current_context", config.current_context},
           {"contexts", json::array()}};
    for (const auto& c : config.contexts) {
      j["contexts"].push_back({{"name", c.name},
                               {"endpoint", c.endpoint},
                               {"trust_domain", c.trust_domain},
                               {"ca", c.ca},
                               {"cert", c.cert},
                               {"key", c.key},
                               {"server_id", c.server_id},
                               {"current", c.name == config.current_context}});
    }
    PrintJson(out, j);
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : config.contexts) {
    rows.push_back({c.name == config.current_context ? "*" : "", c.name,
                    c.endpoint, c.trust_domain, c.cert});
  }
  PrintTable(out,
             {"CURRENT", "NAME", "ENDPOINT", "TRUST DOMAIN", "CERTIFICATE"},
             rows);
}

void ContextUse(const Globals& g, const std::string& name, std::ostream& out) {
  std::string path = ConfigPath(g);
  ClientConfig config = LoadConfigOrFail(path);
  for (const auto& c : config.contexts) {
    if (c.name != name) continue;
    if (absl::Status s = SaveClientContext(path, c, /*make_current=*/true);
        !s.ok()) {
      Fail(Msg(s));
    }
    if (g.json) {
      PrintJson(out, {{"current_context", name}});
    } else {
      out << "switched to context \"" << name << "\"\n";
    }
    return;
  }
  Fail(absl::StrFormat("%s: no context named \"%s\"", path, name));
}

// ---- ca / cert
// ---------------------------------------------------------------
json RecordJson(const CertRecord& r) {
  return {{"serial", r.serial},
          {"spiffe_id", r.spiffe_id},
          {"roles", r.roles},
          {"not_before", absl::FormatTime(absl::RFC3339_sec, r.not_before,
                                          absl::UTCTimeZone())},
          {"not_after", absl::FormatTime(absl::RFC3339_sec, r.not_after,
                                         absl::UTCTimeZone())},
          {"cert_file", r.cert_file},
          {"revoked", r.revoked}};
}

void CaInit(const Globals& g, const std::string& dir, const std::string& td,
            int days, std::ostream& out) {
  auto ca = CityCa::Create(dir, td, absl::Hours(24) * days);
  if (!ca.ok()) Fail("ca init: " + Msg(ca.status()));
  if (g.json) {
    PrintJson(out, {{"trust_domain", (*ca)->trust_domain()},
                    {"ca_file", (*ca)->ca_file()},
                    {"crl_file", (*ca)->crl_file()}});
  } else {
    out << "created city CA for trust domain " << (*ca)->trust_domain() << "\n"
        << "  certificate: " << (*ca)->ca_file() << "\n"
        << "  CRL:         " << (*ca)->crl_file() << "\n"
        << "  key:         " << dir << "/ca.key (keep it offline)\n";
  }
}

struct IssueArgs {
  std::string ca_dir, org, svc, user, out;
  std::vector<std::string> roles, dns, ip;
  int days = 90;
};

void CertIssue(const Globals& g, const IssueArgs& a, std::ostream& out) {
  if (a.svc.empty() == a.user.empty())
    Fail("cert issue: give exactly one of --svc and --user");
  auto ca = CityCa::Open(a.ca_dir);
  if (!ca.ok()) Fail("cert issue: " + Msg(ca.status()));
  CertSpec spec{
      .org = a.org,
      .kind = a.svc.empty() ? PrincipalKind::kUser : PrincipalKind::kService,
      .name = a.svc.empty() ? a.user : a.svc,
      .roles = a.roles,
      .dns_names = a.dns,
      .ip_addresses = a.ip,
      .validity = absl::Hours(24) * a.days,
      .out = a.out};
  auto rec = (*ca)->Issue(spec);
  if (!rec.ok()) Fail("cert issue: " + Msg(rec.status()));
  if (g.json) {
    json j = RecordJson(*rec);
    j["key_file"] = a.out + ".key";
    PrintJson(out, j);
  } else {
    out << "issued " << rec->spiffe_id << "\n"
        << "  serial:      " << rec->serial << "\n"
        << "  valid until: "
        << absl::FormatTime(absl::RFC3339_sec, rec->not_after,
                            absl::UTCTimeZone())
        << "\n"
        << "  certificate: " << rec->cert_file << "\n"
        << "  key:         " << a.out << ".key (0600)\n";
  }
}

void CertRevoke(const Globals& g, const std::string& ca_dir,
                const std::string& serial, const std::string& reason_name,
                std::ostream& out) {
  auto reason = ParseRevocationReason(reason_name);
  if (!reason.ok()) Fail("cert revoke: " + Msg(reason.status()));
  auto ca = CityCa::Open(ca_dir);
  if (!ca.ok()) Fail("cert revoke: " + Msg(ca.status()));
  if (absl::Status s = (*ca)->Revoke(serial, *reason); !s.ok())
    Fail("cert revoke: " + Msg(s));
  if (g.json) {
    PrintJson(out, {{"serial", serial},
                    {"reason", RevocationReasonName(*reason)},
                    {"crl_file", (*ca)->crl_file()}});
  } else {
    out << "revoked " << serial << " (" << RevocationReasonName(*reason)
        << "); CRL rewritten: " << (*ca)->crl_file() << "\n"
        << "distribute it to every node (same path as configured)\n";
  }
}

// One gRPC service of the node in the current context, e.g.
// RpcClient<bus::v1::BusService>.
template <typename Service>
class RpcClient {
 public:
  using Stub = typename Service::Stub;

  // Resolves the context now; connects on first use, so that the commands
  // check their flags before a bad client certificate is reported.
  explicit RpcClient(const Globals& g) : ctx_(CurrentContext(g)) {}
  explicit RpcClient(ClientContext ctx) : ctx_(std::move(ctx)) {}

  // One unary call, e.g. Call(&Stub::ListPolicies, req), with the --timeout
  // deadline; a failed call ends the command.
  template <typename Request, typename Response>
  Response Call(grpc::Status (Stub::*rpc)(grpc::ClientContext*, const Request&, Response*),
                const Request& req) {
    grpc::ClientContext call;
    SetDeadline(&call);
    Response resp;
    Check(ctx_.endpoint, (stub()->*rpc)(&call, req, &resp));
    return resp;
  }

  const std::string& endpoint() const { return ctx_.endpoint; }
  Stub* stub() {
    if (stub_ == nullptr) stub_ = Service::NewStub(NodeChannel(ctx_));
    return stub_.get();
  }

 private:
  ClientContext ctx_;
  std::unique_ptr<Stub> stub_;
};
using ExchangeClient = RpcClient<exchange::v1::ExchangeService>;
using ExchangeStub = ExchangeClient::Stub;

// ---- services
// ------------------------------------------------------------------
registry::v1::ListResponse ListInstances(const ClientContext& ctx) {
  RpcClient<registry::v1::RegistryService> registry(ctx);
  return registry.Call(&registry::v1::RegistryService::Stub::List, registry::v1::ListRequest());
}

void ServicesList(const Globals& g, std::ostream& out) {
  ClientContext ctx = CurrentContext(g);
  registry::v1::ListResponse resp = ListInstances(ctx);
  if (g.json) {
    PrintJson(out, ToJson(resp));
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& i : resp.instances()) {
    const auto& r = i.registration();
    rows.push_back({r.org(), r.name(), r.domain().empty() ? "-" : r.domain(),
                    r.endpoint(), r.version().empty() ? "-" : r.version(),
                    FormatTs(i.expire_time()), Join(r.proto_services())});
  }
  PrintTable(out,
             {"ORG", "NAME", "DOMAIN", "ENDPOINT", "VERSION", "LEASE UNTIL",
              "SERVICES"},
             rows);
  if (rows.empty()) out << "(no services registered)\n";
}

struct HealthRow {
  std::string org, name, endpoint, service, status, error;
};

HealthRow Probe(grpc::ChannelInterface& channel, const std::string& endpoint,
                const std::string& service) {
  HealthRow row{.endpoint = endpoint, .service = service};
  absl::StatusOr<HealthStatus> h = CheckHealth(channel, service, g_rpc_timeout);
  if (h.ok()) {
    row.status = HealthStatusName(*h);
  } else {
    row.status = "UNREACHABLE";
    row.error = DescribeRpcError(
        endpoint, grpc::Status(static_cast<grpc::StatusCode>(h.status().code()),
                               std::string(h.status().message())));
    if (h.status().code() == absl::StatusCode::kNotFound) {
      row.status = "SERVICE_UNKNOWN";
      row.error.clear();
    }
  }
  return row;
}

// Exit status: 0 when every probe is SERVING, 1 otherwise (the table or JSON
// is printed either way).
int ServicesHealth(const Globals& g, std::ostream& out) {
  ClientContext ctx = CurrentContext(g);
  std::vector<HealthRow> rows;
  auto node_channel = NodeChannel(ctx);
  HealthRow node = Probe(*node_channel, ctx.endpoint, "");
  node.org = "-";
  node.name = "(node " + ctx.name + ")";
  if (node.status == "UNREACHABLE") Fail(node.error);
  rows.push_back(node);
  registry::v1::ListResponse list = ListInstances(ctx);
  for (const auto& inst : list.instances()) {
    const auto& r = inst.registration();
    // Pin each instance to the principal that registered it.
    std::optional<std::string> pin;
    if (!inst.principal().empty()) pin = inst.principal();
    auto channel =
        CreateObservedChannel(r.endpoint(), CredentialsFor(ctx, pin));
    std::vector<std::string> services(r.proto_services().begin(),
                                      r.proto_services().end());
    if (services.empty()) services.push_back("");
    for (const std::string& svc : services) {
      HealthRow row = Probe(*channel, r.endpoint(), svc);
      row.org = r.org();
      row.name = r.name();
      rows.push_back(row);
    }
  }
  bool all_ok = true;
  for (const auto& r : rows) all_ok = all_ok && r.status == "SERVING";
  if (g.json) {
    json j{{"healthy", all_ok}, {"checks", json::array()}};
    for (const auto& r : rows) {
      j["checks"].push_back({{"org", r.org},
                             {"name", r.name},
                             {"endpoint", r.endpoint},
                             {"service", r.service},
                             {"status", r.status},
                             {"error", r.error}});
    }
    PrintJson(out, j);
  } else {
    std::vector<std::vector<std::string>> t;
    for (const auto& r : rows) {
      t.push_back({r.org, r.name, r.endpoint,
                   r.service.empty() ? "(server)" : r.service,
                   r.status + (r.error.empty() ? "" : "  " + r.error)});
    }
    PrintTable(out, {"ORG", "NAME", "ENDPOINT", "SERVICE", "STATUS"}, t);
  }
  return all_ok ? 0 : 1;
}

// ---- streams
// -------------------------------------------------------------------
const char* DurabilityName(bus::v1::Durability d) {
  switch (d) {
    case bus::v1::DURABILITY_FSYNC:
      return "fsync";
    case bus::v1::DURABILITY_INTERVAL:
      return "interval";
    case bus::v1::DURABILITY_NONE:
      return "none";
    default:
      return "-";
  }
}

void StreamsList(const Globals& g, std::ostream& out) {
  RpcClient<bus::v1::BusService> bus(g);
  bus::v1::ListStreamsResponse resp =
      bus.Call(&bus::v1::BusService::Stub::ListStreams, bus::v1::ListStreamsRequest());
  if (g.json) {
    PrintJson(out, ToJson(resp));
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : resp.streams()) {
    rows.push_back({s.config().name(), Join(s.config().subjects()),
                    DurabilityName(s.config().durability()),
                    std::to_string(s.state().events()),
                    std::to_string(s.state().first_sequence()) + ".." +
                        std::to_string(s.state().last_sequence()),
                    std::to_string(s.state().bytes()),
                    std::to_string(s.consumers())});
  }
  PrintTable(out,
             {"NAME", "SUBJECTS", "DURABILITY", "EVENTS", "SEQUENCES", "BYTES",
              "CONSUMERS"},
             rows);
}

void StreamsInfo(const Globals& g, const std::string& name, std::ostream& out) {
  RpcClient<bus::v1::BusService> bus(g);
  bus::v1::GetStreamRequest get;
  get.set_name(name);
  bus::v1::GetStreamResponse stream = bus.Call(&bus::v1::BusService::Stub::GetStream, get);
  bus::v1::ListConsumersRequest list;
  list.set_stream(name);
  bus::v1::ListConsumersResponse consumers =
      bus.Call(&bus::v1::BusService::Stub::ListConsumers, list);
  if (g.json) {
    json j = ToJson(stream.stream());
    j["consumer_list"] = ToJson(consumers)["consumers"];
    PrintJson(out, j);
    return;
  }
  const auto& c = stream.stream().config();
  const auto& s = stream.stream().state();
  out << "stream:      " << c.name() << "\n"
      << "subjects:    " << Join(c.subjects()) << "\n"
      << "durability:  " << DurabilityName(c.durability()) << "\n"
      << "events:      " << s.events() << " (sequences " << s.first_sequence()
      << ".." << s.last_sequence() << ")\n"
      << "bytes:       " << s.bytes() << " in " << s.segments()
      << " segment(s)\n"
      << "first/last:  " << FormatTs(s.first_time()) << " / "
      << FormatTs(s.last_time()) << "\n\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& ci : consumers.consumers()) {
    rows.push_back({ci.config().name(),
                    ci.config().filter_subject().empty()
                        ? "-"
                        : ci.config().filter_subject(),
                    std::to_string(ci.state().ack_floor()),
                    std::to_string(ci.state().pending()),
                    std::to_string(ci.state().in_flight()),
                    std::to_string(ci.state().members()),
                    std::to_string(ci.state().redelivered())});
  }
  PrintTable(out,
             {"CONSUMER", "FILTER", "ACK FLOOR", "PENDING", "IN FLIGHT",
              "MEMBERS", "REDELIVERED"},
             rows);
}

// ---- topics tail
// -----------------------------------------------------------------
std::string DataText(const event::v1::Event& e) {
  switch (e.data_case()) {
    case event::v1::Event::kTextData:
      return e.text_data();
    case event::v1::Event::kBinaryData:
      return absl::StrFormat("(%d bytes)", e.binary_data().size());
    case event::v1::Event::kProtoData:
      return "(" + e.proto_data().type_url() + ")";
    default:
      return "";
  }
}

int TopicsTail(const Globals& g, const std::string& pattern, int64_t count,
               std::ostream& out, std::ostream& err) {
  ClientContext ctx = CurrentContext(g);
  auto stub = bus::v1::BusService::NewStub(NodeChannel(ctx));
  grpc::ClientContext call;
  bus::v1::SubscribeRequest req;
  req.set_subject_pattern(pattern);
  ActiveCall active(&call);
  auto reader = stub->Subscribe(&call, req);
  bus::v1::SubscribeResponse resp;
  int64_t seen = 0;
  while ((count <= 0 || seen < count) && reader->Read(&resp)) {
    if (resp.missed() > 0) {
      err << "cityosctl: " << resp.missed()
          << " event(s) missed (subscriber too slow)\n";
    }
    for (const auto& d : resp.deliveries()) {
      const auto& e = d.event();
      if (g.json) {
        json j = ToJson(e);
        j["_stream"] = d.stream();
        j["_sequence"] = d.sequence();
        out << j.dump() << "\n";
      } else {
        out << FormatTs(e.time()) << "  " << e.subject() << "  " << e.type()
            << "  " << e.id() << "  " << DataText(e) << "\n";
      }
      out.flush();
      if (count > 0 && ++seen >= count) break;
    }
  }
  // Cancel only when we stopped reading (enough events); when the stream
  // ended by itself its status (e.g. PERMISSION_DENIED) is the answer.
  const bool enough = count > 0 && seen >= count;
  if (enough) call.TryCancel();
  grpc::Status s = reader->Finish();
  if (enough) return 0;
  if (s.error_code() == grpc::StatusCode::CANCELLED) return 0;  // Ctrl-C
  Check(ctx.endpoint, s);
  return 0;
}

// ---- exchange: policies, explain, emergencies, audit, data ----------------

std::string ReadFileOrFail(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Each file as a policy document named by its file name.
void AddPolicyDocuments(
    const std::vector<std::string>& files,
    google::protobuf::RepeatedPtrField<exchange::v1::PolicyDocument>* documents) {
  for (const std::string& f : files) {
    exchange::v1::PolicyDocument* d = documents->Add();
    d->set_name(BaseName(f));
    d->set_content(ReadFileOrFail(f));
  }
}

absl::Time ParseTimeOrFail(const std::string& flag, const std::string& text) {
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, text, &t, &err)) {
    Fail(absl::StrFormat("%s: \"%s\" is not an RFC 3339 time such as 2026-07-01T09:00:00Z",
                         flag, text));
  }
  return t;
}

absl::Duration ParseDurationOrFail(const std::string& flag, const std::string& text) {
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d <= absl::ZeroDuration()) {
    Fail(absl::StrFormat("%s: \"%s\" is not a positive duration such as 6h or 90m", flag, text));
  }
  return d;
}

void SetTs(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t ns = absl::ToUnixNanos(t);
  out->set_seconds(ns / 1000000000);
  out->set_nanos(static_cast<int32_t>(ns % 1000000000));
}

const char* EffectName(exchange::v1::Effect e) {
  switch (e) {
    case exchange::v1::EFFECT_ALLOW:
      return "ALLOW";
    case exchange::v1::EFFECT_DENY:
      return "DENY";
    default:
      return "-";
  }
}

std::string ObligationText(const exchange::v1::Obligation& o) {
  const std::string kind =
      Lower(EnumSuffix(exchange::v1::ObligationKind_Name(o.kind()), "OBLIGATION_KIND_"));
  std::string paths;
  for (const auto& p : o.field_paths()) paths += (paths.empty() ? "" : ",") + p;
  std::string s = kind;
  if (!paths.empty()) s += "[" + paths + "]";
  if (o.grid_cell_m() > 0) s += absl::StrFormat(" cell=%gm", o.grid_cell_m());
  if (o.min_group_size() > 0) s += absl::StrFormat(" min_group=%d", o.min_group_size());
  if (!o.rule_id().empty()) s += " (rule " + o.rule_id() + ")";
  return s;
}

struct PolicyLoadArgs {
  std::vector<std::string> files, remove;
  bool replace_all = false;
  uint64_t expected_revision = 0;
};

void PolicyLoad(const Globals& g, const PolicyLoadArgs& a, std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::LoadPoliciesRequest req;
  AddPolicyDocuments(a.files, req.mutable_documents());
  for (const std::string& r : a.remove) req.add_remove(r);
  req.set_replace_all(a.replace_all);
  req.set_expected_revision(a.expected_revision);
  const auto resp = client.Call(&ExchangeStub::LoadPolicies, req);
  if (PrintedAsJson(g, resp, out)) return;
  out << "policy set revision " << resp.revision() << "\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : resp.documents()) {
    rows.push_back(
        {d.name(), std::to_string(d.rules()), FormatTs(d.load_time()), OrDash(d.loaded_by())});
  }
  PrintTable(out, {"DOCUMENT", "RULES", "LOADED", "BY"}, rows);
}

void PolicyList(const Globals& g, bool content, std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::ListPoliciesRequest req;
  req.set_include_content(content);
  const auto resp = client.Call(&ExchangeStub::ListPolicies, req);
  if (PrintedAsJson(g, resp, out)) return;
  out << "policy set revision " << resp.revision() << "\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : resp.documents()) {
    rows.push_back({d.name(), std::to_string(d.rules()), d.sha256().substr(0, 12),
                    FormatTs(d.load_time()), OrDash(d.loaded_by())});
  }
  PrintTable(out, {"DOCUMENT", "RULES", "SHA256", "LOADED", "BY"}, rows);
  if (content) {
    for (const auto& d : resp.documents()) {
      out << "\n--- " << d.name() << "\n" << d.content();
      if (!d.content().empty() && d.content().back() != '\n') out << "\n";
    }
  }
}

// Exit status: 0 when valid, 1 when any document has errors.
int PolicyValidate(const Globals& g, const std::vector<std::string>& files, bool merge,
                   std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::ValidatePoliciesRequest req;
  AddPolicyDocuments(files, req.mutable_documents());
  req.set_merge_with_current(merge);
  const auto resp = client.Call(&ExchangeStub::ValidatePolicies, req);
  const int status = resp.valid() ? 0 : 1;
  if (PrintedAsJson(g, resp, out)) return status;
  if (resp.valid()) {
    out << "valid: " << resp.rules() << " rule(s)\n";
    return status;
  }
  for (const auto& e : resp.errors()) {
    out << e.name() << ":" << e.line();
    if (e.column() > 0) out << ":" << e.column();
    out << ": " << e.message() << "\n";
  }
  out << resp.errors_size() << " error(s)\n";
  return status;
}

struct ExplainArgs {
  std::string action, type, subject, classification, purpose, principal, data_subject, domain,
      owner, region, jurisdiction, entity_id, time;
  std::vector<std::string> roles;
};

// Exit status 0 whatever the decision (it is printed).
void Explain(const Globals& g, const ExplainArgs& a, std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::ExplainRequest req;
  exchange::v1::Action action;
  if (!exchange::v1::Action_Parse("ACTION_" + Upper(a.action), &action) ||
      action == exchange::v1::ACTION_UNSPECIFIED) {
    Fail("--action: \"" + a.action + "\" is not publish, subscribe, read or history");
  }
  req.set_action(action);
  req.set_principal(a.principal);
  for (const auto& r : a.roles) req.add_roles(r);
  req.set_purpose(a.purpose);
  auto* r = req.mutable_resource();
  r->set_type(a.type);
  r->set_subject(a.subject);
  r->set_domain(a.domain);
  r->set_owner(a.owner);
  r->set_region(a.region);
  r->set_jurisdiction(a.jurisdiction);
  r->set_data_subject(a.data_subject);
  r->set_entity_id(a.entity_id);
  if (!a.classification.empty()) {
    event::v1::Classification c;
    if (!event::v1::Classification_Parse("CLASSIFICATION_" + Upper(a.classification), &c)) {
      Fail("--classification: \"" + a.classification +
           "\" is not public, internal, personal or sensitive");
    }
    r->set_classification(c);
  }
  if (!a.time.empty()) SetTs(ParseTimeOrFail("--time", a.time), req.mutable_time());
  const auto resp = client.Call(&ExchangeStub::Explain, req);
  if (PrintedAsJson(g, resp, out)) return;
  const auto& d = resp.decision();
  out << "decision:   " << EffectName(d.effect()) << "\n"
      << "rules:      " << Join(d.rule_ids()) << "\n"
      << "reason:     " << OrDash(d.reason()) << "\n";
  if (!resp.overridden_rule_ids().empty()) {
    out << "overridden: " << Join(resp.overridden_rule_ids()) << "\n";
  }
  for (const auto& o : d.obligations()) out << "obligation: " << ObligationText(o) << "\n";
  if (!d.consent_id().empty()) out << "consent:    " << d.consent_id() << "\n";
  if (!d.contract_id().empty()) out << "contract:   " << d.contract_id() << "\n";
  if (!d.emergency_id().empty()) out << "emergency:  " << d.emergency_id() << "\n";
  out << "revision:   " << d.policy_revision() << "\n";
}

std::string EmergencyStateName(exchange::v1::EmergencyState s) {
  return EnumSuffix(exchange::v1::EmergencyState_Name(s), "EMERGENCY_STATE_");
}

std::string AreaText(const common::v1::GeoArea& a) {
  switch (a.shape_case()) {
    case common::v1::GeoArea::kRegion:
      return "region " + a.region();
    case common::v1::GeoArea::kBoundingBox:
      return absl::StrFormat("bbox %g,%g,%g,%g", a.bounding_box().south_west().latitude(),
                             a.bounding_box().south_west().longitude(),
                             a.bounding_box().north_east().latitude(),
                             a.bounding_box().north_east().longitude());
    case common::v1::GeoArea::kCircle:
      return absl::StrFormat("circle %g,%g r=%gm", a.circle().center().latitude(),
                             a.circle().center().longitude(), a.circle().radius_m());
    case common::v1::GeoArea::kPolygon:
      return absl::StrFormat("polygon (%d vertices)", a.polygon().vertices_size());
    default:
      return "-";
  }
}

void PrintEmergencies(const Globals& g,
                      const google::protobuf::RepeatedPtrField<exchange::v1::Emergency>& list,
                      std::ostream& out) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : list) {
    rows.push_back({e.id(), EmergencyStateName(e.state()), AreaText(e.area()),
                    FormatTs(e.window().start()), FormatTs(e.window().end()),
                    OrDash(e.authority()), e.reason()});
  }
  PrintTable(out, {"ID", "STATE", "AREA", "FROM", "UNTIL", "AUTHORITY", "REASON"}, rows);
}

struct DeclareArgs {
  std::string region, bbox, until, for_duration, reason, start;
};

void EmergencyDeclare(const Globals& g, const DeclareArgs& a, std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::DeclareEmergencyRequest req;
  if (a.region.empty() == a.bbox.empty()) Fail("emergency declare: give one of --region and --bbox");
  if (!a.region.empty()) {
    req.mutable_area()->set_region(a.region);
  } else {
    std::vector<double> v;
    std::stringstream ss(a.bbox);
    std::string part;
    while (std::getline(ss, part, ',')) {
      try {
        v.push_back(std::stod(part));
      } catch (...) {
        v.clear();
        break;
      }
    }
    if (v.size() != 4) {
      Fail("--bbox: expected SOUTH_LAT,WEST_LON,NORTH_LAT,EAST_LON in degrees, got \"" +
           a.bbox + "\"");
    }
    auto* box = req.mutable_area()->mutable_bounding_box();
    box->mutable_south_west()->set_latitude(v[0]);
    box->mutable_south_west()->set_longitude(v[1]);
    box->mutable_north_east()->set_latitude(v[2]);
    box->mutable_north_east()->set_longitude(v[3]);
  }
  if (a.until.empty() == a.for_duration.empty()) {
    Fail("emergency declare: give one of --until and --for");
  }
  absl::Time start = absl::Now();
  if (!a.start.empty()) {
    start = ParseTimeOrFail("--start", a.start);
    SetTs(start, req.mutable_window()->mutable_start());
  }
  absl::Time end = a.until.empty() ? start + ParseDurationOrFail("--for", a.for_duration)
                                   : ParseTimeOrFail("--until", a.until);
  SetTs(end, req.mutable_window()->mutable_end());
  req.set_reason(a.reason);
  const auto resp = client.Call(&ExchangeStub::DeclareEmergency, req);
  if (PrintedAsJson(g, resp, out)) return;
  const auto& e = resp.emergency();
  out << "declared emergency " << e.id() << " (" << EmergencyStateName(e.state()) << ")\n"
      << "  area:   " << AreaText(e.area()) << "\n"
      << "  window: " << FormatTs(e.window().start()) << " .. " << FormatTs(e.window().end())
      << "\n";
}

void EmergencyEnd(const Globals& g, const std::string& id, const std::string& reason,
                  std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::EndEmergencyRequest req;
  req.set_id(id);
  req.set_reason(reason);
  const auto resp = client.Call(&ExchangeStub::EndEmergency, req);
  if (PrintedAsJson(g, resp, out)) return;
  out << "ended emergency " << resp.emergency().id() << "\n";
}

void EmergencyList(const Globals& g, bool all, std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::ListEmergenciesRequest req;
  req.set_include_ended(all);
  const auto resp = client.Call(&ExchangeStub::ListEmergencies, req);
  if (PrintedAsJson(g, resp, out)) return;
  PrintEmergencies(g, resp.emergencies(), out);
  if (resp.emergencies().empty()) out << "(no emergencies)\n";
}

struct AuditQueryArgs {
  std::string principal, data_subject, since, until, action, min_severity;
  int64_t limit = 0;  // 0 = every page
};

void AuditQueryCmd(const Globals& g, const AuditQueryArgs& a, std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::QueryAuditRequest req;
  req.set_principal(a.principal);
  req.set_data_subject(a.data_subject);
  req.set_action(a.action);
  if (!a.since.empty()) SetTs(ParseTimeOrFail("--since", a.since), req.mutable_range()->mutable_start());
  if (!a.until.empty()) SetTs(ParseTimeOrFail("--until", a.until), req.mutable_range()->mutable_end());
  if (!a.min_severity.empty()) {
    exchange::v1::Severity s;
    if (!exchange::v1::Severity_Parse("SEVERITY_" + Upper(a.min_severity), &s)) {
      Fail("--min-severity: \"" + a.min_severity + "\" is not info, notice, high or critical");
    }
    req.set_min_severity(s);
  }
  req.set_page_size(1000);
  std::vector<exchange::v1::AuditEntry> entries;
  while (true) {
    auto resp = client.Call(&ExchangeStub::QueryAudit, req);
    for (auto& e : *resp.mutable_entries()) entries.push_back(std::move(e));
    if (resp.next_page_token().empty() ||
        (a.limit > 0 && static_cast<int64_t>(entries.size()) >= a.limit)) {
      break;
    }
    req.set_page_token(resp.next_page_token());
  }
  if (a.limit > 0 && static_cast<int64_t>(entries.size()) > a.limit) entries.resize(a.limit);
  if (g.json) {
    json j{{"entries", json::array()}};
    for (const auto& e : entries) j["entries"].push_back(ToJson(e));
    PrintJson(out, j);
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : entries) {
    rows.push_back({std::to_string(e.sequence()), FormatTs(e.time()),
                    EnumSuffix(exchange::v1::Severity_Name(e.severity()), "SEVERITY_"),
                    e.principal(), e.action(), OrDash(e.resource()), OrDash(e.purpose()),
                    EffectName(e.decision()), std::to_string(e.count() == 0 ? 1 : e.count()),
                    OrDash(e.data_subject()), Join(e.rule_ids())});
  }
  PrintTable(out,
             {"SEQ", "TIME", "SEVERITY", "PRINCIPAL", "ACTION", "RESOURCE", "PURPOSE", "EFFECT",
              "COUNT", "DATA SUBJECT", "RULES"},
             rows);
  if (rows.empty()) out << "(no entries)\n";
}

int PrintVerify(const Globals& g, const exchange::v1::VerifyAuditResponse& r, std::ostream& out) {
  const int status = r.ok() ? 0 : 1;
  if (PrintedAsJson(g, r, out)) return status;
  if (r.ok()) {
    out << "audit log OK: " << r.entries_checked() << " entries, " << r.checkpoints_checked()
        << " signed checkpoints verified";
    if (r.has_last_good_checkpoint()) {
      out << " (last checkpoint at sequence " << r.last_good_checkpoint().sequence() << ")";
    }
    out << "\n";
    return status;
  }
  const std::string fault = EnumSuffix(exchange::v1::AuditFault_Name(r.fault()), "AUDIT_FAULT_");
  out << "audit log BROKEN at sequence " << r.first_bad_sequence() << ": " << fault << ": "
      << r.message() << "\n"
      << "(" << r.entries_checked() << " entries checked; last good checkpoint at sequence "
      << r.last_good_checkpoint().sequence() << ")\n";
  return status;
}

int AuditVerify(const Globals& g, uint64_t from, uint64_t to, std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::VerifyAuditRequest req;
  req.set_from_sequence(from);
  req.set_to_sequence(to);
  return PrintVerify(g, client.Call(&ExchangeStub::VerifyAudit, req), out);
}

int AuditVerifyDir(const Globals& g, const std::string& dir, const std::string& key_file,
                   std::ostream& out) {
  std::string key = ReadFileOrFail(key_file);
  absl::StatusOr<exchange::v1::VerifyAuditResponse> r = VerifyAuditDir(dir, key);
  if (!r.ok()) Fail("audit verify: " + Msg(r.status()));
  return PrintVerify(g, *r, out);
}

// A --where operand: integer, number, true/false, else text.
exchange::v1::Value ParseValue(const std::string& text) {
  exchange::v1::Value v;
  int64_t i;
  double d;
  if (absl::SimpleAtoi(text, &i)) {
    v.set_int_value(i);
  } else if (absl::SimpleAtod(text, &d) && text.find_first_not_of("0123456789.eE+-") ==
                                               std::string::npos) {
    v.set_double_value(d);
  } else if (text == "true" || text == "false") {
    v.set_bool_value(text == "true");
  } else {
    v.set_string_value(text);
  }
  return v;
}

std::string ValueText(const exchange::v1::Value& v) {
  switch (v.kind_case()) {
    case exchange::v1::Value::kBoolValue:
      return v.bool_value() ? "true" : "false";
    case exchange::v1::Value::kIntValue:
      return std::to_string(v.int_value()) + (v.unit().empty() ? "" : " " + v.unit());
    case exchange::v1::Value::kDoubleValue:
      return absl::StrFormat("%g", v.double_value()) + (v.unit().empty() ? "" : " " + v.unit());
    case exchange::v1::Value::kStringValue:
      return v.string_value();
    case exchange::v1::Value::kTimeValue:
      return FormatTs(v.time_value());
    case exchange::v1::Value::kGeoValue:
      return absl::StrFormat("%g,%g", v.geo_value().latitude(), v.geo_value().longitude());
    case exchange::v1::Value::kListValue: {
      std::string s;
      for (const auto& e : v.list_value().values()) s += (s.empty() ? "" : ",") + ValueText(e);
      return "[" + s + "]";
    }
    case exchange::v1::Value::kMapValue: {
      std::string s;
      std::map<std::string, std::string> sorted;
      for (const auto& [k, e] : v.map_value().fields()) sorted[k] = ValueText(e);
      for (const auto& [k, e] : sorted) s += (s.empty() ? "" : " ") + k + "=" + e;
      return "{" + s + "}";
    }
    default:
      return "null";
  }
}

void PrintEntityLine(const exchange::v1::Entity& e, std::ostream& out) {
  std::map<std::string, std::string> sorted;
  for (const auto& [k, v] : e.attributes()) sorted[k] = ValueText(v);
  std::string attrs;
  for (const auto& [k, v] : sorted) attrs += (attrs.empty() ? "" : " ") + k + "=" + v;
  out << e.type() << "/" << e.id() << "  v" << e.version() << "  "
      << FormatTs(e.observed_time()) << "  " << attrs << "\n";
}

struct QueryArgs {
  std::string type, purpose;
  std::vector<std::string> where, projection;
  int page_size = 0;
  bool all = false;
};

void ExchangeQuery(const Globals& g, const QueryArgs& a, std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::QueryRequest req;
  req.mutable_filter()->set_type(a.type);
  for (const std::string& w : a.where) {
    size_t eq = w.find('=');
    if (eq == std::string::npos || eq == 0) Fail("--where: expected PATH=VALUE, got \"" + w + "\"");
    auto* f = req.mutable_filter()->add_attributes();
    f->set_path(w.substr(0, eq));
    f->set_comparison(exchange::v1::COMPARISON_EQUAL);
    *f->mutable_value() = ParseValue(w.substr(eq + 1));
  }
  req.set_purpose(a.purpose);
  for (const auto& p : a.projection) req.add_projection(p);
  req.set_page_size(a.page_size);
  std::vector<exchange::v1::Entity> entities;
  std::string next;
  while (true) {
    auto resp = client.Call(&ExchangeStub::Query, req);
    for (auto& e : *resp.mutable_entities()) entities.push_back(std::move(e));
    next = resp.next_page_token();
    if (!a.all || next.empty()) break;
    req.set_page_token(next);
  }
  if (g.json) {
    json j{{"entities", json::array()}, {"next_page_token", a.all ? "" : next}};
    for (const auto& e : entities) j["entities"].push_back(ToJson(e));
    PrintJson(out, j);
    return;
  }
  for (const auto& e : entities) PrintEntityLine(e, out);
  if (entities.empty()) out << "(no entities)\n";
  if (!a.all && !next.empty()) out << "(more: --all, or page token " << next << ")\n";
}

void ExchangeGet(const Globals& g, const std::string& type, const std::string& id,
                 const std::string& purpose, std::ostream& out) {
  ExchangeClient client(g);
  exchange::v1::GetEntityRequest req;
  req.set_type(type);
  req.set_id(id);
  req.set_purpose(purpose);
  const auto resp = client.Call(&ExchangeStub::GetEntity, req);
  if (PrintedAsJson(g, resp.entity(), out)) return;
  PrintEntityLine(resp.entity(), out);
  for (const auto& o : resp.entity().obligations()) out << "  obligation: " << ObligationText(o) << "\n";
}

int ExchangeSubscribe(const Globals& g, const std::string& pattern, const std::string& purpose,
                      const std::string& type, int64_t count, std::ostream& out) {
  ExchangeClient client(g);
  grpc::ClientContext call;
  exchange::v1::SubscribeRequest req;
  req.set_subject_pattern(pattern);
  req.set_purpose(purpose);
  if (!type.empty()) req.mutable_filter()->set_type(type);
  ActiveCall active(&call);
  auto reader = client.stub()->Subscribe(&call, req);
  exchange::v1::SubscribeResponse resp;
  int64_t seen = 0;
  while ((count <= 0 || seen < count) && reader->Read(&resp)) {
    for (const auto& d : resp.deliveries()) {
      const auto& e = d.event();
      if (g.json) {
        json j = ToJson(d);
        out << j.dump() << "\n";
      } else {
        out << FormatTs(e.time()) << "  " << e.subject() << "  " << e.type() << "  " << e.id()
            << "  " << DataText(e) << "  [" << Join(d.decision().rule_ids()) << "]\n";
      }
      out.flush();
      if (count > 0 && ++seen >= count) break;
    }
  }
  call.TryCancel();
  grpc::Status s = reader->Finish();
  if (count > 0 && seen >= count) return 0;
  if (s.error_code() == grpc::StatusCode::CANCELLED) return 0;
  Check(client.endpoint(), s);
  return 0;
}


// --- consent receipts (offline) ---

#ifdef CITYOS_HAVE_INFOBANK
// `consent verify-receipt FILE [--public-key PEMFILE]`: FILE holds a compact
// JWS, or a JSON object with a `jws` string member (GetReceipt's receipt).
// Exit 0 "signature OK"; exit 1 when it does not verify or is malformed.
int ConsentVerifyReceipt(const Globals& g, const std::string& file, const std::string& key_file,
                         std::ostream& out, std::ostream& err) {
  std::string text = ReadFileOrFail(file);
  std::string jws = text;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '{') {
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) Fail(file + ": not valid JSON");
    // Also accept GetReceipt's response shape {"receipt": {"jws": ...}}.
    const json* holder = &j;
    if (!j.contains("jws") && j.contains("receipt") && j["receipt"].is_object()) {
      holder = &j["receipt"];
    }
    auto it = holder->find("jws");
    if (it == holder->end() || !it->is_string()) {
      Fail(file + ": a JSON object without a \"jws\" string member");
    }
    jws = it->get<std::string>();
  }
  std::string key;
  const bool embedded = key_file.empty();
  if (embedded) {
    auto claimed = infobank::DecodeReceiptJwsUnverified(jws);
    if (!claimed.ok()) Fail(file + ": " + Msg(claimed.status()));
    if (claimed->public_key().empty()) {
      Fail(file + ": the receipt embeds no publicKey: pass --public-key");
    }
    key = claimed->public_key();
  } else {
    key = ReadFileOrFail(key_file);
  }
  auto key_id = infobank::PublicKeyId(key);
  if (!key_id.ok()) Fail((embedded ? file : key_file) + ": " + Msg(key_id.status()));
  if (embedded) {
    err << "cityosctl: warning: no --public-key: checked against the key embedded in the "
           "receipt itself (trust on first use). This shows the receipt is intact, not who "
           "issued it: compare key id "
        << *key_id << " with the bank's published key.\n";
  }
  auto receipt = infobank::VerifyReceiptJws(jws, key);
  if (!receipt.ok()) Fail(file + ": " + Msg(receipt.status()));
  auto extras = infobank::DecodeReceiptExtrasUnverified(jws);  // verified above
  const std::string event = extras.ok() ? extras->event : "";
  const std::string consent_id = extras.ok() ? extras->consent_id : "";
  std::vector<std::string> purposes, recipients;
  for (const auto& s : receipt->services()) {
    for (const auto& p : s.purposes()) {
      purposes.push_back(p.purpose());
      if (std::find(recipients.begin(), recipients.end(), p.third_party_name()) ==
          recipients.end()) {
        recipients.push_back(p.third_party_name());
      }
    }
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s.empty() ? "-" : s;
  };
  std::vector<std::string> controllers;
  for (const auto& c : receipt->pii_controllers()) controllers.push_back(c.name());
  if (g.json) {
    PrintJson(out, json{{"signature", "OK"},
                        {"key", embedded ? "embedded" : "public-key"},
                        {"key_id", *key_id},
                        {"event", event},
                        {"consent_id", consent_id},
                        {"receipt", ToJson(*receipt)}});
    return 0;
  }
  out << "receipt     " << receipt->consent_receipt_id() << "\n"
      << "event       " << OrDash(event) << "\n"
      << "consent     " << OrDash(consent_id) << "\n"
      << "principal   " << receipt->pii_principal_id() << "\n"
      << "controller  " << join(controllers) << "\n"
      << "recipient   " << join(recipients) << "\n"
      << "purposes    " << join(purposes) << "\n"
      << "categories  "
      << (receipt->services_size() > 0 && receipt->services(0).purposes_size() > 0
              ? Join(receipt->services(0).purposes(0).pii_categories())
              : "-")
      << "\n"
      << "time        " << FormatTs(receipt->consent_timestamp()) << "\n"
      << "key id      " << *key_id << (embedded ? " (embedded in the receipt)" : "") << "\n"
      << "signature OK\n";
  return 0;
}
#else
int ConsentVerifyReceipt(const Globals&, const std::string&, const std::string&, std::ostream&,
                         std::ostream&) {
  Fail("consent verify-receipt: this cityosctl was built without the information bank");
}
#endif

}  // namespace

void SetActiveCall(grpc::ClientContext* ctx) {
  std::lock_guard<std::mutex> lock(g_active_mu);
  g_active = ctx;
}

bool CancelActiveCall() {
  std::lock_guard<std::mutex> lock(g_active_mu);
  if (g_active == nullptr) return false;
  g_active->TryCancel();
  return true;
}

std::string DescribeRpcError(const std::string& endpoint,
                             const grpc::Status& status) {
  const std::string& m = status.error_message();
  std::string lm = Lower(m);
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED: {
      auto has = [&](const char* needle) {
        return lm.find(needle) != std::string::npos;
      };
      if (has("custom verification check failed")) {
        // Our verifier refused the server's certificate (wrong CA, expired,
        // revoked, not the pinned server id, ...).
        return absl::StrFormat(
            "certificate rejected: the server at %s failed verification: %s",
            endpoint, m);
      }
      if (has("handshake") || has("ssl") || has("tls") || has("certificate")) {
        return absl::StrFormat("certificate rejected: %s: %s", endpoint, m);
      }
      if (has("socket closed") || has("connection reset") ||
          has("end of file")) {
        // With TLS 1.3 a server that refuses our client certificate just
        // closes the connection; gRPC cannot tell us more.
        return absl::StrFormat(
            "cannot connect to %s: %s (the server closed the connection: the "
            "connection or "
            "our certificate was refused)",
            endpoint, m);
      }
      if (has("connection refused")) {
        return absl::StrFormat(
            "cannot connect to %s: %s (nothing listens there)", endpoint, m);
      }
      return absl::StrFormat("cannot connect to %s: %s", endpoint, m);
    }
    case grpc::StatusCode::PERMISSION_DENIED:
      return absl::StrFormat("permission denied: %s", m);
    case grpc::StatusCode::UNAUTHENTICATED:
      return absl::StrFormat("unauthenticated: %s", m);
    default:
      return absl::StrFormat(
          "%s: %s",
          absl::StatusCodeToString(
              static_cast<absl::StatusCode>(status.error_code())),
          m);
  }
}

int Run(int argc, char** argv, std::ostream& out, std::ostream& err) {
  // Library logs (CA, TLS refusals) only when they are warnings.
  SetLogOptions(LogFormat::kText, LogLevel::kWarn);
  CLI::App app{
      "cityosctl: administer a cityos mesh (certificates, services, streams, "
      "topics, policies, emergencies, audit, data exchange)"};
  app.require_subcommand(1);
  Globals g;
  app.add_option("--context", g.context,
                 "Context of the context file to use (default: current)");
  app.add_option("--config", g.config,
                 "Context file (default: $CITYOS_CONFIG, else "
                 "~/.config/cityos/config.yaml)");
  app.add_flag("--json", g.json, "Print JSON instead of tables");
  std::string timeout_text = "10s";
  app.add_option("--timeout", timeout_text,
                 "Deadline of each call, e.g. 10s or 500ms")
      ->capture_default_str();
  app.fallthrough();

  // context
  CLI::App* context =
      app.add_subcommand("context", "Client contexts (like kubeconfig)");
  context->require_subcommand(1);
  CLI::App* context_list = context->add_subcommand("list", "List the contexts");
  std::string use_name;
  CLI::App* context_use =
      context->add_subcommand("use", "Make a context current");
  context_use->add_option("name", use_name, "Context name")->required();

  // ca
  CLI::App* ca = app.add_subcommand("ca", "The city certificate authority");
  ca->require_subcommand(1);
  std::string ca_dir, trust_domain;
  int ca_days = 3650;
  CLI::App* ca_init =
      ca->add_subcommand("init", "Create a new root CA in a directory");
  ca_init->add_option("--dir", ca_dir, "CA directory (created 0700)")
      ->required();
  ca_init
      ->add_option("--trust-domain", trust_domain,
                   "SPIFFE trust domain, e.g. quzhou.city")
      ->required();
  ca_init->add_option("--days", ca_days, "Validity of the root in days")
      ->capture_default_str();

  // cert
  CLI::App* cert = app.add_subcommand("cert", "Issue and revoke certificates");
  cert->require_subcommand(1);
  IssueArgs ia;
  CLI::App* issue =
      cert->add_subcommand("issue", "Issue a certificate and key");
  issue->add_option("--ca-dir", ia.ca_dir, "CA directory")->required();
  issue->add_option("--org", ia.org, "Organisation")->required();
  auto* svc_opt = issue->add_option("--svc", ia.svc,
                                    "Service name (a service certificate)");
  auto* user_opt = issue->add_option("--user", ia.user,
                                     "User or app id (a user certificate)");
  svc_opt->excludes(user_opt);
  issue->add_option("--role", ia.roles, "Role (repeatable)");
  issue->add_option("--dns", ia.dns, "DNS SAN (repeatable)");
  issue->add_option("--ip", ia.ip, "IP address SAN (repeatable)");
  issue->add_option("--days", ia.days, "Validity in days")
      ->capture_default_str();
  issue
      ->add_option("--out", ia.out,
                   "Output prefix: writes PREFIX.pem and PREFIX.key")
      ->required();
  std::string revoke_dir, serial, reason = "unspecified";
  CLI::App* revoke = cert->add_subcommand(
      "revoke", "Revoke a certificate and rewrite the CRL");
  revoke->add_option("--ca-dir", revoke_dir, "CA directory")->required();
  revoke->add_option("--serial", serial, "Serial (hex)")->required();
  revoke
      ->add_option(
          "--reason", reason,
          "unspecified | key-compromise | affiliation-changed | superseded | "
          "cessation-of-operation")
      ->capture_default_str();

  // services
  CLI::App* services =
      app.add_subcommand("services", "Services registered in the registry");
  services->require_subcommand(1);
  CLI::App* services_list =
      services->add_subcommand("list", "List registered instances");
  CLI::App* services_health =
      services->add_subcommand("health",
                               "grpc.health.v1 of the node and of every "
                               "registered instance (exit 1 if any "
                               "is not SERVING)");

  // streams
  CLI::App* streams = app.add_subcommand("streams", "Streams of the bus");
  streams->require_subcommand(1);
  CLI::App* streams_list = streams->add_subcommand("list", "List streams");
  std::string stream_name;
  CLI::App* streams_info =
      streams->add_subcommand("info", "A stream and its consumers");
  streams_info->add_option("name", stream_name, "Stream name")->required();

  // topics
  CLI::App* topics = app.add_subcommand("topics", "Live traffic on the bus");
  topics->require_subcommand(1);
  std::string pattern;
  int64_t tail_count = 0;
  CLI::App* tail =
      topics->add_subcommand("tail",
                             "Print events on subjects matching PATTERN as "
                             "they are published, until Ctrl-C");
  tail->add_option("pattern", pattern,
                   "Subject pattern, e.g. mobility.> or carbon.*.alarm")
      ->required();
  tail->add_option("--count", tail_count, "Stop after N events (0: never)");

  // policy
  CLI::App* policy = app.add_subcommand("policy", "Access policies of the data exchange");
  policy->require_subcommand(1);
  PolicyLoadArgs pl;
  CLI::App* policy_load = policy->add_subcommand(
      "load", "Load policy documents atomically (a bad file changes nothing)");
  policy_load->add_option("files", pl.files, "YAML policy files (named by file name)");
  policy_load->add_flag("--replace-all", pl.replace_all,
                        "Replace the whole set by FILE... (default: add or replace by name)");
  policy_load->add_option("--remove", pl.remove, "Remove the document NAME (repeatable)");
  policy_load->add_option("--expected-revision", pl.expected_revision,
                          "Load only if this is the current revision");
  bool policy_content = false;
  CLI::App* policy_list = policy->add_subcommand("list", "The policy documents in force");
  policy_list->add_flag("--content", policy_content, "Print each document's YAML too");
  std::vector<std::string> validate_files;
  bool validate_merge = false;
  CLI::App* policy_validate = policy->add_subcommand(
      "validate", "Compile policy files without loading them; every error with its line "
                  "(exit 1 if any)");
  policy_validate->add_option("files", validate_files, "YAML policy files")->required();
  policy_validate->add_flag("--merge", validate_merge,
                            "Validate merged into the set in force, as `policy load` would");

  // explain
  ExplainArgs ea;
  CLI::App* explain = app.add_subcommand(
      "explain", "The decision the node would take for a hypothetical request, and why");
  explain->add_option("--action", ea.action, "publish | subscribe | read | history")->required();
  explain->add_option("--type", ea.type, "Event or entity type");
  explain->add_option("--subject", ea.subject, "Bus subject (or pattern, for subscribe)");
  explain->add_option("--classification", ea.classification,
                      "public | internal | personal | sensitive");
  explain->add_option("--purpose", ea.purpose, "Purpose, e.g. medical_care");
  explain->add_option("--principal", ea.principal,
                      "SPIFFE id to explain for (default: yourself; needs policy-admin)");
  explain->add_option("--role", ea.roles, "Assume this role (repeatable; needs policy-admin)");
  explain->add_option("--data-subject", ea.data_subject, "Pseudonymous person id");
  explain->add_option("--domain", ea.domain, "Domain, e.g. health");
  explain->add_option("--owner", ea.owner, "Owning org");
  explain->add_option("--region", ea.region, "Region code");
  explain->add_option("--jurisdiction", ea.jurisdiction, "ISO 3166-1 alpha-2 code");
  explain->add_option("--entity-id", ea.entity_id, "Entity id");
  explain->add_option("--time", ea.time, "Time of the request, RFC 3339 (default: now)");

  // emergency
  CLI::App* emergency = app.add_subcommand("emergency", "Emergency mode");
  emergency->require_subcommand(1);
  DeclareArgs da;
  CLI::App* emergency_declare = emergency->add_subcommand(
      "declare", "Declare an emergency for an area and a time window (disaster-authority)");
  emergency_declare->add_option("--region", da.region, "Region code, e.g. CN-ZJ-QZ-KC");
  emergency_declare->add_option("--bbox", da.bbox, "SOUTH_LAT,WEST_LON,NORTH_LAT,EAST_LON");
  emergency_declare->add_option("--until", da.until, "End of the window, RFC 3339");
  emergency_declare->add_option("--for", da.for_duration, "Length of the window, e.g. 12h");
  emergency_declare->add_option("--start", da.start, "Start of the window (default: now)");
  emergency_declare->add_option("--reason", da.reason, "Why")->required();
  std::string end_id, end_reason;
  CLI::App* emergency_end =
      emergency->add_subcommand("end", "End an emergency early (disaster-authority)");
  emergency_end->add_option("id", end_id, "Emergency id")->required();
  emergency_end->add_option("--reason", end_reason, "Why")->required();
  bool emergency_all = false;
  CLI::App* emergency_list = emergency->add_subcommand("list", "Emergencies, newest first");
  emergency_list->add_flag("--all", emergency_all, "Also ended and expired ones");

  // audit
  CLI::App* audit = app.add_subcommand("audit", "The signed, hash-chained audit log");
  audit->require_subcommand(1);
  AuditQueryArgs aq;
  CLI::App* audit_query = audit->add_subcommand(
      "query", "Audit entries (auditors see all; a user, entries about itself)");
  audit_query->add_option("--principal", aq.principal, "Only entries by this SPIFFE id");
  audit_query->add_option("--data-subject", aq.data_subject, "Only entries about this person");
  audit_query->add_option("--since", aq.since, "From this time, RFC 3339");
  audit_query->add_option("--until", aq.until, "Before this time, RFC 3339");
  audit_query->add_option("--action", aq.action, "Only this action, e.g. read or policy.load");
  audit_query->add_option("--min-severity", aq.min_severity, "info | notice | high | critical");
  audit_query->add_option("--limit", aq.limit, "At most N entries (default: all)");
  uint64_t verify_from = 0, verify_to = 0;
  std::string verify_dir, verify_key;
  CLI::App* audit_verify = audit->add_subcommand(
      "verify", "Check the hash chain and checkpoint signatures (exit 1 naming the first bad "
                "entry); on the node (auditor), or offline with --dir and --public-key");
  audit_verify->add_option("--from", verify_from, "First sequence (default: 1)");
  audit_verify->add_option("--to", verify_to, "Last sequence (default: newest)");
  auto* dir_opt = audit_verify->add_option("--dir", verify_dir, "A copy of an audit directory");
  auto* key_opt =
      audit_verify->add_option("--public-key", verify_key, "The node's audit public key (PEM)");
  dir_opt->needs(key_opt);
  key_opt->needs(dir_opt);

  // exchange
  CLI::App* exch = app.add_subcommand("exchange", "Read city data through the exchange");
  exch->require_subcommand(1);
  QueryArgs qa;
  CLI::App* exch_query = exch->add_subcommand("query", "Entities of a type you may read");
  exch_query->add_option("--type", qa.type, "Entity type")->required();
  exch_query->add_option("--purpose", qa.purpose, "Purpose of the read")->required();
  exch_query->add_option("--where", qa.where, "PATH=VALUE condition (repeatable)");
  exch_query->add_option("--project", qa.projection, "Only this attribute path (repeatable)");
  exch_query->add_option("--page-size", qa.page_size, "Entities per page (default 100)");
  exch_query->add_flag("--all", qa.all, "Fetch every page");
  std::string get_type, get_id, get_purpose;
  CLI::App* exch_get = exch->add_subcommand("get", "One entity");
  exch_get->add_option("type", get_type, "Entity type")->required();
  exch_get->add_option("id", get_id, "Entity id")->required();
  exch_get->add_option("--purpose", get_purpose, "Purpose of the read")->required();
  std::string sub_pattern, sub_purpose, sub_type;
  int64_t sub_count = 0;
  CLI::App* exch_sub = exch->add_subcommand(
      "subscribe", "Print the events on PATTERN you may receive, as they come, until Ctrl-C");
  exch_sub->add_option("pattern", sub_pattern, "Subject pattern")->required();
  exch_sub->add_option("--purpose", sub_purpose, "Purpose")->required();
  exch_sub->add_option("--type", sub_type, "Only events of this type");
  exch_sub->add_option("--count", sub_count, "Stop after N events (0: never)");

  // consent
  CLI::App* consent_cmd = app.add_subcommand("consent", "Consents of the information bank");
  consent_cmd->require_subcommand(1);
  std::string receipt_file, receipt_key;
  CLI::App* verify_receipt = consent_cmd->add_subcommand(
      "verify-receipt",
      "Verify a signed consent receipt offline (exit 1 if the signature does not verify)");
  verify_receipt->add_option("file", receipt_file,
                             "The receipt: a compact JWS, or JSON with a \"jws\" member")
      ->required();
  verify_receipt->add_option("--public-key", receipt_key,
                             "The bank's receipt public key (PEM); default: the key embedded "
                             "in the receipt (trust on first use)");

  std::unique_ptr<CarbonCommands> carbon =
      AddCarbonCommands(app, {&g.context, &g.config, &g.json, &g_rpc_timeout});

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e, out, err) == 0 ? 0 : 2;
  }

  if (!absl::ParseDuration(timeout_text, &g_rpc_timeout) ||
      g_rpc_timeout <= absl::ZeroDuration()) {
    err << "cityosctl: --timeout: expected a positive duration such as 10s, "
           "got \""
        << timeout_text << "\"\n";
    return 2;
  }
  try {
    if (context_list->parsed())
      ContextList(g, out);
    else if (context_use->parsed())
      ContextUse(g, use_name, out);
    else if (ca_init->parsed())
      CaInit(g, ca_dir, trust_domain, ca_days, out);
    else if (issue->parsed())
      CertIssue(g, ia, out);
    else if (revoke->parsed())
      CertRevoke(g, revoke_dir, serial, reason, out);
    else if (services_list->parsed())
      ServicesList(g, out);
    else if (services_health->parsed())
      return ServicesHealth(g, out);
    else if (streams_list->parsed())
      StreamsList(g, out);
    else if (streams_info->parsed())
      StreamsInfo(g, stream_name, out);
    else if (tail->parsed())
      return TopicsTail(g, pattern, tail_count, out, err);
    else if (policy_load->parsed())
      PolicyLoad(g, pl, out);
    else if (policy_list->parsed())
      PolicyList(g, policy_content, out);
    else if (policy_validate->parsed())
      return PolicyValidate(g, validate_files, validate_merge, out);
    else if (explain->parsed())
      Explain(g, ea, out);
    else if (emergency_declare->parsed())
      EmergencyDeclare(g, da, out);
    else if (emergency_end->parsed())
      EmergencyEnd(g, end_id, end_reason, out);
    else if (emergency_list->parsed())
      EmergencyList(g, emergency_all, out);
    else if (audit_query->parsed())
      AuditQueryCmd(g, aq, out);
    else if (audit_verify->parsed())
      return verify_dir.empty() ? AuditVerify(g, verify_from, verify_to, out)
                                : AuditVerifyDir(g, verify_dir, verify_key, out);
    else if (exch_query->parsed())
      ExchangeQuery(g, qa, out);
    else if (exch_get->parsed())
      ExchangeGet(g, get_type, get_id, get_purpose, out);
    else if (exch_sub->parsed())
      return ExchangeSubscribe(g, sub_pattern, sub_purpose, sub_type, sub_count, out);
    else if (verify_receipt->parsed())
      return ConsentVerifyReceipt(g, receipt_file, receipt_key, out, err);
    else if (carbon->parsed())
      return carbon->Run(out, err);
  } catch (const CommandError& e) {
    out.flush();
    err << "cityosctl: " << e.message << "\n";
    return 1;
  }
  return 0;
}

}  // namespace cityos::ctl
