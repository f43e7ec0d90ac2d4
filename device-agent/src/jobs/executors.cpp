// Dispatch of job types and the executors for script.run, service.*, reboot and file.download.
// The apt job types live in apt.cpp.

#include "flotilla/agent/executors.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <exception>
#include <optional>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "flotilla/core/log.hpp"
#include "flotilla/core/signing.hpp"
#include "jobs/apt.hpp"
#include "jobs/process.hpp"

namespace flotilla::agent {
namespace fs = std::filesystem;

namespace exec {
namespace {

constexpr std::string_view kPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
constexpr std::size_t kMaxMessageBytes = 1024;       // docs/jobs.md: 1 KiB of status text
constexpr std::size_t kMaxScriptBytes = 128 * 1024;  // docs/jobs.md: scripts at most 128 KiB
constexpr std::size_t kMaxArgs = 256;
constexpr std::size_t kMaxArgBytes = 32 * 1024;
constexpr std::uint64_t kMaxDownloadBytes = 4ULL << 30U;
constexpr std::chrono::seconds kMaxRebootDelay{3600};
constexpr std::chrono::seconds kToolTimeout{120};  // systemctl show, systemctl reboot, shutdown
constexpr int kScriptFd = 3;

// Cuts `text` to `max` bytes without splitting a UTF-8 sequence.
std::string_view utf8_prefix(std::string_view text, std::size_t max) {
  if (text.size() <= max) return text;
  std::size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0U) == 0x80U) --cut;
  return text.substr(0, cut);
}

// One line of valid UTF-8, at most 1 KiB.
std::string one_line(std::string_view text) {
  std::string line;
  line.reserve(std::min(text.size(), kMaxMessageBytes));
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    line.push_back(u < 0x20 || u == 0x7F ? ' ' : c);
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  return proc::valid_utf8(utf8_prefix(line, kMaxMessageBytes));
}

std::string quote_param(std::string_view text) { return fmt::format("'{}'", one_line(utf8_prefix(text, 80))); }

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_lower(char c) { return c >= 'a' && c <= 'z'; }
bool is_alpha(char c) { return is_lower(c) || (c >= 'A' && c <= 'Z'); }

// Output of a finished child: exit_code or signal, duration, stdout/stderr bounded and marked.
void add_process_output(const proc::Outcome& outcome, std::map<std::string, std::string>& output,
                        std::string_view out_key = "stdout", std::string_view err_key = "stderr") {
  if (outcome.signal != 0) {
    output["signal"] = proc::signal_name(outcome.signal);
  } else if (outcome.started && outcome.exit_code >= 0) {
    output["exit_code"] = std::to_string(outcome.exit_code);
  }
  output["duration_ms"] = std::to_string(outcome.duration.count());
  output[std::string(out_key)] = proc::report_text(outcome.out);
  output[std::string(err_key)] = proc::report_text(outcome.err);
  if (outcome.out.dropped > 0) output[fmt::format("{}_truncated", out_key)] = std::to_string(outcome.out.dropped);
  if (outcome.err.dropped > 0) output[fmt::format("{}_truncated", err_key)] = std::to_string(outcome.err.dropped);
}

// ---------------------------------------------------------------------------------------------
// script.run

struct Interpreter {
  std::string_view name;
  std::vector<fs::path> candidates;
};

const std::vector<Interpreter>& interpreters() {
  static const std::vector<Interpreter> list{
      {"sh", {"/bin/sh", "/usr/bin/sh"}},
      {"bash", {"/bin/bash", "/usr/bin/bash"}},
      {"python3", {"/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"}},
  };
  return list;
}

bool valid_user_name(std::string_view name) {
  if (name.empty() || name.size() > 32 || name.front() == '-') return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = is_alpha(c) || is_digit(c) || c == '_' || c == '.' || c == '-' ||
                    (c == '$' && i + 1 == name.size());
    if (!ok) return false;
  }
  return true;
}

// A file name for the script, so that error messages name it; "script" when the library name
// is not a plain file name.
std::string script_file_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || name.front() == '.' || name.front() == '-') return "script";
  for (char c : name) {
    if (!(is_alpha(c) || is_digit(c) || c == '_' || c == '.' || c == '-')) return "script";
  }
  return std::string(name);
}

