#include "flotilla/sim/fleet_model.hpp"

#include <algorithm>
#include <array>
#include <cmath>

#include <fmt/format.h>

namespace flotilla::sim {
namespace {

struct OsChoice {
  const char* name;
  const char* id;
  const char* version;
  const char* kernel;
};
constexpr std::array<OsChoice, 4> kOses{{
    {"Debian GNU/Linux", "debian", "12", "6.1.0-26-amd64"},
    {"Ubuntu", "ubuntu", "22.04", "5.15.0-122-generic"},
    {"Ubuntu", "ubuntu", "24.04", "6.8.0-45-generic"},
    {"Rocky Linux", "rocky", "9.4", "5.14.0-427.el9.x86_64"},
}};
constexpr std::array<const char*, 3> kSites{"hq", "warehouse", "branch-7"};
constexpr std::array<std::pair<const char*, const char*>, 3> kPcModels{
    {{"Dell Inc.", "OptiPlex 7090"}, {"LENOVO", "ThinkPad T14 Gen 3"}, {"HPE", "ProLiant DL360 Gen10"}}};
constexpr std::array<std::pair<const char*, const char*>, 2> kPrinterModels{
    {{"HP", "LaserJet M507"}, {"Brother", "HL-L6400DW"}}};
constexpr std::array<std::pair<const char*, const char*>, 2> kSensorModels{
    {{"Acme Sensors", "TH-200"}, {"Acme Sensors", "CO2-10"}}};
constexpr std::array<const char*, 4> kFirmware{"1.2.0", "1.2.3", "1.3.0", "2.0.1"};
constexpr std::array<std::pair<const char*, const char*>, 8> kPackages{{{"openssl", "3.0.11-1~deb12u2"},
                                                                        {"openssh-server", "1:9.2p1-2+deb12u3"},
                                                                        {"bash", "5.2.15-2+b7"},
                                                                        {"curl", "7.88.1-10+deb12u7"},
                                                                        {"systemd", "252.30-1~deb12u2"},
                                                                        {"python3", "3.11.2-1+b1"},
                                                                        {"nginx", "1.22.1-9"},
                                                                        {"libc6", "2.36-9+deb12u8"}}};

template <typename T, std::size_t N>
const T& pick(const std::array<T, N>& choices, std::mt19937_64& rng) {
  return choices[std::uniform_int_distribution<std::size_t>(0, N - 1)(rng)];
}

double walk(double value, double step, double lo, double hi, std::mt19937_64& rng) {
  std::normal_distribution<double> d(0.0, step);
  return std::clamp(value + d(rng), lo, hi);
}

}  // namespace

v1::DeviceKind kind_of(std::size_t index) {
  switch (index % 3) {
    case 0: return v1::DEVICE_KIND_COMPUTER;
    case 1: return v1::DEVICE_KIND_PRINTER;
    default: return v1::DEVICE_KIND_SENSOR;
  }
}

std::string device_id(const std::string& prefix, std::size_t index) {
  const char* kind = index % 3 == 0 ? "pc" : index % 3 == 1 ? "printer" : "sensor";
  return fmt::format("{}-{}-{:05}", prefix, kind, index);
}

DeviceModel make_model(std::size_t index, std::uint64_t seed) {
  std::mt19937_64 rng(seed * 1000003 + index);
  DeviceModel m;
  m.kind = kind_of(index);
  m.site = pick(kSites, rng);
  auto& inv = m.inventory;
  auto* hw = inv.mutable_hardware();
  hw->set_serial(fmt::format("SN{:08X}", static_cast<std::uint32_t>(rng())));
  hw->set_firmware_version(pick(kFirmware, rng));
  if (m.kind == v1::DEVICE_KIND_COMPUTER) {
    const auto& [vendor, model] = pick(kPcModels, rng);
    hw->set_vendor(vendor);
    hw->set_model(model);
    hw->set_architecture("x86_64");
    const auto& os = pick(kOses, rng);
    inv.mutable_os()->set_name(os.name);
    inv.mutable_os()->set_id(os.id);
    inv.mutable_os()->set_version(os.version);
    inv.mutable_os()->set_kernel(os.kernel);
    inv.mutable_os()->set_hostname(fmt::format("host-{:05}", index));
    inv.mutable_cpu()->set_model("Intel(R) Core(TM) i7-11700 @ 2.50GHz");
    inv.mutable_cpu()->set_logical_cores(std::array<std::uint32_t, 3>{4, 8, 16}[rng() % 3]);
    inv.set_memory_total_bytes((std::uint64_t{8} << 30) * (1 + rng() % 4));
    auto* mount = inv.add_mounts();
    mount->set_mount_point("/");
    mount->set_device("/dev/nvme0n1p2");
    mount->set_fs_type("ext4");
    mount->set_total_bytes(std::uint64_t{256} << 30);
    m.used_bytes = (std::uint64_t{40} << 30) + rng() % (std::uint64_t{150} << 30);
    auto* nic = inv.add_interfaces();
    nic->set_name("eth0");
    nic->set_mac(fmt::format("02:00:{:02x}:{:02x}:{:02x}:{:02x}", (index >> 24) & 0xff, (index >> 16) & 0xff,
                             (index >> 8) & 0xff, index & 0xff));
    nic->add_addresses(fmt::format("10.{}.{}.{}", (index >> 16) & 0xff, (index >> 8) & 0xff, index & 0xff));
    for (const auto& [name, version] : kPackages) {
      auto* p = inv.add_packages();
      p->set_name(name);
      p->set_version(version);
      p->set_architecture("amd64");
    }
  } else if (m.kind == v1::DEVICE_KIND_PRINTER) {
    const auto& [vendor, model] = pick(kPrinterModels, rng);
    hw->set_vendor(vendor);
    hw->set_model(model);
    (*inv.mutable_attributes())["supplies"] = "toner-black";
  } else {
    const auto& [vendor, model] = pick(kSensorModels, rng);
    hw->set_vendor(vendor);
    hw->set_model(model);
    (*inv.mutable_attributes())["sensor_type"] = model;
  }
  m.cpu = 5.0 + static_cast<double>(rng() % 30);
  m.temperature = 30.0 + static_cast<double>(rng() % 20);
  m.level = 40.0 + static_cast<double>(rng() % 60);
  return m;
}

v1::Telemetry next_telemetry(DeviceModel& m, std::mt19937_64& rng, std::uint64_t uptime_s) {
  v1::Telemetry t;
  t.set_uptime_s(uptime_s);
  m.temperature = walk(m.temperature, 0.5, 15.0, 95.0, rng);
  if (m.kind == v1::DEVICE_KIND_COMPUTER) {
    m.cpu = walk(m.cpu, 5.0, 0.0, 100.0, rng);
    t.set_cpu_percent(m.cpu);
    t.set_load1(m.cpu / 25.0);
    t.set_load5(m.cpu / 30.0);
    t.set_load15(m.cpu / 35.0);
    const auto total = m.inventory.memory_total_bytes();
    t.set_memory_total_bytes(total);
    t.set_memory_available_bytes(static_cast<std::uint64_t>(static_cast<double>(total) * (1.0 - m.cpu / 150.0)));
    m.used_bytes = std::min<std::uint64_t>(m.used_bytes + rng() % (1u << 20), m.inventory.mounts(0).total_bytes());
    auto* mu = t.add_mounts();
    mu->set_mount_point("/");
    mu->set_total_bytes(m.inventory.mounts(0).total_bytes());
    mu->set_used_bytes(m.used_bytes);
    mu->set_available_bytes(m.inventory.mounts(0).total_bytes() - m.used_bytes);
    auto* temp = t.add_temperatures();
    temp->set_sensor("x86_pkg_temp");
    temp->set_celsius(m.temperature);
  } else if (m.kind == v1::DEVICE_KIND_PRINTER) {
    m.level = std::max(0.0, m.level - std::uniform_real_distribution<double>(0.0, 0.05)(rng));
    (*t.mutable_metrics())["toner_percent"] = m.level;
    (*t.mutable_metrics())["pages_total"] = std::floor(static_cast<double>(uptime_s) / 30.0);
  } else {
    m.level = std::max(0.0, m.level - 0.001);
    (*t.mutable_metrics())["temperature_celsius"] = m.temperature;
    (*t.mutable_metrics())["humidity_percent"] = walk(45.0, 5.0, 0.0, 100.0, rng);
    auto* b = t.add_batteries();
    b->set_name("main");
    b->set_percent(m.level);
    b->set_status("Discharging");
  }
  return t;
}

}  // namespace flotilla::sim
