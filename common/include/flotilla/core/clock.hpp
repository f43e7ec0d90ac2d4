#pragma once

#include <chrono>
#include <cstdint>

namespace flotilla {

// Wall-clock Unix milliseconds: timestamps on the wire and at rest.
inline std::int64_t unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Monotonic time for timers and deadlines inside one process.
using SteadyClock = std::chrono::steady_clock;

}  // namespace flotilla
