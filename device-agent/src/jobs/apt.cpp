// The apt job types: package.install/remove/upgrade, patch.scan and patch.apply, all through
// apt-get as a child process (never a shell), non-interactive.

#include "jobs/apt.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <utility>

#include <fmt/format.h>

namespace flotilla::agent {
namespace fs = std::filesystem;

namespace exec {
namespace {

constexpr std::size_t kAptCaptureBytes = 8 << 20;  // enough to parse the plan of any upgrade
constexpr std::size_t kMaxPackages = 256;
constexpr std::chrono::seconds kScanTimeout{600};
constexpr std::chrono::seconds kDpkgQueryTimeout{60};
constexpr std::chrono::seconds kPatchRebootDelay{60};  // leaves time to report the outcome
constexpr std::string_view kRebootRequired = "/run/reboot-required";

fs::path apt_get_path() { return proc::find_executable({"/usr/bin/apt-get", "/bin/apt-get"}); }

constexpr std::string_view kNoApt = "apt-get not found: not a Debian-family host";

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Calls `fn` for each line of `text`.
void for_each_line(std::string_view text, const std::function<void(std::string_view)>& fn) {
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    fn(trim(text.substr(0, nl)));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
}

// The pieces of an apt simulation line after its keyword: "NAME [CURRENT] (CANDIDATE ORIGINS [ARCH])".
struct SimLine {
  std::string_view name;
  std::string_view current;
  std::string_view candidate;
  std::string_view origins;  // everything in the parentheses after the candidate version
};

SimLine split_sim_line(std::string_view rest) {
  SimLine line;
  rest = trim(rest);
  const std::size_t sp = rest.find(' ');
  line.name = rest.substr(0, sp);
  rest = sp == std::string_view::npos ? std::string_view() : trim(rest.substr(sp));
  if (rest.starts_with('[')) {
    const std::size_t close = rest.find(']');
    if (close == std::string_view::npos) return line;
    line.current = trim(rest.substr(1, close - 1));
    rest = trim(rest.substr(close + 1));
  }
  if (rest.starts_with('(')) {
    const std::size_t close = rest.find(')');
    std::string_view inner = rest.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1);
    inner = trim(inner);
    const std::size_t vsp = inner.find(' ');
    line.candidate = inner.substr(0, vsp);
    line.origins = vsp == std::string_view::npos ? std::string_view() : trim(inner.substr(vsp));
  }
  return line;
}

// dpkg's progress lines: "NAME (VERSION) ..." or "NAME (VERSION) over (OLD) ...".
struct DpkgLine {
  std::string_view name;
  std::string_view version;
  std::string_view over;
};

DpkgLine split_dpkg_line(std::string_view rest) {
  DpkgLine line;
  const std::size_t sp = rest.find(' ');
  line.name = rest.substr(0, sp);
  if (sp == std::string_view::npos) return line;
  rest = trim(rest.substr(sp));
  const auto paren = [](std::string_view& s) {
    if (!s.starts_with('(')) return std::string_view();
    const std::size_t close = s.find(')');
    if (close == std::string_view::npos) return std::string_view();
    std::string_view v = s.substr(1, close - 1);
    s = trim(s.substr(close + 1));
    return v;
  };
  line.version = paren(rest);
  if (rest.starts_with("over ")) {
    rest = trim(rest.substr(5));
    line.over = paren(rest);
  }
  return line;
}

// Limits a capture to what a report keeps.
proc::Captured bounded(const proc::Captured& captured, std::size_t max) {
  proc::Captured out;
  out.data = captured.data.substr(0, std::min(max, captured.data.size()));
  out.dropped = captured.dropped + (captured.data.size() - out.data.size());
  return out;
}

// Lines joined with '\n', cut at `max` bytes with a truncation marker.
std::string bounded_lines(const std::vector<std::string>& lines, std::size_t max) {
  proc::Captured c;
  for (const auto& line : lines) {
    std::string entry = c.data.empty() ? line : "\n" + line;
    const std::size_t room = max > c.data.size() ? max - c.data.size() : 0;
    if (c.dropped == 0 && entry.size() <= room) {
      c.data += entry;
    } else {
      c.dropped += entry.size();
    }
  }
  return proc::report_text(c);
}

std::vector<std::string> apt_argv(const fs::path& exe, bool simulate) {
  std::vector<std::string> argv{exe.string(), "-q", "-y"};
  if (simulate) argv.emplace_back("-s");
  // Pattern-Only: a name is never taken as a regular expression (apt's fallback would match
  // unrelated packages). The Dpkg options keep the local version of a changed conffile
  // instead of asking.
  for (const char* option : {"APT::Cmd::Pattern-Only=true", "Dpkg::Options::=--force-confdef",
                             "Dpkg::Options::=--force-confold", "DPkg::Lock::Timeout=120", "APT::Color=false"}) {
    argv.emplace_back("-o");
    argv.emplace_back(option);
  }
  return argv;
}

Result<proc::Outcome> run_apt(std::vector<std::string> argv, std::chrono::seconds timeout, std::stop_token stop) {
  proc::Spec spec;
  spec.argv = std::move(argv);
  spec.env = tool_env({"DEBIAN_FRONTEND=noninteractive", "APT_LISTCHANGES_FRONTEND=none", "UCF_FORCE_CONFFOLD=1",
                       "NEEDRESTART_MODE=l"});
  spec.timeout = timeout;
  spec.max_output_bytes = kAptCaptureBytes;
  return proc::run_process(spec, std::move(stop));
}

// apt's reason for a failure: its first "E:" line, else the first line of stderr.
std::string apt_reason(const proc::Outcome& run) {
  std::string reason;
  for (const std::string* stream : {&run.err.data, &run.out.data}) {
    for_each_line(*stream, [&](std::string_view line) {
      if (reason.empty() && line.starts_with("E: ")) reason = first_line(line.substr(3));
    });
    if (!reason.empty()) return reason;
  }
  reason = first_line(run.err.data);
  if (reason.empty()) reason = fmt::format("apt-get exited with code {}", run.exit_code);
  return reason;
}

// Error of a finished apt run, with `what` naming the step.
Status apt_status(const Result<proc::Outcome>& run, std::chrono::seconds timeout, std::string_view what) {
  if (!run) return Error{run.error().code, fmt::format("{}: {}", what, run.error().message)};
  if (run->canceled) return make_error(Errc::closed, "canceled");
  if (run->timed_out) return make_error(Errc::timeout, "{} timed out after {}", what, duration_text(timeout));
  if (run->signal != 0) return make_error(Errc::unavailable, "{} killed by {}", what, proc::signal_name(run->signal));
  if (run->exit_code != 0) return make_error(Errc::unavailable, "{}", apt_reason(*run));
  return {};
}

JobOutcome outcome_for_error(const Error& error) {
  if (error.code == Errc::not_found) return rejected(error.message);
  return failed(error.message);
}

// The report of an apt run that changes packages (or simulates it).
JobOutcome apt_outcome(const Result<proc::Outcome>& run, bool simulate, std::chrono::seconds timeout,
                       const ExecPolicy& policy) {
  if (!run) return failed(fmt::format("cannot run apt-get: {}", run.error().message));
  JobOutcome outcome;
  auto& out = outcome.output;
  out["simulated"] = simulate ? "true" : "false";
  out["duration_ms"] = std::to_string(run->duration.count());
  if (run->signal != 0) {
    out["signal"] = proc::signal_name(run->signal);
  } else {
    out["exit_code"] = std::to_string(run->exit_code);
  }
  const proc::Captured log = bounded(run->out, policy.max_output_bytes);
  out["log"] = proc::report_text(log);
  if (log.dropped > 0) out["log_truncated"] = std::to_string(log.dropped);
  if (!run->err.data.empty()) out["stderr"] = proc::report_text(bounded(run->err, policy.max_output_bytes));

  const std::vector<PackageChange> changes = parse_apt_changes(run->out.data);
  std::size_t installed = 0;
  std::size_t upgraded = 0;
  std::size_t removed = 0;
  std::vector<std::string> lines;
  for (const auto& c : changes) {
    if (c.action == "install") ++installed;
    if (c.action == "upgrade") ++upgraded;
    if (c.action == "remove" || c.action == "purge") ++removed;
    if (!c.from.empty() && !c.to.empty()) {
      lines.push_back(fmt::format("{} {} {} -> {}", c.action, c.name, c.from, c.to));
    } else {
      lines.push_back(fmt::format("{} {} {}", c.action, c.name, c.from.empty() ? c.to : c.from));
    }
  }
  out["changes"] = bounded_lines(lines, policy.max_output_bytes);
  out["changed"] = std::to_string(changes.size());
  out["installed"] = std::to_string(installed);
  out["upgraded"] = std::to_string(upgraded);
  out["removed"] = std::to_string(removed);

  if (auto st = apt_status(run, timeout, "apt-get"); !st) {
    outcome.status = JobStatus::failed;
    outcome.message = st.error().message;
    return outcome;
  }
  outcome.status = JobStatus::succeeded;
  outcome.message = simulate ? fmt::format("simulated: {} to install, {} to upgrade, {} to remove", installed, upgraded,
                                           removed)
                             : fmt::format("{} installed, {} upgraded, {} removed", installed, upgraded, removed);
  return outcome;
}

// The `packages` parameter: comma-separated names, each checked against dpkg's rules.
Result<std::vector<std::string>> package_list(const JobRequest& request) {
  std::vector<std::string> names;
  auto it = request.params.find("packages");
  if (it == request.params.end()) return names;
  std::string_view text = it->second;
  if (trim(text).empty()) return names;
  while (true) {
    const std::size_t comma = text.find(',');
    const std::string_view name = trim(text.substr(0, comma));
    if (!valid_package_name(name)) {
      return make_error(Errc::invalid_argument, "packages: '{}' is not a valid Debian package name",
                        first_line(name.substr(0, std::min<std::size_t>(name.size(), 80))));
    }
    if (std::find(names.begin(), names.end(), name) == names.end()) names.emplace_back(name);
    if (names.size() > kMaxPackages) return make_error(Errc::invalid_argument, "packages: more than {}", kMaxPackages);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return names;
}

// True when dpkg knows the package by exactly this name.
bool dpkg_knows(const std::string& name, const std::stop_token& stop) {
  const fs::path exe = proc::find_executable({"/usr/bin/dpkg-query", "/bin/dpkg-query"});
  if (exe.empty()) return false;
  proc::Spec spec;
  spec.argv = {exe.string(), "-W", "-f=${Package}", "--", name};
  spec.env = tool_env();
  spec.timeout = kDpkgQueryTimeout;
  spec.max_output_bytes = 4096;
  auto run = proc::run_process(spec, stop);
  return run && run->exit_code == 0 && run->out.data == name;
}

std::string update_line(const PendingUpdate& u) {
  return fmt::format("{} {} -> {}{}", u.name, u.current.empty() ? "(new)" : u.current, u.candidate,
                     u.security ? " [security]" : "");
}

Result<PatchScan> scan(bool refresh, std::chrono::seconds timeout, std::stop_token stop) {
  const fs::path exe = apt_get_path();
  if (exe.empty()) return make_error(Errc::not_found, "{}", kNoApt);
  const auto start = std::chrono::steady_clock::now();
  if (refresh) {
    auto update = run_apt({exe.string(), "-q", "-o", "APT::Color=false", "update"}, timeout, stop);
    if (auto st = apt_status(update, timeout, "apt-get update"); !st) {
      if (st.error().code == Errc::unavailable && update) {
        return make_error(Errc::unavailable, "apt-get update: {}", st.error().message);
      }
      return std::move(st).error();
    }
  }
  const auto left = timeout -
                    std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - start);
  const std::chrono::seconds budget = std::max(left, std::chrono::seconds(1));
  std::vector<std::string> argv = apt_argv(exe, true);
  argv.emplace_back("dist-upgrade");
  auto sim = run_apt(std::move(argv), budget, std::move(stop));
  if (auto st = apt_status(sim, timeout, "apt-get -s dist-upgrade"); !st) return std::move(st).error();
  PatchScan result = parse_apt_simulation(sim->out.data);
  result.scanned_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  return result;
}

void add_scan_output(const PatchScan& scan, std::size_t max_bytes, std::map<std::string, std::string>& out) {
  std::vector<std::string> lines;
  std::size_t security = 0;
  for (const auto& u : scan.updates) {
    lines.push_back(update_line(u));
    if (u.security) ++security;
  }
  out["pending"] = std::to_string(scan.updates.size());
  out["security_pending"] = std::to_string(security);
  out["updates"] = bounded_lines(lines, max_bytes);
  out["scanned_ms"] = std::to_string(scan.scanned_ms);
}

}  // namespace

JobOutcome run_package_job(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                           std::stop_token stop) {
  if (auto bad = unknown_param(request, {"packages", "dry_run", "timeout"}); !bad.empty()) return rejected(bad);
  auto names = package_list(request);
  if (!names) return rejected(names.error().message);
  const bool upgrade = request.type == "package.upgrade";
  const bool remove = request.type == "package.remove";
  if (names->empty() && !upgrade) return rejected("packages: required (comma-separated package names)");
  auto dry_run = bool_param(request, "dry_run", false);
  if (!dry_run) return rejected(dry_run.error().message);
  auto timeout = timeout_param(request, policy);
  if (!timeout) return rejected(timeout.error().message);
  const fs::path exe = apt_get_path();
  if (exe.empty()) return rejected(std::string(kNoApt));
  if (remove) {
    // "NAME+" on apt's remove command line means "install NAME" unless a package is named so.
    for (const auto& name : *names) {
      if (name.ends_with('+') && !dpkg_knows(name, stop)) {
        return rejected(fmt::format("packages: '{}' is not installed", name));
      }
    }
  }
  const bool simulate = *dry_run || policy.apt_simulate_only;
  std::vector<std::string> argv = apt_argv(exe, simulate);
  if (request.type == "package.install") {
    argv.insert(argv.end(), {"install", "--no-install-recommends", "--"});
  } else if (remove) {
    argv.insert(argv.end(), {"remove", "--"});
  } else if (names->empty()) {
    argv.emplace_back("upgrade");
  } else {
    argv.insert(argv.end(), {"install", "--only-upgrade", "--"});
  }
  argv.insert(argv.end(), names->begin(), names->end());
  report_progress(progress, 5, simulate ? "simulating with apt-get" : "running apt-get");
  auto run = run_apt(std::move(argv), *timeout, std::move(stop));
  JobOutcome outcome = apt_outcome(run, simulate, *timeout, policy);
  report_progress(progress, 100, outcome.message);
  return outcome;
}

JobOutcome run_patch_scan(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                          std::stop_token stop) {
  if (auto bad = unknown_param(request, {"refresh", "timeout"}); !bad.empty()) return rejected(bad);
  auto refresh = bool_param(request, "refresh", false);
  if (!refresh) return rejected(refresh.error().message);
  auto timeout = timeout_param(request, policy);
  if (!timeout) return rejected(timeout.error().message);
  report_progress(progress, 5, *refresh ? "refreshing package lists" : "scanning");
  auto result = scan(*refresh, *timeout, std::move(stop));
  if (!result) return outcome_for_error(result.error());
  JobOutcome outcome;
  add_scan_output(*result, policy.max_output_bytes, outcome.output);
  outcome.status = JobStatus::succeeded;
  outcome.message = fmt::format("{} updates pending, {} security", outcome.output["pending"],
                                outcome.output["security_pending"]);
  report_progress(progress, 100, outcome.message);
  return outcome;
}

JobOutcome run_patch_apply(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                           std::stop_token stop) {
  if (auto bad = unknown_param(request, {"security_only", "dry_run", "reboot", "timeout"}); !bad.empty()) {
    return rejected(bad);
  }
  auto security_only = bool_param(request, "security_only", false);
  if (!security_only) return rejected(security_only.error().message);
  auto dry_run = bool_param(request, "dry_run", false);
  if (!dry_run) return rejected(dry_run.error().message);
  bool reboot_if_required = false;
  if (auto it = request.params.find("reboot"); it != request.params.end()) {
    if (it->second == "if_required") {
      reboot_if_required = true;
    } else if (it->second != "never") {
      return rejected(fmt::format("reboot: '{}' is not never or if_required", first_line(it->second)));
    }
  }
  auto timeout = timeout_param(request, policy);
  if (!timeout) return rejected(timeout.error().message);
  if (policy.in_maintenance_window && !policy.in_maintenance_window()) {
    return rejected("outside the maintenance window");
  }
  const fs::path exe = apt_get_path();
  if (exe.empty()) return rejected(std::string(kNoApt));
  const bool simulate = *dry_run || policy.apt_simulate_only;

  std::vector<std::string> argv = apt_argv(exe, simulate);
  JobOutcome outcome;
  if (*security_only) {
    report_progress(progress, 5, "scanning for security updates");
    auto pending = scan(false, *timeout, stop);
    if (!pending) return outcome_for_error(pending.error());
    std::vector<std::string> names;
    for (const auto& u : pending->updates) {
      if (u.security && valid_package_name(u.name)) names.push_back(u.name);
    }
    if (names.empty()) {
      add_scan_output(*pending, policy.max_output_bytes, outcome.output);
      outcome.status = JobStatus::succeeded;
      outcome.message = "no security updates pending";
      return outcome;
    }
    // Upgrades only; new packages the security updates depend on come in as dependencies.
    argv.insert(argv.end(), {"install", "--only-upgrade", "--"});
    argv.insert(argv.end(), names.begin(), names.end());
  } else {
    argv.emplace_back("dist-upgrade");
  }
  report_progress(progress, 20, simulate ? "simulating the upgrade" : "upgrading");
  auto run = run_apt(std::move(argv), *timeout, stop);
  outcome = apt_outcome(run, simulate, *timeout, policy);
  if (outcome.status != JobStatus::succeeded) return outcome;

  std::error_code ec;
  const bool reboot_required = fs::exists(kRebootRequired, ec);
  outcome.output["reboot_required"] = reboot_required ? "true" : "false";
  if (reboot_required && reboot_if_required && !simulate) {
    if (!policy.allow_reboot) {
      outcome.message += "; a reboot is required but not allowed by the agent's policy";
    } else {
      report_progress(progress, 90, "scheduling a reboot");
      auto scheduled = schedule_reboot(kPatchRebootDelay, std::move(stop));
      if (scheduled) {
        outcome.output["reboot_scheduled"] = "true";
        outcome.message += fmt::format("; {}", *scheduled);
      } else {
        // The packages are in place; the reboot is left to the operator.
        outcome.output["reboot_scheduled"] = "false";
        outcome.message += fmt::format("; reboot not scheduled: {}", scheduled.error().message);
      }
    }
  }
  report_progress(progress, 100, outcome.message);
  return outcome;
}

}  // namespace exec

