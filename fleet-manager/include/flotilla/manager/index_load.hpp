#pragma once
// Builds the fleet index from the Store at start-up, before the manager connects: the operator
// labels, then every registry record with its stored inventory and telemetry. The manager's
// build_index() calls this, and so do the tests and the index benchmark, so what they measure
// and check is the manager's own start-up path. Single-threaded caller; not thread-safe.

#include <cstdint>
#include <map>
#include <string>

#include "flotilla/core/result.hpp"
#include "flotilla/manager/groups.hpp"
#include "flotilla/manager/index.hpp"
#include "flotilla/manager/registry.hpp"
#include "flotilla/manager/store.hpp"
#include "flotilla/v1/record.pb.h"

namespace flotilla::manager {

struct LoadedIndex {
  FleetIndex index;
  std::map<std::string, v1::DeviceLabels, std::less<>> labels;  // operator labels, by device id
  // What the load did and where the time went (milliseconds).
  std::uint64_t facts = 0;  // facts indexed
  std::uint64_t inventories = 0, telemetries = 0;
  double read_ms = 0;   // reading and decoding labels, inventories and telemetry from the store
  double index_ms = 0;  // turning them into facts and indexing them, value orders included
};

// Reads the labels, inventories and telemetry of the devices of `registry` from `store` and
// indexes them with their records and the group memberships of `groups`. Stored inventories and
// telemetry of devices the registry does not know are ignored. Errors: the store's; corruption
// when a stored labels, inventory or telemetry record does not decode.
Result<LoadedIndex> load_index(const Store& store, const Registry& registry, const Groups& groups);

}  // namespace flotilla::manager
