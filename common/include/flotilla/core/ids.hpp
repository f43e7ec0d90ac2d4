#pragma once
// Validated identifiers. A DeviceId can only be built through parse(), so every topic built from
// one is safe: no MQTT wildcards, separators, '$' prefixes, control characters or overlong ids.

#include <compare>
#include <cstddef>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "flotilla/core/result.hpp"

namespace flotilla {

class DeviceId {
 public:
  // Longest accepted id. Also bounds every topic length the project builds.
  static constexpr std::size_t max_length = 64;

  // Accepts ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$.
  // Errors: invalid_argument with the offending position.
  static Result<DeviceId> parse(std::string_view text);

  const std::string& str() const noexcept { return value_; }
  auto operator<=>(const DeviceId&) const = default;

 private:
  explicit DeviceId(std::string value) : value_(std::move(value)) {}
  std::string value_;
};

// Same rule for any name that becomes one topic level or a broker username (operator names,
// manager instance ids, CLI client ids).
Status validate_topic_level_name(std::string_view text, std::string_view what);

}  // namespace flotilla

template <>
struct fmt::formatter<flotilla::DeviceId> : fmt::formatter<std::string_view> {
  auto format(const flotilla::DeviceId& id, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(id.str(), ctx);
  }
};
