#pragma once
// The agent's side of jobs: verifies each job command, de-duplicates it against the durable
// execution store, runs accepted jobs one at a time on a worker thread through the executors,
// and hands back the results to publish. Every device executes each job attempt at most once,
// across redeliveries, agent restarts and power loss (docs/jobs.md, "Delivery and execution").
//
// on_command() and poll() are called from the agent's reactor thread; the worker thread only
// runs executors and hands finished work back under a mutex.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "flotilla/agent/executions.hpp"
#include "flotilla/agent/executors.hpp"
#include "flotilla/core/result.hpp"
#include "flotilla/core/signed_job.hpp"
#include "flotilla/core/signing.hpp"
#include "flotilla/v1/command.pb.h"

namespace flotilla::agent {

struct JobRunnerOptions {
  std::filesystem::path state_dir;     // executions are stored under state_dir / "executions"
  std::filesystem::path trusted_keys;  // a directory of *.pub / *.pem files, or one file
  jobs::DeviceScope self;
  ExecPolicy policy;
  // Job types handled by the agent itself (e.g. inventory.refresh, config.set): run on the
  // reactor thread through `local`, never on the worker.
  std::map<std::string, std::function<JobOutcome(const JobRequest&)>> local;
};

// A result to publish: the job, the attempt, and what the device says.
struct JobReport {
  std::string job_id;
  std::uint32_t attempt = 0;
  v1::CommandResult::Status status = v1::CommandResult::STATUS_FAILED;
  std::string message;
  std::map<std::string, std::string> output;
  std::uint32_t progress_percent = 0;
  std::string type;  // the job type, when known
};

class JobRunner {
 public:
  // Opens the execution store and loads the trusted keys (a missing key directory leaves the
  // trust store empty: every job is then rejected, and a warning says why). Executions found
  // started but unfinished (the agent stopped while they ran) are recorded as failed.
  static Result<std::unique_ptr<JobRunner>> open(JobRunnerOptions options, std::int64_t now_ms);
  ~JobRunner();

  // Decides on one job command; returns what to publish now (an acknowledgement, the stored
  // outcome of a duplicate, or a rejection).
  std::vector<JobReport> on_command(const v1::Command& command, std::int64_t now_ms);
  // Outcomes finished by the worker since the last call, already durably recorded.
  std::vector<JobReport> poll(std::int64_t now_ms);
  // Jobs accepted and not finished.
  std::size_t pending() const;

  // Policy from the desired configuration: the job types allowed (empty: every type), whether
  // reboots are allowed (never beyond the agent's own allow_reboot), and the maintenance window
  // (null: always open). Applies to jobs accepted afterwards.
  void set_policy(std::set<std::string> allowed_types, bool allow_reboot,
                  std::function<bool(std::int64_t now_ms)> in_window);
  std::size_t trusted_keys() const { return trust_.size(); }

 private:
  JobRunner(JobRunnerOptions options, std::unique_ptr<ExecutionStore> store, signing::TrustStore trust);
  void work(std::stop_token stop);
  std::optional<JobReport> stored_report(const ExecRecord& record, std::uint32_t attempt) const;
  JobReport finish(const std::string& job_id, std::uint32_t attempt, const JobOutcome& outcome, std::int64_t now_ms);

  struct Task {
    JobRequest request;
    std::uint32_t attempt = 0;
    ExecPolicy policy;
  };

  JobRunnerOptions options_;
  std::unique_ptr<ExecutionStore> store_;
  signing::TrustStore trust_;
  std::map<std::string, std::uint32_t> running_;  // job id -> attempt, accepted and unfinished
  std::set<std::string> allowed_types_;           // empty: all
  bool local_allow_reboot_ = false;

  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  std::deque<Task> tasks_;
  std::vector<std::pair<Task, JobOutcome>> done_;
  std::jthread worker_;
};

// The executor's request for a verified document.
JobRequest request_from(const v1::JobDocument& document);
v1::CommandResult::Status to_wire(JobStatus status);

}  // namespace flotilla::agent
