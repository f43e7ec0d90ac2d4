#include "jobs/process.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <limits>
#include <system_error>
#include <utility>

#include <fmt/format.h>

namespace flotilla::agent::proc {
namespace {

using Clock = std::chrono::steady_clock;

// Owns one file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  [[nodiscard]] int get() const { return fd_; }
  [[nodiscard]] bool valid() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) (void)::close(fd_);  // close() is not retried on EINTR: the fd is gone either way
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

std::string errno_text(int error) { return std::error_code(error, std::generic_category()).message(); }

Errc errc_for(int error) {
  switch (error) {
    case ENOENT:
    case ENOTDIR: return Errc::not_found;
    case EACCES:
    case EPERM: return Errc::permission_denied;
    default: return Errc::internal;
  }
}

// What the child failed to do before exec, reported to the parent through a close-on-exec pipe
// (which reads as empty when exec succeeds).
enum class Stage : int { fds = 1, session, chdir, setgroups, setgid, setuid, exec };

struct ChildFailure {
  Stage stage;
  int error;
};

std::string_view stage_text(Stage stage) {
  switch (stage) {
    case Stage::fds: return "set up descriptors";
    case Stage::session: return "start a session";
    case Stage::chdir: return "change to the working directory";
    case Stage::setgroups: return "set supplementary groups";
    case Stage::setgid: return "set the group id";
    case Stage::setuid: return "set the user id";
    case Stage::exec: return "execute";
  }
  return "start";
}

// Everything the child needs, prepared before fork: between fork and exec the child calls
// only async-signal-safe functions (the agent is multi-threaded).
struct ChildPlan {
  std::vector<char*> argv;
  std::vector<char*> envp;
  const char* cwd = nullptr;
  const Identity* user = nullptr;
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
  int status_fd = -1;
  const std::vector<std::pair<int, int>>* inherit = nullptr;
  int floor_fd = 3;  // above every target descriptor
};

[[noreturn]] void child_fail(int status_fd, Stage stage, int error) {
  const ChildFailure failure{stage, error};
  const auto* bytes = reinterpret_cast<const char*>(&failure);
  std::size_t done = 0;
  while (done < sizeof(failure)) {
    const ssize_t n = ::write(status_fd, bytes + done, sizeof(failure) - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  ::_exit(127);
}

[[noreturn]] void child_main(const ChildPlan& plan) {
  // Default signal dispositions and an empty mask: ignored signals would survive exec.
  sigset_t none;
  sigemptyset(&none);
  (void)sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) (void)sigaction(sig, &dfl, nullptr);

  // Move every source descriptor above all targets first, so that no dup2 below can overwrite a
  // source that is still needed.
  const int status_fd = fcntl(plan.status_fd, F_DUPFD_CLOEXEC, plan.floor_fd);
  if (status_fd < 0) child_fail(plan.status_fd, Stage::fds, errno);
  std::array<std::pair<int, int>, 3> std_fds{
      {{plan.stdin_fd, STDIN_FILENO}, {plan.stdout_fd, STDOUT_FILENO}, {plan.stderr_fd, STDERR_FILENO}}};
  for (auto& [src, dst] : std_fds) {
    src = fcntl(src, F_DUPFD_CLOEXEC, plan.floor_fd);
    if (src < 0) child_fail(status_fd, Stage::fds, errno);
  }
  constexpr std::size_t kMaxInherited = 8;
  std::array<std::pair<int, int>, kMaxInherited> extra{};
  const std::size_t n_extra = std::min(plan.inherit->size(), kMaxInherited);
  for (std::size_t i = 0; i < n_extra; ++i) {
    extra[i] = {fcntl((*plan.inherit)[i].first, F_DUPFD_CLOEXEC, plan.floor_fd), (*plan.inherit)[i].second};
    if (extra[i].first < 0) child_fail(status_fd, Stage::fds, errno);
  }
#ifdef CLOSE_RANGE_CLOEXEC
  // Descriptors other threads opened without O_CLOEXEC must not leak into the job.
  (void)::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
#endif
  for (const auto& [src, dst] : std_fds) {
    if (::dup2(src, dst) < 0) child_fail(status_fd, Stage::fds, errno);
  }
  for (std::size_t i = 0; i < n_extra; ++i) {
    if (::dup2(extra[i].first, extra[i].second) < 0) child_fail(status_fd, Stage::fds, errno);
  }

  if (::setsid() < 0) child_fail(status_fd, Stage::session, errno);
  if (plan.user != nullptr) {
    if (::setgroups(plan.user->groups.size(), plan.user->groups.data()) < 0) {
      child_fail(status_fd, Stage::setgroups, errno);
    }
    if (::setgid(plan.user->gid) < 0) child_fail(status_fd, Stage::setgid, errno);
    if (::setuid(plan.user->uid) < 0) child_fail(status_fd, Stage::setuid, errno);
  }
  // After the user switch, so that the job's own permissions decide.
  if (plan.cwd != nullptr && ::chdir(plan.cwd) < 0) child_fail(status_fd, Stage::chdir, errno);
  ::execve(plan.argv[0], plan.argv.data(), plan.envp.data());
  child_fail(status_fd, Stage::exec, errno);
}

Result<std::pair<Fd, Fd>> make_pipe() {
  std::array<int, 2> fds{-1, -1};
  if (::pipe2(fds.data(), O_CLOEXEC) < 0) {
    return make_error(Errc::io_error, "cannot create a pipe: {}", errno_text(errno));
  }
  return std::pair<Fd, Fd>{Fd(fds[0]), Fd(fds[1])};
}

// Reads what is available from one of the child's output streams. Returns false at end of file
// or on a read error (the stream is then closed).
bool read_available(Fd& fd, Captured& into, std::size_t limit, std::size_t max_reads) {
  std::array<char, 16384> buf{};
  for (std::size_t i = 0; i < max_reads; ++i) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      fd.reset();
      return false;
    }
    if (n == 0) {
      fd.reset();
      return false;
    }
    const auto got = static_cast<std::size_t>(n);
    const std::size_t room = limit > into.data.size() ? limit - into.data.size() : 0;
    const std::size_t keep = std::min(room, got);
    into.data.append(buf.data(), keep);
    into.dropped += got - keep;
  }
  return true;
}

