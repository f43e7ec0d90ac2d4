#include "flotilla/cli/render_jobs.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <utility>

#include <fmt/format.h>

#include "flotilla/cli/cli.hpp"
#include "flotilla/cli/render.hpp"
#include "flotilla/manager/rollout.hpp"
#include "flotilla/manager/schedule.hpp"

namespace flotilla::cli {
namespace {

using Rows = std::vector<std::vector<std::string>>;

constexpr std::size_t kMaxCell = 60;  // longer table cells are cut with "..."

std::string or_dash(std::string_view text) { return text.empty() ? std::string("-") : std::string(text); }

// Cuts `text` to at most `max` bytes without splitting a UTF-8 sequence, marking the cut, and
// replaces control characters (a status text may hold line breaks) by spaces.
std::string cell(std::string_view text, std::size_t max = kMaxCell) {
  std::string out;
  out.reserve(std::min(text.size(), max + 3));
  for (char c : text) out += static_cast<unsigned char>(c) < 0x20 ? ' ' : c;
  if (out.size() <= max) return out;
  std::size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0U) == 0x80U) --cut;
  out.resize(cut);
  return out + "...";
}

// "12s ago" for the past, "in 2h 5m" for the future.
std::string relative(std::int64_t then_ms, std::int64_t now_ms) {
  if (then_ms > now_ms) return "in " + format_uptime(static_cast<std::uint64_t>((then_ms - now_ms + 999) / 1000));
  return format_age(then_ms, now_ms);
}

// "2026-11-21T02:00:00Z (3m ago)".
std::string when(std::int64_t ms, std::int64_t now_ms) {
  return fmt::format("{} ({})", format_utc(ms), relative(ms, now_ms));
}

// "100/min", "unlimited" or the exponential key list, as `jobs create` reads them back.
std::string rollout_text(const v1::RolloutSpec& r) {
  std::string text = manager::format_rollout(manager::from_proto(r));
  if (r.jitter_ms() > 0) {
    text += fmt::format(", jitter {}", manager::format_compound_duration(std::chrono::milliseconds(r.jitter_ms())));
  }
  return text;
}

std::string target_text(const v1::JobTarget& t) {
  std::string text;
  if (!t.group().empty()) {
    text = "group " + t.group();
  } else if (!t.query().empty()) {
    text = "query " + t.query();
  } else {
    text = fmt::format("{} device{}", t.device_ids_size(), t.device_ids_size() == 1 ? "" : "s");
  }
  if (t.continuous()) text += " (continuous)";
  return text;
}

// The states in the order a job moves through them, with their counts.
std::array<std::pair<v1::ExecutionState, std::uint64_t>, 8> counts_by_state(const v1::ExecutionCounts& c) {
  return {{{v1::EXECUTION_QUEUED, c.queued()},
           {v1::EXECUTION_IN_PROGRESS, c.in_progress()},
           {v1::EXECUTION_SUCCEEDED, c.succeeded()},
           {v1::EXECUTION_FAILED, c.failed()},
           {v1::EXECUTION_TIMED_OUT, c.timed_out()},
           {v1::EXECUTION_REJECTED, c.rejected()},
           {v1::EXECUTION_REMOVED, c.removed()},
           {v1::EXECUTION_CANCELED, c.canceled()}}};
}

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c); });
  return out;
}

}  // namespace

std::string_view execution_state_label(v1::ExecutionState state) {
  switch (state) {
    case v1::EXECUTION_QUEUED: return "QUEUED";
    case v1::EXECUTION_IN_PROGRESS: return "IN_PROGRESS";
    case v1::EXECUTION_SUCCEEDED: return "SUCCEEDED";
    case v1::EXECUTION_FAILED: return "FAILED";
    case v1::EXECUTION_TIMED_OUT: return "TIMED_OUT";
    case v1::EXECUTION_REJECTED: return "REJECTED";
    case v1::EXECUTION_REMOVED: return "REMOVED";
    case v1::EXECUTION_CANCELED: return "CANCELED";
    default: return "UNSPECIFIED";
  }
}

std::string_view job_state_label(v1::JobState state) {
  switch (state) {
    case v1::JOB_SCHEDULED: return "SCHEDULED";
    case v1::JOB_IN_PROGRESS: return "IN_PROGRESS";
    case v1::JOB_COMPLETED: return "COMPLETED";
    case v1::JOB_CANCELED: return "CANCELED";
    case v1::JOB_ABORTED: return "ABORTED";
    default: return "UNSPECIFIED";
  }
}

