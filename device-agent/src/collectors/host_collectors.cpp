#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {

std::vector<std::unique_ptr<Collector>> make_host_collectors(const HostPaths& paths) {
  std::vector<std::unique_ptr<Collector>> collectors;
  collectors.push_back(detail::make_os_collector(paths));
  collectors.push_back(detail::make_hardware_collector(paths));
  collectors.push_back(detail::make_cpu_collector(paths));
  collectors.push_back(detail::make_memory_collector(paths));
  collectors.push_back(detail::make_storage_collector(paths));
  collectors.push_back(detail::make_network_collector(paths));
  collectors.push_back(detail::make_packages_collector(paths));
  collectors.push_back(detail::make_thermal_collector(paths));
  collectors.push_back(detail::make_battery_collector(paths));
  return collectors;
}

}  // namespace flotilla::agent