// A directory only the agent can enter, removed with its contents on destruction.
class PrivateDir {
 public:
  static Result<PrivateDir> create(const fs::path& parent, std::string_view prefix) {
    if (parent.empty()) return make_error(Errc::invalid_argument, "no work directory is configured");
    std::error_code ec;
    if (!fs::exists(parent, ec)) {
      fs::create_directories(parent, ec);
      if (ec) return make_error(Errc::io_error, "cannot create {}: {}", parent.string(), ec.message());
      fs::permissions(parent, fs::perms::owner_all, fs::perm_options::replace, ec);
    }
    std::string tmpl = (parent / fmt::format("{}-XXXXXX", prefix)).string();
    if (::mkdtemp(tmpl.data()) == nullptr) {  // mode 0700
      return make_error(Errc::io_error, "cannot create a directory in {}: {}", parent.string(),
                        std::error_code(errno, std::generic_category()).message());
    }
    return PrivateDir(fs::path(tmpl));
  }
  PrivateDir(const PrivateDir&) = delete;
  PrivateDir& operator=(const PrivateDir&) = delete;
  PrivateDir(PrivateDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}
  PrivateDir& operator=(PrivateDir&&) = delete;
  ~PrivateDir() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
    if (ec) log::warn("cannot remove {}: {}", path_.string(), ec.message());
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  explicit PrivateDir(fs::path path) : path_(std::move(path)) {}
  fs::path path_;
};

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) (void)::close(fd_);
  }
  [[nodiscard]] int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Removes a file on destruction unless released.
class RemoveOnExit {
 public:
  explicit RemoveOnExit(fs::path path) : path_(std::move(path)) {}
  RemoveOnExit(const RemoveOnExit&) = delete;
  RemoveOnExit& operator=(const RemoveOnExit&) = delete;
  ~RemoveOnExit() {
    std::error_code ec;
    if (!path_.empty()) fs::remove(path_, ec);
  }
  void release() { path_.clear(); }

 private:
  fs::path path_;
};

Status write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(Errc::io_error, "{}", std::error_code(errno, std::generic_category()).message());
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

