#pragma once
// Named fields of a device record that operators group and count by. The query language of a
// later release extends this list; names match docs/query.md.

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "flotilla/v1/record.pb.h"

namespace flotilla::manager {

// Every field accepted by `devices count --by`.
std::span<const std::string_view> countable_fields();

// The field's value for a record as text; nullopt for an unknown field name.
std::optional<std::string> field_value(const v1::DeviceRecord& record, std::string_view field);

std::string_view kind_name(v1::DeviceKind kind);

}  // namespace flotilla::manager
