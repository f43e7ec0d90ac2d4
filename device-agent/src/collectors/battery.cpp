#include <algorithm>
#include <optional>
#include <utility>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {
namespace {

std::optional<double> read_ratio_percent(const std::filesystem::path& now_path,
                                         const std::filesystem::path& full_path) {
  const auto now = detail::parse_decimal(detail::read_host_attribute(now_path));
  const auto full = detail::parse_decimal(detail::read_host_attribute(full_path));
  if (!now || !full || *full <= 0 || *now < 0) return std::nullopt;
  return 100.0 * static_cast<double>(*now) / static_cast<double>(*full);
}

// System batteries from /sys/class/power_supply/*/ with type "Battery": charge in percent
// (capacity, else energy_now/energy_full or charge_now/charge_full) and status ("Charging"...).
// Peripheral batteries (scope "Device": mice, headsets) and batteries without a charge reading
// are skipped.
class BatteryCollector final : public Collector {
 public:
  explicit BatteryCollector(HostPaths paths) : paths_(std::move(paths)) {}

  std::string_view name() const override { return "battery"; }

  Status collect_telemetry(v1::Telemetry& out) override {
    out.clear_batteries();
    for (const auto& supply : detail::list_host_directory(paths_.sys / "class/power_supply")) {
      if (detail::read_host_attribute(supply / "type") != "Battery") continue;
      if (detail::read_host_attribute(supply / "scope") == "Device") continue;
      std::optional<double> percent;
      if (const auto capacity = detail::parse_decimal(detail::read_host_attribute(supply / "capacity"))) {
        percent = static_cast<double>(*capacity);
      } else if (!(percent = read_ratio_percent(supply / "energy_now", supply / "energy_full"))) {
        percent = read_ratio_percent(supply / "charge_now", supply / "charge_full");
      }
      if (!percent) continue;
      v1::Battery& battery = *out.add_batteries();
      battery.set_name(supply.filename().string());
      battery.set_percent(std::clamp(*percent, 0.0, 100.0));
      battery.set_status(detail::read_host_attribute(supply / "status"));
    }
    return {};
  }

 private:
  HostPaths paths_;
};

}  // namespace

std::unique_ptr<Collector> detail::make_battery_collector(const HostPaths& paths) {
  return std::make_unique<BatteryCollector>(paths);
}

}  // namespace flotilla::agent
