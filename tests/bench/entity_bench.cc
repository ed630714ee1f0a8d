// Micro-benchmarks of the entity layer: obligations on a ~256-byte payload
// (the wire rewrite against parse + mutate + serialize), the entity view and
// filter matching. Figures in docs/entities.md.
//   build/tests/bench/entity_bench --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "cityos/entity.h"
#include "cityos/health/v1/health.pb.h"
#include "entity/entity_internal.h"
#include "entity/obligation_plan.h"
#include "entity/pseudonym_internal.h"

namespace cityos {
namespace {

using exchange::v1::Obligation;

health::v1::ElderlyCareAlert Alert() {
  health::v1::ElderlyCareAlert a;
  a.set_alert_id("0190c3e0-7a1b-7000-8000-00000000beef");
  a.set_kind(health::v1::CARE_ALERT_KIND_FALL_DETECTED);
  a.set_severity(health::v1::CARE_ALERT_SEVERITY_CRITICAL);
  a.mutable_time()->set_seconds(1780003725);
  a.mutable_time()->set_nanos(123456789);
  a.set_device_id("quzhou-care/watch-000172");
  a.mutable_location()->set_latitude(28.970611);
  a.mutable_location()->set_longitude(118.871236);
  a.mutable_inactive_for()->set_seconds(900);
  auto* v = a.mutable_vitals();
  v->set_device_id("quzhou-care/watch-000172");
  v->mutable_time()->set_seconds(1780003700);
  v->set_heart_rate_bpm(121);
  v->set_systolic_mmhg(152);
  v->set_diastolic_mmhg(95);
  v->set_spo2_percent(93);
  v->set_body_temperature_c(36.9);
  a.set_message("Fall detected in the bathroom; no movement since, resident did not answer");
  return a;
}

event::v1::Event Event() {
  event::v1::Event e;
  e.set_id("0190c3e0-7a1b-7000-8000-000000000001");
  e.set_source("//quzhou.city/care/watch-000172");
  e.set_spec_version("1.0");
  e.set_type("cityos.health.v1.ElderlyCareAlert");
  e.set_subject("care.alert.quzhou.kecheng");
  e.mutable_time()->set_seconds(1780003725);
  e.set_domain("care");
  e.set_classification(event::v1::CLASSIFICATION_SENSITIVE);
  e.set_data_subject("p-7f3a9c");
  e.set_owner("quzhou-care");
  e.set_region("CN-ZJ-QZ-KC");
  e.set_jurisdiction("CN");
  e.mutable_proto_data()->PackFrom(Alert());
  return e;
}

std::vector<Obligation> OneRedaction() {
  Obligation o;
  o.set_kind(exchange::v1::OBLIGATION_KIND_REDACT);
  o.add_field_paths("message");
  return {o};
}

PseudonymKey Key() { return PseudonymKey::ForRecipient("node-secret", "hospital-a"); }

// The fast path: the serialized payload is rewritten; each iteration first
// restores the original payload bytes (a 256-byte copy, measured below).
void BM_ApplyRedactionWire(benchmark::State& state) {
  ObligationApplier applier(Key());
  auto obs = OneRedaction();
  event::v1::Event ev = Event();
  const std::string original = ev.proto_data().value();
  state.counters["payload_bytes"] = static_cast<double>(original.size());
  for (auto _ : state) {
    ev.mutable_proto_data()->mutable_value()->assign(original);
    benchmark::DoNotOptimize(applier.Apply(obs, &ev));
  }
}
BENCHMARK(BM_ApplyRedactionWire);

void BM_RestorePayloadOnly(benchmark::State& state) {
  event::v1::Event ev = Event();
  const std::string original = ev.proto_data().value();
  for (auto _ : state) {
    ev.mutable_proto_data()->mutable_value()->assign(original);
    benchmark::DoNotOptimize(ev);
  }
}
BENCHMARK(BM_RestorePayloadOnly);

// Naive: look the type up, parse, clear through reflection, serialize.
void BM_ApplyRedactionReflection(benchmark::State& state) {
  auto obs = OneRedaction();
  auto plan = *entity_internal::CompilePlan(obs, "cityos.health.v1.ElderlyCareAlert",
                                            health::v1::ElderlyCareAlert::descriptor());
  entity_internal::FastHmacSha256 hmac(Key().key());
  event::v1::Event ev = Event();
  const std::string original = ev.proto_data().value();
  for (auto _ : state) {
    ev.mutable_proto_data()->mutable_value()->assign(original);
    auto m = *entity_internal::ParsePayload(ev.proto_data());
    entity_internal::RewriteReflection(*plan->root, hmac, m.get());
    m->SerializeToString(ev.mutable_proto_data()->mutable_value());
    benchmark::DoNotOptimize(ev);
  }
}
BENCHMARK(BM_ApplyRedactionReflection);

// Naive with generated code: UnpackTo, clear, PackFrom.
void BM_ApplyRedactionGenerated(benchmark::State& state) {
  event::v1::Event ev = Event();
  const std::string original = ev.proto_data().value();
  health::v1::ElderlyCareAlert a;
  for (auto _ : state) {
    ev.mutable_proto_data()->mutable_value()->assign(original);
    ev.proto_data().UnpackTo(&a);
    a.clear_message();
    ev.mutable_proto_data()->PackFrom(a);
    benchmark::DoNotOptimize(ev);
  }
}
BENCHMARK(BM_ApplyRedactionGenerated);

void BM_ApplyPseudonymizeDataSubject(benchmark::State& state) {
  ObligationApplier applier(Key());
  Obligation o;
  o.set_kind(exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE);
  o.add_field_paths("event.data_subject");
  std::vector<Obligation> obs = {o};
  event::v1::Event ev = Event();
  for (auto _ : state) {
    ev.set_data_subject("p-7f3a9c");
    benchmark::DoNotOptimize(applier.Apply(obs, &ev));
  }
}
BENCHMARK(BM_ApplyPseudonymizeDataSubject);

void BM_PseudonymKeyOneShot(benchmark::State& state) {
  PseudonymKey key = Key();
  for (auto _ : state) benchmark::DoNotOptimize(key.Pseudonymize("p-7f3a9c"));
}
BENCHMARK(BM_PseudonymKeyOneShot);

void BM_ApplyCoarsenAll(benchmark::State& state) {
  ObligationApplier applier(Key());
  Obligation loc;
  loc.set_kind(exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION);
  loc.set_grid_cell_m(500);
  Obligation time;
  time.set_kind(exchange::v1::OBLIGATION_KIND_COARSEN_TIME);
  time.mutable_time_granularity()->set_seconds(3600);
  time.add_field_paths("time");
  time.add_field_paths("vitals.time");
  time.add_field_paths("event.time");
  std::vector<Obligation> obs = {loc, time};
  event::v1::Event ev = Event();
  const std::string original = ev.proto_data().value();
  for (auto _ : state) {
    ev.mutable_proto_data()->mutable_value()->assign(original);
    benchmark::DoNotOptimize(applier.Apply(obs, &ev));
  }
}
BENCHMARK(BM_ApplyCoarsenAll);

void BM_EntityFromEvent(benchmark::State& state) {
  event::v1::Event ev = Event();
  for (auto _ : state) benchmark::DoNotOptimize(EntityFromEvent(ev));
}
BENCHMARK(BM_EntityFromEvent);

void BM_MatchesFilter(benchmark::State& state) {
  auto entity = *EntityFromEvent(Event());
  exchange::v1::EntityFilter f;
  f.set_type("cityos.health.v1.ElderlyCareAlert");
  auto* a = f.add_attributes();
  a->set_path("vitals.heart_rate_bpm");
  a->set_comparison(exchange::v1::COMPARISON_GREATER);
  a->mutable_value()->set_int_value(100);
  a = f.add_attributes();
  a->set_path("kind");
  a->set_comparison(exchange::v1::COMPARISON_IN);
  a->add_values()->set_string_value("CARE_ALERT_KIND_NO_ACTIVITY");
  a->add_values()->set_string_value("CARE_ALERT_KIND_FALL_DETECTED");
  auto* c = f.mutable_area()->mutable_circle();
  c->mutable_center()->set_latitude(28.97);
  c->mutable_center()->set_longitude(118.87);
  c->set_radius_m(5000);
  if (!ValidateFilter(f).ok() || !MatchesFilter(f, entity)) state.SkipWithError("no match");
  for (auto _ : state) benchmark::DoNotOptimize(MatchesFilter(f, entity));
}
BENCHMARK(BM_MatchesFilter);

}  // namespace
}  // namespace cityos

BENCHMARK_MAIN();
