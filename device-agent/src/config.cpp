#include "flotilla/agent/config.hpp"

#include <fstream>

#include "flotilla/core/ids.hpp"

namespace flotilla::agent {

Result<AgentConfig> load_config(const std::filesystem::path* file) {
  AgentConfig c;
  if (file != nullptr) {
    auto r = config::TomlReader::load_file(*file);
    if (!r) return std::move(r).error();
    std::string state_dir = c.state_dir.string();
    std::string level = "info";
    std::string trusted_keys = c.trusted_keys.string();
    for (auto st :
         {config::read_mqtt(*r, c.mqtt), r->read("agent.device_id", c.device_id), r->read("agent.state_dir", state_dir),
          r->read("agent.telemetry_interval", c.telemetry_interval),
          r->read("agent.inventory_interval", c.inventory_interval),
          r->read("agent.outbox_max_bytes", c.outbox_max_bytes), r->read("agent.max_inflight", c.max_inflight),
          r->read("agent.tenant", c.tenant), r->read("agent.site", c.site), r->read("agent.tags", c.tags),
          r->read("jobs.trusted_keys", trusted_keys), r->read("jobs.allow_reboot", c.allow_reboot),
          r->read("jobs.apt_simulate_only", c.apt_simulate_only),
          r->read("jobs.default_timeout", c.job_default_timeout), r->read("log.level", level),
          r->reject_unknown_keys()}) {
      if (!st) return std::move(st).error();
    }
    auto lvl = log::parse_level(level);
    if (!lvl) return make_error(Errc::invalid_argument, "log.level: {}", lvl.error().message);
    c.log_level = *lvl;
    c.state_dir = state_dir;
    c.trusted_keys = trusted_keys;
  }
  config::apply_mqtt_env(c.mqtt);
  return c;
}

Status resolve_device_id(AgentConfig& c) {
  if (!c.device_id.empty()) return {};
  for (const char* path : {"/etc/machine-id", "/var/lib/dbus/machine-id"}) {
    std::ifstream in(path);
    std::string id;
    if (in && std::getline(in, id) && !id.empty()) {
      c.device_id = id.substr(0, 32);
      return {};
    }
  }
  return make_error(Errc::not_found, "agent.device_id: not set and no /etc/machine-id to derive it from");
}

Status validate(const AgentConfig& c) {
  if (auto st = DeviceId::parse(c.device_id); !st) {
    return make_error(Errc::invalid_argument, "agent.device_id: {}", st.error().message);
  }
  if (auto st = config::validate_mqtt(c.mqtt); !st) return st;
  if (c.state_dir.empty()) return make_error(Errc::invalid_argument, "agent.state_dir: must be set");
  if (c.telemetry_interval < std::chrono::seconds(1)) {
    return make_error(Errc::invalid_argument, "agent.telemetry_interval: must be at least 1s");
  }
  if (c.inventory_interval < std::chrono::seconds(10)) {
    return make_error(Errc::invalid_argument, "agent.inventory_interval: must be at least 10s");
  }
  if (c.outbox_max_bytes < 64 * 1024) {
    return make_error(Errc::invalid_argument, "agent.outbox_max_bytes: must be at least 65536");
  }
  if (c.max_inflight < 1 || c.max_inflight > 1000) {
    return make_error(Errc::invalid_argument, "agent.max_inflight: must be between 1 and 1000");
  }
  if (c.job_default_timeout < std::chrono::seconds(1) || c.job_default_timeout > std::chrono::hours(24)) {
    return make_error(Errc::invalid_argument, "jobs.default_timeout: must be between 1s and 24h");
  }
  for (const auto& [key, value] : {std::pair{"agent.tenant", &c.tenant}, {"agent.site", &c.site}}) {
    if (value->size() > 128) return make_error(Errc::invalid_argument, "{}: at most 128 characters", key);
  }
  return {};
}

}  // namespace flotilla::agent
