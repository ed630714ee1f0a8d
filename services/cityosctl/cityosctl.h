// cityosctl as a library: the command line parser and every command, so that
// tests can run commands in-process and services/cityosctl/main.cc stays thin.
//
//   cityosctl [--context NAME] [--config FILE] [--json] <command> ...
//
// Commands: context, ca, cert, services, streams, topics (the mesh); policy
// load|list|validate, explain, emergency declare|end|list, audit
// query|verify, exchange query|get|subscribe (the data exchange); consent
// verify-receipt (offline check of a signed consent receipt; exit 1 when its
// signature does not verify); carbon ... (the carbon account, carbon_cmd.cc).
// `audit verify` and `policy validate` exit 1 when they find a fault (the
// first bad audit entry, or the policy errors, are printed on `out`).
//
// Exit status: 0 on success, 1 on any error (a one-line message on `err`,
// e.g. "cityosctl: cannot connect to 127.0.0.1:7443: ..."), 2 on a usage
// error.
#ifndef CITYOS_SERVICES_CITYOSCTL_CITYOSCTL_H_
#define CITYOS_SERVICES_CITYOSCTL_CITYOSCTL_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace CLI {
class App;
}

namespace cityos::ctl {

// Runs one cityosctl invocation. `argv[0]` is the program name.
int Run(int argc, char** argv, std::ostream& out, std::ostream& err);

// The message cityosctl prints for a failed RPC to `endpoint`:
//   UNAVAILABLE, DEADLINE_EXCEEDED  "cannot connect to <endpoint>: ..." or,
//                                   when gRPC reports a TLS handshake
//                                   failure, "certificate rejected: ..."
//   PERMISSION_DENIED               "permission denied: ..."
//   UNAUTHENTICATED                 "unauthenticated: ..."
//   anything else                   "<CODE>: ..."
std::string DescribeRpcError(const std::string& endpoint,
                             const grpc::Status& status);

// Prints a plain text table: `header`, then `rows`, columns padded to the
// widest cell with two spaces between them (shared by carbon_cmd.cc).
void PrintTable(std::ostream& out, const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows);

// Cancels the streaming call in progress (topics tail), if any. Safe to call
// from another thread (main.cc's signal thread). Returns false if there was
// none.
bool CancelActiveCall();

// Registers the streaming call in progress (null clears it) for
// CancelActiveCall.
void SetActiveCall(grpc::ClientContext* ctx);

// `cityosctl carbon ...` (carbon_cmd.cc): the carbon account's commands.
struct CarbonGlobals {
  const std::string* context;
  const std::string* config;
  const bool* json;
  const absl::Duration* timeout;
};
class CarbonCommands {
 public:
  virtual ~CarbonCommands() = default;
  // Whether `carbon ...` was on the command line.
  virtual bool parsed() const = 0;
  // Runs the parsed carbon command; the exit status.
  virtual int Run(std::ostream& out, std::ostream& err) = 0;
};
// Adds the `carbon` subcommands to `app`.
std::unique_ptr<CarbonCommands> AddCarbonCommands(CLI::App& app, CarbonGlobals globals);

}  // namespace cityos::ctl

#endif  // CITYOS_SERVICES_CITYOSCTL_CITYOSCTL_H_