bool is_terminal(v1::JobState state) {
  return state == v1::JOB_COMPLETED || state == v1::JOB_CANCELED || state == v1::JOB_ABORTED;
}

std::uint64_t total_executions(const v1::ExecutionCounts& counts) {
  std::uint64_t total = 0;
  for (const auto& [state, n] : counts_by_state(counts)) total += n;
  return total;
}

int job_outcome_exit_code(const v1::JobRecord& job) {
  const bool all_succeeded = job.counts().succeeded() == total_executions(job.counts());
  return job.state() == v1::JOB_COMPLETED && all_succeeded ? exit_ok : exit_job_failed;
}

std::string format_utc(std::int64_t ms) {
  if (ms <= 0) return "-";
  using namespace std::chrono;
  const sys_time<milliseconds> t{milliseconds(ms)};
  const auto day = floor<days>(t);
  const year_month_day ymd{day};
  const hh_mm_ss hms{floor<seconds>(t - day)};
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", static_cast<int>(ymd.year()),
                     static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()), hms.hours().count(),
                     hms.minutes().count(), hms.seconds().count());
}

std::string render_job(const v1::JobRecord& job, std::int64_t now_ms) {
  const auto& spec = job.spec();
  Rows rows;
  rows.push_back({"Job:", job.job_id()});
  rows.push_back({"Type:", or_dash(job.type())});
  rows.push_back({"State:", std::string(job_state_label(job.state()))});
  if (!job.state_reason().empty()) rows.push_back({"Reason:", cell(job.state_reason(), 400)});
  if (!spec.description().empty()) rows.push_back({"Description:", cell(spec.description(), 400)});
  rows.push_back({"Target:", target_text(spec.target())});
  std::string by = or_dash(job.requested_by());
  if (!job.created_by().empty()) by += fmt::format(" (key {})", job.created_by());
  rows.push_back({"Requested by:", by});
  if (job.awaiting_approval()) {
    rows.push_back({"Approval:", "awaiting (flotilla jobs approve " + job.job_id() + ", by another operator)"});
  } else if (!job.approved_by().empty()) {
    rows.push_back(
        {"Approved by:", fmt::format("{}, {}", cell(job.approved_by(), 64), when(job.approved_at_ms(), now_ms))});
  }
  rows.push_back({"Created:", when(job.created_at_ms(), now_ms)});
  if (spec.start_at_ms() > 0) rows.push_back({"Starts:", when(spec.start_at_ms(), now_ms)});
  if (spec.end_at_ms() > 0) rows.push_back({"Ends:", when(spec.end_at_ms(), now_ms)});
  if (job.expires_at_ms() > 0) rows.push_back({"Expires:", when(job.expires_at_ms(), now_ms)});
  if (job.finished_at_ms() > 0) rows.push_back({"Finished:", when(job.finished_at_ms(), now_ms)});
  rows.push_back({"Rollout:", rollout_text(spec.rollout())});
  if (spec.abort_rules_size() > 0) {
    std::vector<manager::AbortRule> rules;
    for (const auto& r : spec.abort_rules()) rules.push_back(manager::from_proto(r));
    rows.push_back({"Abort:", manager::format_abort_rules(rules)});
  }
  rows.push_back({"Timeout:", spec.timeout_s() == 0
                                  ? std::string("manager default")
                                  : manager::format_compound_duration(std::chrono::seconds(spec.timeout_s()))});
  rows.push_back({"Retries:", std::to_string(spec.retries())});
  if (spec.windows_size() > 0) rows.push_back({"Windows:", fmt::format("{}", fmt::join(spec.windows(), "; "))});
  rows.push_back({"Executions:", fmt::format("{} ({} notified)", total_executions(job.counts()), job.notified())});
  std::string text = render_columns(rows);
  Rows counts;
  for (const auto& [state, n] : counts_by_state(job.counts())) {
    counts.push_back({std::string(execution_state_label(state)), std::to_string(n)});
  }
  text += render_columns(counts, "  ", {1});
  return text;
}

