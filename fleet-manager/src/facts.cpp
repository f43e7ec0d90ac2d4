#include "flotilla/manager/facts.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "flotilla/core/names.hpp"

namespace flotilla::manager {
namespace {

void add(FactSink& out, std::string_view field, std::string_view value) {
  if (!value.empty()) out.add(field, value);
}

// Empty (no fact) for NaN and infinities a device may send.
std::string number(double v) {
  if (!std::isfinite(v)) return {};
  if (std::fabs(v) < 9e15 && v == std::floor(v)) return fmt::format("{}", static_cast<std::int64_t>(v));
  return fmt::format("{}", v);
}

}  // namespace

void add_record_facts(const v1::DeviceRecord& r, FactSink& out) {
  add(out, "kind", kind_name(r.kind()));
  add(out, "tenant", r.tenant());
  add(out, "site", r.site());
  add(out, "gateway", r.gateway_id());
  add(out, "agent.version", r.agent_version());
  add(out, "online", r.online() ? "true" : "false");
  if (r.last_seen_ms() != 0) add(out, "last_seen", std::to_string(r.last_seen_ms()));
  if (r.first_seen_ms() != 0) add(out, "first_seen", std::to_string(r.first_seen_ms()));
  if (r.online() && r.connected_since_ms() != 0) add(out, "connected_since", std::to_string(r.connected_since_ms()));
  for (const auto& t : r.tags()) add(out, "tag", t);
  // Desired configuration (docs/policies.md): absent until the manager published one.
  if (!r.config_desired().empty()) {
    add(out, "config.desired", r.config_desired());
    add(out, "config.drift", r.config_applied() != r.config_desired() ? "true" : "false");
  }
  add(out, "config.applied", r.config_applied());
}

void add_inventory_facts(const v1::Inventory& inv, FactSink& out) {
  add(out, "hardware.vendor", inv.hardware().vendor());
  add(out, "hardware.model", inv.hardware().model());
  add(out, "hardware.serial", inv.hardware().serial());
  add(out, "firmware.version", inv.hardware().firmware_version());
  add(out, "os.name", inv.os().name());
  add(out, "os.id", inv.os().id());
  add(out, "os.version", inv.os().version());
  add(out, "os.kernel", inv.os().kernel());
  add(out, "cpu.model", inv.cpu().model());
  if (inv.has_patches()) {
    add(out, "patch.pending", std::to_string(inv.patches().pending()));
    add(out, "patch.security_pending", std::to_string(inv.patches().security_pending()));
    add(out, "patch.scanned_at", std::to_string(inv.patches().scanned_at_ms()));
  }
  if (inv.cpu().logical_cores() != 0) add(out, "cpu.cores", std::to_string(inv.cpu().logical_cores()));
  if (inv.memory_total_bytes() != 0) add(out, "memory.total", std::to_string(inv.memory_total_bytes()));
  add(out, "software.count", std::to_string(inv.packages_size()));
  for (const auto& p : inv.packages()) {
    if (!p.name().empty()) out.add_package(p.name(), p.version().empty() ? std::string_view("0") : p.version());
  }
}

void add_telemetry_facts(const v1::Telemetry& t, FactSink& out) {
  // The fixed fields written here: a metric of the same name does not repeat them.
  std::vector<std::string_view> written;
  auto put = [&](std::string_view field, const std::string& value) {
    if (value.empty()) return;
    out.add(field, value);
    written.push_back(field);
  };
  const bool host_metrics = t.memory_total_bytes() != 0 || t.mounts_size() > 0;
  if (host_metrics) {
    put("telemetry.cpu", number(t.cpu_percent()));
    put("telemetry.load1", number(t.load1()));
  }
  if (t.memory_total_bytes() != 0) {
    const double used = 100.0 *
                        static_cast<double>(t.memory_total_bytes() -
                                            std::min(t.memory_total_bytes(), t.memory_available_bytes())) /
                        static_cast<double>(t.memory_total_bytes());
    put("telemetry.memory.used_pct", number(used));
    put("telemetry.memory.available", std::to_string(t.memory_available_bytes()));
  }
  // Disk: the root filesystem, or the largest mount when there is no root.
  const v1::MountUsage* disk = nullptr;
  for (const auto& m : t.mounts()) {
    if (m.mount_point() == "/") {
      disk = &m;
      break;
    }
    if (disk == nullptr || m.total_bytes() > disk->total_bytes()) disk = &m;
  }
  if (disk != nullptr && disk->total_bytes() != 0) {
    put("telemetry.disk.free", std::to_string(disk->available_bytes()));
    put("telemetry.disk.used_pct",
        number(100.0 * static_cast<double>(disk->used_bytes()) / static_cast<double>(disk->total_bytes())));
  }
  if (t.uptime_s() != 0) put("telemetry.uptime", std::to_string(t.uptime_s()));
  if (t.temperatures_size() > 0) {
    double hottest = -std::numeric_limits<double>::infinity();
    for (const auto& temp : t.temperatures()) hottest = std::max(hottest, temp.celsius());
    put("telemetry.cpu.temp", number(hottest));
  }
  if (t.batteries_size() > 0) {
    double lowest = std::numeric_limits<double>::infinity();
    for (const auto& b : t.batteries()) lowest = std::min(lowest, b.percent());
    put("telemetry.battery", number(lowest));
  }
  std::string field;
  for (const auto& [name, value] : t.metrics()) {
    field.assign("telemetry.").append(name);
    if (query::find_field(field) && std::find(written.begin(), written.end(), field) == written.end()) {
      const auto text = number(value);
      if (!text.empty()) out.add(field, text);
    }
  }
}

void add_label_facts(const v1::DeviceLabels& labels, const v1::DeviceRecord& record, FactSink& out) {
  std::vector<std::string_view> tags(record.tags().begin(), record.tags().end());
  for (const auto& t : labels.tags()) {
    if (std::find(tags.begin(), tags.end(), t) != tags.end()) continue;
    out.add("tag", t);
    tags.push_back(t);
  }
  std::string field;
  for (const auto& [k, v] : labels.attributes()) {
    field.assign("attr.").append(k);
    out.add(field, v);
  }
}

void add_record_facts(const v1::DeviceRecord& record, DeviceFacts& out) {
  DeviceFactsSink sink(out);
  add_record_facts(record, sink);
}

void add_inventory_facts(const v1::Inventory& inventory, DeviceFacts& out) {
  DeviceFactsSink sink(out);
  add_inventory_facts(inventory, sink);
}

void add_telemetry_facts(const v1::Telemetry& telemetry, DeviceFacts& out) {
  DeviceFactsSink sink(out);
  add_telemetry_facts(telemetry, sink);
}

void add_label_facts(const v1::DeviceLabels& labels, DeviceFacts& out) {
  for (const auto& t : labels.tags()) {
    const bool reported = std::any_of(out.values.begin(), out.values.end(),
                                      [&](const auto& kv) { return kv.first == "tag" && kv.second == t; });
    if (!reported) out.values.emplace_back("tag", t);
  }
  for (const auto& [k, v] : labels.attributes()) out.values.emplace_back("attr." + k, v);
}

DeviceFacts facts_of(const v1::DeviceRecord& record, const v1::Inventory* inventory, const v1::Telemetry* telemetry) {
  DeviceFacts f;
  f.id = record.device_id();
  add_record_facts(record, f);
  if (inventory != nullptr) add_inventory_facts(*inventory, f);
  if (telemetry != nullptr) add_telemetry_facts(*telemetry, f);
  return f;
}

void FactsView::values(std::string_view field, std::vector<std::string>& out) const {
  if (field == "id") {
    out.push_back(facts_.id);
    return;
  }
  for (const auto& [name, value] : facts_.values) {
    if (name == field) out.push_back(value);
    else if (field == "software.name" && name.starts_with("software.") && name != "software.count") {
      out.push_back(name.substr(9));
    }
  }
}

}  // namespace flotilla::manager