bool set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) >= 0;
}

// A descriptor that polls readable once `pid` has exited; invalid when the kernel has no pidfd.
Fd open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) {
    (void)::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
    return Fd(static_cast<int>(fd));
  }
#else
  (void)pid;
#endif
  return Fd();
}

// True once `pid` has exited; the child stays a zombie (not reaped), so its pid, and the id of
// its process group, cannot be reused while the group may still be signalled.
bool has_exited(pid_t pid) {
  siginfo_t info{};
  while (true) {
    info.si_pid = 0;
    if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0) return info.si_pid == pid;
    if (errno != EINTR) return true;  // ECHILD: someone else reaped it; nothing left to wait for
  }
}

int reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return status;
}

Result<Identity> identity_from(const passwd& pw) {
  Identity id;
  id.name = pw.pw_name != nullptr ? pw.pw_name : "";
  id.uid = pw.pw_uid;
  id.gid = pw.pw_gid;
  id.home = pw.pw_dir != nullptr && pw.pw_dir[0] == '/' ? pw.pw_dir : "/";
  int n = 32;
  std::vector<gid_t> groups(static_cast<std::size_t>(n));
  for (int tries = 0; tries < 8; ++tries) {
    int want = n;
    if (::getgrouplist(id.name.c_str(), id.gid, groups.data(), &want) >= 0) {
      groups.resize(static_cast<std::size_t>(want));
      id.groups = std::move(groups);
      return id;
    }
    n = std::max(want, n * 2);
    if (n > 65536) break;
    groups.resize(static_cast<std::size_t>(n));
  }
  return make_error(Errc::internal, "cannot list the groups of user '{}'", id.name);
}

