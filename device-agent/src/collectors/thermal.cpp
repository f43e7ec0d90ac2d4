#include <utility>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {
namespace {

// Thermal zones from /sys/class/thermal/thermal_zone*/{temp,type}. Zones that cannot be read
// (disabled, driver error) or report impossible values are skipped; none at all is normal on VMs.
class ThermalCollector final : public Collector {
 public:
  explicit ThermalCollector(HostPaths paths) : paths_(std::move(paths)) {}

  std::string_view name() const override { return "thermal"; }

  Status collect_telemetry(v1::Telemetry& out) override {
    out.clear_temperatures();
    for (const auto& zone : detail::list_host_directory(paths_.sys / "class/thermal")) {
      const std::string zone_name = zone.filename().string();
      if (!zone_name.starts_with("thermal_zone")) continue;
      const auto millidegrees = detail::parse_decimal(detail::read_host_attribute(zone / "temp"));
      if (!millidegrees) continue;
      const double celsius = static_cast<double>(*millidegrees) / 1000.0;
      if (celsius < -273.15 || celsius > 1000.0) continue;
      std::string sensor = detail::read_host_attribute(zone / "type");
      v1::Temperature& temperature = *out.add_temperatures();
      temperature.set_sensor(sensor.empty() ? zone_name : sensor);
      temperature.set_celsius(celsius);
    }
    return {};
  }

 private:
  HostPaths paths_;
};

}  // namespace

std::unique_ptr<Collector> detail::make_thermal_collector(const HostPaths& paths) {
  return std::make_unique<ThermalCollector>(paths);
}

}  // namespace flotilla::agent
