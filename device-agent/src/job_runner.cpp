#include "flotilla/agent/job_runner.hpp"

#include <fmt/format.h>

#include "flotilla/core/clock.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/log.hpp"

namespace flotilla::agent {
namespace {

JobReport report(std::string job_id, std::uint32_t attempt, v1::CommandResult::Status status, std::string message,
                 std::map<std::string, std::string> output = {}, std::uint32_t progress = 0) {
  return JobReport{std::move(job_id), attempt, status, std::move(message), std::move(output), progress, {}};
}

}  // namespace

v1::CommandResult::Status to_wire(JobStatus status) {
  switch (status) {
    case JobStatus::succeeded: return v1::CommandResult::STATUS_SUCCEEDED;
    case JobStatus::rejected: return v1::CommandResult::STATUS_REJECTED;
    case JobStatus::failed: break;
  }
  return v1::CommandResult::STATUS_FAILED;
}

JobRequest request_from(const v1::JobDocument& document) {
  JobRequest r;
  r.job_id = document.job_id();
  r.type = document.type();
  for (const auto& [k, v] : document.params()) r.params.emplace(k, v);
  r.args.assign(document.args().begin(), document.args().end());
  if (document.has_script()) {
    r.script_name = document.script().name();
    r.script_interpreter = document.script().interpreter();
    r.script_body = document.script().body();
  }
  return r;
}

Result<std::unique_ptr<JobRunner>> JobRunner::open(JobRunnerOptions options, std::int64_t now_ms) {
  ExecutionStoreOptions so;
  so.dir = options.state_dir / "executions";
  auto store = ExecutionStore::open(so);
  if (!store) return std::move(store).error();
  signing::TrustStore trust;
  std::error_code ec;
  if (std::filesystem::is_directory(options.trusted_keys, ec)) {
    if (auto st = trust.load_dir(options.trusted_keys); !st) return std::move(st).error();
  } else if (std::filesystem::exists(options.trusted_keys, ec)) {
    if (auto st = trust.load_file(options.trusted_keys); !st) return std::move(st).error();
  }
  if (trust.size() == 0) {
    log::warn("no trusted job signing keys in {}: every job will be rejected", options.trusted_keys.string());
  }
  std::unique_ptr<JobRunner> runner(new JobRunner(std::move(options), std::move(store).value(), std::move(trust)));
  // Started but never finished: the agent stopped while they ran. They are not run again.
  std::vector<std::pair<std::string, std::uint32_t>> interrupted;
  for (const auto* rec : runner->store_->interrupted()) interrupted.emplace_back(rec->job_id, rec->attempt);
  for (const auto& [job, attempt] : interrupted) {
    JobOutcome outcome;
    outcome.status = JobStatus::failed;
    outcome.message = "interrupted: the agent stopped while the job ran; it is not run again";
    (void)runner->finish(job, attempt, outcome, now_ms);
    log::warn("job {} attempt {} was interrupted by an agent stop", job, attempt);
  }
  return runner;
}

JobRunner::JobRunner(JobRunnerOptions options, std::unique_ptr<ExecutionStore> store, signing::TrustStore trust)
    : options_(std::move(options)), store_(std::move(store)), trust_(std::move(trust)) {
  local_allow_reboot_ = options_.policy.allow_reboot;
  worker_ = std::jthread([this](std::stop_token stop) { work(stop); });
}

JobRunner::~JobRunner() {
  worker_.request_stop();
  cv_.notify_all();
}

std::size_t JobRunner::pending() const { return running_.size(); }

void JobRunner::set_policy(std::set<std::string> allowed_types, bool allow_reboot,
                           std::function<bool(std::int64_t now_ms)> in_window) {
  allowed_types_ = std::move(allowed_types);
  if (allowed_types_.contains("*")) allowed_types_.clear();
  options_.policy.allow_reboot = local_allow_reboot_ && allow_reboot;
  if (in_window) {
    options_.policy.in_maintenance_window = [in_window = std::move(in_window)] { return in_window(unix_now_ms()); };
  } else {
    options_.policy.in_maintenance_window = nullptr;
  }
}

std::optional<JobReport> JobRunner::stored_report(const ExecRecord& record, std::uint32_t attempt) const {
  v1::CommandResult stored;
  if (!stored.ParseFromString(record.result)) return std::nullopt;
  // The stored outcome answers for the attempt asked about: a job that succeeded is never run
  // again, whichever attempt the manager believes it is at.
  return report(record.job_id, attempt, stored.status(), stored.message(),
                {stored.output().begin(), stored.output().end()}, stored.progress_percent());
}

JobReport JobRunner::finish(const std::string& job_id, std::uint32_t attempt, const JobOutcome& outcome,
                            std::int64_t now_ms) {
  v1::CommandResult stored;
  stored.set_status(to_wire(outcome.status));
  stored.set_message(outcome.message);
  stored.set_progress_percent(100);
  for (const auto& [k, v] : outcome.output) (*stored.mutable_output())[k] = v;
  if (auto st = store_->mark_finished(job_id, attempt, codec::encode(stored), now_ms); !st) {
    // The outcome is still reported; a redelivery after a restart would find the execution
    // started-but-unfinished and answer "interrupted" instead of running it again.
    log::error("job {}: cannot record the outcome: {}", job_id, st.error().message);
  }
  return report(job_id, attempt, stored.status(), outcome.message, outcome.output, 100);
}

std::vector<JobReport> JobRunner::on_command(const v1::Command& command, std::int64_t now_ms) {
  const std::uint32_t attempt = command.attempt();
  auto doc = jobs::verify_job(trust_, command, options_.self, now_ms, store_->horizon_ms());
  if (!doc) {
    // Never recorded: a forged document must not be able to poison the id of a real job.
    std::string job_id;
    if (command.has_job()) {
      v1::JobDocument unverified;
      if (unverified.ParseFromString(command.job().document())) job_id = unverified.job_id().substr(0, 128);
    }
    log::warn("job command {} rejected: {}", command.command_id().substr(0, 128), doc.error().message);
    return {report(job_id, attempt, v1::CommandResult::STATUS_REJECTED, doc.error().message)};
  }
  const std::string& job_id = doc->job_id();
  if (auto it = running_.find(job_id); it != running_.end()) {
    return {report(job_id, attempt, v1::CommandResult::STATUS_IN_PROGRESS,
                   it->second == attempt ? "running" : fmt::format("attempt {} is running", it->second))};
  }
  if (const auto* rec = store_->find(job_id)) {
    if (rec->state == ExecState::finished) {
      v1::CommandResult stored;
      (void)stored.ParseFromString(rec->result);
      const bool retry = attempt > rec->attempt && stored.status() == v1::CommandResult::STATUS_FAILED;
      if (!retry) {
        if (auto again = stored_report(*rec, attempt)) return {*again};
        return {report(job_id, attempt, v1::CommandResult::STATUS_FAILED, "stored outcome unreadable")};
      }
    }
    // A started record that is not running was finished as interrupted at open().
  }
  JobRequest request = request_from(*doc);
  if (command.has_config()) request.config = command.config().SerializeAsString();
  if (!allowed_types_.empty() && !allowed_types_.contains(request.type)) {
    return {
        report(job_id, attempt, v1::CommandResult::STATUS_REJECTED,
               fmt::format("job type {} is not allowed by this device's policy (jobs.allowed_types)", request.type))};
  }
  if (auto local = options_.local.find(request.type); local != options_.local.end()) {
    if (auto st = store_->mark_started(job_id, attempt, doc->expires_at_ms(), now_ms); !st) {
      return {report(job_id, attempt, v1::CommandResult::STATUS_FAILED,
                     fmt::format("cannot record the execution: {}", st.error().message))};
    }
    return {finish(job_id, attempt, local->second(request), now_ms)};
  }
  if (auto st = store_->mark_started(job_id, attempt, doc->expires_at_ms(), now_ms); !st) {
    // Not recorded, not run: the manager's re-drive asks again.
    return {report(job_id, attempt, v1::CommandResult::STATUS_FAILED,
                   fmt::format("cannot record the execution: {}", st.error().message))};
  }
  running_[job_id] = attempt;
  {
    std::lock_guard lock(mu_);
    tasks_.push_back(Task{std::move(request), attempt, options_.policy});
  }
  cv_.notify_all();
  return {report(job_id, attempt, v1::CommandResult::STATUS_IN_PROGRESS, "started")};
}

std::vector<JobReport> JobRunner::poll(std::int64_t now_ms) {
  std::vector<std::pair<Task, JobOutcome>> done;
  {
    std::lock_guard lock(mu_);
    done.swap(done_);
  }
  std::vector<JobReport> out;
  for (auto& [task, outcome] : done) {
    running_.erase(task.request.job_id);
    out.push_back(finish(task.request.job_id, task.attempt, outcome, now_ms));
    out.back().type = task.request.type;
  }
  return out;
}

void JobRunner::work(std::stop_token stop) {
  while (!stop.stop_requested()) {
    Task task;
    {
      std::unique_lock lock(mu_);
      if (!cv_.wait(lock, stop, [this] { return !tasks_.empty(); })) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    log::info("job {} ({}) attempt {} starting", task.request.job_id, task.request.type, task.attempt);
    JobOutcome outcome = execute_job(
        task.request, task.policy, [](std::uint32_t, std::string_view) {}, stop);
    log::info("job {} attempt {}: {}", task.request.job_id, task.attempt, outcome.message);
    std::lock_guard lock(mu_);
    done_.emplace_back(std::move(task), std::move(outcome));
  }
}

}  // namespace flotilla::agent
