#include "support/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <thread>

#include <fmt/format.h>

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace flotilla::testing {
namespace {

[[noreturn]] void throw_errno(std::string_view what, int err) {
  throw std::runtime_error(fmt::format("{}: {}", what, std::strerror(err)));
}

void check_spawn_call(int rc, std::string_view what) {
  if (rc != 0) throw_errno(what, rc);
}

ChildProcess::Status decode_wait_status(int wstatus) {
  if (WIFEXITED(wstatus)) return WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) return 128 + WTERMSIG(wstatus);
  return 255;
}

struct FileActions {
  posix_spawn_file_actions_t actions;
  FileActions() { check_spawn_call(posix_spawn_file_actions_init(&actions), "posix_spawn_file_actions_init"); }
  ~FileActions() { posix_spawn_file_actions_destroy(&actions); }
  FileActions(const FileActions&) = delete;
  FileActions& operator=(const FileActions&) = delete;
};

struct SpawnAttr {
  posix_spawnattr_t attr;
  SpawnAttr() { check_spawn_call(posix_spawnattr_init(&attr), "posix_spawnattr_init"); }
  ~SpawnAttr() { posix_spawnattr_destroy(&attr); }
  SpawnAttr(const SpawnAttr&) = delete;
  SpawnAttr& operator=(const SpawnAttr&) = delete;
};

std::vector<std::string> build_environment(const std::vector<std::pair<std::string, std::string>>& extra) {
  std::vector<std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string_view kv(*entry);
    const std::string_view name = kv.substr(0, kv.find('='));
    bool overridden = false;
    for (const auto& [key, value] : extra) overridden = overridden || key == name;
    if (!overridden) env.emplace_back(kv);
  }
  for (const auto& [key, value] : extra) env.push_back(std::string(key).append("=").append(value));
  return env;
}

std::vector<char*> c_pointers(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  pointers.reserve(strings.size() + 1);
  for (auto& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

}  // namespace

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

ChildProcess ChildProcess::spawn(std::vector<std::string> argv, const SpawnOptions& options) {
  if (argv.empty()) throw std::runtime_error("ChildProcess::spawn: empty argv");

  FileActions files;
  check_spawn_call(posix_spawn_file_actions_addopen(&files.actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0),
                   "posix_spawn_file_actions_addopen(/dev/null)");
  const std::string log_path = options.log_path.string();
  if (!log_path.empty()) {
    check_spawn_call(posix_spawn_file_actions_addopen(&files.actions, STDOUT_FILENO, log_path.c_str(),
                                                      O_WRONLY | O_CREAT | O_APPEND, 0644),
                     "posix_spawn_file_actions_addopen(log)");
    check_spawn_call(posix_spawn_file_actions_adddup2(&files.actions, STDOUT_FILENO, STDERR_FILENO),
                     "posix_spawn_file_actions_adddup2");
  }
  // Descriptors the test process holds (sockets, other children's logs) stay out of the child.
  check_spawn_call(posix_spawn_file_actions_addclosefrom_np(&files.actions, STDERR_FILENO + 1),
                   "posix_spawn_file_actions_addclosefrom_np");

  SpawnAttr attr;
  sigset_t empty_mask;
  sigemptyset(&empty_mask);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int signo : {SIGHUP, SIGINT, SIGQUIT, SIGPIPE, SIGTERM, SIGUSR1, SIGUSR2, SIGCHLD}) sigaddset(&defaults, signo);
  check_spawn_call(posix_spawnattr_setsigmask(&attr.attr, &empty_mask), "posix_spawnattr_setsigmask");
  check_spawn_call(posix_spawnattr_setsigdefault(&attr.attr, &defaults), "posix_spawnattr_setsigdefault");
  check_spawn_call(posix_spawnattr_setflags(&attr.attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF),
                   "posix_spawnattr_setflags");

  std::vector<std::string> env = build_environment(options.env);
  std::vector<std::string> args = argv;
  std::vector<char*> argv_pointers = c_pointers(args);
  std::vector<char*> env_pointers = c_pointers(env);

  pid_t pid = -1;
  // glibc reports exec failures (ENOENT, EACCES) here, not as an exit status 127.
  const int rc = posix_spawnp(&pid, argv_pointers[0], &files.actions, &attr.attr, argv_pointers.data(),
                              env_pointers.data());
  if (rc != 0) throw_errno(fmt::format("cannot run '{}'", argv[0]), rc);
  return ChildProcess(pid, std::move(argv), options.log_path);
}

