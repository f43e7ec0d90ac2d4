#include "flotilla/sim/simulator.hpp"

#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <queue>
#include <random>
#include <set>

#include "flotilla/agent/protocol.hpp"
#include "flotilla/core/backoff.hpp"
#include "flotilla/core/clock.hpp"
#include "flotilla/core/connection.hpp"
#include "flotilla/core/log.hpp"
#include "flotilla/core/queue.hpp"
#include "flotilla/core/signed_job.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/core/version.hpp"
#include "flotilla/sim/fleet_model.hpp"

namespace flotilla::sim {
namespace {

// Stream ids come from the system's entropy, not from --seed: a rerun with the same seed is a new
// stream, or the manager would take its readings for duplicates of the previous run's.
std::uint64_t stream_ids() {
  static std::random_device entropy;
  return (std::uint64_t{entropy()} << 32) | entropy();
}

// A number in [0, 1) from a job id and a device index: the fate of one execution.
double fate(std::string_view job_id, std::size_t index) {
  std::uint64_t h = 1469598103934665603ull;
  for (const char c : job_id) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  h = (h ^ index) * 1099511628211ull;
  h ^= h >> 33;
  return static_cast<double>(h % 1'000'000) / 1e6;
}

}  // namespace

struct Simulator::Device {
  std::size_t index = 0;
  DeviceModel model;
  std::unique_ptr<agent::DeviceProtocol> protocol;
  std::unique_ptr<Transport> transport;
  std::unique_ptr<Connection> connection;
  SteadyClock::time_point start_at{};
  SteadyClock::time_point next_telemetry{};
  bool started = false;
  std::uint64_t last_epoch = 0;
  SteadyClock::time_point due{};  // when the reactor next needs to look at this device
  // Job outcomes by job id (attempt, status, message): redeliveries get the same answer.
  struct JobOutcome {
    std::uint32_t attempt = 0;
    v1::CommandResult::Status status = v1::CommandResult::STATUS_UNSPECIFIED;
    std::string message;
  };
  std::map<std::string, JobOutcome, std::less<>> jobs;
};

struct Simulator::Event {
  std::size_t device = 0;
  TransportEvent event;
};

struct Simulator::State {
  explicit State(std::size_t capacity) : queue(capacity) {}
  BoundedQueue<Event> queue;
  std::vector<std::unique_ptr<Device>> devices;
  std::mt19937_64 rng;
  std::atomic<std::size_t> connected{0};
  SteadyClock::time_point started{};
  signing::TrustStore trust;
  // Signatures already verified, by SHA-256 of (document, target, signature). Every simulated
  // device shares this process's CPU, so a "*" signature that a real fleet verifies once per
  // device, in parallel, is verified once here.
  std::set<std::string> verified;
  std::ofstream ledger;
  // (due, device index), earliest first; stale entries are skipped when popped.
  std::priority_queue<std::pair<SteadyClock::time_point, std::size_t>,
                      std::vector<std::pair<SteadyClock::time_point, std::size_t>>, std::greater<>>
      timers;
};

Simulator::Simulator(SimConfig config)
    : config_(std::move(config)), state_(std::make_unique<State>(std::max<std::size_t>(4096, config_.devices * 8))) {}

Simulator::~Simulator() = default;

std::size_t Simulator::connected() const { return state_->connected.load(); }

Result<std::unique_ptr<Simulator>> Simulator::create(SimConfig config, const TransportFactory& factory) {
  if (config.devices == 0 || config.devices > 100000) {
    return make_error(Errc::invalid_argument, "--devices: must be between 1 and 100000");
  }
  if (auto st = validate_topic_level_name(config.prefix, "--prefix"); !st) return std::move(st).error();
  if (config.telemetry_interval < std::chrono::milliseconds(100)) {
    return make_error(Errc::invalid_argument, "--telemetry-interval: must be at least 100ms");
  }
  if (auto st = config::validate_mqtt(config.mqtt); !st) return std::move(st).error();
  if (config.job_fail_rate < 0 || config.job_silent_rate < 0 || config.job_fail_rate + config.job_silent_rate > 1) {
    return make_error(Errc::invalid_argument, "--job-fail-rate and --job-silent-rate: fractions summing to at most 1");
  }
  std::unique_ptr<Simulator> sim(new Simulator(std::move(config)));
  auto& s = *sim->state_;
  if (const auto& keys = sim->config_.trusted_keys; !keys.empty()) {
    std::error_code ec;
    auto st = std::filesystem::is_directory(keys, ec) ? s.trust.load_dir(keys) : s.trust.load_file(keys);
    if (!st) return std::move(st).error();
  }
  if (!sim->config_.ledger.empty()) {
    s.ledger.open(sim->config_.ledger, std::ios::app);
    if (!s.ledger) return make_error(Errc::io_error, "--ledger: cannot open {}", sim->config_.ledger.string());
  }
  s.rng.seed(sim->config_.seed);
  const auto& c = sim->config_;
  for (std::size_t i = 0; i < c.devices; ++i) {
    auto d = std::make_unique<Device>();
    d->index = i;
    d->model = make_model(i, c.seed);
    auto id = DeviceId::parse(device_id(c.prefix, i));
    if (!id) return std::move(id).error();
    agent::Identity identity{
        *id,
        d->model.kind,
        std::string(flotilla::version) + "-sim",
        c.tenant,
        d->model.site,
        {"simulated"},
        {},
        static_cast<std::uint32_t>(c.mqtt.keepalive.count()),
        static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(c.telemetry_interval).count())};
    d->protocol = std::make_unique<agent::DeviceProtocol>(std::move(identity));
    // Simulated devices keep no durable state: each run is a new reading stream.
    d->protocol->set_stream(stream_ids() | 1, 1);
    auto options = config::transport_options(c.mqtt);
    if (!options) return std::move(options).error();
    options->client_id = id->str();
    options->username = id->str();
    auto* queue = &s.queue;
    auto transport = factory(std::move(options).value(), [queue, i](TransportEvent&& e) {
      queue->push(Event{i, std::move(e)});
    });
    if (!transport) return std::move(transport).error();
    d->transport = std::move(transport).value();
    Device* dev = d.get();
    State* state = sim->state_.get();
    Connection::Hooks hooks;
    hooks.make_will = [dev]() -> std::optional<Message> {
      dev->last_epoch = std::max<std::uint64_t>(dev->last_epoch + 1, static_cast<std::uint64_t>(unix_now_ms()));
      dev->protocol->begin_session(dev->last_epoch);
      return dev->protocol->will(unix_now_ms());
    };
    hooks.on_up = [dev, state](bool) {
      state->connected.fetch_add(1);
      (void)dev->transport->publish(
          dev->protocol->birth(dev->model.inventory, dev->protocol->next_seq() - 1, 0, unix_now_ms()));
    };
    hooks.on_down = [state](const std::string&) { state->connected.fetch_sub(1); };
    const auto& id_str = dev->protocol->identity().id;
    d->connection = std::make_unique<Connection>(
        *d->transport, std::vector<Subscription>{{topics::device(id_str, topics::Channel::cmd), 1}},
        Backoff(c.mqtt.reconnect_min, c.mqtt.reconnect_max, c.seed * 7919 + i), std::move(hooks));
    s.devices.push_back(std::move(d));
  }
  return sim;
}

