#include "flotilla/agent/agent.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include "flotilla/core/backoff.hpp"
#include "flotilla/core/clock.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/log.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/core/version.hpp"
#include "flotilla/manager/schedule.hpp"

namespace flotilla::agent {
namespace {

// Writes `text` to `path` atomically and durably: temp file, fsync, rename, fsync directory.
Status write_file_durably(const std::filesystem::path& path, const std::string& text) {
  const auto tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(Errc::io_error, "cannot write {}", tmp);
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0)
    return make_error(Errc::io_error, "cannot write {}", path.string());
  const int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
  return {};
}

Identity identity_from(const AgentConfig& c) {
  Identity id{
      DeviceId::parse(c.device_id).value(),
      v1::DEVICE_KIND_COMPUTER,
      flotilla::version,
      c.tenant,
      c.site,
      c.tags,
      {},
      static_cast<std::uint32_t>(c.mqtt.keepalive.count()),
      static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(c.telemetry_interval).count())};
  return id;
}

}  // namespace

Result<std::unique_ptr<Agent>> Agent::create(AgentConfig config, std::vector<std::unique_ptr<Collector>> collectors,
                                             const TransportFactory& transport_factory) {
  if (auto st = validate(config); !st) return std::move(st).error();
  std::error_code ec;
  std::filesystem::create_directories(config.state_dir, ec);
  if (ec)
    return make_error(Errc::io_error, "agent.state_dir: cannot create {}: {}", config.state_dir.string(), ec.message());
  std::filesystem::permissions(config.state_dir, std::filesystem::perms::owner_all, ec);

  OutboxOptions oo;
  oo.dir = config.state_dir / "outbox";
  oo.max_bytes = config.outbox_max_bytes;
  auto outbox = Outbox::open(oo);
  if (!outbox) return std::move(outbox).error();

  if ((*outbox)->corrupt_records_skipped() > 0 || (*outbox)->state_was_reset()) {
    log::warn("outbox recovered from damage: {} records discarded, {} bytes truncated{}",
              (*outbox)->corrupt_records_skipped(), (*outbox)->corrupt_bytes_truncated(),
              (*outbox)->state_was_reset() ? ", state reset" : "");
  }
  std::unique_ptr<Agent> a(new Agent(std::move(config), std::move(collectors), std::move(outbox).value()));
  JobRunnerOptions jo;
  jo.state_dir = a->config_.state_dir;
  jo.trusted_keys = a->config_.trusted_keys;
  jo.self = jobs::DeviceScope{a->config_.device_id, a->config_.tenant, a->config_.site};
  jo.policy.allow_reboot = a->config_.allow_reboot;
  jo.policy.apt_simulate_only = a->config_.apt_simulate_only;
  jo.policy.work_dir = a->config_.state_dir / "jobs";
  jo.policy.default_timeout = std::chrono::duration_cast<std::chrono::seconds>(a->config_.job_default_timeout);
  Agent* agent = a.get();
  jo.local["inventory.refresh"] = [agent](const JobRequest&) {
    agent->check_inventory(true);
    return JobOutcome{JobStatus::succeeded, "inventory sent", {}};
  };
  jo.local["config.set"] = [agent](const JobRequest& request) { return agent->config_set(request); };
  auto runner = JobRunner::open(std::move(jo), unix_now_ms());
  if (!runner) return std::move(runner).error();
  a->jobs_ = std::move(runner).value();
  if (std::ifstream in(a->config_.state_dir / "patches.pb", std::ios::binary); in) {
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!a->patches_.ParseFromString(bytes)) a->patches_.Clear();
  }
  // The configuration applied before the last stop holds until the manager's retained one
  // arrives.
  if (std::ifstream in(a->config_.state_dir / "config.pb", std::ios::binary); in) {
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    v1::DesiredConfig saved;
    if (saved.ParseFromString(bytes)) {
      if (auto st = a->apply_config(saved); !st) log::warn("stored configuration not applied: {}", st.error().message);
    }
  }
  auto stream = a->load_stream_id();
  if (!stream) return std::move(stream).error();
  a->stream_id_ = *stream;
  a->protocol_.set_stream(a->stream_id_, a->outbox_->next_id());
  auto options = config::transport_options(a->config_.mqtt);
  if (!options) return std::move(options).error();
  if (options->client_id.empty()) options->client_id = a->config_.device_id;
  if (options->username.empty()) options->username = a->config_.device_id;
  auto* queue = &a->queue_;
  auto transport = transport_factory(std::move(options).value(),
                                     [queue](TransportEvent&& e) { queue->push(std::move(e)); });
  if (!transport) return std::move(transport).error();
  a->transport_ = std::move(transport).value();

  const DeviceId& id = a->protocol_.identity().id;
  Connection::Hooks hooks;
  Agent* self = a.get();
  hooks.make_will = [self]() -> std::optional<Message> {
    auto epoch = self->next_epoch();
    if (!epoch) {
      // Still connect with a Will: an epoch held only in memory keeps presence correct for this
      // run; only a restart could then reuse an epoch the manager has seen.
      log::error("cannot persist the session epoch: {}", epoch.error().message);
      epoch = std::max<std::uint64_t>(self->protocol_.epoch() + 1, static_cast<std::uint64_t>(unix_now_ms()));
    }
    self->protocol_.begin_session(*epoch);
    return self->protocol_.will(unix_now_ms());
  };

  hooks.on_up = [self](bool) { self->on_up(); };
  hooks.on_down = [self](const std::string& cause) {
    log::warn("broker connection lost: {}", cause);
    self->on_down();
  };
  a->connection_ = std::make_unique<Connection>(
      *a->transport_,
      std::vector<Subscription>{{topics::device(id, topics::Channel::cmd), 1},
                                {topics::device(id, topics::Channel::config), 1}},
      Backoff(a->config_.mqtt.reconnect_min, a->config_.mqtt.reconnect_max, a->rng_()), std::move(hooks));
  return a;
}

