#include <sys/utsname.h>

#include <utility>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {
namespace {

// DMI identity (PCs, servers, most x86 VMs), else the device tree (ARM boards); uname machine.
// Every source is optional: unreadable values stay empty.
class HardwareCollector final : public Collector {
 public:
  explicit HardwareCollector(HostPaths paths) : paths_(std::move(paths)) {}

  std::string_view name() const override { return "hardware"; }

  Status collect_inventory(v1::Inventory& out) override {
    v1::Hardware& hw = *out.mutable_hardware();
    const auto dmi = paths_.sys / "class/dmi/id";
    hw.set_vendor(detail::read_host_attribute(dmi / "sys_vendor"));
    hw.set_model(detail::read_host_attribute(dmi / "product_name"));
    hw.set_serial(detail::read_host_attribute(dmi / "product_serial"));  // root-only
    hw.set_firmware_version(detail::read_host_attribute(dmi / "bios_version"));

    const auto device_tree = paths_.sys / "firmware/devicetree/base";
    if (hw.model().empty()) hw.set_model(detail::read_host_attribute(device_tree / "model"));
    if (hw.serial().empty()) hw.set_serial(detail::read_host_attribute(device_tree / "serial-number"));

    if (utsname uts{}; ::uname(&uts) == 0) hw.set_architecture(uts.machine);
    return {};
  }

 private:
  HostPaths paths_;
};

}  // namespace

std::unique_ptr<Collector> detail::make_hardware_collector(const HostPaths& paths) {
  return std::make_unique<HardwareCollector>(paths);
}

}  // namespace flotilla::agent
