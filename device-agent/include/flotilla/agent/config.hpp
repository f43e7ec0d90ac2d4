#pragma once
// flotilla-agent configuration. Keys and defaults are documented in docs/configuration.md.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "flotilla/core/config.hpp"
#include "flotilla/core/log.hpp"

namespace flotilla::agent {

struct AgentConfig {
  config::MqttConfig mqtt;  // client_id and username default to the device id
  // Empty: derived from /etc/machine-id.
  std::string device_id;
  // Holds the session epoch counter and the durable outbox. Must survive reboots.
  std::filesystem::path state_dir = "/var/lib/flotilla/agent";
  // Health sample period; each period is jittered by +/- telemetry_jitter so a fleet does not
  // report in lockstep.
  std::chrono::milliseconds telemetry_interval{std::chrono::seconds(30)};
  double telemetry_jitter = 0.1;
  // How often inventory is re-collected; it is published only when it changed.
  std::chrono::milliseconds inventory_interval{std::chrono::minutes(10)};
  // Bound of the on-disk outbox. When reached, the oldest readings are dropped and the number
  // dropped is reported in the next birth.
  std::uint64_t outbox_max_bytes = 64ull << 20;
  // Publishes awaiting PUBACK at once.
  std::uint32_t max_inflight = 32;
  std::string tenant;
  std::string site;
  std::vector<std::string> tags;
  // Jobs (docs/jobs.md). Public keys (files *.pub / *.pem, or one file) whose signatures the
  // agent accepts; without any, every job is rejected.
  std::filesystem::path trusted_keys = "/etc/flotilla/trusted-keys";
  bool allow_reboot = false;       // the reboot job type, and patch.apply's reboot
  bool apt_simulate_only = false;  // every package and patch job runs apt's simulation only
  std::chrono::milliseconds job_default_timeout{std::chrono::minutes(10)};
  log::Level log_level = log::Level::info;
};

Result<AgentConfig> load_config(const std::filesystem::path* file);
// Fills device_id from /etc/machine-id when empty. Errors: not_found.
Status resolve_device_id(AgentConfig& config);
Status validate(const AgentConfig& config);

}  // namespace flotilla::agent
