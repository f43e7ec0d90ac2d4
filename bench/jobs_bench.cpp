// flotilla-bench-jobs: one signed job to every simulated device, next to the bare broker round trip
// to the same devices over the same broker. Starts, on free loopback ports and in a fresh
// temporary directory, Mosquitto (production template and ACL) and flotilla-sim (N devices over P
// processes, trusting a key generated for the run; telemetry every hour, so it does not compete),
// waits until every device answers a ping, then measures, R times each:
//
//   1. baseline, manager not running: one bare MQTT 5 client (the manager's credentials) publishes
//      a `ping` Command (QoS 1) to every device and waits for N CommandResults; time from the first
//      publish to the last result;
//   2. Flotilla, after flotilla-manager (fresh RocksDB) reports all N devices online: create_job
//      (an `inventory.refresh` document scoped to tenant "demo", signed once for "*", target query
//      tag:simulated, unlimited rollout) and show_job every --poll until N executions SUCCEEDED;
//      time from sending create_job to that answer. A count the manager reports is durable: each
//      result was committed to RocksDB (WAL synced) before the counts changed.
//
// Prints both side by side (p50/min/max over the runs, their ratio), per-run phases, CPU seconds
// per process and phase, load average, machine and versions. A benchmark, not a test: it exits
// non-zero only on errors (timeouts, a device answering something else, processes dying), never
// on a figure. Every process it starts is terminated and reaped before it exits, on errors and
// SIGINT/SIGTERM too.

#include <sys/utsname.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "bench_support.hpp"
#include "flotilla/cli/rpc_client.hpp"
#include "flotilla/core/app.hpp"
#include "flotilla/core/clock.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/config.hpp"
#include "flotilla/core/ids.hpp"
#include "flotilla/core/signed_job.hpp"
#include "flotilla/core/signing.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/core/version.hpp"
#include "flotilla/sim/fleet_model.hpp"
#include "flotilla/v1/command.pb.h"
#include "flotilla/v1/job.pb.h"
#include "flotilla/v1/manager.pb.h"