JobOutcome run_script(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                      std::stop_token stop) {
  if (auto bad = unknown_param(request, {"timeout", "run_as", "cwd"}); !bad.empty()) return rejected(bad);
  const Interpreter* interpreter = nullptr;
  for (const auto& i : interpreters()) {
    if (i.name == request.script_interpreter) interpreter = &i;
  }
  if (interpreter == nullptr) {
    return rejected(
        fmt::format("script interpreter {} is not one of sh, bash, python3", quote_param(request.script_interpreter)));
  }
  const fs::path interpreter_path = proc::find_executable(interpreter->candidates);
  if (interpreter_path.empty()) {
    return rejected(fmt::format("script interpreter {} is not installed on this host", quote_param(interpreter->name)));
  }
  if (request.script_body.empty()) return rejected("script body is empty");
  if (request.script_body.size() > kMaxScriptBytes) {
    return rejected(fmt::format("script body is {} bytes, more than {}", request.script_body.size(), kMaxScriptBytes));
  }
  if (request.args.size() > kMaxArgs) return rejected(fmt::format("more than {} args", kMaxArgs));
  for (std::size_t i = 0; i < request.args.size(); ++i) {
    if (request.args[i].find('\0') != std::string::npos)
      return rejected(fmt::format("args[{}] contains a NUL byte", i));
    if (request.args[i].size() > kMaxArgBytes) {
      return rejected(fmt::format("args[{}] is longer than {} bytes", i, kMaxArgBytes));
    }
  }
  auto timeout = timeout_param(request, policy);
  if (!timeout) return rejected(timeout.error().message);

  auto self = proc::current_identity();
  if (!self) return failed(fmt::format("cannot determine the agent's user: {}", self.error().message));
  std::optional<proc::Identity> switch_to;
  proc::Identity as = *self;
  if (auto it = request.params.find("run_as"); it != request.params.end()) {
    if (!valid_user_name(it->second))
      return rejected(fmt::format("run_as: {} is not a user name", quote_param(it->second)));
    auto user = proc::lookup_user(it->second);
    if (!user) {
      if (user.error().code == Errc::not_found)
        return rejected(fmt::format("run_as: unknown user {}", quote_param(it->second)));
      return failed(fmt::format("run_as: {}", user.error().message));
    }
    if (user->uid != self->uid) {
      if (self->uid != 0) {
        return rejected(
            fmt::format("run_as: running as {} requires the agent to run as root", quote_param(it->second)));
      }
      switch_to = *user;
    }
    as = *user;
  }
  fs::path cwd;
  if (auto it = request.params.find("cwd"); it != request.params.end()) {
    cwd = it->second;
    std::error_code ec;
    if (cwd.empty() || !cwd.is_absolute() || it->second.find('\0') != std::string::npos) {
      return rejected(fmt::format("cwd: {} is not an absolute path", quote_param(it->second)));
    }
    if (!fs::is_directory(cwd, ec)) return rejected(fmt::format("cwd: {} is not a directory", quote_param(it->second)));
  } else {
    std::error_code ec;
    cwd = fs::is_directory(as.home, ec) ? as.home : fs::path("/");
  }

  report_progress(progress, 0, "preparing the script");
  auto dir = PrivateDir::create(policy.work_dir, "script");
  if (!dir) return failed(fmt::format("cannot prepare the script: {}", dir.error().message));
  const fs::path script_path = dir->path() / script_file_name(request.script_name);
  FileDescriptor file(::open(script_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0700));
  if (file.get() < 0) {
    return failed(fmt::format("cannot write {}: {}", script_path.string(),
                              std::error_code(errno, std::generic_category()).message()));
  }
  if (auto st = write_all(file.get(), request.script_body); !st) {
    return failed(fmt::format("cannot write {}: {}", script_path.string(), st.error().message));
  }
  proc::Spec spec;
  spec.argv.push_back(interpreter_path.string());
  // The private directory stays closed to another user: the script reaches it as an open
  // descriptor, and the file is handed over to that user so that it can read it.
  std::optional<FileDescriptor> script_fd;
  if (switch_to) {
    if (::fchown(file.get(), switch_to->uid, switch_to->gid) < 0) {
      return failed(fmt::format("cannot hand the script to {}: {}", quote_param(switch_to->name),
                                std::error_code(errno, std::generic_category()).message()));
    }
    script_fd.emplace(::open(script_path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (script_fd->get() < 0) return failed(fmt::format("cannot open {}", script_path.string()));
    spec.inherit_fds.emplace_back(script_fd->get(), kScriptFd);
    spec.argv.push_back(fmt::format("/dev/fd/{}", kScriptFd));
  } else {
    spec.argv.push_back(script_path.string());
  }
  (void)::close(file.release());
  spec.argv.insert(spec.argv.end(), request.args.begin(), request.args.end());
  std::string job_id = request.job_id;
  std::erase(job_id, '\0');
  spec.env = {std::string(kPath),
              fmt::format("HOME={}", as.home.string()),
              "LANG=C",
              fmt::format("USER={}", as.name),
              fmt::format("LOGNAME={}", as.name),
              fmt::format("FLOTILLA_JOB_ID={}", job_id)};
  spec.cwd = cwd;
  spec.user = switch_to;
  spec.timeout = *timeout;
  spec.max_output_bytes = policy.max_output_bytes;

  report_progress(progress, 5, "running");
  auto run = proc::run_process(spec, stop);
  if (!run) {
    if (run.error().code == Errc::permission_denied || run.error().code == Errc::not_found) {
      return failed(run.error().message);
    }
    return failed(fmt::format("cannot run the script: {}", run.error().message));
  }
  JobOutcome outcome;
  add_process_output(*run, outcome.output);
  if (auto end = abnormal_end(*run, *timeout); !end.empty()) {
    outcome.status = JobStatus::failed;
    outcome.message = end;
  } else if (run->exit_code == 0) {
    outcome.status = JobStatus::succeeded;
    outcome.message = "exit code 0";
  } else {
    outcome.status = JobStatus::failed;
    outcome.message = fmt::format("exit code {}", run->exit_code);
  }
  report_progress(progress, 100, outcome.message);
  return outcome;
}

// ---------------------------------------------------------------------------------------------
// service.restart, service.status

fs::path systemctl_path() { return proc::find_executable({"/usr/bin/systemctl", "/bin/systemctl"}); }

// Runs systemctl with `args`; the failure message is systemd's reason.
Result<proc::Outcome> systemctl(const fs::path& exe, std::vector<std::string> args, std::chrono::seconds timeout,
                                std::stop_token stop) {
  proc::Spec spec;
  spec.argv = {exe.string(), "--no-ask-password", "--no-pager"};
  spec.argv.insert(spec.argv.end(), std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
  spec.env = tool_env({"SYSTEMD_COLORS=0"});
  spec.timeout = timeout;
  spec.max_output_bytes = 64 * 1024;
  auto run = proc::run_process(spec, stop);
  if (!run) return std::move(run).error();
  if (auto end = abnormal_end(*run, timeout); !end.empty()) {
    return Error{run->canceled ? Errc::closed : Errc::timeout, fmt::format("systemctl: {}", end)};
  }
  if (run->exit_code != 0) {
    std::string reason = first_line(run->err.data);
    if (reason.empty()) reason = fmt::format("systemctl exited with code {}", run->exit_code);
    return Error{Errc::unavailable, reason};
  }
  return run;
}

std::map<std::string, std::string> parse_properties(std::string_view text) {
  std::map<std::string, std::string> props;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    const std::size_t eq = line.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    props.emplace(std::string(line.substr(0, eq)), std::string(line.substr(eq + 1)));
  }
  return props;
}

// Adds the unit's state to `output`; returns the properties read.
Result<std::map<std::string, std::string>> unit_state(const fs::path& exe, const std::string& unit,
                                                      std::chrono::seconds timeout, std::stop_token stop,
                                                      std::map<std::string, std::string>& output) {
  auto show = systemctl(exe,
                        {"show", "-p", "LoadState", "-p", "ActiveState", "-p", "SubState", "-p", "MainPID", "-p",
                         "UnitFileState", "--", unit},
                        timeout, std::move(stop));
  if (!show) return std::move(show).error();
  auto props = parse_properties(show->out.data);
  const std::array<std::pair<std::string_view, std::string_view>, 5> keys{{{"LoadState", "load_state"},
                                                                           {"ActiveState", "active_state"},
                                                                           {"SubState", "sub_state"},
                                                                           {"MainPID", "main_pid"},
                                                                           {"UnitFileState", "unit_file_state"}}};
  for (const auto& [prop, key] : keys) {
    if (auto it = props.find(std::string(prop)); it != props.end()) output[std::string(key)] = it->second;
  }
  return props;
}

JobOutcome service_failure(const Error& error) {
  if (error.code == Errc::closed) return failed("canceled");
  return failed(error.message);
}

JobOutcome run_service(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                       std::stop_token stop) {
  if (auto bad = unknown_param(request, {"unit", "timeout"}); !bad.empty()) return rejected(bad);
  auto it = request.params.find("unit");
  if (it == request.params.end()) return rejected("unit: required");
  auto unit = normalize_unit_name(it->second);
  if (!unit) return rejected(unit.error().message);
  auto timeout = timeout_param(request, policy);
  if (!timeout) return rejected(timeout.error().message);
  const fs::path exe = systemctl_path();
  if (exe.empty()) return failed("systemctl not found: systemd is not available on this host");

  JobOutcome outcome;
  outcome.output["unit"] = *unit;
  if (request.type == "service.restart") {
    report_progress(progress, 10, fmt::format("restarting {}", *unit));
    auto restart = systemctl(exe, {"restart", "--", *unit}, *timeout, stop);
    if (!restart) return service_failure(restart.error());
  }
  report_progress(progress, 80, fmt::format("reading the state of {}", *unit));
  auto props = unit_state(exe, *unit, std::min(*timeout, kToolTimeout), stop, outcome.output);
  if (!props) {
    if (request.type == "service.restart") {
      // The restart itself succeeded; only the state is missing.
      outcome.status = JobStatus::succeeded;
      outcome.message = fmt::format("{} restarted (state unknown: {})", *unit, props.error().message);
      return outcome;
    }
    return service_failure(props.error());
  }
  const auto field = [&](const std::string& key) {
    auto f = outcome.output.find(key);
    return f == outcome.output.end() ? std::string() : f->second;
  };
  if (field("load_state") == "not-found") {
    outcome.status = JobStatus::failed;
    outcome.message = fmt::format("unit {} not found", *unit);
    return outcome;
  }
  outcome.status = JobStatus::succeeded;
  outcome.message = fmt::format("{}{}: {} ({})", *unit, request.type == "service.restart" ? " restarted" : "",
                                field("active_state"), field("sub_state"));
  report_progress(progress, 100, outcome.message);
  return outcome;
}

// ---------------------------------------------------------------------------------------------
// reboot

JobOutcome run_reboot(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                      std::stop_token stop) {
  // Parameters first: a malformed request is rejected the same way whatever the policy says.
  if (auto bad = unknown_param(request, {"delay"}); !bad.empty()) return rejected(bad);
  std::chrono::seconds delay{0};
  if (auto it = request.params.find("delay"); it != request.params.end()) {
    const std::string& text = it->second;
    std::int64_t value = -1;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < 0 ||
        value > kMaxRebootDelay.count()) {
      return rejected(
          fmt::format("delay: {} is not a number of seconds from 0 to {}", quote_param(text), kMaxRebootDelay.count()));
    }
    delay = std::chrono::seconds(value);
  }
  if (!policy.allow_reboot) return rejected("reboot is not allowed by the agent's policy (jobs.allow_reboot)");
  report_progress(progress, 10, "scheduling the reboot");
  auto scheduled = schedule_reboot(delay, std::move(stop));
  if (!scheduled) {
    if (scheduled.error().code == Errc::closed) return failed("canceled");
    return failed(scheduled.error().message);
  }
  JobOutcome outcome;
  outcome.status = JobStatus::succeeded;
  outcome.message = *scheduled;
  outcome.output["delay_s"] = std::to_string(delay.count());
  report_progress(progress, 100, outcome.message);
  return outcome;
}

// ---------------------------------------------------------------------------------------------
// file.download

struct DownloadParams {
  std::string url;
  bool local = false;
  fs::path source;  // file:// sources
  std::string sha256;
  fs::path path;
  mode_t mode = 0644;
};

int hex_value(char c) {
  if (is_digit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> percent_decode(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    if (i + 2 >= text.size()) return std::nullopt;
    const int hi = hex_value(text[i + 1]);
    const int lo = hex_value(text[i + 2]);
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

Result<DownloadParams> download_params(const JobRequest& request) {
  DownloadParams p;
  const auto get = [&](std::string_view key) -> const std::string* {
    auto it = request.params.find(std::string(key));
    return it == request.params.end() ? nullptr : &it->second;
  };
  const std::string* url = get("url");
  if (url == nullptr) return make_error(Errc::invalid_argument, "url: required");
  if (url->size() > 8192) return make_error(Errc::invalid_argument, "url: longer than 8192 bytes");
  for (char c : *url) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7F)
      return make_error(Errc::invalid_argument, "url: contains a space or a control character");
  }
  std::string lower = *url;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; });
  if (lower.starts_with("http://") || lower.starts_with("https://")) {
    const std::string_view rest = std::string_view(*url).substr(url->find("//") + 2);
    if (rest.empty() || rest.front() == '/' || rest.front() == '?' || rest.front() == '#') {
      return make_error(Errc::invalid_argument, "url: {} has no host", quote_param(*url));
    }
  } else if (lower.starts_with("file://")) {
    std::string_view rest = std::string_view(*url).substr(7);
    if (lower.substr(7).starts_with("localhost/")) rest.remove_prefix(9);
    if (rest.empty() || rest.front() != '/') {
      return make_error(Errc::invalid_argument, "url: {} is not a local absolute path (file:///path)",
                        quote_param(*url));
    }
    if (rest.find_first_of("?#") != std::string_view::npos) {
      return make_error(Errc::invalid_argument, "url: {} has a query or fragment", quote_param(*url));
    }
    auto decoded = percent_decode(rest);
    if (!decoded) return make_error(Errc::invalid_argument, "url: {} has a bad percent escape", quote_param(*url));
    p.local = true;
    p.source = *decoded;
  } else {
    return make_error(Errc::invalid_argument, "url: {} is not an http://, https:// or file:// URL", quote_param(*url));
  }
  p.url = *url;

  const std::string* sha = get("sha256");
  if (sha == nullptr) return make_error(Errc::invalid_argument, "sha256: required");
  if (sha->size() != 64 || !std::all_of(sha->begin(), sha->end(), [](char c) { return hex_value(c) >= 0; })) {
    return make_error(Errc::invalid_argument, "sha256: {} is not 64 hex digits", quote_param(*sha));
  }
  p.sha256 = *sha;
  std::transform(p.sha256.begin(), p.sha256.end(), p.sha256.begin(),
                 [](char c) { return c >= 'A' && c <= 'F' ? c + 32 : c; });

  const std::string* path = get("path");
  if (path == nullptr) return make_error(Errc::invalid_argument, "path: required");
  p.path = *path;
  if (path->empty() || path->find('\0') != std::string::npos || !p.path.is_absolute() ||
      p.path.lexically_normal() != p.path || !p.path.has_filename() || p.path.filename() == "." ||
      p.path.filename() == "..") {
    return make_error(Errc::invalid_argument, "path: {} is not an absolute, normalized file path", quote_param(*path));
  }
  std::error_code ec;
  if (!fs::is_directory(p.path.parent_path(), ec)) {
    return make_error(Errc::invalid_argument, "path: the directory {} does not exist",
                      quote_param(p.path.parent_path().string()));
  }
  if (fs::is_directory(p.path, ec))
    return make_error(Errc::invalid_argument, "path: {} is a directory", quote_param(*path));

  if (const std::string* mode = get("mode")) {
    std::string_view m = *mode;
    if (m.starts_with("0o")) m.remove_prefix(2);
    unsigned value = 0;
    const auto [end, err] = std::from_chars(m.data(), m.data() + m.size(), value, 8);
    if (m.empty() || m.size() > 4 || err != std::errc() || end != m.data() + m.size() || value > 0777) {
      return make_error(Errc::invalid_argument, "mode: {} is not an octal mode from 0000 to 0777", quote_param(*mode));
    }
    p.mode = static_cast<mode_t>(value);
  }
  return p;
}

