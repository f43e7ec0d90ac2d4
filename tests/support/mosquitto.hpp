#pragma once
// A real Mosquitto broker per test, configured by deploy/mosquitto/make-broker-config from
// the production template and ACL, on free loopback ports.
// Failures throw std::runtime_error carrying the broker's log.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "support/process.hpp"

namespace flotilla::testing {

struct MosquittoOptions {
  // username -> plaintext password; devices use their device id as username.
  std::vector<std::pair<std::string, std::string>> users;
  // Holds users.txt, broker/ (config, passwd, acl) and broker/data/ (persistence, log).
  // Empty: a fresh directory under the temp dir, removed by the destructor unless the
  // environment sets FLOTILLA_KEEP_TEST_DIRS=1. A given directory is never removed.
  std::filesystem::path work_dir;
  // How long start() polls for both listeners before giving up.
  std::chrono::milliseconds ready_timeout{std::chrono::seconds(10)};
};

// Owns one mosquitto process and its directory. One thread drives an instance.
// Not movable: keep it in a local or a std::unique_ptr.
class MosquittoBroker {
 public:
  explicit MosquittoBroker(MosquittoOptions options);
  MosquittoBroker(const MosquittoBroker&) = delete;
  MosquittoBroker& operator=(const MosquittoBroker&) = delete;
  ~MosquittoBroker();  // stop(), then removes a temp work dir

  // First call: picks two free loopback ports, renders the config, starts the broker.
  // Later calls (after stop/kill): same ports, same config and data directory.
  // Returns once both ports accept TCP connections. Throws if the broker exits or is not
  // ready within ready_timeout.
  void start();
  // SIGTERM and reap (mosquitto saves its persistence file on the way out). No-op if stopped.
  void stop();
  // SIGKILL and reap: a crash; state since the last autosave is lost.
  void kill();
  // stop() then start() on the same ports and data directory: persisted sessions survive.
  void restart();
  bool running();

  std::uint16_t device_port() const noexcept { return device_port_; }
  std::uint16_t service_port() const noexcept { return service_port_; }
  static std::string host() { return "127.0.0.1"; }
  std::string device_uri() const;   // "mqtt://127.0.0.1:PORT", agents
  std::string service_uri() const;  // "mqtt://127.0.0.1:PORT", manager and CLI
  std::optional<pid_t> pid() const noexcept;

  const std::filesystem::path& work_dir() const noexcept { return work_dir_; }
  std::filesystem::path config_dir() const { return work_dir_ / "broker"; }
  std::filesystem::path data_dir() const { return config_dir() / "data"; }
  // Password given for `user` in the options; throws if the user is unknown.
  const std::string& password(const std::string& user) const;

  // The broker's stdout/stderr (config errors land there) followed by its log file.
  std::string log_text() const;

 private:
  void render_config();
  bool try_start_once(std::chrono::steady_clock::time_point deadline, std::string& failure);

  MosquittoOptions options_;
  std::filesystem::path work_dir_;
  bool owns_work_dir_ = false;
  bool configured_ = false;    // ports picked and config rendered
  bool ever_started_ = false;  // from then on the ports are fixed
  std::uint16_t device_port_ = 0;
  std::uint16_t service_port_ = 0;
  std::optional<ChildProcess> process_;
};

// Locations used by MosquittoBroker; exposed so tests can run the clients next to it.
std::filesystem::path source_dir();        // FLOTILLA_SOURCE_DIR
std::filesystem::path mosquitto_binary();  // PATH, then /usr/sbin/mosquitto
// Creates a fresh directory under the temp dir (honours TMPDIR).
std::filesystem::path make_temp_dir(const std::string& prefix);

}  // namespace flotilla::testing
