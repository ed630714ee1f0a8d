// A city system integrator's program: builds a typed, validated event for the
// bus. Exits non-zero if anything is off, so the install test can run it.
#include <iostream>

#include "cityos/event.h"
#include "cityos/subject.h"

int main() {
  auto event = cityos::EventBuilder()
                   .Source("//quzhou.city/meters/m-17")
                   .Type("cityos.carbon.v1.MeterReading")
                   .Subject("carbon.meter.reading.quzhou.kecheng")
                   .Classification(cityos::event::v1::CLASSIFICATION_INTERNAL)
                   .Owner("quzhou-grid")
                   .Region("CN-ZJ-QZ-KC")
                   .TextData("application/json", R"({"kwh": 32000})")
                   .Build();
  if (!event.ok()) {
    std::cerr << "event: " << event.status() << "\n";
    return 1;
  }
  if (!cityos::SubjectMatches("carbon.meter.>", event->subject())) {
    std::cerr << "subject does not match carbon.meter.>\n";
    return 1;
  }
  std::cout << "event " << event->id() << " on " << event->subject() << " is valid\n";
  return 0;
}
