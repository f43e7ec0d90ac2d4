#pragma once
// Private to the executors: the apt job types (apt.cpp) and the parameter parsing and reboot
// scheduling they share with the other job types (executors.cpp).

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/agent/executors.hpp"
#include "flotilla/core/result.hpp"
#include "jobs/process.hpp"

namespace flotilla::agent::exec {

// --- executors.cpp ---

JobOutcome rejected(std::string message);
JobOutcome failed(std::string message, std::map<std::string, std::string> output = {});
// Calls `progress` if set, with percent clamped to 100.
void report_progress(const ProgressFn& progress, std::uint32_t percent, std::string_view detail);

// The rejection for the first parameter of `request` that is not in `allowed`, or empty.
std::string unknown_param(const JobRequest& request, std::initializer_list<std::string_view> allowed);
// "true" or "false"; absent: `fallback`. Errors: invalid_argument naming the parameter.
Result<bool> bool_param(const JobRequest& request, std::string_view key, bool fallback);
// The `timeout` parameter, or the policy's default. Errors: invalid_argument.
Result<std::chrono::seconds> timeout_param(const JobRequest& request, const ExecPolicy& policy);
// "30s", "10m", "1h": the largest unit that divides the duration.
std::string duration_text(std::chrono::seconds duration);

// The environment of the system tools the executors run (apt-get, systemctl, curl): a fixed
// PATH, LANG=C, the agent's HOME, plus `extra` ("KEY=value").
std::vector<std::string> tool_env(std::initializer_list<std::string_view> extra = {});

// The failure for a child that was canceled, timed out or killed, or empty when it exited.
// `timeout` is the limit that was set.
std::string abnormal_end(const proc::Outcome& outcome, std::chrono::seconds timeout);
// The first line of `text` that is not blank, trimmed and at most 300 bytes.
std::string first_line(std::string_view text);

// Asks systemd to reboot now (delay 0) or in ceil(delay / 60) minutes (shutdown -r +M).
// Returns a description of what was scheduled. Errors: not_found (no systemctl), unavailable
// (systemd refused; the message is its reason), closed (stop requested).
Result<std::string> schedule_reboot(std::chrono::seconds delay, std::stop_token stop);

// --- apt.cpp ---

// package.install, package.remove, package.upgrade.
JobOutcome run_package_job(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                           std::stop_token stop);
JobOutcome run_patch_scan(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                          std::stop_token stop);
JobOutcome run_patch_apply(const JobRequest& request, const ExecPolicy& policy, const ProgressFn& progress,
                           std::stop_token stop);

}  // namespace flotilla::agent::exec