template <typename Lookup>
Result<Identity> lookup_passwd(const Lookup& lookup, std::string_view what) {
  const long hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(hint > 0 ? static_cast<std::size_t>(hint) : 16384);
  while (true) {
    passwd pw{};
    passwd* found = nullptr;
    const int rc = lookup(&pw, buf.data(), buf.size(), &found);
    if (rc == ERANGE && buf.size() < (1U << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (rc != 0 && rc != ENOENT && rc != ESRCH) {
      return make_error(Errc::internal, "cannot look up {}: {}", what, errno_text(rc));
    }
    if (found == nullptr) return make_error(Errc::not_found, "unknown user {}", what);
    return identity_from(pw);
  }
}

}  // namespace

Result<Identity> current_identity() {
  const uid_t uid = ::geteuid();
  auto id = lookup_passwd(
      [uid](passwd* pw, char* buf, std::size_t len, passwd** found) { return ::getpwuid_r(uid, pw, buf, len, found); },
      fmt::format("uid {}", uid));
  if (id || id.error().code != Errc::not_found) return id;
  // A uid without a passwd entry (common in containers) is still an identity.
  Identity anonymous;
  anonymous.name = std::to_string(uid);
  anonymous.uid = uid;
  anonymous.gid = ::getegid();
  anonymous.home = "/";
  return anonymous;
}

Result<Identity> lookup_user(std::string_view name) {
  const std::string n(name);
  return lookup_passwd([&n](passwd* pw, char* buf, std::size_t len,
                            passwd** found) { return ::getpwnam_r(n.c_str(), pw, buf, len, found); },
                       fmt::format("'{}'", name));
}

Result<Outcome> run_process(const Spec& spec, std::stop_token stop) {
  if (spec.argv.empty() || spec.argv.front().empty() || spec.argv.front().front() != '/') {
    return make_error(Errc::invalid_argument, "the program must be an absolute path");
  }
  int floor_fd = 3;
  for (const auto& [src, dst] : spec.inherit_fds) {
    if (dst < 3 || src < 0) return make_error(Errc::invalid_argument, "inherited descriptors start at 3");
    floor_fd = std::max(floor_fd, dst + 1);
  }
  if (spec.inherit_fds.size() > 8) return make_error(Errc::invalid_argument, "at most 8 inherited descriptors");
  Outcome result;
  if (stop.stop_requested()) {
    result.canceled = true;
    return result;
  }

  std::vector<std::string> argv = spec.argv;
  std::vector<std::string> env = spec.env;
  ChildPlan plan;
  for (auto& a : argv) plan.argv.push_back(a.data());
  plan.argv.push_back(nullptr);
  for (auto& e : env) plan.envp.push_back(e.data());
  plan.envp.push_back(nullptr);
  const std::string cwd = spec.cwd.string();
  plan.cwd = cwd.empty() ? nullptr : cwd.c_str();
  plan.user = spec.user ? &*spec.user : nullptr;
  plan.inherit = &spec.inherit_fds;
  plan.floor_fd = floor_fd;

  Fd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!devnull.valid()) return make_error(Errc::io_error, "cannot open /dev/null: {}", errno_text(errno));
  auto out_pipe = make_pipe();
  if (!out_pipe) return std::move(out_pipe).error();
  auto err_pipe = make_pipe();
  if (!err_pipe) return std::move(err_pipe).error();
  auto status_pipe = make_pipe();
  if (!status_pipe) return std::move(status_pipe).error();
  Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake.valid()) return make_error(Errc::io_error, "cannot create an eventfd: {}", errno_text(errno));
  plan.stdin_fd = devnull.get();
  plan.stdout_fd = out_pipe->second.get();
  plan.stderr_fd = err_pipe->second.get();
  plan.status_fd = status_pipe->second.get();

  const Clock::time_point start = Clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) return make_error(Errc::internal, "cannot fork: {}", errno_text(errno));
  if (pid == 0) child_main(plan);

  result.started = true;
  out_pipe->second.reset();
  err_pipe->second.reset();
  status_pipe->second.reset();
  devnull.reset();

  // Exec succeeded when the status pipe closes without data.
  ChildFailure failure{};
  std::size_t got = 0;
  while (got < sizeof(failure)) {
    const ssize_t n = ::read(status_pipe->first.get(), reinterpret_cast<char*>(&failure) + got, sizeof(failure) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  status_pipe->first.reset();
  if (got == sizeof(failure)) {
    (void)reap(pid);
    const std::string_view target = failure.stage == Stage::chdir ? std::string_view(cwd) : spec.argv.front();
    return Error{errc_for(failure.error),
                 fmt::format("cannot {} {}: {}", stage_text(failure.stage), target, errno_text(failure.error))};
  }

  Fd out = std::move(out_pipe->first);
  Fd err = std::move(err_pipe->first);
  (void)set_nonblocking(out.get());
  (void)set_nonblocking(err.get());
  Fd pidfd = open_pidfd(pid);
  std::stop_callback on_stop(stop, [fd = wake.get()] {
    const std::uint64_t one = 1;
    (void)!::write(fd, &one, sizeof(one));
  });

  const bool has_deadline = spec.timeout.count() > 0;
  const Clock::time_point deadline = has_deadline ? start + spec.timeout : Clock::time_point::max();
  Clock::time_point kill_at = Clock::time_point::max();
  bool terminating = false;
  bool killed = false;
  bool exited = false;
  constexpr std::size_t kReadsPerWake = 64;
  constexpr std::size_t kFinalReads = 64;  // bounded: a leftover writer must not keep us here

  while (true) {
    const Clock::time_point now = Clock::now();
    if (!terminating && (stop.stop_requested() || now >= deadline)) {
      terminating = true;
      (stop.stop_requested() ? result.canceled : result.timed_out) = true;
      (void)::kill(-pid, SIGTERM);
      kill_at = now + spec.kill_grace;
    }
    if (terminating && !killed && now >= kill_at) {
      (void)::kill(-pid, SIGKILL);
      killed = true;
    }
    if (!exited && has_exited(pid)) {
      exited = true;
      pidfd.reset();
    }
    if (exited) {
      if (out.valid()) (void)read_available(out, result.out, spec.max_output_bytes, kFinalReads);
      if (err.valid()) (void)read_available(err, result.err, spec.max_output_bytes, kFinalReads);
      if (!terminating) break;
      // The leader is gone; whatever of its group still holds the pipes gets the rest of the
      // grace period, then SIGKILL. The leader is not reaped yet, so the group id is still ours.
      if ((!out.valid() && !err.valid()) || killed) {
        if (!killed) (void)::kill(-pid, SIGKILL);
        break;
      }
    }

    std::array<pollfd, 4> fds{};
    nfds_t n = 0;
    const auto add = [&](int fd) { fds[n++] = pollfd{fd, POLLIN, 0}; };
    if (out.valid()) add(out.get());
    if (err.valid()) add(err.get());
    if (!terminating) add(wake.get());
    if (pidfd.valid()) add(pidfd.get());
    Clock::time_point until = terminating ? (killed ? Clock::time_point::max() : kill_at) : deadline;
    // Without a pidfd the child's exit is noticed by polling.
    if (!exited && !pidfd.valid()) until = std::min(until, now + std::chrono::milliseconds(20));
    int timeout_ms = -1;
    if (until != Clock::time_point::max()) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - now).count();
      timeout_ms = static_cast<int>(std::clamp<std::int64_t>(left, 0, std::numeric_limits<int>::max()));
    }
    const int ready = ::poll(fds.data(), n, timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      // Unexpected: fall back to a short sleep so the loop still sees the exit and the deadline.
      ::usleep(20000);
      continue;
    }
    for (nfds_t i = 0; i < n; ++i) {
      if (fds[i].revents == 0) continue;
      if (fds[i].fd == out.get()) {
        (void)read_available(out, result.out, spec.max_output_bytes, kReadsPerWake);
      } else if (fds[i].fd == err.get()) {
        (void)read_available(err, result.err, spec.max_output_bytes, kReadsPerWake);
      } else if (fds[i].fd == wake.get()) {
        std::uint64_t value = 0;
        (void)!::read(wake.get(), &value, sizeof(value));
      }
    }
  }

  const int status = reap(pid);
  result.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  if (status >= 0 && WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (status >= 0 && WIFSIGNALED(status)) {
    result.signal = WTERMSIG(status);
  }
  return result;
}

