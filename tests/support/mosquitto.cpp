#include "support/mosquitto.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string_view>
#include <thread>

#include <fmt/format.h>

#ifndef FLOTILLA_SOURCE_DIR
#error "compile with -DFLOTILLA_SOURCE_DIR=\"<repository root>\""
#endif

namespace flotilla::testing {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPollInterval = std::chrono::milliseconds(20);
// Ends the line "mosquitto version 2.0.11 running", logged once every listener is open.
constexpr std::string_view kRunningMarker = " running\n";

class Socket {
 public:
  Socket() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    if (fd_ < 0) throw std::runtime_error(fmt::format("socket: {}", std::strerror(errno)));
  }
  ~Socket() { ::close(fd_); }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// Binds port 0 on loopback and reads the port the kernel chose. The socket stays open in
// `holder` so that a second call cannot get the same port.
std::uint16_t reserve_port(Socket& holder) {
  sockaddr_in addr = loopback(0);
  if (::bind(holder.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {  // NOLINT
    throw std::runtime_error(fmt::format("bind(127.0.0.1:0): {}", std::strerror(errno)));
  }
  socklen_t len = sizeof addr;
  if (::getsockname(holder.fd(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {  // NOLINT
    throw std::runtime_error(fmt::format("getsockname: {}", std::strerror(errno)));
  }
  return ntohs(addr.sin_port);
}

std::pair<std::uint16_t, std::uint16_t> pick_two_free_ports() {
  Socket first;
  Socket second;
  return {reserve_port(first), reserve_port(second)};
}

bool accepts_connections(std::uint16_t port) {
  Socket s;
  sockaddr_in addr = loopback(port);
  return ::connect(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;  // NOLINT
}

std::uintmax_t file_size_or_zero(const std::filesystem::path& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  return ec ? 0 : size;
}

std::string read_from(const std::filesystem::path& path, std::uintmax_t offset) {
  const std::string text = read_file(path);
  return offset < text.size() ? text.substr(static_cast<std::size_t>(offset)) : std::string();
}

bool keep_test_dirs() {
  const char* keep = std::getenv("FLOTILLA_KEEP_TEST_DIRS");
  return keep != nullptr && std::string_view(keep) == "1";
}

}  // namespace

std::filesystem::path source_dir() { return std::filesystem::path(FLOTILLA_SOURCE_DIR); }

std::filesystem::path mosquitto_binary() {
  const char* path_env = std::getenv("PATH");
  std::string_view path = path_env != nullptr ? path_env : "";
  while (!path.empty()) {
    const auto colon = path.find(':');
    const std::string_view dir = path.substr(0, colon);
    path = colon == std::string_view::npos ? std::string_view() : path.substr(colon + 1);
    if (dir.empty()) continue;
    auto candidate = std::filesystem::path(dir) / "mosquitto";
    std::error_code ec;  // unreadable PATH entries are skipped, not fatal
    if (std::filesystem::is_regular_file(candidate, ec) && ::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  std::filesystem::path fallback = "/usr/sbin/mosquitto";
  if (::access(fallback.c_str(), X_OK) == 0) return fallback;
  throw std::runtime_error("mosquitto not found in PATH nor at /usr/sbin/mosquitto (apt install mosquitto)");
}

std::filesystem::path make_temp_dir(const std::string& prefix) {
  std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error(fmt::format("mkdtemp({}): {}", pattern, std::strerror(errno)));
  }
  return pattern;
}

MosquittoBroker::MosquittoBroker(MosquittoOptions options) : options_(std::move(options)) {
  if (options_.work_dir.empty()) {
    work_dir_ = make_temp_dir("flotilla-mosquitto-");
    owns_work_dir_ = true;
  } else {
    work_dir_ = std::filesystem::absolute(options_.work_dir);
    std::filesystem::create_directories(work_dir_);
  }
}

MosquittoBroker::~MosquittoBroker() {
  try {
    stop();
  } catch (...) {
    // The ChildProcess destructor still kills and reaps.
  }
  process_.reset();
  if (owns_work_dir_ && !keep_test_dirs()) {
    std::error_code ignored;
    std::filesystem::remove_all(work_dir_, ignored);
  }
}

std::string MosquittoBroker::device_uri() const { return fmt::format("mqtt://{}:{}", host(), device_port_); }
std::string MosquittoBroker::service_uri() const { return fmt::format("mqtt://{}:{}", host(), service_port_); }

std::optional<pid_t> MosquittoBroker::pid() const noexcept {
  if (process_) return process_->pid();
  return std::nullopt;
}

const std::string& MosquittoBroker::password(const std::string& user) const {
  for (const auto& [name, password] : options_.users) {
    if (name == user) return password;
  }
  throw std::runtime_error(fmt::format("MosquittoBroker: no user '{}' in the options", user));
}

void MosquittoBroker::render_config() {
  const auto users_file = work_dir_ / "users.txt";
  {
    std::ofstream out(users_file, std::ios::trunc);
    for (const auto& [user, password] : options_.users) out << user << ':' << password << '\n';
    if (!out) throw std::runtime_error(fmt::format("cannot write {}", users_file.string()));
  }
  std::filesystem::permissions(users_file, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);

  const auto script = source_dir() / "deploy" / "mosquitto" / "make-broker-config";
  const CommandResult result = run_command(
      {script.string(), "--out", config_dir().string(), "--device-port", std::to_string(device_port_), "--service-port",
       std::to_string(service_port_), "--users", users_file.string(), "--bind", host()},
      work_dir_ / "make-broker-config.log");
  if (result.status != 0) {
    throw std::runtime_error(fmt::format("make-broker-config exited with {}:\n{}", result.status, result.output));
  }
}

bool MosquittoBroker::try_start_once(Clock::time_point deadline, std::string& failure) {
  const auto stdout_log = work_dir_ / "mosquitto.stdout.log";
  const auto broker_log = data_dir() / "mosquitto.log";
  const auto stdout_offset = file_size_or_zero(stdout_log);
  const auto log_offset = file_size_or_zero(broker_log);
  process_.emplace(ChildProcess::spawn({mosquitto_binary().string(), "-c", (config_dir() / "mosquitto.conf").string()},
                                       SpawnOptions{{}, stdout_log}));

  const auto attempt_log = [&] { return read_from(stdout_log, stdout_offset) + read_from(broker_log, log_offset); };
  for (;;) {
    // Checked before the ports: a port answering while our broker is dying may be someone
    // else's listener. The log marker confirms this process opened its listeners.
    const bool alive = process_->running();
    if (!alive) {
      failure = fmt::format("mosquitto exited with status {}:\n{}", *process_->exit_status(), attempt_log());
      process_.reset();
      return false;
    }
    if (attempt_log().find(kRunningMarker) != std::string::npos && accepts_connections(device_port_) &&
        accepts_connections(service_port_) && process_->running()) {
      return true;
    }
    if (Clock::now() >= deadline) {
      process_->kill();
      failure = fmt::format("mosquitto not ready on ports {} and {} within {} ms:\n{}", device_port_, service_port_,
                            options_.ready_timeout.count(), attempt_log());
      process_.reset();
      return false;
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

void MosquittoBroker::start() {
  if (process_ && process_->running()) throw std::runtime_error("MosquittoBroker::start: already running");
  process_.reset();
  const auto deadline = Clock::now() + options_.ready_timeout;
  std::string failure;
  std::string first_conflict;
  int conflicts = 0;
  for (;;) {
    if (!configured_) {
      std::tie(device_port_, service_port_) = pick_two_free_ports();
      render_config();
      configured_ = true;
    }
    if (try_start_once(deadline, failure)) {
      ever_started_ = true;
      return;
    }
    // Someone took a port between the probe and mosquitto's bind, or (on restart) the old
    // port is briefly unavailable. Before the first successful start no session depends on
    // the ports, but a restart must keep them; either way retry until the deadline.
    const bool port_taken = failure.find("Address already in use") != std::string::npos;
    if (port_taken && conflicts++ == 0) first_conflict = failure;
    if (!port_taken || Clock::now() >= deadline) {
      std::string message = fmt::format("MosquittoBroker::start ({}): {}", work_dir_.string(), failure);
      if (conflicts > 0 && !port_taken) {
        message += fmt::format("\n{} earlier attempt(s) found a port taken; the first one:\n{}", conflicts,
                               first_conflict);
      }
      throw std::runtime_error(message);
    }
    if (!ever_started_) configured_ = false;
    std::this_thread::sleep_for(kPollInterval);
  }
}

void MosquittoBroker::stop() {
  if (!process_) return;
  process_->terminate(std::chrono::seconds(10));
  process_.reset();
}

void MosquittoBroker::kill() {
  if (!process_) return;
  process_->kill();
  process_.reset();
}

void MosquittoBroker::restart() {
  stop();
  start();
}

bool MosquittoBroker::running() { return process_ && process_->running(); }

std::string MosquittoBroker::log_text() const {
  return read_file(work_dir_ / "mosquitto.stdout.log") + read_file(data_dir() / "mosquitto.log");
}

}  // namespace flotilla::testing
