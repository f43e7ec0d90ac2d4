#pragma once
// The job engine: every job and execution, persisted in the Store's jobs space and driven by the
// manager's reactor. It decides who is notified when (start time, maintenance windows, rollout
// pace, jitter), re-drives notifications until the device answers, times out executions that
// never report back, retries, aborts a job whose failure rules fire, and completes it.
//
// Pure with respect to time and I/O: every call takes `now_ms`; writes go into the caller's Batch
// and the commands to publish come back from take_outgoing(), which the caller publishes only
// after the batch is durable. Owned by the reactor thread; not thread-safe. docs/jobs.md is the
// contract.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "flotilla/core/result.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/manager/store.hpp"
#include "flotilla/v1/command.pb.h"
#include "flotilla/v1/job.pb.h"

namespace flotilla::manager {

struct JobEngineOptions {
  std::chrono::milliseconds default_timeout{std::chrono::minutes(10)};
  // Re-sends a notification the device has not answered after this long (doubling up to 8x).
  std::chrono::milliseconds redrive_interval{std::chrono::seconds(30)};
  // Bounds on what operators may ask for.
  std::size_t max_targets = 1'000'000;
  std::size_t max_document_bytes = 256 * 1024;
  std::chrono::milliseconds max_lifetime{std::chrono::hours(24 * 30)};
  // Most notifications one tick sends (the rest follow on the next ticks, at once): bounds the
  // batch and what the MQTT client buffers while the broker's receive maximum holds it back.
  std::size_t max_dispatch_per_tick = 20'000;
  // Job types that always need an approval before anything is dispatched ("*": every type).
  std::vector<std::string> require_approval;
};

// What the engine needs to know about devices.
struct DeviceDirectory {
  std::function<bool(const std::string& id)> known;
  std::function<bool(const std::string& id)> online;
  // Devices a target resolves to now. Errors: invalid_argument / not_found.
  std::function<Result<std::vector<std::string>>(const v1::JobTarget& target)> resolve;
  // Whether a device matches a continuous job's target and the document's scope now.
  std::function<bool(const v1::JobRecord& job, const v1::JobDocument& document, const std::string& id)> matches;
  // Optional. Called once per attempt as an execution is dispatched, before its first command
  // is built; may add writes to the batch (config.set: the device-level policy).
  std::function<void(const v1::JobRecord& job, const v1::JobDocument& document, const std::string& id,
                     std::int64_t now_ms, Batch& batch)>
      before_dispatch;
  // Optional. Completes every command sent for an execution (config.set: the device's effective
  // configuration).
  std::function<void(const v1::JobDocument& document, const std::string& id, v1::Command& command)> complete_command;
};

class JobEngine {
 public:
  JobEngine(JobEngineOptions options, DeviceDirectory directory);
  JobEngine(JobEngine&&) noexcept;
  JobEngine& operator=(JobEngine&&) noexcept;
  ~JobEngine();

  // Loads every job and the executions of unfinished ones. Errors: the store's, corruption.
  Status load(const Store& store, std::int64_t now_ms);

  // Validates and creates a job (state SCHEDULED or IN_PROGRESS). `actor` is written to the
  // record and the audit log. Errors: invalid_argument (what is wrong), already_exists.
  Result<v1::JobRecord> create(const v1::JobSpec& spec, const std::string& actor, std::int64_t now_ms, Batch& batch);
  // Cancels a job: queued executions become CANCELED; in-progress ones run to their end.
  Result<v1::JobRecord> cancel(std::string_view job_id, const std::string& actor, const std::string& reason,
                               std::int64_t now_ms, Batch& batch);

  // Approves a job that awaits approval; `actor` must not be the operator who requested it.
  // Errors: not_found, invalid_argument (not awaiting approval, already ended),
  // permission_denied (the requester approving their own job).
  Result<v1::JobRecord> approve(std::string_view job_id, const std::string& actor, const std::string& note,
                                std::int64_t now_ms, Batch& batch);

  // A result or progress report from a device.
  void on_result(const std::string& device_id, const v1::CommandResult& result, std::int64_t now_ms, Batch& batch);
  // The device published a birth: it is online in a new session. Re-sends what it has in
  // flight and lets its queued executions be dispatched.
  void on_birth(const std::string& device_id, std::int64_t now_ms);
  // The device went offline: its queued executions wait for its next birth.
  void on_offline(const std::string& device_id);
  // Devices whose state changed: continuous jobs add the ones that now match their target and
  // remove queued ones that no longer do.
  void on_devices_changed(const std::vector<std::string>& ids, std::int64_t now_ms, Batch& batch);
  // The device was deleted: its queued and in-progress executions become REMOVED ("device
  // deleted"); an answer it may still send is ignored.
  void on_device_deleted(const std::string& device_id, std::int64_t now_ms, Batch& batch);
  // The manager (re)connected to the broker: every unanswered notification is re-sent now.
  void on_reconnect();

  // Advances every job to `now_ms`: start, dispatch, re-drive, time out, retry, end, complete.
  void tick(std::int64_t now_ms, Batch& batch);
  // Commands to publish once the batch that produced them is durable.
  std::vector<Message> take_outgoing();
  // The earliest instant after `now_ms` tick() has something to do (Unix ms); INT64_MAX when
  // idle.
  std::int64_t next_deadline(std::int64_t now_ms) const;

  const v1::JobRecord* find(std::string_view job_id) const;
  // Newest first.
  std::vector<const v1::JobRecord*> list(bool active_only, std::size_t limit) const;
  // Executions of a job in device order after `start_after`, optionally of one state.
  Result<std::vector<v1::Execution>> executions(const Store& store, std::string_view job_id, v1::ExecutionState state,
                                                std::string_view start_after, std::size_t limit) const;
  std::size_t active_count() const;

  // Appends an audit entry to the batch.
  void audit(Batch& batch, std::int64_t now_ms, const std::string& actor, const std::string& key_id,
             const std::string& action, const std::string& subject, const std::string& detail);

  static std::string job_key(std::string_view job_id);
  static std::string execution_key(std::string_view job_id, std::string_view device_id);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Audit entries, newest first. Errors: the store's, corruption.
Result<std::vector<v1::AuditEntry>> read_audit(const Store& store, std::size_t limit);

std::string_view execution_state_name(v1::ExecutionState state);
std::string_view job_state_name(v1::JobState state);
bool is_final(v1::ExecutionState state);

}  // namespace flotilla::manager
