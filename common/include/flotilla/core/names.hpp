#pragma once
// Human names of schema enums, shared by the query language, the manager and the CLI.

#include <string_view>

#include "flotilla/v1/device.pb.h"

namespace flotilla {

// computer, printer, sensor, gateway or unknown: the values of the `kind` query field.
std::string_view kind_name(v1::DeviceKind kind) noexcept;

}  // namespace flotilla