void Simulator::handle(Device& d, TransportEvent& e) {
  if (d.connection->handle(e, SteadyClock::now())) return;
  auto* r = std::get_if<event::Received>(&e);
  if (r == nullptr) return;
  const auto now = unix_now_ms();
  auto decision = d.protocol->on_command(r->message, now);
  if (auto* reply = std::get_if<agent::DeviceProtocol::Reply>(&decision)) {
    (void)d.transport->publish(reply->result);
    return;
  }
  auto* exec = std::get_if<agent::DeviceProtocol::Execute>(&decision);
  if (exec == nullptr) return;
  const auto& cmd = exec->command;
  Message result;
  if (cmd.type() == "job") {
    on_job(d, cmd, now);
    return;
  }
  if (cmd.type() == "ping") {
    result = d.protocol->result(cmd, v1::CommandResult::STATUS_SUCCEEDED, "pong", {}, now);
  } else if (cmd.type() == "inventory.refresh") {
    (void)d.transport->publish(d.protocol->inventory(d.model.inventory, now));
    result = d.protocol->result(cmd, v1::CommandResult::STATUS_SUCCEEDED, "inventory sent", {}, now);
  } else if (cmd.type() == "rebirth") {
    (void)d.transport->publish(d.protocol->birth(d.model.inventory, d.protocol->next_seq() - 1, 0, now));
    result = d.protocol->result(cmd, v1::CommandResult::STATUS_SUCCEEDED, "birth sent", {}, now);
  } else {
    result = d.protocol->result(cmd, v1::CommandResult::STATUS_REJECTED,
                                fmt::format("unsupported command type '{}'", cmd.type().substr(0, 64)), {}, now);
  }
  (void)d.transport->publish(result);
}