// Copies a local source into `fd`; returns the bytes copied.
Result<std::uint64_t> copy_local(const fs::path& source, int fd, const std::stop_token& stop) {
  FileDescriptor in(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) {
    const int e = errno;
    return Error{
        e == ENOENT ? Errc::not_found : Errc::io_error,
        fmt::format("cannot open {}: {}", source.string(), std::error_code(e, std::generic_category()).message())};
  }
  struct stat st {};
  if (::fstat(in.get(), &st) < 0 || !S_ISREG(st.st_mode)) {
    return make_error(Errc::invalid_argument, "{} is not a regular file", source.string());
  }
  std::vector<char> buf(1 << 16);
  std::uint64_t total = 0;
  while (true) {
    if (stop.stop_requested()) return make_error(Errc::closed, "canceled");
    const ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(Errc::io_error, "cannot read {}", source.string());
    if (n == 0) break;
    total += static_cast<std::uint64_t>(n);
    if (total > kMaxDownloadBytes)
      return make_error(Errc::too_large, "{} is larger than {} bytes", source.string(), kMaxDownloadBytes);
    if (auto w = write_all(fd, std::string_view(buf.data(), static_cast<std::size_t>(n))); !w) {
      return make_error(Errc::io_error, "cannot write: {}", w.error().message);
    }
  }
  return total;
}