Agent::Agent(AgentConfig config, std::vector<std::unique_ptr<Collector>> collectors, std::unique_ptr<Outbox> outbox)
    : config_(std::move(config)),
      collectors_(std::move(collectors)),
      outbox_(std::move(outbox)),
      protocol_(identity_from(config_)),
      queue_(4096),
      rng_(std::random_device{}()) {}

Agent::~Agent() = default;

Result<std::uint64_t> Agent::next_epoch() {
  // Epochs only grow: the stored counter plus one, floored by the wall clock in ms so a wiped
  // state directory cannot make the new sessions look older than ones the manager already saw.
  const auto path = config_.state_dir / "epoch";
  std::uint64_t stored = 0;
  if (std::ifstream in(path); in) {
    std::string text;
    std::getline(in, text);
    (void)std::from_chars(text.data(), text.data() + text.size(), stored);
  }
  const std::uint64_t next = std::max<std::uint64_t>(stored + 1, static_cast<std::uint64_t>(unix_now_ms()));
  if (auto st = write_file_durably(path, std::to_string(next)); !st) return std::move(st).error();
  return next;
}

Result<std::uint64_t> Agent::load_stream_id() {
  // Created once per state directory; a new one tells the manager that stream numbering restarts.
  const auto path = config_.state_dir / "stream";
  std::uint64_t id = 0;
  if (std::ifstream in(path); in) {
    std::string text;
    std::getline(in, text);
    (void)std::from_chars(text.data(), text.data() + text.size(), id);
  }
  if (id != 0) return id;
  while (id == 0) id = rng_();
  if (auto st = write_file_durably(path, std::to_string(id)); !st) return std::move(st).error();
  return id;
}

v1::Inventory Agent::collect_inventory() {
  v1::Inventory inv;
  for (auto& c : collectors_) {
    if (auto st = c->collect_inventory(inv); !st) log::warn("collector {}: {}", c->name(), st.error().message);
  }
  if (patches_.scanned_at_ms() != 0) *inv.mutable_patches() = patches_;
  return inv;
}

