#include "bench_support.hpp"

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
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string_view>
#include <thread>
#include <tuple>

#include <fmt/format.h>

#ifndef FLOTILLA_SOURCE_DIR
#error "compile with -DFLOTILLA_SOURCE_DIR=\"<repository root>\""
#endif
#ifndef FLOTILLA_BINARY_DIR
#error "compile with -DFLOTILLA_BINARY_DIR=\"<build directory>\""
#endif

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace flotilla::bench {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

volatile std::sig_atomic_t g_signal = 0;  // NOLINT: written by the signal handler only
extern "C" void on_signal(int signo) { g_signal = signo; }

int decode_wait_status(int ws) {
  if (WIFEXITED(ws)) return WEXITSTATUS(ws);
  if (WIFSIGNALED(ws)) return 128 + WTERMSIG(ws);
  return 255;
}

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

}  // namespace

std::filesystem::path source_dir() { return FLOTILLA_SOURCE_DIR; }
std::filesystem::path binary_dir() { return FLOTILLA_BINARY_DIR; }

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGHUP, &sa, nullptr);
}

int interrupted() { return static_cast<int>(g_signal); }

Status check_interrupted() {
  if (g_signal != 0) return make_error(Errc::closed, "interrupted by signal {}", static_cast<int>(g_signal));
  return {};
}

Status pause_for(Clock::duration d) {
  const auto deadline = Clock::now() + d;
  while (Clock::now() < deadline) {
    if (auto st = check_interrupted(); !st) return st;
    std::this_thread::sleep_for(std::min<Clock::duration>(milliseconds(50), deadline - Clock::now()));
  }
  return {};
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

Status write_text(const std::filesystem::path& path, const std::string& text, mode_t mode) {
  {
    std::ofstream out(path, std::ios::trunc);
    out << text;
    if (!out) return make_error(Errc::io_error, "cannot write {}", path.string());
  }
  if (::chmod(path.c_str(), mode) != 0) {
    return make_error(Errc::io_error, "cannot chmod {}: {}", path.string(), std::strerror(errno));
  }
  return {};
}

Result<std::filesystem::path> make_temp_dir(const std::string& prefix) {
  std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    return make_error(Errc::io_error, "mkdtemp failed: {}: {}", pattern, std::strerror(errno));
  }
  return std::filesystem::path(pattern);
}

