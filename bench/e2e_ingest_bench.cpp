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

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "flotilla/cli/rpc_client.hpp"
#include "flotilla/core/app.hpp"
#include "flotilla/core/config.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/sim/fleet_model.hpp"
#include "flotilla/v1/manager.pb.h"

#ifndef FLOTILLA_SOURCE_DIR
#error "compile with -DFLOTILLA_SOURCE_DIR=\"<repository root>\""
#endif
#ifndef FLOTILLA_BINARY_DIR
#error "compile with -DFLOTILLA_BINARY_DIR=\"<build directory>\""
#endif

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace {

using namespace flotilla;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr const char* kManagerUser = "flotilla-manager";
constexpr const char* kOperatorUser = "flotilla-operator";
constexpr std::string_view kSysDropped = "$SYS/broker/publish/messages/dropped";

volatile std::sig_atomic_t g_signal = 0;  // NOLINT: written by the signal handler only
extern "C" void on_signal(int signo) { g_signal = signo; }

void check_interrupted() {
  if (g_signal != 0) throw std::runtime_error(fmt::format("interrupted by signal {}", static_cast<int>(g_signal)));
}

// Sleeps in short steps so that SIGINT/SIGTERM end the run promptly (through the destructors).
void pause_for(Clock::duration d) {
  const auto deadline = Clock::now() + d;
  while (Clock::now() < deadline) {
    check_interrupted();
    std::this_thread::sleep_for(std::min<Clock::duration>(milliseconds(50), deadline - Clock::now()));
  }
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string tail(const std::string& text, std::size_t lines) {
  std::size_t start = text.size();
  std::size_t seen = 0;
  while (start > 0) {
    // Skip the newline that ends the text, count the others.
    if (text[start - 1] == '\n' && start != text.size() && ++seen == lines) break;
    --start;
  }
  return text.substr(start);
}

void write_text(const std::filesystem::path& path, const std::string& text, mode_t mode) {
  {
    std::ofstream out(path, std::ios::trunc);
    out << text;
    if (!out) throw std::runtime_error(fmt::format("cannot write {}", path.string()));
  }
  ::chmod(path.c_str(), mode);
}

// ---------------------------------------------------------------------------------------------
// Child processes.

// Owns one spawned process until it is reaped; the destructor terminates (SIGTERM, then SIGKILL
// after the grace period) and reaps. stdin is /dev/null, stdout+stderr go to `log`.
class Child {
 public:
  Child(std::string name, const std::vector<std::string>& argv, const std::filesystem::path& log,
        milliseconds grace = seconds(10))
      : name_(std::move(name)), log_(log), grace_(grace) {
    posix_spawn_file_actions_t files;
    posix_spawn_file_actions_init(&files);
    posix_spawn_file_actions_addopen(&files, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&files, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&files, STDOUT_FILENO, STDERR_FILENO);
    posix_spawn_file_actions_addclosefrom_np(&files, STDERR_FILENO + 1);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t empty;
    sigemptyset(&empty);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGCHLD}) sigaddset(&defaults, s);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    // The children read their settings from the files written here, not from the caller's
    // FLOTILLA_* environment.
    std::vector<std::string> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
      const std::string_view kv(*e);
      if (kv.starts_with("FLOTILLA_BROKER=") || kv.starts_with("FLOTILLA_MQTT_")) continue;
      env.emplace_back(kv);
    }
    std::vector<std::string> args = argv;
    std::vector<char*> argp;
    argp.reserve(args.size() + 1);
    for (auto& a : args) argp.push_back(a.data());
    argp.push_back(nullptr);
    std::vector<char*> envp;
    envp.reserve(env.size() + 1);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    const int rc = posix_spawnp(&pid_, argp[0], &files, &attr, argp.data(), envp.data());
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&files);
    if (rc != 0) throw std::runtime_error(fmt::format("cannot run {}: {}", argv[0], std::strerror(rc)));
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { stop(); }

  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }
  const std::filesystem::path& log() const { return log_; }
  std::optional<int> status() const { return status_; }

  bool running() {
    if (status_) return false;
    int ws = 0;
    const pid_t r = ::waitpid(pid_, &ws, WNOHANG);
    if (r == pid_) status_ = decode(ws);
    return !status_;
  }

  std::optional<int> wait(milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (running()) {
      if (Clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return status_;
  }

  // SIGTERM, then SIGKILL after the grace period; reaps. Returns the exit status.
  int stop() {
    if (!running()) return status_.value_or(-1);
    ::kill(pid_, SIGTERM);
    if (auto s = wait(grace_)) return *s;
    ::kill(pid_, SIGKILL);
    int ws = 0;
    while (::waitpid(pid_, &ws, 0) == -1 && errno == EINTR) {
    }
    status_ = decode(ws);
    return *status_;
  }

  void check_alive() {
    if (!running()) {
      throw std::runtime_error(fmt::format("{} exited with status {}; last lines of {}:\n{}", name_, *status_,
                                           log_.string(), tail(read_text(log_), 30)));
    }
  }

 private:
  static int decode(int ws) {
    if (WIFEXITED(ws)) return WEXITSTATUS(ws);
    if (WIFSIGNALED(ws)) return 128 + WTERMSIG(ws);
    return 255;
  }

  std::string name_;
  std::filesystem::path log_;
  milliseconds grace_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// argv[0] as given when it names a path or is found in PATH; else /usr/sbin/NAME (Debian puts
// mosquitto there, outside an ordinary user's PATH).
std::string find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string_view rest = path != nullptr ? path : "";
  while (!rest.empty()) {
    const auto colon = rest.find(':');
    const auto dir = rest.substr(0, colon);
    rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
    if (dir.empty()) continue;
    const auto candidate = std::filesystem::path(dir) / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  const auto fallback = std::filesystem::path("/usr/sbin") / name;
  if (::access(fallback.c_str(), X_OK) == 0) return fallback.string();
  throw std::runtime_error(fmt::format("{} not found in PATH nor in /usr/sbin", name));
}

int run_to_completion(const std::vector<std::string>& argv, const std::filesystem::path& log, milliseconds timeout) {
  Child c(argv[0], argv, log);
  while (c.running()) {
    if (!c.wait(milliseconds(100))) {
      check_interrupted();
      if (timeout.count() <= 0) throw std::runtime_error(fmt::format("{} did not finish in time", argv[0]));
      timeout -= milliseconds(100);
    }
  }
  return *c.status();
}

// ---------------------------------------------------------------------------------------------
// Ports and /proc.

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// Two ports the kernel reports free on 127.0.0.1 (both held open while choosing, so they differ).
std::pair<std::uint16_t, std::uint16_t> free_ports() {
  std::uint16_t out[2] = {0, 0};
  int fds[2] = {-1, -1};
  for (int i = 0; i < 2; ++i) {
    fds[i] = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    if (fds[i] < 0 || ::bind(fds[i], reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||  // NOLINT
        ::getsockname(fds[i], reinterpret_cast<sockaddr*>(&a), &len) != 0) {             // NOLINT
      for (int fd : fds) {
        if (fd >= 0) ::close(fd);
      }
      throw std::runtime_error(fmt::format("cannot pick a free port: {}", std::strerror(errno)));
    }
    out[i] = ntohs(a.sin_port);
  }
  ::close(fds[0]);
  ::close(fds[1]);
  return {out[0], out[1]};
}

bool accepts(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a = loopback(port);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;  // NOLINT
  ::close(fd);
  return ok;
}

// VmRSS in bytes; 0 when the process is gone.
std::uint64_t rss_bytes(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmRSS:")) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

// utime + stime in seconds, from /proc/<pid>/stat (pid 0: this process).
double cpu_seconds(pid_t pid) {
  const std::string text = read_text(pid == 0 ? std::string("/proc/self/stat") : fmt::format("/proc/{}/stat", pid));
  const auto paren = text.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(text.substr(paren + 2));
  std::string field;
  unsigned long long utime = 0;
  unsigned long long stime = 0;
  // After the command: state(3) ... utime(14) stime(15).
  for (int index = 3; index <= 15 && fields >> field; ++index) {
    if (index == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (index == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The first three fields of /proc/loadavg: other work on the machine skews every figure.
std::string load_average() {
  std::istringstream in(read_text("/proc/loadavg"));
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return fmt::format("{} {} {}", one, five, fifteen);
}

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
    std::string pattern = (std::filesystem::temp_directory_path() / "flotilla-bench-e2e-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed: " + pattern);
    dir_ = pattern;
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
    std::string out;
    std::error_code ec;
    for (const auto& p : {dir_ / "make-broker-config.log", dir_ / "mosquitto.log",
                          dir_ / "broker" / "data" / "mosquitto.log", dir_ / "manager.log", dir_ / "sim.log"}) {
      if (!std::filesystem::exists(p, ec)) continue;
      out += fmt::format("==== {}\n{}\n", p.string(), tail(read_text(p), 15));
    }
    return out;
  }

 private:
  void start_broker();
  void start_manager();
  v1::ManagerStats stats();
  Snapshot snapshot();
  void check_alive() {
    for (auto* c : {broker_.get(), manager_.get(), sim_.get()}) {
      if (c != nullptr) c->check_alive();
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
  std::string users = fmt::format("{}:{}\n{}:{}\n", kManagerUser, password_, kOperatorUser, password_);
  for (std::size_t i = 0; i < o_.devices; ++i) users += fmt::format("{}:{}\n", sim::device_id("sim", i), password_);
  write_text(dir_ / "users.txt", users, 0600);
  const auto script = std::filesystem::path(FLOTILLA_SOURCE_DIR) / "deploy" / "mosquitto" / "make-broker-config";
  // A port can be taken between choosing and binding it (tests run concurrently): retry.
  for (int attempt = 1;; ++attempt) {
    std::tie(device_port_, service_port_) = free_ports();
    const int rc = run_to_completion({script.string(), "--out", (dir_ / "broker").string(), "--device-port",
                                      std::to_string(device_port_), "--service-port", std::to_string(service_port_),
                                      "--users", (dir_ / "users.txt").string(), "--bind", "127.0.0.1"},
                                     dir_ / "make-broker-config.log", seconds(300));
    if (rc != 0) {
      throw std::runtime_error(
          fmt::format("make-broker-config exited with {}:\n{}", rc, read_text(dir_ / "make-broker-config.log")));
    }
    const auto broker_log = dir_ / "broker" / "data" / "mosquitto.log";
    std::error_code ec;
    std::filesystem::remove(broker_log, ec);
    broker_ = std::make_unique<Child>(
        "mosquitto",
        std::vector<std::string>{find_program(o_.mosquitto), "-c", (dir_ / "broker" / "mosquitto.conf").string()},
        dir_ / "mosquitto.log");
    const auto deadline = Clock::now() + seconds(10);
    while (broker_->running() && Clock::now() < deadline) {
      check_interrupted();
      // The log line "... running" proves that this process opened its listeners.
      if (read_text(broker_log).find(" running\n") != std::string::npos && accepts(device_port_) &&
          accepts(service_port_)) {
        return;
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
    const std::string why = tail(read_text(dir_ / "mosquitto.log") + read_text(broker_log), 10);
    broker_.reset();
    if (attempt == 3) throw std::runtime_error("mosquitto did not start:\n" + why);
  }
}

void Bench::start_manager() {
  write_text(dir_ / "password", password_ + "\n", 0600);
  write_text(dir_ / "manager.toml",
             fmt::format("[mqtt]\nbroker = \"mqtt://127.0.0.1:{}\"\npassword_file = \"{}\"\n"
                         "[manager]\ndata_dir = \"{}\"\n",
                         service_port_, (dir_ / "password").string(), (dir_ / "manager").string()),
             0600);
  const auto bin = std::filesystem::path(FLOTILLA_BINARY_DIR) / "fleet-manager" / "flotilla-manager";
  manager_ = std::make_unique<Child>(
      "flotilla-manager", std::vector<std::string>{bin.string(), "--config", (dir_ / "manager.toml").string()},
      dir_ / "manager.log", seconds(20));

  TransportOptions o;
  o.broker_uri = fmt::format("mqtt://127.0.0.1:{}", service_port_);
  o.username = kOperatorUser;
  o.password = password_;
  auto client = cli::RpcClient::connect(o, kOperatorUser, seconds(10));
  if (!client) throw std::runtime_error(fmt::format("RPC client: {}", client.error().message));
  rpc_.emplace(std::move(client).value());
  // Ready once it answers: its subscriptions exist, so nothing the devices publish is missed.
  const auto deadline = Clock::now() + seconds(30);
  for (;;) {
    check_interrupted();
    manager_->check_alive();
    v1::RpcRequest req;
    req.mutable_manager_stats();
    auto r = rpc_->call(req, seconds(1));
    if (r && r->code() == v1::RpcResponse::CODE_OK) return;
    if (Clock::now() >= deadline) throw std::runtime_error("flotilla-manager does not answer its RPC");
  }
}

v1::ManagerStats Bench::stats() {
  v1::RpcRequest req;
  req.mutable_manager_stats();
  auto r = rpc_->call(req, seconds(10));
  if (!r) throw std::runtime_error(fmt::format("ManagerStats RPC: {}", r.error().message));
  if (r->code() != v1::RpcResponse::CODE_OK) throw std::runtime_error("ManagerStats RPC: " + r->error());
  return r->manager_stats();
}

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
  s.cpu["flotilla-manager"] = cpu_seconds(manager_->pid());
  s.cpu["mosquitto"] = cpu_seconds(broker_->pid());
  s.cpu["flotilla-sim"] = cpu_seconds(sim_->pid());
  s.cpu["this benchmark (subscriber, RPC)"] = cpu_seconds(0);
  return s;
}

void Bench::run() {
  const double offered = static_cast<double>(o_.devices) * 1000.0 / static_cast<double>(interval_.count());
  fmt::print("flotilla-bench-e2e: {} simulated devices, telemetry every {}, measuring window {}\n", o_.devices,
             config::format_duration(interval_), config::format_duration(window_));
  fmt::print("work dir {}{}; load average at start: {}\n", dir_.string(), o_.keep ? " (kept)" : " (removed at exit)",
             load_average());

  start_broker();
  fmt::print("mosquitto pid {} on 127.0.0.1:{} (devices) and :{} (services)\n", broker_->pid(), device_port_,
             service_port_);
  start_manager();
  fmt::print("flotilla-manager pid {} answering\n", manager_->pid());
  subscriber_ = std::make_unique<BareSubscriber>(fmt::format("mqtt://127.0.0.1:{}", service_port_), password_);
  fmt::print("bare subscriber connected as {} to {}\n", kManagerUser, topics::all_devices(topics::Channel::telemetry));

  const auto sim_bin = std::filesystem::path(FLOTILLA_BINARY_DIR) / "examples" / "sim" / "flotilla-sim";
  const auto sim_start = Clock::now();
  sim_ = std::make_unique<Child>(
      "flotilla-sim",
      std::vector<std::string>{sim_bin.string(), "--broker", fmt::format("mqtt://127.0.0.1:{}", device_port_),
                               "--devices", std::to_string(o_.devices), "--telemetry-interval", o_.telemetry_interval,
                               "--password-file", (dir_ / "password").string()},
      dir_ / "sim.log", seconds(60));
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
  const std::uint64_t rss = rss_bytes(manager_->pid());
  const std::uint64_t broker_rss = rss_bytes(broker_->pid());
  const std::uint64_t sim_rss = rss_bytes(sim_->pid());

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

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGHUP, &sa, nullptr);

  std::unique_ptr<Bench> bench;
  try {
    bench = std::make_unique<Bench>(o);
    bench->run();
  } catch (const std::exception& e) {
    fmt::print(stderr, "flotilla-bench-e2e: {}\n", e.what());
    try {
      if (bench && g_signal == 0) fmt::print(stderr, "{}", bench->logs());
    } catch (const std::exception& again) {
      fmt::print(stderr, "(logs unavailable: {})\n", again.what());
    }
    return 1;
  }
  return 0;
}
