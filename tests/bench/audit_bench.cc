// Google Benchmark of the audit log's Append path: entries queued by one or
// more threads, written by the batching writer (one write + one fdatasync per
// batch), then Flush. Figures are entries/s (items_per_second).
//   build/tests/bench/audit_bench --benchmark_min_time=2
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "cityos/audit.h"

namespace cityos {
namespace {

exchange::v1::AuditEntry Sample(int i) {
  exchange::v1::AuditEntry e;
  e.set_principal("spiffe://bench.city/org/hospital-a/svc/records");
  e.set_action(i % 2 == 0 ? "read" : "subscribe");
  e.set_resource(absl::StrCat("health.vitals.ward", i % 16));
  e.set_purpose("medical_care");
  e.set_decision(exchange::v1::EFFECT_ALLOW);
  e.add_rule_ids("ems-read-vitals");
  e.set_severity(exchange::v1::SEVERITY_INFO);
  e.set_data_subject(absl::StrCat("p-", i % 1000));
  e.set_reason("allowed by ems-read-vitals");
  return e;
}

std::string FreshDir() {
  const char* base = ::getenv("TEST_TMPDIR");
  std::string tmpl = absl::StrCat(base != nullptr ? base : "/tmp", "/audit_bench_XXXXXX");
  if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
  return tmpl;
}

struct Fixture {
  std::string dir = FreshDir();
  std::unique_ptr<AuditLog> log;
  Fixture() {
    AuditOptions o;
    o.dir = dir;
    o.node = "bench";
    auto opened = AuditLog::Open(o);
    if (!opened.ok()) std::abort();
    log = std::move(*opened);
  }
  ~Fixture() {
    (void)log->Close();
    log.reset();
    std::filesystem::remove_all(dir);
  }
};

// Append `range(0)` entries, then Flush: the cost per entry of making a burst
// durable (hashing, serialization, group commit).
void BM_AppendThenFlush(benchmark::State& state) {
  Fixture f;
  const int burst = static_cast<int>(state.range(0));
  for (auto _ : state) {
    for (int i = 0; i < burst; ++i) f.log->Append(Sample(i));
    if (!f.log->Flush().ok()) state.SkipWithError("flush failed");
  }
  state.SetItemsProcessed(state.iterations() * burst);
}
BENCHMARK(BM_AppendThenFlush)->Arg(1)->Arg(100)->Arg(10000)->UseRealTime();

// The caller's side only: Append returns without waiting for the disk.
// Flushed once at the end (outside the timing).
void BM_AppendOnly(benchmark::State& state) {
  static Fixture* f = nullptr;
  if (state.thread_index() == 0) f = new Fixture();
  int i = 0;
  for (auto _ : state) f->log->Append(Sample(i++));
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {  // after the loop: not timed
    (void)f->log->Flush();
    delete f;
    f = nullptr;
  }
}
BENCHMARK(BM_AppendOnly)->Threads(1)->Threads(4)->UseRealTime();

// Sustained: many threads appending while each flushes every 64 entries.
void BM_ConcurrentAppendFlush(benchmark::State& state) {
  static Fixture* f = nullptr;
  if (state.thread_index() == 0) f = new Fixture();
  int i = 0;
  for (auto _ : state) {
    f->log->Append(Sample(i));
    if (++i % 64 == 0 && !f->log->Flush().ok()) state.SkipWithError("flush failed");
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    delete f;
    f = nullptr;
  }
}
BENCHMARK(BM_ConcurrentAppendFlush)->Threads(8)->UseRealTime();

}  // namespace
}  // namespace cityos

BENCHMARK_MAIN();