void Agent::run(std::stop_token stop) {
  log::info("agent {} starting; outbox holds {} readings", config_.device_id, outbox_->size());
  last_inventory_ = codec::encode(collect_inventory());
  const auto start = SteadyClock::now();
  next_telemetry_ = start;
  next_inventory_ = start + jittered(std::chrono::duration_cast<std::chrono::milliseconds>(config_.inventory_interval),
                                     config_.telemetry_jitter, rng_);
  connection_->start(start);
  std::vector<TransportEvent> events;
  while (!stop.stop_requested()) {
    const auto now = SteadyClock::now();
    const auto deadline = std::min({connection_->next_deadline(), next_telemetry_, next_inventory_});
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    wait = std::clamp(wait, std::chrono::milliseconds(0), std::chrono::milliseconds(200));
    events.clear();
    queue_.drain(events, 256, wait);
    for (auto& e : events) handle(e);
    publish_job_reports(jobs_->poll(unix_now_ms()));
    commit_acks();
    const auto after = SteadyClock::now();
    connection_->tick(after);
    if (after >= next_telemetry_) {
      sample_telemetry();
      next_telemetry_ = after +
                        jittered(std::chrono::duration_cast<std::chrono::milliseconds>(config_.telemetry_interval),
                                 config_.telemetry_jitter, rng_);
    }
    if (after >= next_inventory_) {
      check_inventory(false);
      next_inventory_ = after + std::chrono::duration_cast<std::chrono::milliseconds>(config_.inventory_interval);
    }
  }
  log::info("agent stopping");
  if (connection_->up()) {
    (void)transport_->publish(protocol_.graceful_death(unix_now_ms()));
    (void)transport_->disconnect(std::chrono::milliseconds(2000));
  }
  queue_.close();
}

void Agent::on_up() {
  log::info("connected to {} as {} (epoch {})", config_.mqtt.broker, config_.device_id, protocol_.epoch());
  birth_reported_dropped_ = outbox_->dropped_unreported();
  auto birth = protocol_.birth(collect_inventory(), outbox_->head_id() - 1, birth_reported_dropped_, unix_now_ms());
  if (auto id = transport_->publish(birth); id) {
    birth_op_ = *id;
  } else {
    log::warn("birth not sent: {}", id.error().message);
  }
  pump();
}

void Agent::on_down() {
  inflight_.clear();
  last_sent_record_ = 0;
  birth_op_ = 0;
}

void Agent::handle(TransportEvent& e) {
  if (connection_->handle(e, SteadyClock::now())) return;
  if (auto* r = std::get_if<event::Received>(&e)) {
    auto topic = topics::parse_device_topic(r->message.topic);
    if (topic && topic->device == protocol_.identity().id && topic->channel == topics::Channel::cmd) {
      on_command(r->message);
    } else if (topic && topic->device == protocol_.identity().id && topic->channel == topics::Channel::config) {
      on_config(r->message);
    }
    return;
  }
  if (auto* d = std::get_if<event::Delivered>(&e)) {
    if (d->id == birth_op_ && birth_op_ != 0) {
      birth_op_ = 0;
      if (d->status && birth_reported_dropped_ > 0) {
        if (auto st = outbox_->mark_dropped_reported(birth_reported_dropped_); !st) {
          log::warn("outbox: {}", st.error().message);
        }
        birth_reported_dropped_ = 0;
      }
      return;
    }
    auto it = inflight_.find(d->id);
    if (it == inflight_.end()) return;
    const std::uint64_t record = it->second;
    inflight_.erase(it);
    if (!d->status && d->status.error().code != Errc::permission_denied) {
      // Not acknowledged: it stays in the outbox and is sent again after the next reconnect.
      return;
    }
    if (!d->status) log::error("broker refused reading {}: {}; dropping it", record, d->status.error().message);
    acked_.push_back(record);
  }
}

void Agent::commit_acks() {
  if (acked_.empty()) return;
  // One durable state write for every PUBACK of this reactor turn.
  if (auto st = outbox_->ack_batch(acked_); !st) log::warn("outbox ack: {}", st.error().message);
  acked_.clear();
  pump();
}

void Agent::on_command(const Message& message) {
  const auto now = unix_now_ms();
  auto decision = protocol_.on_command(message, now);
  if (auto* ignore = std::get_if<DeviceProtocol::Ignore>(&decision)) {
    log::warn("ignoring command: {}", ignore->why);
    return;
  }
  if (auto* reply = std::get_if<DeviceProtocol::Reply>(&decision)) {
    enqueue(reply->result);
    return;
  }
  const auto& cmd = std::get<DeviceProtocol::Execute>(decision).command;
  log::info("command {} ({})", cmd.command_id(), cmd.type());
  if (cmd.type() == "job") {
    publish_job_reports(jobs_->on_command(cmd, now));
  } else if (cmd.type() == "ping") {
    enqueue(protocol_.result(cmd, v1::CommandResult::STATUS_SUCCEEDED, "pong",
                             {{"agent_version", flotilla::version}, {"epoch", std::to_string(protocol_.epoch())}},
                             now));
  } else if (cmd.type() == "inventory.refresh") {
    check_inventory(true);
    enqueue(protocol_.result(cmd, v1::CommandResult::STATUS_SUCCEEDED, "inventory sent", {}, unix_now_ms()));
  } else if (cmd.type() == "rebirth") {
    if (connection_->up()) {
      (void)transport_->publish(protocol_.birth(collect_inventory(), outbox_->head_id() - 1, 0, unix_now_ms()));
    }
    enqueue(protocol_.result(cmd, v1::CommandResult::STATUS_SUCCEEDED, "birth sent", {}, unix_now_ms()));
  } else {
    enqueue(protocol_.result(cmd, v1::CommandResult::STATUS_REJECTED,
                             fmt::format("unsupported command type '{}'", cmd.type().substr(0, 64)), {}, now));
  }
}

