#pragma once
// What the end-to-end benchmarks (flotilla-bench-e2e, flotilla-bench-jobs) share: child processes
// with their output in a log file, reaped on every path; Mosquitto rendered from the production
// template and ACL on free loopback ports; flotilla-manager on a fresh data directory, answering
// its RPC; CPU time, memory and load from /proc. Everything here is called from the benchmark's
// main thread; the signal handler only sets a flag.
//
// Failures are returned (Result/Status) with a message that names what failed; the benchmark
// program decides how to end.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "flotilla/cli/rpc_client.hpp"
#include "flotilla/core/result.hpp"
#include "flotilla/v1/manager.pb.h"

namespace flotilla::bench {

using Clock = std::chrono::steady_clock;

// The broker users the ACL knows besides the devices (deploy/mosquitto/acl).
inline constexpr const char* kManagerUser = "flotilla-manager";
inline constexpr const char* kOperatorUser = "flotilla-operator";

// The repository and the build directory this library was configured for (the manager, the
// simulator and make-broker-config are found there).
std::filesystem::path source_dir();
std::filesystem::path binary_dir();

// ---------------------------------------------------------------------------------------------
// Signals: SIGINT, SIGTERM and SIGHUP only set a flag, so that the benchmark ends through its
// destructors and every child is reaped.

void install_signal_handlers();

// The signal received, 0 when none.
int interrupted();
// Errors: closed ("interrupted by signal N") once a signal arrived.
Status check_interrupted();

// Errors end a run: they are thrown here and caught by run_main(), which prints them and the logs.
inline void must(const Status& st) {
  if (!st) throw std::runtime_error(st.error().message);
}
template <typename T>
T must(Result<T> r) {
  if (!r) throw std::runtime_error(r.error().message);
  return std::move(r).value();
}

// Installs the signal handlers, builds a benchmark from `options` and runs it; on an error prints
// it as "NAME: ..." and, unless interrupted, the benchmark's logs(). Returns main()'s exit code.
template <typename Bench, typename Options>
int run_main(std::string_view name, const Options& options) {
  install_signal_handlers();
  std::unique_ptr<Bench> bench;
  try {
    bench = std::make_unique<Bench>(options);
    bench->run();
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", name, e.what());
    try {
      if (bench && interrupted() == 0) fmt::print(stderr, "{}", bench->logs());
    } catch (const std::exception& again) {
      fmt::print(stderr, "(logs unavailable: {})\n", again.what());
    }
    return 1;
  }
  return 0;
}

// Sleeps `d` in short steps. Errors: those of check_interrupted().
Status pause_for(Clock::duration d);

// ---------------------------------------------------------------------------------------------
// Files.

// The whole file; empty when it cannot be read.
std::string read_text(const std::filesystem::path& path);
// The last `lines` lines of `text`.
std::string tail(const std::string& text, std::size_t lines);
// Replaces the file with `text` and sets its mode. Errors: io_error.
Status write_text(const std::filesystem::path& path, const std::string& text, mode_t mode);
// A new directory TMPDIR/{prefix}XXXXXX. Errors: io_error.
Result<std::filesystem::path> make_temp_dir(const std::string& prefix);
// "==== path\n<last lines>" for every file of `paths` that exists.
std::string log_tails(const std::vector<std::filesystem::path>& paths, std::size_t lines);

// ---------------------------------------------------------------------------------------------
// Child processes.

// Owns one spawned process until it is reaped; the destructor terminates it (SIGTERM, then
// SIGKILL after the grace period) and reaps it. stdin is /dev/null, stdout and stderr append to
// the log file. The child's FLOTILLA_BROKER and FLOTILLA_MQTT_* environment is removed: it reads
// its settings from the files and flags the benchmark gives it.
class Child {
 public:
  // Errors: unavailable ("cannot run ...": posix_spawn failed).
  static Result<std::unique_ptr<Child>> spawn(std::string name, const std::vector<std::string>& argv,
                                              const std::filesystem::path& log,
                                              std::chrono::milliseconds grace = std::chrono::seconds(10));
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { stop(); }

  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }
  const std::filesystem::path& log() const { return log_; }
  // The exit status (128 + signal when killed) once reaped.
  std::optional<int> status() const { return status_; }