namespace {

using namespace flotilla;
using bench::Child;
using bench::Clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::string_view kSysConnected = "$SYS/broker/clients/connected";
constexpr std::string_view kSysDropped = "$SYS/broker/publish/messages/dropped";
constexpr const char* kTenant = "demo";  // what flotilla-sim reports unless told otherwise
constexpr const char* kTargetQuery = "tag:simulated";
constexpr const char* kActor = "flotilla-bench-jobs";
// Devices one flotilla-sim process serves without falling behind on two cores: its Paho threads
// walk every client on each turn, so 5,000 in one process no longer keep their sessions up.
constexpr std::size_t kDevicesPerSim = 2000;
// How long one create_job or show_job call waits for its answer. The manager may fail to publish
// an answer (it then logs "rpc reply not sent"); the job goes on, so the run does too.
constexpr milliseconds kRpcTimeout = seconds(2);
// create_job answers after the executions are committed and the commands handed to the transport.
constexpr milliseconds kCreateTimeout = seconds(30);

using bench::must;

// Prints at once: a run takes minutes and its output is often piped into a file.
template <typename... Args>
void say(fmt::format_string<Args...> format, Args&&... args) {
  fmt::print(format, std::forward<Args>(args)...);
  std::fflush(stdout);
}

double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

milliseconds duration_flag(const std::string& text, const char* flag) {
  auto d = config::parse_duration(text);
  if (!d || d->count() <= 0) {
    throw std::invalid_argument(fmt::format("{}: '{}' is not a positive duration", flag, text));
  }
  return *d;
}

// ---------------------------------------------------------------------------------------------
// The benchmark's own MQTT client: the baseline's publisher and result subscriber, and the reader
// of the broker's $SYS counters.

struct Arrival {
  Clock::time_point at;
  std::string topic;
  std::string payload;
};

// Shared with the transport's sink, which runs on Paho's threads: it only records.
struct ClientState {
  std::atomic<bool> connected{false};
  std::atomic<int> subscribed{0};  // 0 pending, 1 ok, -1 refused
  std::atomic<std::uint64_t> failed_deliveries{0};
  std::mutex mutex;
  std::vector<Arrival> arrivals;           // device results, in arrival order
  std::map<std::string, std::string> sys;  // $SYS topic -> last value
  std::string error;
};

class BenchClient {
 public:
  BenchClient(const std::string& uri, const std::string& password, const std::vector<Subscription>& subscriptions)
      : state_(std::make_shared<ClientState>()) {
    TransportOptions o;
    o.broker_uri = uri;
    o.client_id = "flotilla-bench-jobs-" + cli::random_hex(6);
    o.username = bench::kManagerUser;
    o.password = password;
    o.clean_start = true;
    o.session_expiry = seconds(0);
    auto state = state_;
    auto t = make_mqtt_transport(o, [state](TransportEvent&& e) {
      if (auto* r = std::get_if<event::Received>(&e)) {
        const auto at = Clock::now();
        std::lock_guard lock(state->mutex);
        if (r->message.topic.starts_with("$SYS/")) {
          state->sys[r->message.topic] = std::move(r->message.payload);
        } else {
          state->arrivals.push_back(Arrival{at, std::move(r->message.topic), std::move(r->message.payload)});
        }
      } else if (auto* d = std::get_if<event::Delivered>(&e)) {
        if (!d->status) {
          state->failed_deliveries.fetch_add(1);
          std::lock_guard lock(state->mutex);
          state->error = d->status.error().message;
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
    transport_ = must(std::move(t));
    must(transport_->connect(std::nullopt));
    wait_for([&] { return state_->connected.load(); }, "connect");
    must(transport_->subscribe(subscriptions));
    wait_for([&] { return state_->subscribed.load() != 0; }, "subscribe");
    if (state_->subscribed.load() < 0) throw std::runtime_error("benchmark client: subscription refused: " + error());
  }
  BenchClient(const BenchClient&) = delete;
  BenchClient& operator=(const BenchClient&) = delete;
  ~BenchClient() {
    if (transport_ && transport_->connected()) (void)transport_->disconnect(milliseconds(1000));
  }

  // Paho refuses a publish while its queue of unsent publishes is full (100 by default): a client
  // that must not lose the message waits and tries again, as long as it is connected.
  void publish(const Message& m) {
    const auto deadline = Clock::now() + seconds(10);
    for (;;) {
      auto id = transport_->publish(m);
      if (id) return;
      if (!transport_->connected() || Clock::now() >= deadline) {
        throw std::runtime_error(fmt::format("benchmark client: publish to {}: {}", m.topic, id.error().message));
      }
      ++publish_retries_;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  // Publishes that had to be tried again since the last call.
  std::uint64_t take_publish_retries() { return std::exchange(publish_retries_, 0); }

  std::vector<Arrival> take_arrivals() {
    std::vector<Arrival> out;
    std::lock_guard lock(state_->mutex);
    out.swap(state_->arrivals);
    return out;
  }

  // The last value the broker published on a $SYS topic.
  std::optional<std::string> sys(std::string_view topic) const {
    std::lock_guard lock(state_->mutex);
    auto it = state_->sys.find(std::string(topic));
    if (it == state_->sys.end()) return std::nullopt;
    return it->second;
  }

  Status check() const {
    if (!state_->connected.load()) return make_error(Errc::unavailable, "benchmark client: {}", error());
    if (const auto n = state_->failed_deliveries.load(); n > 0) {
      return make_error(Errc::unavailable, "benchmark client: {} publishes refused by the broker, last: {}", n,
                        error());
    }
    return {};
  }

 private:
  std::string error() const {
    std::lock_guard lock(state_->mutex);
    return state_->error;
  }

  template <typename Pred>
  void wait_for(Pred done, const char* what) {
    const auto deadline = Clock::now() + seconds(10);
    while (!done()) {
      must(bench::check_interrupted());
      if (Clock::now() >= deadline) {
        throw std::runtime_error(fmt::format("benchmark client {}: timeout {}", what, error()));
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
  }

  std::shared_ptr<ClientState> state_;
  std::unique_ptr<Transport> transport_;
  std::uint64_t publish_retries_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Figures.

// Order statistics of a few samples (the runs): p50 is the median, the mean of the two middle
// values for an even count.
struct Spread {
  double p50 = 0;
  double min = 0;
  double max = 0;
};

Spread spread(std::vector<double> v) {
  Spread s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  s.p50 = n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  s.min = v.front();
  s.max = v.back();
  return s;
}

// Offsets (from the round's start) at which a fraction of the fleet had answered.
struct Progress {
  double first = 0;
  double half = 0;
  double ninety = 0;
  double all = 0;
};

Progress progress_of(std::vector<double> offsets) {
  Progress p;
  if (offsets.empty()) return p;
  std::sort(offsets.begin(), offsets.end());
  const auto n = offsets.size();
  p.first = offsets.front();
  p.half = offsets[(n - 1) / 2];
  p.ninety = offsets[(n * 9 - 1) / 10];
  p.all = offsets.back();
  return p;
}

struct PingRound {
  double total = 0;    // first publish -> last result, seconds
  double publish = 0;  // first publish -> last publish handed to the client
  Progress results;    // seconds from the first publish
  std::uint64_t duplicates = 0;
  std::uint64_t late = 0;     // answers to an earlier round
  std::uint64_t retries = 0;  // publishes tried again (the client's queue was full)
};

struct JobRound {
  double total = 0;                // create_job sent -> show_job answer with N SUCCEEDED
  double create = -1;              // create_job sent -> its answer (executions committed, commands handed over);
                                   // -1: the answer never came
  std::uint64_t lost_replies = 0;  // RPC calls without an answer within kRpcTimeout
  double notified = -1;            // first answer with notified == N
  Progress succeeded;              // first answers showing 1, 50 %, 90 %, 100 % SUCCEEDED
  std::uint64_t polls = 0;         // show_job calls
  double poll_rtt_max = 0;         // slowest show_job round trip, seconds
  std::string state;               // job state in the last answer
  std::string manager;             // the manager's drops and events during the run
};

// CPU seconds per process at one instant.
struct CpuSample {
  Clock::time_point at;
  std::map<std::string, double> cpu;
};

// What changed in the manager's drop and event counters between two ManagerStats (RPC answers and
// command results, which every run has, left out).
std::string stats_delta(const v1::ManagerStats& a, const v1::ManagerStats& b) {
  std::string notes;
  for (const auto& [k, v] : b.dropped()) {
    const auto it = a.dropped().find(k);
    const auto before = it == a.dropped().end() ? 0 : it->second;
    if (v > before) notes += fmt::format(" dropped.{}={}", k, v - before);
  }
  for (const auto& [k, v] : b.events()) {
    const auto it = a.events().find(k);
    const auto before = it == a.events().end() ? 0 : it->second;
    if (v > before && k != "rpc" && k != "command_result") notes += fmt::format(" {}={}", k, v - before);
  }
  return notes.empty() ? std::string(" none") : notes;
}

// ---------------------------------------------------------------------------------------------

struct Options {
  std::size_t devices = 10000;
  std::size_t sim_processes = 0;  // 0: one per kDevicesPerSim devices
  std::size_t runs = 3;
  std::string telemetry_interval = "1h";
  std::string online_timeout = "600s";
  std::string run_timeout = "300s";
  std::string poll = "20ms";
  std::string settle = "2s";
  std::string redrive_interval;  // manager's jobs.redrive_interval; empty: its default
  std::string manager;           // flotilla-manager binary; empty: the one of this build
  std::string mosquitto = "mosquitto";
  bool keep = false;
};

struct SimProcess {
  std::string prefix;
  std::size_t devices = 0;
  std::filesystem::path log;
  std::unique_ptr<Child> child;
};

class Bench {
 public:
  explicit Bench(Options o) : o_(std::move(o)) {
    online_timeout_ = duration_flag(o_.online_timeout, "--online-timeout");
    run_timeout_ = duration_flag(o_.run_timeout, "--run-timeout");
    poll_ = duration_flag(o_.poll, "--poll");
    settle_ = duration_flag(o_.settle, "--settle");
    (void)duration_flag(o_.telemetry_interval, "--telemetry-interval");
    if (!o_.redrive_interval.empty()) (void)duration_flag(o_.redrive_interval, "--redrive-interval");
    if (o_.devices == 0 || o_.devices > 100000) throw std::invalid_argument("--devices: must be in 1..100000");
    if (o_.sim_processes == 0) o_.sim_processes = (o_.devices + kDevicesPerSim - 1) / kDevicesPerSim;
    if (o_.sim_processes > 64 || o_.sim_processes > o_.devices) {
      throw std::invalid_argument("--sim-processes: must be in 1..64 and at most --devices");
    }
    if (o_.runs == 0 || o_.runs > 1000) throw std::invalid_argument("--runs: must be in 1..1000");
    dir_ = must(bench::make_temp_dir("flotilla-bench-jobs-"));
    token_ = cli::random_hex(4);
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
    std::vector<std::filesystem::path> paths{dir_ / "make-broker-config.log", dir_ / "mosquitto.log",
                                             dir_ / "broker" / "data" / "mosquitto.log", dir_ / "manager.log"};
    for (const auto& s : sims_) paths.push_back(s.log);
    return bench::log_tails(paths, 15);
  }

 private:
  void describe_machine();
  void start_sims();
  void wait_connected();
  PingRound ping_round(const std::string& type, const std::string& command_id, milliseconds timeout,
                       std::optional<milliseconds> resend_every);
  void start_manager();
  JobRound job_round(std::size_t run);
  v1::JobSpec job_spec(const std::string& job_id) const;
  v1::ManagerStats stats();
  CpuSample cpu_sample() const;
  void print_cpu(const char* phase, const CpuSample& a, const CpuSample& b, std::size_t rounds) const;
  void check_alive() {
    for (auto* c : {broker_.get(), manager_.get()}) {
      if (c != nullptr) must(c->check_alive());
    }
    for (auto& s : sims_) must(s.child->check_alive());
    if (client_) must(client_->check());
    if (sys_) must(sys_->check());
  }
  void teardown() {
    client_.reset();
    // The devices go first, the broker last.
    for (auto& s : sims_) s.child.reset();
    sys_.reset();
    create_rpc_.reset();
    rpc_.reset();
    manager_.reset();
    broker_.reset();
  }

  Options o_;
  milliseconds online_timeout_{};
  milliseconds run_timeout_{};
  milliseconds poll_{};
  milliseconds settle_{};
  std::filesystem::path dir_;
  std::string token_;  // makes command and job ids unique to this run
  std::string password_ = cli::random_hex(12);
  std::optional<signing::Signer> signer_;
  std::vector<DeviceId> devices_;
  std::unordered_map<std::string, std::size_t> device_index_;
  std::uint16_t device_port_ = 0;
  std::uint16_t service_port_ = 0;
  std::unique_ptr<Child> broker_;
  std::unique_ptr<BenchClient> sys_;     // $SYS reader, the whole run
  std::unique_ptr<BenchClient> client_;  // baseline publisher and result subscriber; gone before the jobs
  std::vector<SimProcess> sims_;
  std::unique_ptr<Child> manager_;
  std::optional<cli::RpcClient> rpc_;         // ManagerStats, show_job
  std::optional<cli::RpcClient> create_rpc_;  // create_job, from its own thread
  std::uint64_t command_seq_ = 0;
};

void Bench::describe_machine() {
  std::string model = "unknown";
  {
    std::istringstream in(bench::read_text("/proc/cpuinfo"));
    std::string line;
    while (std::getline(in, line)) {
      if (line.starts_with("model name")) {
        const auto colon = line.find(':');
        if (colon != std::string::npos) model = line.substr(line.find_first_not_of(" \t", colon + 1));
        break;
      }
    }
  }
  std::string kernel = "unknown";
  if (utsname u{}; ::uname(&u) == 0) kernel = fmt::format("{} {} {}", u.sysname, u.release, u.machine);
  std::string memory = "unknown";
  {
    std::istringstream in(bench::read_text("/proc/meminfo"));
    std::string key;
    std::uint64_t kib = 0;
    if (in >> key >> kib && key == "MemTotal:")
      memory = fmt::format("{:.1f} GiB", static_cast<double>(kib) / 1048576.0);
  }
  say("machine: {} CPUs ({}), {} RAM, {}\n", std::thread::hardware_concurrency(), model, memory, kernel);
  std::string versions = fmt::format("flotilla {}", flotilla::version);
  if (auto dpkg = bench::find_program("dpkg-query")) {
    const auto out = dir_ / "versions.txt";
    auto rc = bench::run_to_completion({*dpkg, "-W", "-f=${Package} ${Version}\\n", "mosquitto", "libpaho-mqtt1.3",
                                        "libpaho-mqttpp3-1", "librocksdb7.8", "libprotobuf32", "libssl3"},
                                       out, seconds(20));
    if (rc) {
      std::istringstream in(bench::read_text(out));
      std::string package, version, rest;
      std::string line;
      while (std::getline(in, line)) {
        std::istringstream fields(line);
        // Only "package version" lines; dpkg-query reports packages it does not know on stderr.
        if (fields >> package >> version && !(fields >> rest) && line.find(':') == std::string::npos) {
          versions += fmt::format(", {} {}", package, version);
        }
      }
    }
  }
  say("versions: {}\n", versions);
}

void Bench::start_sims() {
  const auto bin = bench::binary_dir() / "examples" / "sim" / "flotilla-sim";
  for (std::size_t p = 0; p < o_.sim_processes; ++p) {
    SimProcess s;
    s.prefix = o_.sim_processes == 1 ? std::string("sim") : fmt::format("sim{}", p);
    s.devices = o_.devices / o_.sim_processes + (p < o_.devices % o_.sim_processes ? 1 : 0);
    s.log = dir_ / (o_.sim_processes == 1 ? std::string("sim.log") : fmt::format("sim-{}.log", p));
    s.child = must(
        Child::spawn(fmt::format("flotilla-sim[{}]", s.prefix),
                     {bin.string(), "--broker", fmt::format("mqtt://127.0.0.1:{}", device_port_), "--devices",
                      std::to_string(s.devices), "--prefix", s.prefix, "--seed", std::to_string(p + 1),
                      "--telemetry-interval", o_.telemetry_interval, "--password-file", (dir_ / "password").string(),
                      "--trusted-keys", (dir_ / "keys").string()},
                     s.log, seconds(60)));
    sims_.push_back(std::move(s));
  }
}

// Until the broker counts every device (and the two clients of this benchmark) as connected.
// $SYS is published every 10 s, so this resolves to that granularity.
void Bench::wait_connected() {
  const auto started = Clock::now();
  const std::uint64_t want = o_.devices + 2;
  std::uint64_t seen = 0;
  for (;;) {
    check_alive();
    if (auto v = sys_->sys(kSysConnected)) seen = std::strtoull(v->c_str(), nullptr, 10);
    if (seen >= want) break;
    if (Clock::now() - started > online_timeout_) {
      throw std::runtime_error(fmt::format("the broker counts {} of {} clients connected after {}", seen, want,
                                           config::format_duration(online_timeout_)));
    }
    must(bench::pause_for(milliseconds(200)));
  }
}

// Publishes one command of `type` to every device and waits until every device answered it.
// Devices that did not answer are sent the same command again every `resend_every` (readiness
// and rebirth rounds); without it a round that is not complete within `timeout` is an error.
PingRound Bench::ping_round(const std::string& type, const std::string& command_id, milliseconds timeout,
                            std::optional<milliseconds> resend_every) {
  const auto n = devices_.size();
  std::vector<Message> commands;
  commands.reserve(n);
  const auto now_ms = unix_now_ms();
  for (const auto& id : devices_) {
    v1::Command cmd;
    *cmd.mutable_header() = codec::make_header(id, 0, ++command_seq_, now_ms);
    cmd.set_command_id(command_id);
    cmd.set_type(type);
    cmd.set_expires_at_ms(now_ms + std::chrono::duration_cast<milliseconds>(std::chrono::hours(1)).count());
    commands.push_back(Message{topics::device(id, topics::Channel::cmd), codec::encode(cmd), 1, false, {}, {}});
  }
  (void)client_->take_arrivals();  // anything before this round is not an answer to it

  PingRound round;
  std::vector<bool> answered(n, false);
  std::vector<double> offsets;
  offsets.reserve(n);
  std::size_t mismatches = 0;
  std::string first_mismatch;
  const std::string own_prefix = fmt::format("{}-{}-", type, token_);

  (void)client_->take_publish_retries();
  const auto t0 = Clock::now();
  for (const auto& m : commands) client_->publish(m);
  round.publish = secs(Clock::now() - t0);
  round.retries = client_->take_publish_retries();
  auto next_resend = resend_every ? t0 + *resend_every : Clock::time_point::max();
  while (offsets.size() < n) {
    for (auto& a : client_->take_arrivals()) {
      auto topic = topics::parse_device_topic(a.topic);
      auto result = codec::decode<v1::CommandResult>(a.payload, codec::max_command_bytes);
      const auto it = topic ? device_index_.find(topic->device.str()) : device_index_.end();
      if (!topic || topic->channel != topics::Channel::result || !result || it == device_index_.end()) {
        ++mismatches;
        if (first_mismatch.empty()) first_mismatch = fmt::format("undecodable or unexpected message on {}", a.topic);
        continue;
      }
      if (result->command_id() != command_id) {
        if (result->command_id().starts_with(own_prefix)) {
          ++round.late;
        } else {
          ++mismatches;
          if (first_mismatch.empty()) {
            first_mismatch = fmt::format("{} answered command {:?}", a.topic, result->command_id().substr(0, 80));
          }
        }
        continue;
      }
      if (result->status() != v1::CommandResult::STATUS_SUCCEEDED) {
        ++mismatches;
        if (first_mismatch.empty()) {
          first_mismatch = fmt::format("{} answered {} with status {}: {}", topic->device, type,
                                       v1::CommandResult::Status_Name(result->status()),
                                       result->message().substr(0, 200));
        }
        continue;
      }
      if (answered[it->second]) {
        ++round.duplicates;
        continue;
      }
      answered[it->second] = true;
      offsets.push_back(secs(a.at - t0));
    }
    if (mismatches > 0) {
      throw std::runtime_error(
          fmt::format("{} round {}: {} unexpected answers, first: {}", type, command_id, mismatches, first_mismatch));
    }
    if (offsets.size() >= n) break;
    const auto now = Clock::now();
    if (now - t0 > timeout) {
      std::string missing;
      for (std::size_t i = 0; i < n && missing.size() < 200; ++i) {
        if (!answered[i]) missing += fmt::format(" {}", devices_[i]);
      }
      throw std::runtime_error(fmt::format("{} round {}: {} of {} devices answered within {}; missing:{}", type,
                                           command_id, offsets.size(), n, config::format_duration(timeout), missing));
    }
    if (now >= next_resend) {
      for (std::size_t i = 0; i < n; ++i) {
        if (!answered[i]) client_->publish(commands[i]);
      }
      next_resend = now + *resend_every;
    }
    check_alive();
    std::this_thread::sleep_for(milliseconds(2));
  }
  round.results = progress_of(std::move(offsets));
  round.total = round.results.all;
  return round;
}

void Bench::start_manager() {
  bench::Broker broker;
  broker.device_port = device_port_;
  broker.service_port = service_port_;
  bench::ManagerOptions options;
  if (!o_.manager.empty()) options.binary = o_.manager;
  if (!o_.redrive_interval.empty()) {
    options.extra_toml = fmt::format("[jobs]\nredrive_interval = \"{}\"\n", o_.redrive_interval);
  }
  auto manager = must(bench::start_manager(dir_, broker, password_, options));
  manager_ = std::move(manager.process);
  rpc_.emplace(std::move(manager.rpc));
  create_rpc_.emplace(must(bench::connect_rpc(broker, password_)));
}

v1::JobSpec Bench::job_spec(const std::string& job_id) const {
  const auto now_ms = unix_now_ms();
  v1::JobDocument doc;
  doc.set_schema_version(codec::schema_version);
  doc.set_job_id(job_id);
  doc.set_type("inventory.refresh");
  doc.set_issued_at_ms(now_ms);
  doc.set_expires_at_ms(now_ms + std::chrono::duration_cast<milliseconds>(std::chrono::hours(1)).count());
  doc.set_max_attempts(1);
  doc.set_scope_tenant(kTenant);
  v1::JobSpec spec;
  *spec.mutable_signed_() = jobs::sign_job(*signer_, codec::encode(doc), "*");
  if (spec.signed_().signature().empty()) throw std::runtime_error("signing the job document failed");
  spec.mutable_target()->set_query(kTargetQuery);
  spec.mutable_rollout()->set_rate_per_minute(0);  // unlimited
  spec.set_retries(0);
  spec.set_description("flotilla-bench-jobs");
  return spec;
}

JobRound Bench::job_round(std::size_t run) {
  const auto n = static_cast<std::uint64_t>(o_.devices);
  const std::string job_id = fmt::format("bench-{}-{}", token_, run);
  v1::RpcRequest create;
  create.set_actor(kActor);
  *create.mutable_create_job()->mutable_spec() = job_spec(job_id);
  v1::RpcRequest show;
  show.set_actor(kActor);
  show.mutable_show_job()->set_job_id(job_id);

  JobRound round;
  const auto before = stats();
  Clock::time_point t0;
  const std::uint64_t thresholds[] = {1, (n + 1) / 2, (n * 9 + 9) / 10, n};
  double* marks[] = {&round.succeeded.first, &round.succeeded.half, &round.succeeded.ninety, &round.succeeded.all};
  for (double* m : marks) *m = -1;
  auto note = [&](const v1::JobRecord& job, Clock::time_point at) {
    const auto& c = job.counts();
    const auto targeted = c.queued() + c.in_progress() + c.succeeded() + c.failed() + c.timed_out() + c.rejected() +
                          c.removed() + c.canceled();
    if (targeted != n) {
      throw std::runtime_error(
          fmt::format("job {} targets {} devices, not {} (query {:?})", job_id, targeted, n, kTargetQuery));
    }
    const auto bad = c.failed() + c.timed_out() + c.rejected() + c.removed() + c.canceled();
    if (bad > 0) {
      throw std::runtime_error(fmt::format(
          "job {}: {} executions did not succeed (failed {}, timed out {}, rejected {}, removed {}, canceled {}); "
          "see `flotilla jobs executions {}`",
          job_id, bad, c.failed(), c.timed_out(), c.rejected(), c.removed(), c.canceled(), job_id));
    }
    // Answers may be handled out of order (create_job's comes from another thread): earliest wins.
    auto mark = [&](double& m, bool reached) {
      if (reached) m = m < 0 ? secs(at - t0) : std::min(m, secs(at - t0));
    };
    mark(round.notified, job.notified() >= n);
    for (std::size_t i = 0; i < 4; ++i) mark(*marks[i], c.succeeded() >= thresholds[i]);
    round.state = std::string(v1::JobState_Name(job.state()));
  };

  // create_job goes out on its own client and thread, so that show_job polling starts with it:
  // the run is timed from the request to the first answer showing every execution SUCCEEDED,
  // whether or not the answer to create_job itself arrives.
  std::optional<Result<v1::RpcResponse>> created;
  Clock::time_point created_at;
  std::atomic<bool> create_done{false};
  t0 = Clock::now();
  std::jthread creator([&] {
    created.emplace(create_rpc_->call(create, kCreateTimeout));
    created_at = Clock::now();
    create_done.store(true, std::memory_order_release);
  });
  bool create_checked = false;
  auto check_create = [&] {
    if (create_checked || !create_done.load(std::memory_order_acquire)) return;
    create_checked = true;
    if (*created) {
      if ((*created)->code() != v1::RpcResponse::CODE_OK) {
        throw std::runtime_error(fmt::format("create_job {}: {}", job_id, (*created)->error()));
      }
      round.create = secs(created_at - t0);
      note((*created)->job(), created_at);
    } else if (created->error().code == Errc::timeout) {
      ++round.lost_replies;
    } else {
      throw std::runtime_error(fmt::format("create_job {}: {}", job_id, created->error().message));
    }
  };

  auto next = t0 + poll_;
  std::string last_counts;
  while (round.succeeded.all < 0) {
    const auto now = Clock::now();
    if (now - t0 > run_timeout_) {
      const auto after = bench::manager_stats(*rpc_, kRpcTimeout);
      throw std::runtime_error(fmt::format(
          "job {}: not all {} executions SUCCEEDED within {}; last show_job: {}; SUCCEEDED 1 / 50% / 90% after "
          "{:.3f} / {:.3f} / {:.3f} s; manager drops and events:{}",
          job_id, n, config::format_duration(run_timeout_), last_counts, round.succeeded.first, round.succeeded.half,
          round.succeeded.ninety, after ? stats_delta(before, *after) : after.error().message));
    }
    if (next > now) std::this_thread::sleep_for(next - now);
    const auto sent = Clock::now();
    next = sent + poll_;
    auto answer = rpc_->call(show, kRpcTimeout);
    const auto at = Clock::now();
    ++round.polls;
    round.poll_rtt_max = std::max(round.poll_rtt_max, secs(at - sent));
    check_create();
    if (!answer && answer.error().code == Errc::timeout) {
      ++round.lost_replies;
      continue;
    }
    if (!answer) throw std::runtime_error(fmt::format("show_job {}: {}", job_id, answer.error().message));
    // Until the manager has handled create_job, the job does not exist yet.
    if (answer->code() == v1::RpcResponse::CODE_NOT_FOUND && !create_done.load(std::memory_order_acquire)) continue;
    if (answer->code() != v1::RpcResponse::CODE_OK) {
      throw std::runtime_error(fmt::format("show_job {}: {}", job_id, answer->error()));
    }
    const auto& c = answer->job().counts();
    note(answer->job(), at);
    last_counts = fmt::format("notified {}, queued {}, in progress {}, succeeded {}", answer->job().notified(),
                              c.queued(), c.in_progress(), c.succeeded());
    check_alive();
    must(bench::check_interrupted());
  }
  round.total = round.succeeded.all;
  creator.join();
  check_create();
  round.manager = stats_delta(before, stats());
  return round;
}

// ManagerStats, asked again when an answer is lost (see kRpcTimeout).
v1::ManagerStats Bench::stats() {
  for (int attempt = 1;; ++attempt) {
    auto s = bench::manager_stats(*rpc_, kRpcTimeout);
    if (s) return std::move(s).value();
    if (s.error().code != Errc::timeout || attempt == 6) throw std::runtime_error(s.error().message);
    check_alive();
  }
}

CpuSample Bench::cpu_sample() const {
  CpuSample s;
  s.at = Clock::now();
  s.cpu["mosquitto"] = bench::cpu_seconds(broker_->pid());
  double sim = 0;
  for (const auto& p : sims_) sim += bench::cpu_seconds(p.child->pid());
  s.cpu["flotilla-sim"] = sim;
  if (manager_) s.cpu["flotilla-manager"] = bench::cpu_seconds(manager_->pid());
  s.cpu["benchmark"] = bench::cpu_seconds(0);
  return s;
}

void Bench::print_cpu(const char* phase, const CpuSample& a, const CpuSample& b, std::size_t rounds) const {
  const double wall = secs(b.at - a.at);
  std::string text;
  for (const auto& [name, after] : b.cpu) {
    const auto it = a.cpu.find(name);
    const double used = after - (it == a.cpu.end() ? 0.0 : it->second);
    text += fmt::format("{}{} {:.2f} s ({:.2f} s/run, {:.0f}%)", text.empty() ? "" : ", ", name, used,
                        used / static_cast<double>(rounds), 100.0 * used / wall);
  }
  say("  CPU during {} ({:.1f} s wall incl. pauses; % of one core): {}\n", phase, wall, text);
}

void Bench::run() {
  say("flotilla-bench-jobs: {} simulated devices in {} flotilla-sim process{}, {} runs each\n", o_.devices,
      o_.sim_processes, o_.sim_processes == 1 ? "" : "es", o_.runs);
  say("work dir {}{}; load average at start: {}\n", dir_.string(), o_.keep ? " (kept)" : " (removed at exit)",
      bench::load_average());
  describe_machine();

  // The operator's key: the devices trust its public half, the job is signed with the private one.
  auto pair = must(signing::generate_key());
  signer_.emplace(must(signing::Signer::from_pem(pair.private_pem)));
  std::filesystem::create_directories(dir_ / "keys");
  must(bench::write_text(dir_ / "keys" / "bench.pub", pair.public_pem, 0644));
  must(bench::write_text(dir_ / "password", password_ + "\n", 0600));

  for (std::size_t p = 0; p < o_.sim_processes; ++p) {
    const std::string prefix = o_.sim_processes == 1 ? std::string("sim") : fmt::format("sim{}", p);
    const std::size_t count = o_.devices / o_.sim_processes + (p < o_.devices % o_.sim_processes ? 1 : 0);
    for (std::size_t i = 0; i < count; ++i) {
      auto id = must(DeviceId::parse(sim::device_id(prefix, i)));
      device_index_.emplace(id.str(), devices_.size());
      devices_.push_back(std::move(id));
    }
  }
  std::vector<std::string> users;
  users.reserve(devices_.size());
  for (const auto& d : devices_) users.push_back(d.str());
  auto broker = must(bench::start_broker(dir_, users, password_, o_.mosquitto));
  device_port_ = broker.device_port;
  service_port_ = broker.service_port;
  broker_ = std::move(broker.process);
  say("mosquitto pid {} on 127.0.0.1:{} (devices) and :{} (services)\n", broker_->pid(), device_port_, service_port_);

  const auto uri = fmt::format("mqtt://127.0.0.1:{}", service_port_);
  sys_ = std::make_unique<BenchClient>(
      uri, password_, std::vector<Subscription>{{std::string(kSysConnected), 0}, {std::string(kSysDropped), 0}});
  client_ = std::make_unique<BenchClient>(uri, password_,
                                          std::vector<Subscription>{{topics::all_devices(topics::Channel::result), 1}});

  // 1. The fleet.
  const auto sim_start = Clock::now();
  start_sims();
  std::string pids;
  for (const auto& s : sims_) pids += fmt::format(" {}", s.child->pid());
  say("flotilla-sim pid{} started ({} devices, telemetry every {}); waiting until all are connected\n", pids,
      o_.devices, o_.telemetry_interval);
  wait_connected();
  const double connected_s = secs(Clock::now() - sim_start);
  const auto ready = ping_round("ping", fmt::format("ping-{}-ready", token_), online_timeout_, seconds(5));
  say("all {} devices connected after {:.1f} s ($SYS, 10 s granularity), all answered a ping after {:.1f} s\n",
      o_.devices, connected_s, secs(Clock::now() - sim_start));
  say("  readiness ping: {:.3f} s, {} duplicates\n", ready.total, ready.duplicates);
  must(bench::pause_for(settle_));

  // 2. Baseline.
  say("\nbaseline: bare MQTT 5 client ({}), ping Command QoS 1 to each device, manager not running\n",
      bench::kManagerUser);
  std::vector<PingRound> pings;
  const auto load_baseline = bench::load_average();
  const auto cpu_b0 = cpu_sample();
  for (std::size_t r = 1; r <= o_.runs; ++r) {
    check_alive();
    pings.push_back(ping_round("ping", fmt::format("ping-{}-{}", token_, r), run_timeout_, std::nullopt));
    const auto& p = pings.back();
    say("  run {}: {:.3f} s (publishing {:.3f} s; results: first {:.3f}, 50% {:.3f}, 90% {:.3f}, all {:.3f}; "
        "{} duplicates, {} late; {} publishes retried)\n",
        r, p.total, p.publish, p.results.first, p.results.half, p.results.ninety, p.results.all, p.duplicates, p.late,
        p.retries);
    if (r < o_.runs) must(bench::pause_for(settle_));
  }
  const auto cpu_b1 = cpu_sample();
  print_cpu("the baseline runs", cpu_b0, cpu_b1, o_.runs);
  say("  load average at the start of the baseline: {}\n", load_baseline);

  // 3. The manager learns the fleet: a rebirth command makes every device publish its birth.
  const auto manager_start = Clock::now();
  start_manager();
  say("\nflotilla-manager pid {} answering after {:.2f} s; asking every device for a birth\n", manager_->pid(),
      secs(Clock::now() - manager_start));
  const auto rebirth = ping_round("rebirth", fmt::format("rebirth-{}", token_), online_timeout_, seconds(5));
  std::uint64_t online = 0;
  for (;;) {
    check_alive();
    online = stats().devices_online();
    if (online >= o_.devices) break;
    if (Clock::now() - manager_start > online_timeout_) {
      throw std::runtime_error(fmt::format("the manager reports {} of {} devices online after {}", online, o_.devices,
                                           config::format_duration(online_timeout_)));
    }
    must(bench::pause_for(milliseconds(100)));
  }
  say("manager reports {} devices online {:.2f} s after it started (rebirths answered in {:.2f} s)\n", online,
      secs(Clock::now() - manager_start), rebirth.total);
  // Nothing of the baseline may compete with the jobs: no second subscriber to the results.
  client_.reset();
  // Until the manager has ingested the births and their follow-ups (configs, index).
  std::uint64_t ingested = stats().messages_ingested();
  for (;;) {
    must(bench::pause_for(settle_));
    const auto now = stats().messages_ingested();
    if (now == ingested) break;
    ingested = now;
  }

  // 4. Flotilla.
  say("\nflotilla: create_job (inventory.refresh, \"*\" signature, scope tenant {}, target {:?}, unlimited "
      "rollout), show_job every {}; manager jobs.redrive_interval {}\n",
      kTenant, kTargetQuery, config::format_duration(poll_),
      o_.redrive_interval.empty() ? std::string("default (30s)") : o_.redrive_interval);
  std::vector<JobRound> jobs;
  const auto load_jobs = bench::load_average();
  const auto stats0 = stats();
  const auto cpu_j0 = cpu_sample();
  for (std::size_t r = 1; r <= o_.runs; ++r) {
    check_alive();
    jobs.push_back(job_round(r));
    const auto& j = jobs.back();
    say("  run {}: {:.3f} s (create_job answered {:.3f}, all notified {:.3f}; SUCCEEDED: first {:.3f}, 50% {:.3f}, "
        "90% {:.3f}, all {:.3f}; {} polls, slowest {:.3f} s, {} RPC answers lost; job {})\n"
        "         manager drops/events:{}\n",
        r, j.total, j.create, j.notified, j.succeeded.first, j.succeeded.half, j.succeeded.ninety, j.succeeded.all,
        j.polls, j.poll_rtt_max, j.lost_replies, j.state, j.manager);
    if (r < o_.runs) must(bench::pause_for(settle_));
  }
  const auto cpu_j1 = cpu_sample();
  const auto stats1 = stats();
  print_cpu("the Flotilla runs", cpu_j0, cpu_j1, o_.runs);
  say("  load average at the start of the Flotilla runs: {}\n", load_jobs);
  const auto ingested_jobs = stats1.messages_ingested() - stats0.messages_ingested();
  const auto batches = stats1.batches_written() - stats0.batches_written();
  say("  manager: {} messages ingested in {} synced batches (mean {:.1f} per batch) over the runs\n", ingested_jobs,
      batches, batches > 0 ? static_cast<double>(ingested_jobs) / static_cast<double>(batches) : 0.0);
  say("  manager drops/events during the runs:{}\n", stats_delta(stats0, stats1));

  // 5. Side by side.
  std::vector<double> base;
  std::vector<double> flot;
  base.reserve(pings.size());
  flot.reserve(jobs.size());
  for (const auto& p : pings) base.push_back(p.total);
  for (const auto& j : jobs) flot.push_back(j.total);
  const auto b = spread(base);
  const auto f = spread(flot);
  const double ratio = b.p50 > 0 ? f.p50 / b.p50 : 0.0;
  say("\n{} devices, {} runs each; seconds                        p50      min      max\n", o_.devices, o_.runs);
  say("  baseline: ping round trip, bare MQTT client      {:8.3f} {:8.3f} {:8.3f}\n", b.p50, b.min, b.max);
  say("  flotilla: signed job, all results durable         {:8.3f} {:8.3f} {:8.3f}\n", f.p50, f.min, f.max);
  say("  ratio flotilla / baseline (p50)                   {:7.2f}x   target <= 1.50x: {}\n", ratio,
      ratio <= 1.5 ? "met" : fmt::format("missed by {:.0f}%", 100.0 * (ratio / 1.5 - 1.0)));
  const auto dropped = sys_->sys(kSysDropped);
  say("  broker {}: {}; load average at the end: {}\n", kSysDropped, dropped ? *dropped : "(not yet published)",
      bench::load_average());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App cli{
      "Flotilla jobs benchmark: one signed job to every simulated device (create_job until all executions "
      "SUCCEEDED and durable) vs. a bare MQTT ping round trip to the same devices over the same Mosquitto."};
  cli.add_option("--devices", o.devices, "Simulated devices")->capture_default_str();
  cli.add_option("--sim-processes", o.sim_processes,
                 "flotilla-sim processes sharing the devices (0: one per 2,000 devices)")
      ->capture_default_str();
  cli.add_option("--runs", o.runs, "Timed runs of each side")->capture_default_str();
  cli.add_option("--telemetry-interval", o.telemetry_interval, "Telemetry period per device (long: no competition)")
      ->capture_default_str();
  cli.add_option("--online-timeout", o.online_timeout, "Give up when the fleet is not connected and answering by then")
      ->capture_default_str();
  cli.add_option("--run-timeout", o.run_timeout, "Give up on one run after this")->capture_default_str();
  cli.add_option("--poll", o.poll, "show_job polling interval")->capture_default_str();
  cli.add_option("--settle", o.settle, "Pause between runs")->capture_default_str();
  cli.add_option("--redrive-interval", o.redrive_interval,
                 "Manager's jobs.redrive_interval (default: the manager's own, 30s)");
  cli.add_option("--manager", o.manager, "flotilla-manager binary (default: the one of this build)");
  cli.add_option("--mosquitto", o.mosquitto, "Mosquitto binary (looked up in PATH and /usr/sbin)")
      ->capture_default_str();
  cli.add_flag("--keep", o.keep, "Keep the work directory (configs, logs, RocksDB)");
  if (auto code = flotilla::app::parse(cli, argc, argv)) return *code;

  return flotilla::bench::run_main<Bench>("flotilla-bench-jobs", o);
}
