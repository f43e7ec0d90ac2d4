#include "flotilla/core/log.hpp"

#include <atomic>
#include <cstdio>
#include <ctime>

namespace flotilla::log {
namespace {

std::atomic<Level> g_level{Level::info};
std::mutex g_write_mutex;
std::string g_component = "flotilla";  // guarded by g_write_mutex

std::string_view level_name(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
  }
  return "?";
}

}  // namespace

void set_level(Level l) { g_level.store(l, std::memory_order_relaxed); }
Level level() { return g_level.load(std::memory_order_relaxed); }

Result<Level> parse_level(std::string_view text) {
  for (Level l : {Level::debug, Level::info, Level::warn, Level::error}) {
    if (text == level_name(l)) return l;
  }
  return make_error(Errc::invalid_argument, "unknown log level '{}' (debug, info, warn, error)", text);
}

void set_component(std::string_view name) {
  std::lock_guard lock(g_write_mutex);
  g_component = std::string(name);
}

void write(Level l, std::string_view message) {
  const auto now = std::chrono::system_clock::now();
  const auto secs = std::chrono::system_clock::to_time_t(now);
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  std::lock_guard lock(g_write_mutex);
  fmt::print(stderr, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {} {}: {}\n", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis, g_component, level_name(l), message);
  std::fflush(stderr);
}

bool RateLimiter::allow(std::string_view key, std::chrono::steady_clock::time_point now, std::uint64_t& suppressed) {
  std::lock_guard lock(mutex_);
  auto it = slots_.find(key);
  if (it == slots_.end()) it = slots_.emplace(std::string(key), Slot{}).first;
  Slot& slot = it->second;
  if (now - slot.window_start >= window_) {
    slot.window_start = now;
    slot.used = 0;
  }
  if (slot.used >= burst_) {
    ++slot.suppressed;
    return false;
  }
  ++slot.used;
  suppressed = slot.suppressed;
  slot.suppressed = 0;
  return true;
}

}  // namespace flotilla::log
