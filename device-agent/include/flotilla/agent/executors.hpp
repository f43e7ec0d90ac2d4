#pragma once
// The job executors: synchronous functions that carry out one verified job on this host
// (scripts, apt, systemd, reboot, downloads) with a timeout, cancellation and bounded output
// (docs/jobs.md, "Job types"). The job runner calls execute_job() on its worker thread; every
// function here may be called from any thread and keeps no state between calls.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"

namespace flotilla::agent {

enum class JobStatus {
  succeeded,
  failed,
  rejected
};  // rejected = never started (bad params, unsupported, not allowed)

struct JobRequest {
  std::string job_id;
  std::string type;  // e.g. "script.run"
  std::map<std::string, std::string> params;
  // script.run only:
  std::string script_name, script_interpreter;  // interpreter: sh | bash | python3
  std::string script_body;
  std::vector<std::string> args;
  // config.set only: the encoded DesiredConfig the command carried (not covered by the signature;
  // the agent checks it holds every signed value).
  std::string config;
};

struct ExecPolicy {
  bool allow_reboot = false;                 // reboot (and patch.apply's reboot=if_required) gated by policy
  bool apt_simulate_only = false;            // agent-level: every apt action runs as a simulation
  std::filesystem::path work_dir;            // agent state dir / "jobs": scripts and downloads live here
  std::size_t max_output_bytes = 64 * 1024;  // per stream; beyond: truncated, marked
  std::chrono::seconds default_timeout{600};
  std::function<bool()> in_maintenance_window;  // patch.apply refuses outside it (rejected); null = always
};

struct JobOutcome {
  JobStatus status = JobStatus::failed;
  std::string message;                        // one line for humans
  std::map<std::string, std::string> output;  // structured details (exit_code, stdout, stderr, ...), valid UTF-8
};

// Progress: percent 0..100 and a short detail; called from the executing thread.
using ProgressFn = std::function<void(std::uint32_t percent, std::string_view detail)>;

// Runs one job to completion, timeout or cancellation (stop requested -> the child process group
// is killed, outcome failed "canceled"). Never throws. Parameters are validated before anything
// runs: a malformed or unknown parameter, an unknown type or a job the policy forbids is
// `rejected` with a message naming the cause.
JobOutcome execute_job(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                       std::stop_token stop);

// Types execute_job understands.
std::vector<std::string> executor_job_types();

// One package apt would upgrade (or newly install, `current` empty) in a dist-upgrade.
struct PendingUpdate {
  std::string name;
  std::string current;
  std::string candidate;
  bool security = false;  // an origin of the candidate is a security archive
};

struct PatchScan {
  std::vector<PendingUpdate> updates;
  std::int64_t scanned_ms = 0;  // wall clock, ms since the epoch
};

// The "Inst" lines of `apt-get -s dist-upgrade` output, in order; every other line is ignored.
// A candidate is flagged as a security update when one of its origins contains "-security" or
// "Debian-Security". scanned_ms is left 0.
PatchScan parse_apt_simulation(std::string_view apt_output);

// One change in apt's plan or in what apt and dpkg did.
struct PackageChange {
  std::string action;  // install, upgrade, remove, purge, configure
  std::string name;
  std::string from;  // installed version before, if any
  std::string to;    // version after, if any
};

// The changes in apt-get output: `apt-get -s` lines (Inst, Remv, Purg, Conf) and dpkg's progress
// lines of a real run (Unpacking, Setting up, Removing, Purging configuration files). One entry
// per package, in first-seen order; a later line only fills in what an earlier one left open.
std::vector<PackageChange> parse_apt_changes(std::string_view apt_output);

// Runs `apt-get update` first when `refresh`, then `apt-get -s dist-upgrade`, and parses it.
// Errors: not_found (no apt-get: not a Debian-family host), unavailable (apt failed; the message
// is apt's reason), timeout, closed (stop requested).
Result<PatchScan> scan_patches(bool refresh, std::stop_token stop);

// Parameter grammar shared by the job types, exposed for tests.
// A duration: a positive integer followed by s, m or h (30s, 10m, 1h), at most 24h.
// Errors: invalid_argument.
Result<std::chrono::seconds> parse_job_duration(std::string_view text);
// A Debian package name by dpkg's rules: lower-case letters, digits, '+', '-', '.', at least two
// characters, starting with a letter or digit. A trailing '-' is refused too: apt reads it as
// "remove".
bool valid_package_name(std::string_view name);
// A systemd unit name (letters, digits and ":-_.\@", at most 255 characters); a name without a
// known unit suffix gets ".service". Errors: invalid_argument.
Result<std::string> normalize_unit_name(std::string_view unit);

}  // namespace flotilla::agent