std::string log_tails(const std::vector<std::filesystem::path>& paths, std::size_t lines) {
  std::string out;
  std::error_code ec;
  for (const auto& p : paths) {
    if (!std::filesystem::exists(p, ec)) continue;
    out += fmt::format("==== {}\n{}\n", p.string(), tail(read_text(p), lines));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

Result<std::unique_ptr<Child>> Child::spawn(std::string name, const std::vector<std::string>& argv,
                                            const std::filesystem::path& log, milliseconds grace) {
  if (argv.empty()) return make_error(Errc::invalid_argument, "{}: empty command line", name);
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
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, argp[0], &files, &attr, argp.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&files);
  if (rc != 0) return make_error(Errc::unavailable, "cannot run {}: {}", argv[0], std::strerror(rc));
  return std::unique_ptr<Child>(new Child(std::move(name), log, grace, pid));
}

bool Child::running() {
  if (status_) return false;
  int ws = 0;
  const pid_t r = ::waitpid(pid_, &ws, WNOHANG);
  if (r == pid_) status_ = decode_wait_status(ws);
  return !status_;
}

std::optional<int> Child::wait(milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (running()) {
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return status_;
}

int Child::stop() {
  if (!running()) return status_.value_or(-1);
  ::kill(pid_, SIGTERM);
  if (auto s = wait(grace_)) return *s;
  ::kill(pid_, SIGKILL);
  int ws = 0;
  while (::waitpid(pid_, &ws, 0) == -1 && errno == EINTR) {
  }
  status_ = decode_wait_status(ws);
  return *status_;
}

Status Child::check_alive() {
  if (running()) return {};
  return make_error(Errc::unavailable, "{} exited with status {}; last lines of {}:\n{}", name_, *status_,
                    log_.string(), tail(read_text(log_), 30));
}

Result<std::string> find_program(const std::string& name) {
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
  return make_error(Errc::not_found, "{} not found in PATH nor in /usr/sbin", name);
}

Result<int> run_to_completion(const std::vector<std::string>& argv, const std::filesystem::path& log,
                              milliseconds timeout) {
  auto c = Child::spawn(argv.empty() ? std::string() : argv[0], argv, log);
  if (!c) return std::move(c).error();
  Child& child = **c;
  while (child.running()) {
    if (!child.wait(milliseconds(100))) {
      if (auto st = check_interrupted(); !st) return std::move(st).error();
      if (timeout.count() <= 0) return make_error(Errc::timeout, "{} did not finish in time", argv[0]);
      timeout -= milliseconds(100);
    }
  }
  return *child.status();
}

// ---------------------------------------------------------------------------------------------

Result<std::pair<std::uint16_t, std::uint16_t>> free_ports() {
  std::uint16_t out[2] = {0, 0};
  int fds[2] = {-1, -1};
  for (int i = 0; i < 2; ++i) {
    // Both stay open while choosing, so the two ports differ.
    fds[i] = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    if (fds[i] < 0 || ::bind(fds[i], reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||  // NOLINT
        ::getsockname(fds[i], reinterpret_cast<sockaddr*>(&a), &len) != 0) {             // NOLINT
      const int err = errno;
      for (int fd : fds) {
        if (fd >= 0) ::close(fd);
      }
      return make_error(Errc::io_error, "cannot pick a free port: {}", std::strerror(err));
    }
    out[i] = ntohs(a.sin_port);
  }
  ::close(fds[0]);
  ::close(fds[1]);
  return std::pair{out[0], out[1]};
}

bool accepts(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a = loopback(port);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;  // NOLINT
  ::close(fd);
  return ok;
}

std::uint64_t rss_bytes(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmRSS:")) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

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

std::string load_average() {
  std::istringstream in(read_text("/proc/loadavg"));
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return fmt::format("{} {} {}", one, five, fifteen);
}

// ---------------------------------------------------------------------------------------------

std::string Broker::device_uri() const { return fmt::format("mqtt://127.0.0.1:{}", device_port); }
std::string Broker::service_uri() const { return fmt::format("mqtt://127.0.0.1:{}", service_port); }

Result<Broker> start_broker(const std::filesystem::path& dir, const std::vector<std::string>& device_ids,
                            const std::string& password, const std::string& mosquitto) {
  std::string users = fmt::format("{}:{}\n{}:{}\n", kManagerUser, password, kOperatorUser, password);
  for (const auto& id : device_ids) users += fmt::format("{}:{}\n", id, password);
  if (auto st = write_text(dir / "users.txt", users, 0600); !st) return std::move(st).error();
  auto program = find_program(mosquitto);
  if (!program) return std::move(program).error();
  const auto script = source_dir() / "deploy" / "mosquitto" / "make-broker-config";
  // A port can be taken between choosing and binding it (tests run concurrently): retry.
  for (int attempt = 1;; ++attempt) {
    Broker b;
    auto ports = free_ports();
    if (!ports) return std::move(ports).error();
    std::tie(b.device_port, b.service_port) = *ports;
    auto rc = run_to_completion({script.string(), "--out", (dir / "broker").string(), "--device-port",
                                 std::to_string(b.device_port), "--service-port", std::to_string(b.service_port),
                                 "--users", (dir / "users.txt").string(), "--bind", "127.0.0.1"},
                                dir / "make-broker-config.log", seconds(300));
    if (!rc) return std::move(rc).error();
    if (*rc != 0) {
      return make_error(Errc::unavailable, "make-broker-config exited with {}:\n{}", *rc,
                        read_text(dir / "make-broker-config.log"));
    }
    const auto broker_log = dir / "broker" / "data" / "mosquitto.log";
    std::error_code ec;
    std::filesystem::remove(broker_log, ec);
    auto child = Child::spawn("mosquitto", {*program, "-c", (dir / "broker" / "mosquitto.conf").string()},
                              dir / "mosquitto.log");
    if (!child) return std::move(child).error();
    b.process = std::move(child).value();
    const auto deadline = Clock::now() + seconds(10);
    while (b.process->running() && Clock::now() < deadline) {
      if (auto st = check_interrupted(); !st) return std::move(st).error();
      // The log line "... running" proves that this process opened its listeners.
      if (read_text(broker_log).find(" running\n") != std::string::npos && accepts(b.device_port) &&
          accepts(b.service_port)) {
        return b;
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
    const std::string why = tail(read_text(dir / "mosquitto.log") + read_text(broker_log), 10);
    b.process.reset();
    if (attempt == 3) return make_error(Errc::unavailable, "mosquitto did not start:\n{}", why);
  }
}

Result<cli::RpcClient> connect_rpc(const Broker& broker, const std::string& password) {
  TransportOptions o;
  o.broker_uri = broker.service_uri();
  o.username = kOperatorUser;
  o.password = password;
  auto client = cli::RpcClient::connect(o, kOperatorUser, seconds(10));
  if (!client) return make_error(client.error().code, "RPC client: {}", client.error().message);
  return client;
}

Result<ManagerProcess> start_manager(const std::filesystem::path& dir, const Broker& broker,
                                     const std::string& password, const ManagerOptions& options) {
  if (auto st = write_text(dir / "password", password + "\n", 0600); !st) return std::move(st).error();
  if (auto st = write_text(dir / "manager.toml",
                           fmt::format("[mqtt]\nbroker = \"{}\"\npassword_file = \"{}\"\n"
                                       "[manager]\ndata_dir = \"{}\"\n{}",
                                       broker.service_uri(), (dir / "password").string(), (dir / "manager").string(),
                                       options.extra_toml),
                           0600);
      !st) {
    return std::move(st).error();
  }
  const auto bin = options.binary.empty() ? binary_dir() / "fleet-manager" / "flotilla-manager" : options.binary;
  auto child = Child::spawn("flotilla-manager", {bin.string(), "--config", (dir / "manager.toml").string()},
                            dir / "manager.log", seconds(20));
  if (!child) return std::move(child).error();
  auto client = connect_rpc(broker, password);
  if (!client) return std::move(client).error();
  ManagerProcess m{std::move(child).value(), std::move(client).value()};
  // Ready once it answers: its subscriptions exist, so nothing the devices publish is missed.
  const auto deadline = Clock::now() + seconds(30);
  for (;;) {
    if (auto st = check_interrupted(); !st) return std::move(st).error();
    if (auto st = m.process->check_alive(); !st) return std::move(st).error();
    v1::RpcRequest req;
    req.mutable_manager_stats();
    auto r = m.rpc.call(req, seconds(1));
    if (r && r->code() == v1::RpcResponse::CODE_OK) return m;
    if (Clock::now() >= deadline) return make_error(Errc::unavailable, "flotilla-manager does not answer its RPC");
  }
}

Result<v1::ManagerStats> manager_stats(cli::RpcClient& rpc, milliseconds timeout) {
  v1::RpcRequest req;
  req.mutable_manager_stats();
  auto r = rpc.call(req, timeout);
  if (!r) return make_error(r.error().code, "ManagerStats RPC: {}", r.error().message);
  if (r->code() != v1::RpcResponse::CODE_OK) return make_error(Errc::internal, "ManagerStats RPC: {}", r->error());
  return r->manager_stats();
}

}  // namespace flotilla::bench
