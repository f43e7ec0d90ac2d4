// flotilla-bench-e2e: end-to-end ingest over a real Mosquitto. Starts, on free loopback ports
// and in a fresh temporary directory, the broker (configured by deploy/mosquitto/make-broker-config
// from the production template and ACL), flotilla-manager and flotilla-sim; waits until every
// simulated device is online; then measures over one window, in parallel on the same traffic:
//
//   - what the manager ingests (messages_ingested and batches_written from its ManagerStats RPC),
//   - what a bare MQTT subscriber receives (the baseline: same username and QoS as the manager,
//     subscribed to flotilla/v1/dev/+/telemetry, counting messages, storing nothing),
//
// next to the offered rate (devices / telemetry interval). Also prints the time from starting the
// simulator to all devices online, RSS per device and CPU per process over the window.
//
// A benchmark, not a test: figures are printed, never asserted. Every process it starts is
// terminated and reaped before it exits, on errors and SIGINT/SIGTERM too.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "bench_support.hpp"
#include "flotilla/cli/rpc_client.hpp"
#include "flotilla/core/app.hpp"
#include "flotilla/core/config.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/sim/fleet_model.hpp"
#include "flotilla/v1/manager.pb.h"

namespace {

using namespace flotilla;
using bench::Child;
using bench::Clock;
using bench::kManagerUser;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::string_view kSysDropped = "$SYS/broker/publish/messages/dropped";

using bench::must;

void check_interrupted() { must(bench::check_interrupted()); }
void pause_for(Clock::duration d) { must(bench::pause_for(d)); }

// ---------------------------------------------------------------------------------------------
// The bare subscriber: the baseline.

struct SubscriberState {
  std::atomic<std::uint64_t> telemetry{0};
  std::atomic<bool> connected{false};
  std::atomic<int> subscribed{0};  // 0 pending, 1 ok, -1 refused
  std::mutex mutex;
  std::string error;
  std::string broker_dropped;  // last $SYS value
};

class BareSubscriber {
 public:
  BareSubscriber(const std::string& uri, const std::string& password) : state_(std::make_shared<SubscriberState>()) {
    TransportOptions o;
    o.broker_uri = uri;
    o.client_id = "flotilla-bench-sub-" + cli::random_hex(6);
    o.username = kManagerUser;
    o.password = password;
    o.clean_start = true;
    o.session_expiry = seconds(0);
    auto state = state_;
    // Runs on Paho's thread: counts and records, never calls back into the transport.
    auto t = make_mqtt_transport(o, [state](TransportEvent&& e) {
      if (auto* r = std::get_if<event::Received>(&e)) {
        if (r->message.topic == kSysDropped) {
          std::lock_guard lock(state->mutex);
          state->broker_dropped = r->message.payload;
        } else {
          state->telemetry.fetch_add(1, std::memory_order_relaxed);
        }
      } else if (std::get_if<event::Connected>(&e) != nullptr) {
        state->connected = true;
      } else if (auto* f = std::get_if<event::ConnectFailed>(&e)) {
        std::lock_guard lock(state->mutex);
        state->error = f->error.message;
      } else if (auto* s = std::get_if<event::Subscribed>(&e)) {
        state->subscribed = s->status ? 1 : -1;
        if (!s->status) {
          std::lock_guard lock(state->mutex);
          state->error = s->status.error().message;
        }
      } else if (auto* l = std::get_if<event::ConnectionLost>(&e)) {
        state->connected = false;
        std::lock_guard lock(state->mutex);
        state->error = "connection lost: " + l->cause;
      }
    });
    if (!t) throw std::runtime_error(fmt::format("subscriber: {}", t.error().message));
    transport_ = std::move(t).value();
    if (auto st = transport_->connect(std::nullopt); !st) {
      throw std::runtime_error(fmt::format("subscriber connect: {}", st.error().message));
    }
    wait_for([&] { return state_->connected.load(); }, "connect");
    auto id = transport_->subscribe(
        {{topics::all_devices(topics::Channel::telemetry), 1}, {std::string(kSysDropped), 0}});
    if (!id) throw std::runtime_error(fmt::format("subscriber subscribe: {}", id.error().message));
    wait_for([&] { return state_->subscribed.load() != 0; }, "subscribe");
    if (state_->subscribed.load() < 0) throw std::runtime_error("subscriber: subscription refused: " + error());
  }
  BareSubscriber(const BareSubscriber&) = delete;
  BareSubscriber& operator=(const BareSubscriber&) = delete;
  ~BareSubscriber() {
    if (transport_ && transport_->connected()) (void)transport_->disconnect(milliseconds(1000));
  }