void Agent::on_config(const Message& message) {
  auto config = codec::decode<v1::DesiredConfig>(message.payload, codec::max_command_bytes);
  if (!config) {
    log::warn("ignoring desired configuration: {}", config.error().message);
    return;
  }
  if (auto st = adopt_config(*config); !st) log::warn("ignoring desired configuration: {}", st.error().message);
}

Status Agent::adopt_config(const v1::DesiredConfig& config) {
  if (config.device_id() != config_.device_id) {
    return make_error(Errc::invalid_argument, "it is addressed to {:?}", config.device_id().substr(0, 80));
  }
  if (config.version() == protocol_.config_version()) return {};
  if (auto st = apply_config(config); !st) {
    return make_error(Errc::invalid_argument, "configuration {} not applied: {}", config.version().substr(0, 64),
                      st.error().message);
  }
  if (auto st = write_file_durably(config_.state_dir / "config.pb", codec::encode(config)); !st) {
    log::warn("desired configuration applied but not saved: {}", st.error().message);
  }
  log::info("desired configuration {} applied ({} keys)", config.version(), config.values_size());
  // Report the applied version now rather than at the next sample.
  sample_telemetry();
  return {};
}

JobOutcome Agent::config_set(const JobRequest& request) {
  v1::DesiredConfig config;
  if (request.config.empty() || !config.ParseFromString(request.config)) {
    return {JobStatus::rejected, "config.set: the command carries no configuration", {}};
  }
  for (const auto& [key, value] : request.params) {
    auto it = config.values().find(key);
    if (it == config.values().end()) {
      return {JobStatus::rejected, fmt::format("config.set: the configuration sent has no {}", key), {}};
    }
    if (it->second != value) {
      auto source = config.sources().find(key);
      return {JobStatus::rejected,
              fmt::format("config.set: {} is {:?} in the configuration sent, not {:?} (decided by {})", key,
                          it->second.substr(0, 80), value.substr(0, 80),
                          source == config.sources().end() ? std::string("?") : source->second),
              {}};
    }
  }
  if (auto st = adopt_config(config); !st)
    return {JobStatus::failed, fmt::format("config.set: {}", st.error().message), {}};
  return {JobStatus::succeeded,
          fmt::format("configuration {} applied ({} keys)", config.version(), config.values_size()),
          {{"config_version", config.version()}}};
}

Status Agent::apply_config(const v1::DesiredConfig& config) {
  // Validate everything first: a configuration is applied whole or not at all.
  const auto& v = config.values();
  std::optional<std::chrono::milliseconds> telemetry, inventory;
  if (auto it = v.find("telemetry.interval"); it != v.end()) {
    auto d = config::parse_duration(it->second);
    if (!d || *d < std::chrono::seconds(1))
      return make_error(Errc::invalid_argument, "telemetry.interval {:?}", it->second);
    telemetry = *d;
  }
  if (auto it = v.find("inventory.interval"); it != v.end()) {
    auto d = config::parse_duration(it->second);
    if (!d || *d < std::chrono::seconds(10))
      return make_error(Errc::invalid_argument, "inventory.interval {:?}", it->second);
    inventory = *d;
  }
  std::function<bool(std::int64_t)> in_window;
  if (auto it = v.find("maintenance.window"); it != v.end()) {
    auto window = manager::MaintenanceWindow::parse(it->second);
    if (!window) return make_error(Errc::invalid_argument, "maintenance.window: {}", window.error().message);
    in_window = [w = std::move(window).value()](std::int64_t now_ms) { return w.contains(now_ms); };
  }
  std::set<std::string> allowed;
  if (auto it = v.find("jobs.allowed_types"); it != v.end()) {
    std::string_view rest = it->second;
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      allowed.emplace(rest.substr(0, comma));
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
  }
  bool reboot = true;
  if (auto it = v.find("reboot.allowed"); it != v.end()) reboot = it->second == "true";

  if (telemetry) {
    config_.telemetry_interval = *telemetry;
    next_telemetry_ = std::min(next_telemetry_, SteadyClock::now() + *telemetry);
  }
  if (inventory) {
    config_.inventory_interval = *inventory;
    next_inventory_ = std::min(next_inventory_, SteadyClock::now() + *inventory);
  }
  jobs_->set_policy(std::move(allowed), reboot, std::move(in_window));
  protocol_.set_config_version(config.version());
  return {};
}

