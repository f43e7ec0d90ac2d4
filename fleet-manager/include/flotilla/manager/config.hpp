#pragma once
// flotilla-manager configuration. Keys and defaults are documented in docs/configuration.md.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "flotilla/core/config.hpp"
#include "flotilla/core/log.hpp"

namespace flotilla::manager {

struct ManagerConfig {
  config::MqttConfig mqtt = [] {
    config::MqttConfig m;
    m.username = "flotilla-manager";
    // The manager's session outlives restarts so device messages sent while it is down are
    // queued by the broker (bounded by the broker's max_queued_messages).
    m.session_expiry = std::chrono::hours(24 * 7);
    return m;
  }();
  // Directory of the RocksDB store (created when missing).
  std::filesystem::path data_dir = "/var/lib/flotilla/manager";
  // Names this manager in its client id and presence; one topic level.
  std::string instance_id = "manager-1";
  // Events buffered between the MQTT receive thread and the reactor. When full the receive
  // thread waits, pushing back on the broker instead of growing memory.
  std::size_t queue_capacity = 65536;
  // Most messages committed in one RocksDB write batch (one WAL sync).
  std::size_t max_batch = 4096;
  // A device is asked for a rebirth at most this often.
  std::chrono::seconds rebirth_interval{60};
  // Rejected messages are logged at most this many times per reason per minute.
  std::uint32_t log_burst = 10;
  log::Level log_level = log::Level::info;
  // Jobs (docs/jobs.md): in-progress timeout of jobs that set none, and how long the manager
  // waits for a device's first answer before notifying it again.
  std::chrono::milliseconds job_timeout{std::chrono::minutes(10)};
  std::chrono::milliseconds job_redrive_interval{std::chrono::seconds(30)};
  // Retention of stored group membership events (docs/groups.md): the manager deletes events
  // older than event_retention (0: no age limit) and all but the newest event_max (0: no limit).
  std::chrono::milliseconds event_retention{0};
  std::uint64_t event_max = 0;
  // Job types that always wait for a second operator's approval ("*": every job).
  std::vector<std::string> job_require_approval;
};

// Reads the TOML file (if any), then FLOTILLA_* environment. Errors: path-qualified.
Result<ManagerConfig> load_config(const std::filesystem::path* file);
// Errors: invalid_argument with the key path.
Status validate(const ManagerConfig& config);

}  // namespace flotilla::manager
