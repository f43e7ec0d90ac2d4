#pragma once
// Child processes for integration tests: spawn, signal, wait with a deadline, reap.
// Test-support code: failures throw std::runtime_error (doctest reports them as test errors).

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::testing {

struct SpawnOptions {
  // Added to (or overriding) the parent's environment.
  std::vector<std::pair<std::string, std::string>> env;
  // stdout and stderr are appended to this file; empty: both are inherited from the test.
  std::filesystem::path log_path;
};

// Owns one child process from spawn until it is reaped. Not thread-safe: one thread drives
// an instance. The child stays in the test's process group, has stdin on /dev/null, default
// signal dispositions and an empty signal mask, and inherits no descriptor above 2.
// Move-only; the destructor terminates (SIGTERM, then SIGKILL after 5 s) and reaps, so no
// zombie outlives the object. A pid stays valid for signal() until it is reaped, because
// only this object reaps it.
class ChildProcess {
 public:
  // Exit status as the shell reports it: the exit code, or 128 + signal number.
  using Status = int;

  // argv[0] is looked up in PATH when it holds no '/'.
  // Throws std::runtime_error if argv is empty or the program cannot be executed.
  static ChildProcess spawn(std::vector<std::string> argv, const SpawnOptions& options = {});

  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  pid_t pid() const noexcept { return pid_; }
  const std::vector<std::string>& argv() const noexcept { return argv_; }

  // True until the child has exited; reaps it (and records the status) once it has.
  bool running();

  // Sends `signo` unless the child has already been reaped. Throws on kill(2) failure.
  void signal(int signo);

  // SIGKILL, then reaps. Returns the exit status.
  Status kill();

  // SIGTERM, waits up to `timeout`, then SIGKILL. Returns the exit status.
  Status terminate(std::chrono::milliseconds timeout = std::chrono::seconds(5));

  // Waits up to `timeout` for the child to exit; nullopt if it is still running.
  std::optional<Status> wait_exit(std::chrono::milliseconds timeout);

  // Exit status if the child has been reaped.
  std::optional<Status> exit_status() const noexcept { return status_; }

  // Everything the child wrote so far (empty without a log_path).
  std::string log_text() const;
  const std::filesystem::path& log_path() const noexcept { return log_path_; }

 private:
  ChildProcess(pid_t pid, std::vector<std::string> argv, std::filesystem::path log_path);
  bool try_reap();  // true once reaped
  Status reap_blocking();
  void release() noexcept;  // terminate and reap, never throws

  pid_t pid_ = -1;
  std::optional<Status> status_;
  std::vector<std::string> argv_;
  std::filesystem::path log_path_;
};

struct CommandResult {
  ChildProcess::Status status;
  std::string output;  // stdout and stderr, interleaved
};

// Runs argv to completion, capturing its output in `log_path` (truncated first).
// Throws std::runtime_error if the command does not exit within `timeout` (it is killed).
CommandResult run_command(std::vector<std::string> argv, const std::filesystem::path& log_path,
                          std::chrono::milliseconds timeout = std::chrono::seconds(20), SpawnOptions options = {});

// Reads a whole file; empty string if it does not exist.
std::string read_file(const std::filesystem::path& path);

}  // namespace flotilla::testing
