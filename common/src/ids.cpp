#include "flotilla/core/ids.hpp"

namespace flotilla {
namespace {

bool is_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

}  // namespace

Status validate_topic_level_name(std::string_view text, std::string_view what) {
  if (text.empty()) return make_error(Errc::invalid_argument, "{} is empty", what);
  if (text.size() > DeviceId::max_length) {
    return make_error(Errc::invalid_argument, "{} is {} characters long (at most {})", what, text.size(),
                      DeviceId::max_length);
  }
  if (!is_alnum(text[0])) {
    return make_error(Errc::invalid_argument, "{} must start with a letter or digit", what);
  }
  for (std::size_t i = 1; i < text.size(); ++i) {
    const char c = text[i];
    if (!is_alnum(c) && c != '.' && c != '_' && c != '-') {
      const auto code = static_cast<unsigned>(static_cast<unsigned char>(c));
      return make_error(Errc::invalid_argument, "{} has a forbidden character 0x{:02x} at position {}", what, code, i);
    }
  }
  return {};
}

Result<DeviceId> DeviceId::parse(std::string_view text) {
  if (auto st = validate_topic_level_name(text, "device id"); !st) return std::move(st).error();
  return DeviceId(std::string(text));
}

}  // namespace flotilla