std::string valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  std::size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = byte(i);
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1FU;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0FU;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07U;
    }
    bool ok = len != 0 && i + len <= text.size();
    for (std::size_t k = 1; ok && k < len; ++k) {
      const unsigned char cc = byte(i + k);
      ok = (cc & 0xC0U) == 0x80U;
      cp = (cp << 6U) | (cc & 0x3FU);
    }
    // Overlong forms, UTF-16 surrogates and code points beyond U+10FFFF are invalid too.
    if (ok &&
        ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))) {
      ok = false;
    }
    if (ok) {
      out.append(text.substr(i, len));
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");
      ++i;
    }
  }
  return out;
}

std::string report_text(const Captured& captured) {
  std::string_view kept = captured.data;
  std::uint64_t dropped = captured.dropped;
  if (dropped > 0) {
    // The cut may split a character: its leading bytes move to the dropped count.
    std::size_t back = 0;
    while (back < 3 && back < kept.size() &&
           (static_cast<unsigned char>(kept[kept.size() - 1 - back]) & 0xC0U) == 0x80U) {
      ++back;
    }
    if (back < kept.size()) {
      const auto lead = static_cast<unsigned char>(kept[kept.size() - 1 - back]);
      const std::size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
      if (lead >= 0xC0 && need > back + 1) {
        kept.remove_suffix(back + 1);
        dropped += back + 1;
      }
    }
  }
  std::string text = valid_utf8(kept);
  if (dropped > 0) text += fmt::format("\n[truncated: {} more bytes]", dropped);
  return text;
}

std::string signal_name(int signal) {
  const char* abbrev = ::sigabbrev_np(signal);
  if (abbrev == nullptr) return fmt::format("signal {}", signal);
  return fmt::format("SIG{}", abbrev);
}

std::filesystem::path find_executable(const std::vector<std::filesystem::path>& candidates) {
  for (const auto& path : candidates) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0) return path;
  }
  return {};
}

}  // namespace flotilla::agent::proc