  std::uint64_t telemetry() const { return state_->telemetry.load(); }
  bool connected() const { return state_->connected.load(); }
  std::string error() const {
    std::lock_guard lock(state_->mutex);
    return state_->error;
  }
  std::string broker_dropped() const {
    std::lock_guard lock(state_->mutex);
    return state_->broker_dropped;
  }

 private:
  template <typename Pred>
  void wait_for(Pred done, const char* what) {
    const auto deadline = Clock::now() + seconds(10);
    while (!done()) {
      check_interrupted();
      if (Clock::now() >= deadline) throw std::runtime_error(fmt::format("subscriber {}: timeout {}", what, error()));
      std::this_thread::sleep_for(milliseconds(10));
    }
  }

  std::shared_ptr<SubscriberState> state_;
  std::unique_ptr<Transport> transport_;
};

// ---------------------------------------------------------------------------------------------

struct Options {
  std::size_t devices = 2000;
  std::string telemetry_interval = "1s";
  std::string window = "20s";
  std::string settle = "2s";
  std::string online_timeout = "180s";
  std::string mosquitto = "mosquitto";
  bool keep = false;
};

milliseconds duration_flag(const std::string& text, const char* flag) {
  auto d = config::parse_duration(text);
  if (!d || d->count() <= 0) {
    throw std::invalid_argument(fmt::format("{}: '{}' is not a positive duration", flag, text));
  }
  return *d;
}

struct Snapshot {
  Clock::time_point at;
  std::uint64_t subscriber = 0;
  v1::ManagerStats stats;
  std::map<std::string, double> cpu;  // process name -> CPU seconds
};

class Bench {
 public:
  explicit Bench(Options o) : o_(std::move(o)) {
    interval_ = duration_flag(o_.telemetry_interval, "--telemetry-interval");
    window_ = duration_flag(o_.window, "--window");
    settle_ = duration_flag(o_.settle, "--settle");
    online_timeout_ = duration_flag(o_.online_timeout, "--online-timeout");
    if (o_.devices == 0 || o_.devices > 100000) throw std::invalid_argument("--devices: must be in 1..100000");
    dir_ = must(bench::make_temp_dir("flotilla-bench-e2e-"));
  }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  ~Bench() {
    teardown();
    if (!o_.keep) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  void run();

  // Last lines of every log, for failures.
  std::string logs() const {
    return bench::log_tails({dir_ / "make-broker-config.log", dir_ / "mosquitto.log",
                             dir_ / "broker" / "data" / "mosquitto.log", dir_ / "manager.log", dir_ / "sim.log"},
                            15);
  }

 private:
  void start_broker();
  void start_manager();
  v1::ManagerStats stats();
  Snapshot snapshot();
  void check_alive() {
    for (auto* c : {broker_.get(), manager_.get(), sim_.get()}) {
      if (c != nullptr) must(c->check_alive());
    }
    if (subscriber_ && !subscriber_->connected()) throw std::runtime_error("subscriber: " + subscriber_->error());
  }
  void teardown() {
    // The devices go first (their deaths still reach the manager), the broker last.
    sim_.reset();
    subscriber_.reset();
    rpc_.reset();
    manager_.reset();
    broker_.reset();
  }

  Options o_;
  milliseconds interval_{};
  milliseconds window_{};
  milliseconds settle_{};
  milliseconds online_timeout_{};
  std::filesystem::path dir_;
  std::string password_ = cli::random_hex(12);
  std::uint16_t device_port_ = 0;
  std::uint16_t service_port_ = 0;
  std::unique_ptr<Child> broker_;
  std::unique_ptr<Child> manager_;
  std::optional<cli::RpcClient> rpc_;
  std::unique_ptr<BareSubscriber> subscriber_;
  std::unique_ptr<Child> sim_;
};

void Bench::start_broker() {
  std::vector<std::string> devices;
  devices.reserve(o_.devices);
  for (std::size_t i = 0; i < o_.devices; ++i) devices.push_back(sim::device_id("sim", i));
  auto broker = must(bench::start_broker(dir_, devices, password_, o_.mosquitto));
  device_port_ = broker.device_port;
  service_port_ = broker.service_port;
  broker_ = std::move(broker.process);
}

void Bench::start_manager() {
  bench::Broker broker;
  broker.device_port = device_port_;
  broker.service_port = service_port_;
  auto manager = must(bench::start_manager(dir_, broker, password_));
  manager_ = std::move(manager.process);
  rpc_.emplace(std::move(manager.rpc));
}

v1::ManagerStats Bench::stats() { return must(bench::manager_stats(*rpc_, seconds(10))); }

Snapshot Bench::snapshot() {
  Snapshot s;
  const auto t0 = Clock::now();
  const auto before = subscriber_->telemetry();
  s.stats = stats();
  const auto after = subscriber_->telemetry();
  const auto t1 = Clock::now();
  // The manager answered somewhere inside [t0, t1] (a few ms): take the middle for both.
  s.at = t0 + (t1 - t0) / 2;
  s.subscriber = before + (after - before) / 2;
  s.cpu["flotilla-manager"] = bench::cpu_seconds(manager_->pid());
  s.cpu["mosquitto"] = bench::cpu_seconds(broker_->pid());
  s.cpu["flotilla-sim"] = bench::cpu_seconds(sim_->pid());
  s.cpu["this benchmark (subscriber, RPC)"] = bench::cpu_seconds(0);
  return s;
}

void Bench::run() {
  const double offered = static_cast<double>(o_.devices) * 1000.0 / static_cast<double>(interval_.count());
  fmt::print("flotilla-bench-e2e: {} simulated devices, telemetry every {}, measuring window {}\n", o_.devices,
             config::format_duration(interval_), config::format_duration(window_));
  fmt::print("work dir {}{}; load average at start: {}\n", dir_.string(), o_.keep ? " (kept)" : " (removed at exit)",
             bench::load_average());

  start_broker();
  fmt::print("mosquitto pid {} on 127.0.0.1:{} (devices) and :{} (services)\n", broker_->pid(), device_port_,
             service_port_);
  start_manager();
  fmt::print("flotilla-manager pid {} answering\n", manager_->pid());
  subscriber_ = std::make_unique<BareSubscriber>(fmt::format("mqtt://127.0.0.1:{}", service_port_), password_);
  fmt::print("bare subscriber connected as {} to {}\n", kManagerUser, topics::all_devices(topics::Channel::telemetry));

  const auto sim_bin = bench::binary_dir() / "examples" / "sim" / "flotilla-sim";
  const auto sim_start = Clock::now();
  sim_ = must(Child::spawn("flotilla-sim",
                           {sim_bin.string(), "--broker", fmt::format("mqtt://127.0.0.1:{}", device_port_), "--devices",
                            std::to_string(o_.devices), "--telemetry-interval", o_.telemetry_interval,
                            "--password-file", (dir_ / "password").string()},
                           dir_ / "sim.log", seconds(60)));
  fmt::print("flotilla-sim pid {} started; waiting for {} devices online (timeout {})\n", sim_->pid(), o_.devices,
             config::format_duration(online_timeout_));
  std::uint64_t online = 0;
  for (;;) {
    check_alive();
    online = stats().devices_online();
    if (online >= o_.devices) break;
    if (Clock::now() - sim_start > online_timeout_) {
      throw std::runtime_error(fmt::format("only {} of {} devices online after {}", online, o_.devices,
                                           config::format_duration(online_timeout_)));
    }
    pause_for(milliseconds(100));
  }
  const double online_s = std::chrono::duration<double>(Clock::now() - sim_start).count();

  pause_for(settle_);
  check_alive();
  const Snapshot a = snapshot();
  pause_for(window_);
  check_alive();
  const Snapshot b = snapshot();
  const std::uint64_t rss = bench::rss_bytes(manager_->pid());
  const std::uint64_t broker_rss = bench::rss_bytes(broker_->pid());
  const std::uint64_t sim_rss = bench::rss_bytes(sim_->pid());

  const double dt = std::chrono::duration<double>(b.at - a.at).count();
  const double sub_rate = static_cast<double>(b.subscriber - a.subscriber) / dt;
  const auto ingested = b.stats.messages_ingested() - a.stats.messages_ingested();
  const auto batches = b.stats.batches_written() - a.stats.batches_written();
  const double mgr_rate = static_cast<double>(ingested) / dt;

  fmt::print("\ntime from starting flotilla-sim to all {} devices online (manager devices_online): {:.2f} s\n",
             o_.devices, online_s);
  fmt::print("  (includes the simulator's own start-up and its fixed 2 s connect spread)\n");
  fmt::print("\nwindow of {:.2f} s starting {} after all devices were online; both counted in parallel:\n", dt,
             config::format_duration(settle_));
  fmt::print("  {:<46} {:>10} {:>12} {:>14}\n", "", "msg/s", "vs offered", "vs subscriber");
  fmt::print("  {:<46} {:>10.1f} {:>11.3f}x {:>14}\n", "offered (devices / telemetry interval)", offered, 1.0, "");
  fmt::print("  {:<46} {:>10.1f} {:>11.3f}x {:>13.3f}x\n", "baseline: bare MQTT subscriber, no storage", sub_rate,
             sub_rate / offered, 1.0);
  fmt::print("  {:<46} {:>10.1f} {:>11.3f}x {:>13.3f}x\n", "flotilla-manager ingested (RocksDB, synced)", mgr_rate,
             mgr_rate / offered, sub_rate > 0 ? mgr_rate / sub_rate : 0.0);
  fmt::print("  manager batches: {:.1f} per second, mean batch {:.1f} messages (one synced RocksDB write each)\n",
             static_cast<double>(batches) / dt,
             batches > 0 ? static_cast<double>(ingested) / static_cast<double>(batches) : 0.0);
  fmt::print(
      "  manager RSS {:.1f} MiB = {:.0f} bytes per device (registry of {} devices); mosquitto RSS {:.1f} MiB, "
      "flotilla-sim RSS {:.1f} MiB\n",
      static_cast<double>(rss) / 1048576.0, static_cast<double>(rss) / static_cast<double>(o_.devices),
      b.stats.devices(), static_cast<double>(broker_rss) / 1048576.0, static_cast<double>(sim_rss) / 1048576.0);
  std::string cpu;
  for (const auto& [name, secs] : b.cpu) {
    cpu += fmt::format("{}{} {:.0f}%", cpu.empty() ? "" : ", ", name, 100.0 * (secs - a.cpu.at(name)) / dt);
  }
  fmt::print("  CPU over the window (100% = one core; this machine has {}): {}\n", std::thread::hardware_concurrency(),
             cpu);
  std::string notes;
  for (const auto& [k, v] : b.stats.dropped()) {
    const auto it = a.stats.dropped().find(k);
    const auto before = it == a.stats.dropped().end() ? 0 : it->second;
    if (v > before) notes += fmt::format(" dropped.{}={}", k, v - before);
  }
  for (const auto& [k, v] : b.stats.events()) {
    const auto it = a.stats.events().find(k);
    const auto before = it == a.stats.events().end() ? 0 : it->second;
    if (v > before && k != "rpc") notes += fmt::format(" {}={}", k, v - before);
  }
  fmt::print("  manager drops/events in the window:{}\n", notes.empty() ? " none" : notes);
  const std::string dropped = subscriber_->broker_dropped();
  fmt::print("  broker {}: {}\n", kSysDropped, dropped.empty() ? "(not yet published)" : dropped);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App cli{
      "Flotilla end-to-end ingest benchmark: Mosquitto + flotilla-manager + flotilla-sim, manager ingest vs. "
      "a bare MQTT subscriber on the same traffic."};
  cli.add_option("--devices", o.devices, "Simulated devices")->capture_default_str();
  cli.add_option("--telemetry-interval", o.telemetry_interval, "Telemetry period per device")->capture_default_str();
  cli.add_option("--window", o.window, "Measuring window")->capture_default_str();
  cli.add_option("--settle", o.settle, "Pause between all devices online and the window")->capture_default_str();
  cli.add_option("--online-timeout", o.online_timeout, "Give up when the fleet is not online by then")
      ->capture_default_str();
  cli.add_option("--mosquitto", o.mosquitto, "Mosquitto binary (looked up in PATH)")->capture_default_str();
  cli.add_flag("--keep", o.keep, "Keep the work directory (configs, logs, RocksDB)");
  if (auto code = flotilla::app::parse(cli, argc, argv)) return *code;

  return flotilla::bench::run_main<Bench>("flotilla-bench-e2e", o);
}