// Fetches an http(s) URL into `temp` with curl.
Result<std::uint64_t> fetch_remote(const std::string& url, const fs::path& temp, std::chrono::seconds timeout,
                                   const std::stop_token& stop, std::map<std::string, std::string>& output) {
  const fs::path curl = proc::find_executable({"/usr/bin/curl", "/bin/curl", "/usr/local/bin/curl"});
  if (curl.empty()) return make_error(Errc::not_found, "curl is not installed on this host");
  proc::Spec spec;
  // -q first: no ~/.curlrc; --globoff: brackets and braces in the URL are literal.
  spec.argv = {curl.string(),
               "-q",
               "--fail",
               "--location",
               "--silent",
               "--show-error",
               "--globoff",
               "--proto",
               "=http,https",
               "--proto-redir",
               "=http,https",
               "--max-redirs",
               "10",
               "--connect-timeout",
               "30",
               "--max-time",
               std::to_string(timeout.count()),
               "--max-filesize",
               std::to_string(kMaxDownloadBytes),
               "--output",
               temp.string(),
               url};
  spec.env = tool_env();
  // A proxy configured for the agent applies to its downloads.
  for (const char* name : {"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"}) {
    if (const char* value = std::getenv(name)) spec.env.push_back(fmt::format("{}={}", name, value));
  }
  spec.timeout = timeout + std::chrono::seconds(10);  // curl's own --max-time ends it first
  spec.max_output_bytes = 16 * 1024;
  auto run = proc::run_process(spec, stop);
  if (!run) return std::move(run).error();
  if (run->canceled) return make_error(Errc::closed, "canceled");
  if (run->timed_out) return make_error(Errc::timeout, "timed out after {}", duration_text(timeout));
  if (run->signal != 0 || run->exit_code != 0) {
    output["curl_exit_code"] = std::to_string(run->exit_code);
    std::string reason = first_line(run->err.data);
    if (reason.empty()) reason = fmt::format("curl exited with code {}", run->exit_code);
    return make_error(Errc::unavailable, "download failed: {}", reason);
  }
  std::error_code ec;
  const auto size = fs::file_size(temp, ec);
  if (ec) return make_error(Errc::io_error, "cannot stat the download: {}", ec.message());
  return static_cast<std::uint64_t>(size);
}