void Simulator::on_job(Device& d, const v1::Command& cmd, std::int64_t now_ms) {
  auto& s = *state_;
  const auto& self = d.protocol->identity();
  auto reply = [&](const std::string& job_id, std::uint32_t attempt, v1::CommandResult::Status status,
                   const std::string& text) {
    (void)d.transport->publish(d.protocol->job_result(job_id, attempt, status, text, {}, 100, now_ms));
  };
  const std::string seen_key = cmd.has_job() && cmd.job().target() == "*"
                                   ? signing::sha256(cmd.job().document() + '\n' + cmd.job().signature() + '\n' +
                                                     cmd.job().key_id())
                                   : std::string();
  const jobs::DeviceScope scope{self.id.str(), self.tenant, self.site};
  const bool known = !seen_key.empty() && s.verified.contains(seen_key);
  auto doc = known ? jobs::check_job(cmd, scope, now_ms, 0) : jobs::verify_job(s.trust, cmd, scope, now_ms, 0);
  if (doc && !seen_key.empty()) s.verified.insert(seen_key);
  if (!doc) {
    reply("", cmd.attempt(), v1::CommandResult::STATUS_REJECTED, doc.error().message);
    return;
  }
  const std::string& job_id = doc->job_id();
  auto it = d.jobs.find(job_id);
  const bool retry = it != d.jobs.end() && cmd.attempt() > it->second.attempt &&
                     it->second.status == v1::CommandResult::STATUS_FAILED;
  if (it != d.jobs.end() && !retry) {
    if (it->second.status != v1::CommandResult::STATUS_UNSPECIFIED) {
      reply(job_id, cmd.attempt(), it->second.status, it->second.message);
    }
    return;
  }
  Device::JobOutcome outcome{cmd.attempt(), v1::CommandResult::STATUS_SUCCEEDED, "done (simulated)"};
  const double f = fate(fmt::format("{}/{}", job_id, cmd.attempt()), d.index);
  if (f < config_.job_silent_rate) {
    outcome.status = v1::CommandResult::STATUS_UNSPECIFIED;  // never answers
  } else if (f < config_.job_silent_rate + config_.job_fail_rate) {
    outcome = {cmd.attempt(), v1::CommandResult::STATUS_FAILED, "failed (simulated)"};
  }
  if (s.ledger.is_open()) s.ledger << self.id.str() << ' ' << job_id << ' ' << cmd.attempt() << '\n' << std::flush;
  d.jobs[job_id] = outcome;
  if (outcome.status != v1::CommandResult::STATUS_UNSPECIFIED)
    reply(job_id, cmd.attempt(), outcome.status, outcome.message);
}

void Simulator::run(std::stop_token stop) {
  auto& s = *state_;
  s.started = SteadyClock::now();
  const auto n = s.devices.size();
  for (auto& d : s.devices) {
    d->start_at = s.started +
                  config_.connect_spread * static_cast<std::int64_t>(d->index) / static_cast<std::int64_t>(n);
    d->next_telemetry = d->start_at + jittered(config_.telemetry_interval, 0.5, s.rng);
    d->due = d->start_at;
    s.timers.emplace(d->due, d->index);
  }
  log::info("simulating {} devices ({} pc, {} printer, {} sensor)", n, (n + 2) / 3, (n + 1) / 3, n / 3);
  // After the reactor looked at a device: when it needs to look again. `popped`: the device's
  // heap entry was consumed, so a new one is needed even if the time did not change.
  auto reschedule = [&s](Device& d, bool popped) {
    const auto due = d.started ? std::min(d.connection->next_deadline(), d.next_telemetry) : d.start_at;
    if (!popped && due == d.due) return;
    d.due = due;
    s.timers.emplace(due, d.index);
  };
  std::vector<Event> events;
  while (!stop.stop_requested()) {
    events.clear();
    s.queue.drain(events, 1024, std::chrono::milliseconds(20));
    for (auto& e : events) {
      auto& d = *s.devices[e.device];
      handle(d, e.event);
      reschedule(d, false);
    }
    const auto now = SteadyClock::now();
    // Only the devices whose time has come: a large fleet costs per event, not per loop.
    while (!s.timers.empty() && s.timers.top().first <= now) {
      const auto [when, index] = s.timers.top();
      s.timers.pop();
      auto* d = s.devices[index].get();
      if (when != d->due) continue;  // superseded
      if (!d->started) {
        d->started = true;
        d->connection->start(now);
      }
      d->connection->tick(now);
      if (now >= d->next_telemetry) {
        d->next_telemetry = now + jittered(config_.telemetry_interval, 0.1, s.rng);
        if (d->connection->up()) {
          const auto uptime = static_cast<std::uint64_t>(
              std::chrono::duration_cast<std::chrono::seconds>(now - s.started).count());
          (void)d->transport->publish(d->protocol->telemetry(next_telemetry(d->model, s.rng, uptime), unix_now_ms()));
        }
      }
      reschedule(*d, true);
    }
  }
  log::info("simulator stopping");
  for (auto& d : s.devices) {
    if (d->connection->up()) (void)d->transport->publish(d->protocol->graceful_death(unix_now_ms()));
  }
  for (auto& d : s.devices) {
    if (d->transport->connected()) (void)d->transport->disconnect(std::chrono::milliseconds(1000));
  }
  s.queue.close();
}

}  // namespace flotilla::sim