void Agent::note_patch_scan(const JobReport& report) {
  auto number = [&](const char* key) -> std::uint64_t {
    auto it = report.output.find(key);
    std::uint64_t n = 0;
    if (it != report.output.end()) (void)std::from_chars(it->second.data(), it->second.data() + it->second.size(), n);
    return n;
  };
  v1::PatchStatus p;
  p.set_scanned_at_ms(static_cast<std::int64_t>(number("scanned_ms")));
  p.set_pending(static_cast<std::uint32_t>(number("pending")));
  p.set_security_pending(static_cast<std::uint32_t>(number("security_pending")));
  // Lines "name current -> candidate [security]" ("(new)" for a package not yet installed).
  if (auto it = report.output.find("updates"); it != report.output.end()) {
    std::istringstream lines(it->second);
    std::string line;
    while (std::getline(lines, line) && p.updates_size() < 500) {
      std::istringstream words(line);
      std::string name, current, arrow, candidate, flag;
      if (!(words >> name >> current >> arrow >> candidate) || arrow != "->") continue;
      words >> flag;
      auto* u = p.add_updates();
      u->set_name(name);
      u->set_current_version(current == "(new)" ? std::string() : current);
      u->set_candidate_version(candidate);
      u->set_security(flag == "[security]");
    }
  }
  patches_ = std::move(p);
  if (auto st = write_file_durably(config_.state_dir / "patches.pb", codec::encode(patches_)); !st) {
    log::warn("patch scan not saved: {}", st.error().message);
  }
  check_inventory(true);
}

void Agent::publish_job_reports(std::vector<JobReport> reports) {
  for (auto& r : reports) {
    if (r.type == "patch.scan" && r.status == v1::CommandResult::STATUS_SUCCEEDED) note_patch_scan(r);
    enqueue(protocol_.job_result(r.job_id, r.attempt, r.status, std::move(r.message), r.output, r.progress_percent,
                                 unix_now_ms()));
  }
}

void Agent::enqueue(const Message& message) {
  if (auto id = outbox_->append(message.topic, message.payload); !id) {
    log::error("outbox append failed: {}", id.error().message);
    // The reading was neither stored nor sent: its stream seq is free for the next one.
    protocol_.set_stream(stream_id_, outbox_->next_id());
    return;
  }
  pump();
}

void Agent::pump() {
  if (!connection_->up()) return;
  while (inflight_.size() < config_.max_inflight) {
    const auto room = config_.max_inflight - inflight_.size();
    auto records = outbox_->pending(last_sent_record_, room);
    if (records.empty()) return;
    for (auto& rec : records) {
      auto id = transport_->publish(Message{rec.topic, std::move(rec.payload), 1, false, {}, {}});
      if (!id && id.error().code == Errc::unavailable) return;  // re-sent from the head after reconnect
      last_sent_record_ = rec.id;
      if (!id) {
        // The transport refuses this record outright (it will never be sendable): drop it rather
        // than let it block every reading behind it.
        log::error("dropping unsendable reading {}: {}", rec.id, id.error().message);
        acked_.push_back(rec.id);
        continue;
      }
      inflight_.emplace(*id, rec.id);
    }
  }
}

void Agent::sample_telemetry() {
  v1::Telemetry t;
  for (auto& c : collectors_) {
    if (auto st = c->collect_telemetry(t); !st) log::warn("collector {}: {}", c->name(), st.error().message);
  }
  enqueue(protocol_.telemetry(std::move(t), unix_now_ms()));
}

void Agent::check_inventory(bool force) {
  auto inv = collect_inventory();
  std::string encoded = codec::encode(inv);
  if (!force && encoded == last_inventory_) return;
  last_inventory_ = std::move(encoded);
  enqueue(protocol_.inventory(std::move(inv), unix_now_ms()));
}

}  // namespace flotilla::agent
