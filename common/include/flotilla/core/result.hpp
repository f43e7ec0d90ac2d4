#pragma once
// Result<T>: the error-handling currency of every Flotilla library. Code that talks to Paho,
// RocksDB, the filesystem or the network converts their failures into an Error here.

#include <cassert>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace flotilla {

enum class Errc {
  invalid_argument,  // caller passed something malformed
  not_found,         // the named thing does not exist
  already_exists,
  too_large,    // input exceeds a configured size limit
  parse_error,  // bytes do not decode
  io_error,     // filesystem or socket failure
  corruption,   // stored data fails its checks
  unavailable,  // peer or broker not reachable now; retrying may help
  timeout,
  closed,             // queue or service already shut down
  permission_denied,  // e.g. an MQTT 5 "not authorized" reason code
  internal,
};

std::string_view to_string(Errc code) noexcept;

struct Error {
  Errc code;
  std::string message;
};

template <typename... Args>
[[nodiscard]] Error make_error(Errc code, fmt::format_string<Args...> format, Args&&... args) {
  return Error{code, fmt::format(format, std::forward<Args>(args)...)};
}

// Holds either a value or an Error. Accessing the wrong alternative is a programming error
// (asserted), so callers test `ok()` / `operator bool` first.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::in_place_index<0>, std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : state_(std::in_place_index<1>, std::move(error)) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool ok() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(state_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(state_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(state_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const& {
    assert(!ok());
    return std::get<1>(state_);
  }
  Error&& error() && {
    assert(!ok());
    return std::get<1>(std::move(state_));
  }

 private:
  std::variant<T, Error> state_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool ok() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return ok(); }
  const Error& error() const& {
    assert(failed_);
    return error_;
  }
  Error&& error() && {
    assert(failed_);
    return std::move(error_);
  }

 private:
  Error error_{Errc::internal, {}};
  bool failed_ = false;
};

using Status = Result<void>;

}  // namespace flotilla

template <>
struct fmt::formatter<flotilla::Error> : fmt::formatter<std::string_view> {
  auto format(const flotilla::Error& e, format_context& ctx) const {
    return fmt::format_to(ctx.out(), "{}: {}", flotilla::to_string(e.code), e.message);
  }
};
