#include "cityosctl.h"

#include <google/protobuf/util/json_util.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <iomanip>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/ca.h"
#include "cityos/grpc_util.h"
#include "cityos/logging.h"
#include "cityos/observability.h"
#include "cityos/registry/v1/registry.grpc.pb.h"
#include "cityos/tls.h"

namespace cityos::ctl {
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

// A plain text table: columns padded to the widest cell.
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

// ---- services
// ------------------------------------------------------------------
registry::v1::ListResponse ListInstances(const ClientContext& ctx) {
  auto stub = registry::v1::RegistryService::NewStub(NodeChannel(ctx));
  grpc::ClientContext call;
  SetDeadline(&call);
  registry::v1::ListResponse resp;
  Check(ctx.endpoint, stub->List(&call, registry::v1::ListRequest(), &resp));
  return resp;
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
  ClientContext ctx = CurrentContext(g);
  auto stub = bus::v1::BusService::NewStub(NodeChannel(ctx));
  grpc::ClientContext call;
  SetDeadline(&call);
  bus::v1::ListStreamsResponse resp;
  Check(ctx.endpoint,
        stub->ListStreams(&call, bus::v1::ListStreamsRequest(), &resp));
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
  ClientContext ctx = CurrentContext(g);
  auto stub = bus::v1::BusService::NewStub(NodeChannel(ctx));
  bus::v1::GetStreamResponse stream;
  {
    grpc::ClientContext call;
    SetDeadline(&call);
    bus::v1::GetStreamRequest req;
    req.set_name(name);
    Check(ctx.endpoint, stub->GetStream(&call, req, &stream));
  }
  bus::v1::ListConsumersResponse consumers;
  {
    grpc::ClientContext call;
    SetDeadline(&call);
    bus::v1::ListConsumersRequest req;
    req.set_stream(name);
    Check(ctx.endpoint, stub->ListConsumers(&call, req, &consumers));
  }
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
  call.TryCancel();
  grpc::Status s = reader->Finish();
  if (count > 0 && seen >= count) return 0;
  if (s.error_code() == grpc::StatusCode::CANCELLED) return 0;  // Ctrl-C
  Check(ctx.endpoint, s);
  return 0;
}

}  // namespace

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
      "topics)"};
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
  } catch (const CommandError& e) {
    out.flush();
    err << "cityosctl: " << e.message << "\n";
    return 1;
  }
  return 0;
}

}  // namespace cityos::ctl