Status sync_dir(const fs::path& dir) {
  FileDescriptor fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0 || ::fsync(fd.get()) < 0) return make_error(Errc::io_error, "cannot sync {}", dir.string());
  return {};
}

JobOutcome run_download(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                        std::stop_token stop) {
  if (auto bad = unknown_param(request, {"url", "sha256", "path", "mode", "timeout"}); !bad.empty())
    return rejected(bad);
  auto params = download_params(request);
  if (!params) return rejected(params.error().message);
  auto timeout = timeout_param(request, policy);
  if (!timeout) return rejected(timeout.error().message);
  const auto start = std::chrono::steady_clock::now();

  // The temporary file lives next to the destination so that the rename is atomic.
  const fs::path dir = params->path.parent_path();
  const std::string base = params->path.filename().string();
  std::string tmpl = (dir / fmt::format(".{}.flotilla-XXXXXX", base.substr(0, 200))).string();
  FileDescriptor fd(::mkostemp(tmpl.data(), O_CLOEXEC));  // mode 0600
  if (fd.get() < 0) {
    return failed(fmt::format("cannot create a file in {}: {}", dir.string(),
                              std::error_code(errno, std::generic_category()).message()));
  }
  const fs::path temp = tmpl;
  RemoveOnExit guard(temp);

  JobOutcome outcome;
  report_progress(progress, 10, "downloading");
  Result<std::uint64_t> size = params->local ? copy_local(params->source, fd.get(), stop)
                                             : fetch_remote(params->url, temp, *timeout, stop, outcome.output);
  if (!size) {
    if (size.error().code == Errc::closed) return failed("canceled");
    return failed(size.error().message, std::move(outcome.output));
  }
  report_progress(progress, 70, "verifying");
  if (stop.stop_requested()) return failed("canceled");
  auto digest = signing::sha256_file_hex(temp);
  if (!digest) return failed(fmt::format("cannot verify the download: {}", digest.error().message));
  outcome.output["size_bytes"] = std::to_string(*size);
  outcome.output["sha256"] = *digest;
  if (*digest != params->sha256) {
    outcome.output["expected_sha256"] = params->sha256;
    return failed(fmt::format("sha256 mismatch: expected {}, got {}", params->sha256, *digest),
                  std::move(outcome.output));
  }
  // curl replaced the file's contents through its own descriptor; ours still names the inode.
  if (::fchmod(fd.get(), params->mode) < 0 || ::fsync(fd.get()) < 0) {
    return failed(
        fmt::format("cannot finish {}: {}", temp.string(), std::error_code(errno, std::generic_category()).message()));
  }
  if (::rename(temp.c_str(), params->path.c_str()) < 0) {
    return failed(fmt::format("cannot move the download to {}: {}", params->path.string(),
                              std::error_code(errno, std::generic_category()).message()));
  }
  guard.release();
  if (auto st = sync_dir(dir); !st) log::warn("file.download: {}", st.error().message);
  outcome.status = JobStatus::succeeded;
  outcome.message = fmt::format("{} bytes written to {}", *size, params->path.string());
  outcome.output["path"] = params->path.string();
  outcome.output["mode"] = fmt::format("{:04o}", params->mode);
  outcome.output["duration_ms"] = std::to_string(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count());
  report_progress(progress, 100, outcome.message);
  return outcome;
}

