#include "flotilla/sim/simulator.hpp"

#include <algorithm>
#include <atomic>
#include <random>

#include "flotilla/agent/protocol.hpp"
#include "flotilla/core/backoff.hpp"
#include "flotilla/core/clock.hpp"
#include "flotilla/core/connection.hpp"
#include "flotilla/core/log.hpp"
#include "flotilla/core/queue.hpp"
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
  std::unique_ptr<Simulator> sim(new Simulator(std::move(config)));
  auto& s = *sim->state_;
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

void Simulator::run(std::stop_token stop) {
  auto& s = *state_;
  s.started = SteadyClock::now();
  const auto n = s.devices.size();
  for (auto& d : s.devices) {
    d->start_at = s.started +
                  config_.connect_spread * static_cast<std::int64_t>(d->index) / static_cast<std::int64_t>(n);
    d->next_telemetry = d->start_at + jittered(config_.telemetry_interval, 0.5, s.rng);
  }
  log::info("simulating {} devices ({} pc, {} printer, {} sensor)", n, (n + 2) / 3, (n + 1) / 3, n / 3);
  std::vector<Event> events;
  while (!stop.stop_requested()) {
    events.clear();
    s.queue.drain(events, 1024, std::chrono::milliseconds(20));
    for (auto& e : events) handle(*s.devices[e.device], e.event);
    const auto now = SteadyClock::now();
    for (auto& d : s.devices) {
      if (!d->started) {
        if (now < d->start_at) continue;
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
