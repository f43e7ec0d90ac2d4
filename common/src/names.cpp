#include "flotilla/core/names.hpp"

namespace flotilla {

std::string_view kind_name(v1::DeviceKind kind) noexcept {
  switch (kind) {
    case v1::DEVICE_KIND_COMPUTER: return "computer";
    case v1::DEVICE_KIND_PRINTER: return "printer";
    case v1::DEVICE_KIND_SENSOR: return "sensor";
    case v1::DEVICE_KIND_GATEWAY: return "gateway";
    default: return "unknown";
  }
}

}  // namespace flotilla