JobOutcome dispatch(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                    std::stop_token stop) {
  const std::string& type = request.type;
  if (type == "script.run") return run_script(request, policy, progress, std::move(stop));
  if (type == "package.install" || type == "package.remove" || type == "package.upgrade") {
    return run_package_job(request, policy, progress, std::move(stop));
  }
  if (type == "patch.scan") return run_patch_scan(request, policy, progress, std::move(stop));
  if (type == "patch.apply") return run_patch_apply(request, policy, progress, std::move(stop));
  if (type == "service.restart" || type == "service.status")
    return run_service(request, policy, progress, std::move(stop));
  if (type == "reboot") return run_reboot(request, policy, progress, std::move(stop));
  if (type == "file.download") return run_download(request, policy, progress, std::move(stop));
  return rejected(fmt::format("unsupported job type {}", quote_param(type)));
}

}  // namespace

JobOutcome rejected(std::string message) { return JobOutcome{JobStatus::rejected, std::move(message), {}}; }

JobOutcome failed(std::string message, std::map<std::string, std::string> output) {
  return JobOutcome{JobStatus::failed, std::move(message), std::move(output)};
}

void report_progress(const ProgressFn& progress, std::uint32_t percent, std::string_view detail) {
  if (progress) progress(std::min<std::uint32_t>(percent, 100), detail);
}

std::string unknown_param(const JobRequest& request, std::initializer_list<std::string_view> allowed) {
  for (const auto& [key, value] : request.params) {
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      return fmt::format("unknown parameter {} for {}", quote_param(key), request.type);
    }
  }
  return {};
}

Result<bool> bool_param(const JobRequest& request, std::string_view key, bool fallback) {
  auto it = request.params.find(std::string(key));
  if (it == request.params.end()) return fallback;
  if (it->second == "true") return true;
  if (it->second == "false") return false;
  return make_error(Errc::invalid_argument, "{}: {} is not true or false", key, quote_param(it->second));
}

Result<std::chrono::seconds> timeout_param(const JobRequest& request, const ExecPolicy& policy) {
  auto it = request.params.find("timeout");
  if (it == request.params.end()) return policy.default_timeout;
  auto parsed = parse_job_duration(it->second);
  if (!parsed) return make_error(Errc::invalid_argument, "timeout: {}", parsed.error().message);
  return parsed;
}

std::string duration_text(std::chrono::seconds duration) {
  const auto s = duration.count();
  if (s > 0 && s % 3600 == 0) return fmt::format("{}h", s / 3600);
  if (s > 0 && s % 60 == 0) return fmt::format("{}m", s / 60);
  return fmt::format("{}s", s);
}

std::vector<std::string> tool_env(std::initializer_list<std::string_view> extra) {
  std::vector<std::string> env{std::string(kPath), "LANG=C", "LC_ALL=C"};
  auto self = proc::current_identity();
  env.push_back(fmt::format("HOME={}", self ? self->home.string() : "/"));
  for (auto e : extra) env.emplace_back(e);
  return env;
}

std::string abnormal_end(const proc::Outcome& outcome, std::chrono::seconds timeout) {
  if (outcome.canceled) return "canceled";
  if (outcome.timed_out) return fmt::format("timed out after {}", duration_text(timeout));
  if (outcome.signal != 0) return fmt::format("killed by {}", proc::signal_name(outcome.signal));
  return {};
}

std::string first_line(std::string_view text) {
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t' || line.front() == '\r'))
      line.remove_prefix(1);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r')) line.remove_suffix(1);
    if (!line.empty()) return one_line(utf8_prefix(line, 300));
  }
  return {};
}

