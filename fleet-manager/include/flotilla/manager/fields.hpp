#pragma once

#include <string_view>

#include "flotilla/v1/device.pb.h"

namespace flotilla::manager {

// The value of the `kind` field: computer, printer, sensor, gateway or unknown.
std::string_view kind_name(v1::DeviceKind kind);

}  // namespace flotilla::manager