  bool running();
  // Waits at most `timeout` for the process to end; its status, or nullopt when still running.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  // SIGTERM, then SIGKILL after the grace period; reaps. Returns the exit status.
  int stop();
  // Errors: unavailable when the process ended (the message holds the end of its log).
  Status check_alive();

 private:
  Child(std::string name, std::filesystem::path log, std::chrono::milliseconds grace, pid_t pid)
      : name_(std::move(name)), log_(std::move(log)), grace_(grace), pid_(pid) {}

  std::string name_;
  std::filesystem::path log_;
  std::chrono::milliseconds grace_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// `name` itself when it holds a '/', else the first match in PATH, else /usr/sbin/NAME (Debian
// puts mosquitto there, outside an ordinary user's PATH). Errors: not_found.
Result<std::string> find_program(const std::string& name);

// Runs argv to its end (output to `log`); its exit status. Errors: those of Child::spawn,
// timeout, closed (interrupted).
Result<int> run_to_completion(const std::vector<std::string>& argv, const std::filesystem::path& log,
                              std::chrono::milliseconds timeout);

// ---------------------------------------------------------------------------------------------
// Ports and /proc.

// Two different ports the kernel reports free on 127.0.0.1. Errors: io_error.
Result<std::pair<std::uint16_t, std::uint16_t>> free_ports();
// Whether something accepts TCP connections on 127.0.0.1:port.
bool accepts(std::uint16_t port);
// VmRSS in bytes; 0 when the process is gone.
std::uint64_t rss_bytes(pid_t pid);
// utime + stime in seconds (pid 0: this process); 0 when the process is gone.
double cpu_seconds(pid_t pid);
// The first three fields of /proc/loadavg.
std::string load_average();

// ---------------------------------------------------------------------------------------------
// Mosquitto and the manager.

struct Broker {
  std::unique_ptr<Child> process;
  std::uint16_t device_port = 0;   // devices: client id := username
  std::uint16_t service_port = 0;  // manager, CLI, benchmark clients

  std::string device_uri() const;
  std::string service_uri() const;
};

// Writes DIR/users.txt (flotilla-manager, flotilla-operator and every device id, all with
// `password`), renders DIR/broker with deploy/mosquitto/make-broker-config on two free loopback
// ports, starts `mosquitto` (found by find_program; output in DIR/mosquitto.log, broker log in
// DIR/broker/data/mosquitto.log) and waits until it accepts on both ports. Retries with new ports
// when one was taken meanwhile. Errors: io_error, not_found, unavailable (did not start), those of
// run_to_completion.
Result<Broker> start_broker(const std::filesystem::path& dir, const std::vector<std::string>& device_ids,
                            const std::string& password, const std::string& mosquitto);

struct ManagerProcess {
  std::unique_ptr<Child> process;
  cli::RpcClient rpc;  // connected as flotilla-operator
};

struct ManagerOptions {
  std::filesystem::path binary;  // empty: fleet-manager/flotilla-manager of binary_dir()
  std::string extra_toml;        // appended to manager.toml: further tables such as "[jobs]\n..."
};

// Writes DIR/password and DIR/manager.toml (broker on the service port, data_dir DIR/manager,
// then options.extra_toml), starts flotilla-manager (output in DIR/manager.log), connects an RPC
// client and waits (at most 30 s) until the manager answers ManagerStats: its subscriptions then
// exist. Errors: io_error, unavailable (exited, does not answer), those of
// cli::RpcClient::connect.
Result<ManagerProcess> start_manager(const std::filesystem::path& dir, const Broker& broker,
                                     const std::string& password, const ManagerOptions& options = {});

// A further RPC client of the manager, as flotilla-operator. Errors: those of
// cli::RpcClient::connect.
Result<cli::RpcClient> connect_rpc(const Broker& broker, const std::string& password);

// One ManagerStats RPC. Errors: those of RpcClient::call, internal (the manager answered an error).
Result<v1::ManagerStats> manager_stats(cli::RpcClient& rpc, std::chrono::milliseconds timeout);

}  // namespace flotilla::bench
