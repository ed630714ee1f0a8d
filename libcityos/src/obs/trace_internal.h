// Internal: setting the current trace context without a scope object, for
// code whose "enter" and "leave" run in different callbacks (the gRPC server
// interceptor).
#ifndef CITYOS_SRC_OBS_TRACE_INTERNAL_H_
#define CITYOS_SRC_OBS_TRACE_INTERNAL_H_

#include "cityos/trace.h"

namespace cityos::obs_internal {

// Sets this thread's current context and returns the one it replaces.
TraceContext ExchangeCurrentTraceContext(const TraceContext& context);

}  // namespace cityos::obs_internal

#endif  // CITYOS_SRC_OBS_TRACE_INTERNAL_H_
