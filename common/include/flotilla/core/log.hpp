#pragma once
// Logging over fmt to stderr. Thread-safe: one line is written with one call.

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "flotilla/core/result.hpp"

namespace flotilla::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };

void set_level(Level level);
Level level();
// Accepts debug, info, warn, error. Errors: invalid_argument.
Result<Level> parse_level(std::string_view text);
// Sets the process name printed on every line.
void set_component(std::string_view name);

void write(Level level, std::string_view message);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::debug) write(Level::debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::info) write(Level::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::warn) write(Level::warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  write(Level::error, fmt::format(f, std::forward<Args>(args)...));
}

// Lets through at most `burst` lines per key per window and counts the rest, so a flood of bad
// input from the network cannot flood the log. Thread-safe.
class RateLimiter {
 public:
  RateLimiter(std::uint32_t burst, std::chrono::steady_clock::duration window) : burst_(burst), window_(window) {}

  // Returns true when a line for `key` may be written now; `suppressed` then holds how many
  // lines for this key were held back since the last one written.
  bool allow(std::string_view key, std::chrono::steady_clock::time_point now, std::uint64_t& suppressed);

 private:
  struct Slot {
    std::chrono::steady_clock::time_point window_start{};
    std::uint32_t used = 0;
    std::uint64_t suppressed = 0;
  };
  std::uint32_t burst_;
  std::chrono::steady_clock::duration window_;
  std::mutex mutex_;
  std::map<std::string, Slot, std::less<>> slots_;
};

}  // namespace flotilla::log