Result<std::string> schedule_reboot(std::chrono::seconds delay, std::stop_token stop) {
  const fs::path exe = systemctl_path();
  if (exe.empty()) return make_error(Errc::not_found, "systemctl not found: systemd is not available on this host");
  if (delay.count() == 0) {
    auto run = systemctl(exe, {"reboot"}, kToolTimeout, std::move(stop));
    if (!run) return std::move(run).error();
    return std::string("reboot requested");
  }
  const fs::path shutdown = proc::find_executable({"/usr/sbin/shutdown", "/sbin/shutdown"});
  if (shutdown.empty()) return make_error(Errc::not_found, "shutdown not found on this host");
  const auto minutes = (delay.count() + 59) / 60;
  proc::Spec spec;
  spec.argv = {shutdown.string(), "-r", fmt::format("+{}", minutes), "reboot requested by a Flotilla job"};
  spec.env = tool_env();
  spec.timeout = kToolTimeout;
  auto run = proc::run_process(spec, std::move(stop));
  if (!run) return std::move(run).error();
  if (run->canceled) return make_error(Errc::closed, "canceled");
  if (auto end = abnormal_end(*run, kToolTimeout); !end.empty()) return make_error(Errc::timeout, "shutdown: {}", end);
  if (run->exit_code != 0) {
    std::string reason = first_line(run->err.data);
    if (reason.empty()) reason = fmt::format("shutdown exited with code {}", run->exit_code);
    return Error{Errc::unavailable, reason};
  }
  return fmt::format("reboot scheduled in {} min", minutes);
}

}  // namespace exec

JobOutcome execute_job(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                       std::stop_token stop) {
  JobOutcome outcome;
  try {
    outcome = exec::dispatch(request, policy, progress, std::move(stop));
  } catch (const std::exception& e) {
    outcome = exec::failed(fmt::format("internal error: {}", e.what()));
  } catch (...) {
    outcome = exec::failed("internal error");
  }
  // What leaves here travels in protobuf string fields: valid UTF-8, one-line message.
  try {
    outcome.message = exec::one_line(outcome.message);
    std::map<std::string, std::string> clean;
    for (auto& [key, value] : outcome.output) clean.emplace(proc::valid_utf8(key), proc::valid_utf8(value));
    outcome.output = std::move(clean);
  } catch (...) {
    outcome.output.clear();
  }
  return outcome;
}

std::vector<std::string> executor_job_types() {
  return {"script.run",  "package.install", "package.remove", "package.upgrade", "patch.scan",
          "patch.apply", "service.restart", "service.status", "reboot",          "file.download"};
}

Result<std::chrono::seconds> parse_job_duration(std::string_view text) {
  const auto bad = [&] {
    return make_error(Errc::invalid_argument, "{} is not a duration like 30s, 10m or 1h (at most 24h)",
                      exec::quote_param(text));
  };
  if (text.size() < 2 || text.size() > 12) return bad();
  const char unit = text.back();
  const std::string_view digits = text.substr(0, text.size() - 1);
  std::int64_t value = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc() || end != digits.data() + digits.size() || !exec::is_digit(digits.front()) || value <= 0) {
    return bad();
  }
  std::int64_t seconds = 0;
  switch (unit) {
    case 's': seconds = value; break;
    case 'm': seconds = value * 60; break;
    case 'h': seconds = value * 3600; break;
    default: return bad();
  }
  if (seconds > 24 * 3600) return bad();
  return std::chrono::seconds(seconds);
}

bool valid_package_name(std::string_view name) {
  if (name.size() < 2 || name.size() > 128) return false;
  if (!(exec::is_lower(name.front()) || exec::is_digit(name.front()))) return false;
  if (name.back() == '-') return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return exec::is_lower(c) || exec::is_digit(c) || c == '+' || c == '-' || c == '.'; });
}

Result<std::string> normalize_unit_name(std::string_view unit) {
  static constexpr std::array<std::string_view, 11> kSuffixes{".service",   ".socket", ".device", ".mount",
                                                              ".automount", ".swap",   ".target", ".path",
                                                              ".timer",     ".slice",  ".scope"};
  const auto bad = [&](std::string_view why) {
    return make_error(Errc::invalid_argument, "unit: {} {}", exec::quote_param(unit), why);
  };
  if (unit.empty()) return bad("is empty");
  for (char c : unit) {
    if (!(exec::is_alpha(c) || exec::is_digit(c) || c == ':' || c == '-' || c == '_' || c == '.' || c == '\\' ||
          c == '@')) {
      return bad("has characters a systemd unit name cannot have");
    }
  }
  std::string name(unit);
  const bool has_suffix = std::any_of(kSuffixes.begin(), kSuffixes.end(),
                                      [&](std::string_view s) { return name.size() > s.size() && name.ends_with(s); });
  if (!has_suffix) name += ".service";
  if (name.size() > 255) return bad("is longer than 255 characters");
  if (name.front() == '.' || name.front() == '@') return bad("has no name before its suffix");
  return name;
}

}  // namespace flotilla::agent
