#include "flotilla/manager/fields.hpp"

#include <array>
#include <functional>
#include <utility>

namespace flotilla::manager {
namespace {

using Extractor = std::string (*)(const v1::DeviceRecord&);

const std::array<std::pair<std::string_view, Extractor>, 12> kFields{{
    {"kind", [](const v1::DeviceRecord& r) { return std::string(kind_name(r.kind())); }},
    {"online", [](const v1::DeviceRecord& r) { return std::string(r.online() ? "true" : "false"); }},
    {"os.name", [](const v1::DeviceRecord& r) { return r.os_name(); }},
    {"os.version", [](const v1::DeviceRecord& r) { return r.os_version(); }},
    {"os.kernel", [](const v1::DeviceRecord& r) { return r.os_kernel(); }},
    {"firmware.version", [](const v1::DeviceRecord& r) { return r.firmware_version(); }},
    {"hardware.vendor", [](const v1::DeviceRecord& r) { return r.hardware_vendor(); }},
    {"hardware.model", [](const v1::DeviceRecord& r) { return r.hardware_model(); }},
    {"tenant", [](const v1::DeviceRecord& r) { return r.tenant(); }},
    {"site", [](const v1::DeviceRecord& r) { return r.site(); }},
    {"agent.version", [](const v1::DeviceRecord& r) { return r.agent_version(); }},
    {"gateway", [](const v1::DeviceRecord& r) { return r.gateway_id(); }},
}};

const std::array<std::string_view, kFields.size()> kNames = [] {
  std::array<std::string_view, kFields.size()> names{};
  for (std::size_t i = 0; i < kFields.size(); ++i) names[i] = kFields[i].first;
  return names;
}();

}  // namespace

std::span<const std::string_view> countable_fields() { return kNames; }

std::optional<std::string> field_value(const v1::DeviceRecord& record, std::string_view field) {
  for (const auto& [name, extract] : kFields) {
    if (name == field) return extract(record);
  }
  return std::nullopt;
}

std::string_view kind_name(v1::DeviceKind kind) {
  switch (kind) {
    case v1::DEVICE_KIND_COMPUTER: return "computer";
    case v1::DEVICE_KIND_PRINTER: return "printer";
    case v1::DEVICE_KIND_SENSOR: return "sensor";
    case v1::DEVICE_KIND_GATEWAY: return "gateway";
    default: return "unknown";
  }
}

}  // namespace flotilla::manager
