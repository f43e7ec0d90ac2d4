#pragma once
// Plausible, deterministic (seeded) inventories and telemetry for simulated PCs/servers,
// printers and sensors. Pure: no I/O.

#include <cstdint>
#include <random>
#include <string>

#include "flotilla/v1/device.pb.h"

namespace flotilla::sim {

// The id of simulated device `index` of a fleet: {prefix}-{pc|printer|sensor}-{index:05}.
// Kinds rotate pc, printer, sensor by index.
std::string device_id(const std::string& prefix, std::size_t index);
v1::DeviceKind kind_of(std::size_t index);

struct DeviceModel {
  v1::DeviceKind kind = v1::DEVICE_KIND_COMPUTER;
  std::string site;
  v1::Inventory inventory;
  // Random-walk state for telemetry.
  double cpu = 10.0;
  double temperature = 40.0;
  double level = 80.0;  // toner % for printers, battery % for sensors
  std::uint64_t used_bytes = 0;
};

DeviceModel make_model(std::size_t index, std::uint64_t seed);
v1::Telemetry next_telemetry(DeviceModel& model, std::mt19937_64& rng, std::uint64_t uptime_s);

}  // namespace flotilla::sim
