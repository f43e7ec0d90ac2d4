#include "flotilla/core/result.hpp"

namespace flotilla {

std::string_view to_string(Errc code) noexcept {
  switch (code) {
    case Errc::invalid_argument: return "invalid argument";
    case Errc::not_found: return "not found";
    case Errc::already_exists: return "already exists";
    case Errc::too_large: return "too large";
    case Errc::parse_error: return "parse error";
    case Errc::io_error: return "i/o error";
    case Errc::corruption: return "corruption";
    case Errc::unavailable: return "unavailable";
    case Errc::timeout: return "timeout";
    case Errc::closed: return "closed";
    case Errc::permission_denied: return "permission denied";
    case Errc::internal: return "internal error";
  }
  return "unknown error";
}

}  // namespace flotilla
