#pragma once
// Builds the fleet index at start-up, before the manager connects: from an index snapshot when
// one saved at exactly the store's current state is there, otherwise from the Store itself (the
// operator labels, then every registry record with its stored inventory and telemetry). The
// manager's build_index() calls load_index(), and so do the tests and the index benchmark, so what
// they measure and check is the manager's own start-up path. Not thread-safe.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>

#include "flotilla/core/result.hpp"
#include "flotilla/manager/groups.hpp"
#include "flotilla/manager/index.hpp"
#include "flotilla/manager/registry.hpp"
#include "flotilla/manager/store.hpp"
#include "flotilla/v1/record.pb.h"

namespace flotilla::manager {

// The index snapshot's file name in the manager's data directory (next to the store's "db").
inline constexpr std::string_view kIndexSnapshotFile = "index.snapshot";

struct LoadedIndex {
  FleetIndex index;
  std::map<std::string, v1::DeviceLabels, std::less<>> labels;  // operator labels, by device id
  bool from_snapshot = false;
  std::string snapshot_note;  // why no snapshot was used (empty when one was, or none was asked for)
  // What a rebuild did and where the time went (milliseconds). Inventories and telemetry are read
  // and decoded on a second thread while the caller's thread indexes, so the two overlap.
  std::uint64_t facts = 0;  // facts indexed
  std::uint64_t inventories = 0, telemetries = 0;
  double read_ms = 0;   // reading labels (or the snapshot), and the reading thread's run
  double index_ms = 0;  // turning records, inventories and telemetry into facts and indexing them
};

// Reads the labels of `store` and builds the index of the devices of `registry` with their records,
// labels, group memberships (`groups`), inventories and telemetry. Stored inventories and telemetry
// of devices the registry does not know are ignored.
//
// With `snapshot`, that file is tried first: it is used when it holds a snapshot written by
// save_index_snapshot() of this format and Flotilla version, at exactly the store's current state
// (same database, no write since: Store::state_token()), for exactly the devices of `registry`, and
// reads back intact. It is removed whatever the outcome, before it is read: a snapshot serves the
// one start-up that follows its save, so one left over can never stand for a later state.
//
// Errors: the store's; corruption when a stored labels, inventory or telemetry record does not
// decode. A snapshot that cannot be used is no error: the index is rebuilt (see snapshot_note).
Result<LoadedIndex> load_index(const Store& store, const Registry& registry, const Groups& groups,
                               const std::filesystem::path* snapshot = nullptr);

// Saves `index` to `file` for the next load_index(). Call only when the index reflects everything
// `store` holds and nothing writes to the store before the process ends: on a clean stop, after the
// last commit. Syncs the store's WAL first, then writes the file atomically (a temporary file,
// synced, renamed over `file`). Errors: invalid_argument when the store cannot name its state,
// io_error, the store's.
Status save_index_snapshot(Store& store, const FleetIndex& index, const std::filesystem::path& file);

}  // namespace flotilla::manager
