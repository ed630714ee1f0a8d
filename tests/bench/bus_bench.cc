// Micro-benchmarks of the in-process bus, single-threaded so that they can
// also run under `valgrind --tool=callgrind` for instruction counts that the
// machine's load does not change:
//   valgrind --tool=callgrind build/tests/bench/bus_bench --benchmark_filter=PublishDrain
#include <benchmark/benchmark.h>

#include <filesystem>

#include <google/protobuf/arena.h>

// Internal header (this target has no libcityos/src include path).
#include "../../libcityos/src/bus/validate.h"
#include "cityos/bus.h"
#include "cityos/event.h"

namespace cityos {
namespace {

using event::v1::Event;

Principal Me() { return *Principal::FromSpiffeId("spiffe://bench.city/org/grid/svc/meters"); }

Event Sample(const std::string& subject) {
  auto e = EventBuilder()
               .Source("//bench.city/meters/m-17")
               .Type("cityos.carbon.v1.MeterReading")
               .Subject(subject)
               .Classification(event::v1::CLASSIFICATION_INTERNAL)
               .Owner("quzhou-grid")
               .Region("CN-ZJ-QZ-KC")
               .BinaryData("application/octet-stream", std::string(96, 'x'))
               .Publisher(Me().SpiffeId())
               .Build();
  return *e;
}

struct TempBus {
  TempBus() {
    dir = std::filesystem::temp_directory_path() /
          ("cityos-bus-bench-" + std::to_string(::getpid()));
    bus = *Bus::Open({.data_dir = dir.string()});
  }
  ~TempBus() {
    bus->Close().IgnoreError();
    bus.reset();
    std::filesystem::remove_all(dir);
  }
  std::filesystem::path dir;
  std::unique_ptr<Bus> bus;
};

// Publish a batch of shared, pre-built events to one live subscriber, then
// drain it: the whole in-process cost of one event, publisher and subscriber.
void BM_PublishDrainShared(benchmark::State& state) {
  TempBus t;
  const size_t batch = static_cast<size_t>(state.range(0));
  auto event = std::make_shared<const Event>(Sample("carbon.meter.reading.quzhou.kecheng"));
  auto sub = *t.bus->Subscribe(Me(), {.subject_pattern = "carbon.meter.>"});
  std::vector<std::shared_ptr<const Event>> events(batch, event);
  std::vector<Delivery> got;
  got.reserve(batch);
  for (auto _ : state) {
    auto r = t.bus->PublishShared(Me(), events);
    benchmark::DoNotOptimize(r);
    got.clear();
    sub->Next(batch, absl::ZeroDuration(), &got).IgnoreError();
    if (got.size() != batch) state.SkipWithError("lost events");
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));
}
BENCHMARK(BM_PublishDrainShared)->Arg(1)->Arg(64)->Arg(256);

// The same with owned events moved in (each built by copying a template).
void BM_PublishDrainOwned(benchmark::State& state) {
  TempBus t;
  const size_t batch = static_cast<size_t>(state.range(0));
  Event event = Sample("carbon.meter.reading.quzhou.kecheng");
  auto sub = *t.bus->Subscribe(Me(), {.subject_pattern = "carbon.meter.>"});
  std::vector<Delivery> got;
  got.reserve(batch);
  for (auto _ : state) {
    auto r = t.bus->Publish(Me(), std::vector<Event>(batch, event));
    benchmark::DoNotOptimize(r);
    got.clear();
    sub->Next(batch, absl::ZeroDuration(), &got).IgnoreError();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));
}
BENCHMARK(BM_PublishDrainOwned)->Arg(64);

void BM_ValidateEvent(benchmark::State& state) {
  Event event = Sample("carbon.meter.reading.quzhou.kecheng");
  for (auto _ : state) benchmark::DoNotOptimize(ValidateEvent(event));
}
BENCHMARK(BM_ValidateEvent);

// Durable append in `none` mode (no sync), one thread: serialization and the
// log's copy, per event.
void BM_PublishStoredNone(benchmark::State& state) {
  TempBus t;
  StreamConfig sc;
  sc.name = "carbon";
  sc.subjects = {"carbon.>"};
  sc.durability = Durability::kNone;
  t.bus->CreateStream(Me(), sc).IgnoreError();
  const size_t batch = static_cast<size_t>(state.range(0));
  auto event = std::make_shared<const Event>(Sample("carbon.meter.reading.quzhou.kecheng"));
  std::vector<std::shared_ptr<const Event>> events(batch, event);
  for (auto _ : state) {
    auto r = t.bus->PublishShared(Me(), events);
    if (!r.ok()) state.SkipWithError("publish failed");
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));
}
BENCHMARK(BM_PublishStoredNone)->Arg(64);

// The structural check every stored record passes before its bytes are handed
// out (bus/validate.h), and for comparison the full parse it stands in for.
void BM_EventWireCheck(benchmark::State& state) {
  const std::string wire = Sample("carbon.meter.reading.quzhou.kecheng").SerializeAsString();
  for (auto _ : state) {
    benchmark::DoNotOptimize(bus_internal::IsWellFormedEventWire(wire));
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["event_bytes"] = static_cast<double>(wire.size());
}
BENCHMARK(BM_EventWireCheck);

void BM_EventParseOnArena(benchmark::State& state) {
  const std::string wire = Sample("carbon.meter.reading.quzhou.kecheng").SerializeAsString();
  google::protobuf::Arena arena;
  int64_t n = 0;
  for (auto _ : state) {
    auto* e = google::protobuf::Arena::CreateMessage<Event>(&arena);
    benchmark::DoNotOptimize(e->ParseFromString(wire));
    if (++n % 4096 == 0) arena.Reset();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EventParseOnArena);

// Replay: read N stored events through a replay subscription. What the reader
// does with each message is the argument:
//   0 "payload": reads event().binary_data() (the event is parsed on first use);
//   1 "wire":    reads only wire(), the stored bytes, as a forwarder (gRPC
//                Subscribe) does.
// Until the messages carried their stored bytes, every event was parsed while
// reading, so the old BM_Replay (which read nothing) corresponds to "payload".
void BM_Replay(benchmark::State& state) {
  const bool wire_only = state.range(0) == 1;
  TempBus t;
  StreamConfig sc;
  sc.name = "carbon";
  sc.subjects = {"carbon.>"};
  sc.durability = Durability::kNone;
  t.bus->CreateStream(Me(), sc).IgnoreError();
  auto event = std::make_shared<const Event>(Sample("carbon.meter.reading.quzhou.kecheng"));
  std::vector<std::shared_ptr<const Event>> events(1000, event);
  for (int i = 0; i < 100; ++i) {
    if (!t.bus->PublishShared(Me(), events).ok()) {
      state.SkipWithError("publish failed");
      return;
    }
  }
  std::vector<Delivery> got;
  got.reserve(1024);
  int64_t n = 0;
  size_t bytes = 0;
  for (auto _ : state) {
    auto sub = *t.bus->Subscribe(Me(), {.stream = "carbon", .start = StartPosition::Earliest()});
    size_t total = 0;
    while (total < 100000) {
      got.clear();
      sub->Next(1024, absl::Seconds(1), &got).IgnoreError();
      total += got.size();
      for (const Delivery& d : got) {
        bytes += wire_only ? d.message->wire().size() : d.message->event().binary_data().size();
      }
    }
    n += static_cast<int64_t>(total);
  }
  benchmark::DoNotOptimize(bytes);
  state.SetItemsProcessed(n);
  state.SetLabel(wire_only ? "wire" : "payload");
}
BENCHMARK(BM_Replay)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace cityos

BENCHMARK_MAIN();
