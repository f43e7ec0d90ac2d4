#include "flotilla/manager/config.hpp"

#include "flotilla/core/ids.hpp"
#include "flotilla/core/signed_job.hpp"

namespace flotilla::manager {

Result<ManagerConfig> load_config(const std::filesystem::path* file) {
  ManagerConfig c;
  if (file != nullptr) {
    auto reader = config::TomlReader::load_file(*file);
    if (!reader) return std::move(reader).error();
    std::string data_dir = c.data_dir.string();
    std::string level = "info";
    std::uint64_t queue = c.queue_capacity;
    std::uint64_t batch = c.max_batch;
    for (auto st :
         {config::read_mqtt(*reader, c.mqtt), reader->read("manager.data_dir", data_dir),
          reader->read("manager.instance_id", c.instance_id), reader->read("manager.queue_capacity", queue),
          reader->read("manager.max_batch", batch), reader->read("manager.rebirth_interval", c.rebirth_interval),
          reader->read("jobs.default_timeout", c.job_timeout),
          reader->read("jobs.redrive_interval", c.job_redrive_interval),
          reader->read("jobs.require_approval", c.job_require_approval),
          reader->read("groups.event_retention", c.event_retention), reader->read("groups.event_max", c.event_max),
          reader->read("log.level", level), reader->read("log.burst", c.log_burst), reader->reject_unknown_keys()}) {
      if (!st) return std::move(st).error();
    }
    auto lvl = log::parse_level(level);
    if (!lvl) return make_error(Errc::invalid_argument, "log.level: {}", lvl.error().message);
    c.log_level = *lvl;
    c.data_dir = data_dir;
    c.queue_capacity = queue;
    c.max_batch = batch;
  }
  config::apply_mqtt_env(c.mqtt);
  return c;
}

Status validate(const ManagerConfig& c) {
  if (auto st = config::validate_mqtt(c.mqtt); !st) return st;
  if (auto st = validate_topic_level_name(c.instance_id, "manager.instance_id"); !st) return st;
  if (c.data_dir.empty()) return make_error(Errc::invalid_argument, "manager.data_dir: must be set");
  if (c.queue_capacity < 16 || c.queue_capacity > (1u << 24)) {
    return make_error(Errc::invalid_argument, "manager.queue_capacity: must be between 16 and 16777216");
  }
  if (c.max_batch < 1 || c.max_batch > c.queue_capacity) {
    return make_error(Errc::invalid_argument, "manager.max_batch: must be between 1 and manager.queue_capacity");
  }
  if (c.job_timeout < std::chrono::seconds(1) || c.job_timeout > std::chrono::hours(24 * 7)) {
    return make_error(Errc::invalid_argument, "jobs.default_timeout: must be between 1s and 7d");
  }
  if (c.job_redrive_interval < std::chrono::milliseconds(100) || c.job_redrive_interval > std::chrono::hours(1)) {
    return make_error(Errc::invalid_argument, "jobs.redrive_interval: must be between 100ms and 1h");
  }
  for (const auto& type : c.job_require_approval) {
    if (type != "*" && !jobs::valid_job_type(type)) {
      return make_error(Errc::invalid_argument, "jobs.require_approval: {:?} is not a job type (e.g. reboot) or *",
                        type.substr(0, 80));
    }
  }
  if (c.event_retention.count() != 0 &&
      (c.event_retention < std::chrono::minutes(1) || c.event_retention > std::chrono::hours(24 * 36500))) {
    return make_error(Errc::invalid_argument, "groups.event_retention: must be 0 (keep every event) or 1m to 36500d");
  }
  if (c.event_max > 1'000'000'000'000ULL) {
    return make_error(Errc::invalid_argument, "groups.event_max: must be 0 (no limit) or at most 1000000000000");
  }
  return {};
}

}  // namespace flotilla::manager