std::vector<PackageChange> parse_apt_changes(std::string_view apt_output) {
  std::vector<PackageChange> changes;
  std::map<std::string, std::size_t, std::less<>> index;
  // Records `action` for `name`; a later line only fills in what an earlier one left open
  // (apt prints Inst then Conf for one package, dpkg prints Unpacking then Setting up).
  const auto note = [&](std::string_view action, std::string_view name, std::string_view from, std::string_view to) {
    if (name.empty()) return;
    auto it = index.find(name);
    if (it == index.end()) {
      index.emplace(std::string(name), changes.size());
      changes.push_back(PackageChange{std::string(action), std::string(name), std::string(from), std::string(to)});
      return;
    }
    PackageChange& c = changes[it->second];
    if (c.action == "configure" && action != "configure") c.action = action;
    if (c.action == "remove" && action == "purge") c.action = "purge";
    if (c.from.empty()) c.from = from;
    if (c.to.empty()) c.to = to;
  };
  exec::for_each_line(apt_output, [&](std::string_view line) {
    if (line.starts_with("Inst ")) {
      const exec::SimLine s = exec::split_sim_line(line.substr(5));
      note(s.current.empty() ? "install" : "upgrade", s.name, s.current, s.candidate);
    } else if (line.starts_with("Remv ")) {
      const exec::SimLine s = exec::split_sim_line(line.substr(5));
      note("remove", s.name, s.current, "");
    } else if (line.starts_with("Purg ")) {
      const exec::SimLine s = exec::split_sim_line(line.substr(5));
      note("purge", s.name, s.current, "");
    } else if (line.starts_with("Conf ")) {
      const exec::SimLine s = exec::split_sim_line(line.substr(5));
      note("configure", s.name, "", s.candidate);
    } else if (line.starts_with("Unpacking ")) {
      const exec::DpkgLine d = exec::split_dpkg_line(line.substr(10));
      note(d.over.empty() ? "install" : "upgrade", d.name, d.over, d.version);
    } else if (line.starts_with("Setting up ")) {
      const exec::DpkgLine d = exec::split_dpkg_line(line.substr(11));
      note("configure", d.name, "", d.version);
    } else if (line.starts_with("Removing ")) {
      const exec::DpkgLine d = exec::split_dpkg_line(line.substr(9));
      note("remove", d.name, d.version, "");
    } else if (line.starts_with("Purging configuration files for ")) {
      const exec::DpkgLine d = exec::split_dpkg_line(line.substr(32));
      note("purge", d.name, d.version, "");
    }
  });
  return changes;
}

PatchScan parse_apt_simulation(std::string_view apt_output) {
  PatchScan result;
  exec::for_each_line(apt_output, [&](std::string_view line) {
    if (!line.starts_with("Inst ")) return;
    const exec::SimLine s = exec::split_sim_line(line.substr(5));
    if (s.name.empty() || s.candidate.empty()) return;
    PendingUpdate u;
    u.name = s.name;
    u.current = s.current;
    u.candidate = s.candidate;
    u.security = s.origins.find("-security") != std::string_view::npos ||
                 s.origins.find("Debian-Security") != std::string_view::npos;
    result.updates.push_back(std::move(u));
  });
  return result;
}

Result<PatchScan> scan_patches(bool refresh, std::stop_token stop) {
  return exec::scan(refresh, exec::kScanTimeout, std::move(stop));
}

}  // namespace flotilla::agent