std::string render_jobs_table(const v1::JobList& list, std::int64_t now_ms) {
  Rows rows;
  rows.push_back({"ID", "TYPE", "STATE", "TARGET", "DEVICES", "SUCCEEDED", "FAILED", "CREATED", "BY"});
  for (const auto& job : list.jobs()) {
    const auto& c = job.counts();
    rows.push_back({job.job_id(), or_dash(job.type()), std::string(job_state_label(job.state())),
                    cell(target_text(job.spec().target()), 40), std::to_string(total_executions(c)),
                    std::to_string(c.succeeded()), std::to_string(c.failed() + c.timed_out() + c.rejected()),
                    format_age(job.created_at_ms(), now_ms), or_dash(cell(job.requested_by(), 32))});
  }
  return render_columns(rows, {}, {4, 5, 6});
}

std::string render_executions_table(const v1::ExecutionList& list, std::int64_t now_ms) {
  Rows rows;
  rows.push_back({"DEVICE", "STATE", "ATTEMPT", "STATUS", "UPDATED"});
  for (const auto& e : list.executions()) {
    rows.push_back({e.device_id(), std::string(execution_state_label(e.state())), std::to_string(e.attempt()),
                    or_dash(cell(e.status())), format_age(e.updated_at_ms(), now_ms)});
  }
  return render_columns(rows, {}, {2});
}

std::string render_scripts_table(const v1::ScriptList& list, std::int64_t now_ms) {
  Rows rows;
  rows.push_back({"NAME", "VERSION", "INTERPRETER", "SHA256", "ADDED", "KEY"});
  for (const auto& s : list.scripts()) {
    rows.push_back({s.name(), std::to_string(s.version()), or_dash(s.interpreter()), or_dash(s.sha256().substr(0, 16)),
                    format_age(s.added_at_ms(), now_ms), or_dash(s.added_by())});
  }
  return render_columns(rows, {}, {1});
}

std::string render_script(const v1::Script& script, std::int64_t now_ms) {
  Rows rows;
  rows.push_back({"Script:", script.name()});
  rows.push_back({"Version:", std::to_string(script.version())});
  rows.push_back({"Interpreter:", or_dash(script.interpreter())});
  rows.push_back({"SHA-256:", or_dash(script.sha256())});
  if (!script.body().empty()) rows.push_back({"Size:", format_bytes(script.body().size())});
  rows.push_back({"Added:", when(script.added_at_ms(), now_ms)});
  rows.push_back({"Signed by:", or_dash(script.added_by())});
  return render_columns(rows);
}

std::string render_audit_table(const v1::AuditLog& log) {
  Rows rows;
  rows.push_back({"TIME", "ACTOR", "KEY", "ACTION", "SUBJECT", "DETAIL"});
  for (const auto& e : log.entries()) {
    rows.push_back({format_utc(e.at_ms()), or_dash(cell(e.actor(), 32)), or_dash(e.key_id()), or_dash(cell(e.action())),
                    or_dash(cell(e.subject())), or_dash(cell(e.detail(), 100))});
  }
  return render_columns(rows);
}

std::string render_progress(const v1::JobRecord& job, std::size_t bar_width) {
  const auto& c = job.counts();
  const std::uint64_t total = total_executions(c);
  const std::uint64_t open = std::min(total, c.queued() + c.in_progress());
  const std::uint64_t done = total - open;
  // Integer shares, floored, so the bar is only full (and the share only 100%) when everything
  // ended; a job without executions is full once it ended.
  std::size_t filled = 0;
  std::uint64_t percent = 0;
  if (total > 0) {
    // Counts beyond 2^48 (never seen in practice) are scaled down so the products cannot wrap.
    const int shift = total > (1ULL << 48) ? 16 : 0;
    const std::uint64_t d = done >> shift;
    const std::uint64_t t = std::max<std::uint64_t>(total >> shift, 1);
    filled = static_cast<std::size_t>(std::min<std::uint64_t>(d * bar_width / t, bar_width));
    percent = std::min<std::uint64_t>(d * 100 / t, 100);
  } else if (is_terminal(job.state())) {
    filled = bar_width;
    percent = 100;
  }
  std::string line = fmt::format("{} {} [{}{}] {:>3}% {}/{}", job.job_id(), job_state_label(job.state()),
                                 std::string(filled, '#'), std::string(bar_width - filled, '-'), percent, done, total);
  for (const auto& [state, n] : counts_by_state(c)) {
    if (n > 0) line += fmt::format(" {} {}", lower(execution_state_label(state)), n);
  }
  return line;
}

}  // namespace flotilla::cli