ChildProcess::ChildProcess(pid_t pid, std::vector<std::string> argv, std::filesystem::path log_path)
    : pid_(pid), argv_(std::move(argv)), log_path_(std::move(log_path)) {}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      status_(std::exchange(other.status_, std::nullopt)),
      argv_(std::move(other.argv_)),
      log_path_(std::move(other.log_path_)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    release();
    pid_ = std::exchange(other.pid_, -1);
    status_ = std::exchange(other.status_, std::nullopt);
    argv_ = std::move(other.argv_);
    log_path_ = std::move(other.log_path_);
  }
  return *this;
}

ChildProcess::~ChildProcess() { release(); }

void ChildProcess::release() noexcept {
  if (pid_ <= 0 || status_) return;
  try {
    terminate(std::chrono::seconds(5));
  } catch (...) {
    // Last resort; the pid is still ours because nobody else reaps it.
    ::kill(pid_, SIGKILL);
    int wstatus = 0;
    while (::waitpid(pid_, &wstatus, 0) == -1 && errno == EINTR) {
    }
  }
}

bool ChildProcess::try_reap() {
  if (status_) return true;
  if (pid_ <= 0) throw std::runtime_error("ChildProcess: no process (moved from)");
  for (;;) {
    int wstatus = 0;
    const pid_t r = ::waitpid(pid_, &wstatus, WNOHANG);
    if (r == pid_) {
      status_ = decode_wait_status(wstatus);
      return true;
    }
    if (r == 0) return false;
    if (errno != EINTR) throw_errno(fmt::format("waitpid({})", pid_), errno);
  }
}

ChildProcess::Status ChildProcess::reap_blocking() {
  if (status_) return *status_;
  if (pid_ <= 0) throw std::runtime_error("ChildProcess: no process (moved from)");
  for (;;) {
    int wstatus = 0;
    const pid_t r = ::waitpid(pid_, &wstatus, 0);
    if (r == pid_) {
      status_ = decode_wait_status(wstatus);
      return *status_;
    }
    if (errno != EINTR) throw_errno(fmt::format("waitpid({})", pid_), errno);
  }
}

bool ChildProcess::running() {
  if (pid_ <= 0) return false;
  return !try_reap();
}

void ChildProcess::signal(int signo) {
  if (pid_ <= 0) throw std::runtime_error("ChildProcess::signal: no process (moved from)");
  if (status_) return;  // reaped: the pid may belong to someone else by now
  if (::kill(pid_, signo) != 0) throw_errno(fmt::format("kill({}, {})", pid_, signo), errno);
}

ChildProcess::Status ChildProcess::kill() {
  signal(SIGKILL);
  return reap_blocking();
}

ChildProcess::Status ChildProcess::terminate(std::chrono::milliseconds timeout) {
  if (status_) return *status_;
  signal(SIGTERM);
  if (auto status = wait_exit(timeout)) return *status;
  return kill();
}

std::optional<ChildProcess::Status> ChildProcess::wait_exit(std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    if (try_reap()) return status_;
    const auto now = Clock::now();
    if (now >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
    pause = std::min(pause * 2, std::chrono::milliseconds(10));
  }
}

std::string ChildProcess::log_text() const { return log_path_.empty() ? std::string() : read_file(log_path_); }

CommandResult run_command(std::vector<std::string> argv, const std::filesystem::path& log_path,
                          std::chrono::milliseconds timeout, SpawnOptions options) {
  std::error_code ignored;
  std::filesystem::remove(log_path, ignored);
  options.log_path = log_path;
  ChildProcess child = ChildProcess::spawn(std::move(argv), options);
  if (auto status = child.wait_exit(timeout)) return CommandResult{*status, child.log_text()};
  child.kill();
  throw std::runtime_error(fmt::format("'{}' did not exit within {} ms; output:\n{}", child.argv().front(),
                                       timeout.count(), child.log_text()));
}

}  // namespace flotilla::testing
