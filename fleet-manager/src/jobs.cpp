#include "flotilla/manager/jobs.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <regex>

#include "flotilla/core/codec.hpp"
#include "flotilla/core/ids.hpp"
#include "flotilla/core/log.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/manager/rollout.hpp"
#include "flotilla/manager/schedule.hpp"

namespace flotilla::manager {
namespace {

constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();
constexpr std::size_t kMaxStatusBytes = 1024;
constexpr std::size_t kMaxOutputBytes = 192 * 1024;  // the agent bounds each stream at 64 KiB
constexpr int kMaxRedriveDoublings = 3;

bool valid_job_id(std::string_view id) {
  static const std::regex pattern("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$");
  return std::regex_match(id.begin(), id.end(), pattern);
}

void adjust(v1::ExecutionCounts& c, v1::ExecutionState state, int delta) {
  auto apply = [delta](std::uint64_t value) {
    return delta < 0 && value == 0 ? 0 : static_cast<std::uint64_t>(static_cast<std::int64_t>(value) + delta);
  };
  switch (state) {
    case v1::EXECUTION_QUEUED: c.set_queued(apply(c.queued())); break;
    case v1::EXECUTION_IN_PROGRESS: c.set_in_progress(apply(c.in_progress())); break;
    case v1::EXECUTION_SUCCEEDED: c.set_succeeded(apply(c.succeeded())); break;
    case v1::EXECUTION_FAILED: c.set_failed(apply(c.failed())); break;
    case v1::EXECUTION_TIMED_OUT: c.set_timed_out(apply(c.timed_out())); break;
    case v1::EXECUTION_REJECTED: c.set_rejected(apply(c.rejected())); break;
    case v1::EXECUTION_REMOVED: c.set_removed(apply(c.removed())); break;
    case v1::EXECUTION_CANCELED: c.set_canceled(apply(c.canceled())); break;
    default: break;
  }
}

bool job_finished(v1::JobState s) { return s == v1::JOB_COMPLETED || s == v1::JOB_CANCELED || s == v1::JOB_ABORTED; }

std::string bounded(std::string_view text, std::size_t max) {
  if (text.size() <= max) return std::string(text);
  return fmt::format("{}… [{} more bytes]", text.substr(0, max), text.size() - max);
}

}  // namespace

std::string_view execution_state_name(v1::ExecutionState state) {
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

std::string_view job_state_name(v1::JobState state) {
  switch (state) {
    case v1::JOB_SCHEDULED: return "SCHEDULED";
    case v1::JOB_IN_PROGRESS: return "IN_PROGRESS";
    case v1::JOB_COMPLETED: return "COMPLETED";
    case v1::JOB_CANCELED: return "CANCELED";
    case v1::JOB_ABORTED: return "ABORTED";
    default: return "UNSPECIFIED";
  }
}

bool is_final(v1::ExecutionState state) {
  return state == v1::EXECUTION_SUCCEEDED || state == v1::EXECUTION_FAILED || state == v1::EXECUTION_TIMED_OUT ||
         state == v1::EXECUTION_REJECTED || state == v1::EXECUTION_REMOVED || state == v1::EXECUTION_CANCELED;
}

std::string JobEngine::job_key(std::string_view job_id) { return fmt::format("j/{}", job_id); }
std::string JobEngine::execution_key(std::string_view job_id, std::string_view device_id) {
  return fmt::format("x/{}/{}", job_id, device_id);
}

// One unfinished job (or a finished one whose in-flight executions still report) in memory.
struct ActiveJob {
  v1::JobRecord record;
  v1::JobDocument document;
  std::vector<MaintenanceWindow> windows;
  std::unordered_map<std::string, v1::Execution> executions;
  std::deque<std::string> ready;            // QUEUED, device online: dispatch order
  std::unordered_set<std::string> waiting;  // QUEUED, device offline
  struct Flight {
    std::int64_t deadline_ms = 0;  // in-progress timeout
    std::int64_t resend_ms = 0;    // next re-drive; kNever once the device answered
    int doublings = 0;
  };
  std::unordered_map<std::string, Flight> in_flight;
  // Every ready device waits for its jitter until then (0: something is ready now).
  std::int64_t jitter_until_ms = 0;
  bool dirty = false;
};

struct JobEngine::Impl {
  JobEngineOptions options;
  DeviceDirectory directory;
  std::map<std::string, v1::JobRecord, std::less<>> jobs;  // every job, documents stripped
  std::map<std::string, ActiveJob, std::less<>> active;
  std::vector<Message> outgoing;
  std::uint64_t command_seq = 0;
  std::uint64_t audit_seq = 0;
  bool resend_all = false;

  std::int64_t timeout_ms(const ActiveJob& job) const {
    const auto t = job.record.spec().timeout_s();
    return t == 0 ? options.default_timeout.count() : static_cast<std::int64_t>(t) * 1000;
  }

  std::int64_t end_ms(const ActiveJob& job) const {
    const auto end = job.record.spec().end_at_ms();
    return end == 0 ? job.record.expires_at_ms() : std::min(end, job.record.expires_at_ms());
  }

  void put_execution(const ActiveJob& job, const v1::Execution& e, Batch& batch) {
    batch.put(Space::jobs, execution_key(job.record.job_id(), e.device_id()), codec::encode(e));
  }

  void put_job(ActiveJob& job, std::int64_t now_ms, Batch& batch) {
    job.record.set_updated_at_ms(now_ms);
    batch.put(Space::jobs, job_key(job.record.job_id()), codec::encode(job.record));
    auto& summary = jobs[job.record.job_id()];
    summary = job.record;
    summary.mutable_spec()->clear_signed_();
    summary.mutable_spec()->clear_device_signatures();
    job.dirty = false;
  }

  // Moves an execution to `state`, keeping the job's counts and queues in step.
  void transition(ActiveJob& job, v1::Execution& e, v1::ExecutionState state, std::int64_t now_ms) {
    if (e.state() == state) return;
    adjust(*job.record.mutable_counts(), e.state(), -1);
    adjust(*job.record.mutable_counts(), state, +1);
    if (e.state() == v1::EXECUTION_IN_PROGRESS) job.in_flight.erase(e.device_id());
    if (e.state() == v1::EXECUTION_QUEUED) job.waiting.erase(e.device_id());  // ready is pruned lazily
    e.set_state(state);
    e.set_updated_at_ms(now_ms);
    if (is_final(state)) e.set_finished_at_ms(now_ms);
    if (state == v1::EXECUTION_QUEUED) enqueue(job, e);
    job.dirty = true;
  }

  void enqueue(ActiveJob& job, const v1::Execution& e) {
    if (directory.online(e.device_id())) {
      job.ready.push_back(e.device_id());
      job.jitter_until_ms = 0;
    } else {
      job.waiting.insert(e.device_id());
    }
  }

  bool approval_required(const v1::JobSpec& spec, std::string_view type) const {
    if (spec.require_approval()) return true;
    return std::any_of(options.require_approval.begin(), options.require_approval.end(),
                       [&](const std::string& t) { return t == "*" || t == type; });
  }

  Message command_for(const ActiveJob& job, const v1::Execution& e, std::int64_t now_ms) {
    v1::Command cmd;
    auto id = DeviceId::parse(e.device_id());
    *cmd.mutable_header() = codec::make_header(*id, 0, ++command_seq, now_ms);
    cmd.set_command_id(fmt::format("{}/{}", job.record.job_id(), e.attempt()));
    cmd.set_type("job");
    cmd.set_expires_at_ms(job.record.expires_at_ms());
    cmd.set_attempt(e.attempt());
    auto* signed_job = cmd.mutable_job();
    *signed_job = job.record.spec().signed_();
    if (!e.signature().empty()) {
      signed_job->set_target(e.device_id());
      signed_job->set_signature(e.signature());
    }
    if (directory.complete_command) directory.complete_command(job.document, e.device_id(), cmd);
    return Message{topics::device(*id, topics::Channel::cmd), codec::encode(cmd), 1, false, {}, {}};
  }

  void send(ActiveJob& job, v1::Execution& e, std::int64_t now_ms) {
    outgoing.push_back(command_for(job, e, now_ms));
    auto& f = job.in_flight[e.device_id()];
    if (f.resend_ms != kNever) {
      const auto interval = options.redrive_interval.count() << std::min(f.doublings, kMaxRedriveDoublings);
      f.resend_ms = now_ms + interval;
      ++f.doublings;
    }
  }

  void dispatch(ActiveJob& job, v1::Execution& e, std::int64_t now_ms, Batch& batch) {
    if (e.attempt() == 1 && e.dispatched_at_ms() == 0) job.record.set_notified(job.record.notified() + 1);
    if (directory.before_dispatch) directory.before_dispatch(job.record, job.document, e.device_id(), now_ms, batch);
    transition(job, e, v1::EXECUTION_IN_PROGRESS, now_ms);
    e.set_dispatched_at_ms(now_ms);
    e.set_status("notified");
    e.set_progress_percent(0);
    job.in_flight[e.device_id()] = ActiveJob::Flight{now_ms + timeout_ms(job), 0, 0};
    send(job, e, now_ms);
  }

  // Ends an attempt that did not succeed: a retry when allowed, otherwise final.
  void fail_attempt(ActiveJob& job, v1::Execution& e, v1::ExecutionState state, const std::string& status,
                    std::int64_t now_ms) {
    e.set_status(bounded(status, kMaxStatusBytes));
    const bool retry = retry_allowed(state, e.attempt(), job.record.spec().retries()) &&
                       job.record.state() == v1::JOB_IN_PROGRESS && now_ms < end_ms(job);
    if (retry) {
      e.set_attempt(e.attempt() + 1);
      e.set_dispatched_at_ms(0);
      e.set_status(fmt::format("retry {} of {} after {}: {}", e.attempt() - 1, job.record.spec().retries(),
                               execution_state_name(state), e.status()));
      transition(job, e, v1::EXECUTION_QUEUED, now_ms);
    } else {
      transition(job, e, state, now_ms);
    }
  }

  void cancel_queued(ActiveJob& job, v1::ExecutionState state, const std::string& why, std::int64_t now_ms,
                     Batch& batch) {
    for (auto& [id, e] : job.executions) {
      if (e.state() != v1::EXECUTION_QUEUED) continue;
      e.set_status(why);
      transition(job, e, state, now_ms);
      put_execution(job, e, batch);
    }
    job.ready.clear();
    job.waiting.clear();
  }

  void check_abort(ActiveJob& job, std::int64_t now_ms, Batch& batch) {
    if (job.record.state() != v1::JOB_IN_PROGRESS) return;
    const auto& c = job.record.counts();
    AbortCounts counts;
    counts.failed = c.failed();
    counts.timed_out = c.timed_out();
    counts.rejected = c.rejected();
    counts.finished = c.succeeded() + c.failed() + c.timed_out() + c.rejected();
    std::vector<AbortRule> rules;
    for (const auto& r : job.record.spec().abort_rules()) rules.push_back(from_proto(r));
    auto fired = evaluate_abort(rules, counts);
    if (!fired) return;
    job.record.set_state(v1::JOB_ABORTED);
    job.record.set_state_reason(*fired);
    job.record.set_finished_at_ms(now_ms);
    cancel_queued(job, v1::EXECUTION_CANCELED, fmt::format("job aborted: {}", *fired), now_ms, batch);
    log::warn("job {} aborted: {}", job.record.job_id(), *fired);
    audit_entry(batch, now_ms, "manager", "", "job.abort", job.record.job_id(), *fired);
    job.dirty = true;
  }

  void check_complete(ActiveJob& job, std::int64_t now_ms) {
    const auto& c = job.record.counts();
    if (c.queued() != 0 || c.in_progress() != 0) return;
    if (job.record.state() == v1::JOB_IN_PROGRESS) {
      if (job.record.spec().target().continuous() && now_ms < end_ms(job)) return;
      job.record.set_state(v1::JOB_COMPLETED);
      job.record.set_finished_at_ms(now_ms);
      job.dirty = true;
      log::info("job {} completed: {} succeeded, {} failed, {} timed out, {} rejected", job.record.job_id(),
                c.succeeded(), c.failed(), c.timed_out(), c.rejected());
    }
  }

  void audit_entry(Batch& batch, std::int64_t now_ms, const std::string& actor, const std::string& key_id,
                   const std::string& action, const std::string& subject, const std::string& detail) {
    v1::AuditEntry entry;
    entry.set_at_ms(now_ms);
    entry.set_actor(actor);
    entry.set_key_id(key_id);
    entry.set_action(action);
    entry.set_subject(subject);
    entry.set_detail(bounded(detail, kMaxStatusBytes));
    batch.put(Space::audit, fmt::format("{:020}/{:010}", now_ms, ++audit_seq), codec::encode(entry));
  }

  v1::Execution new_execution(const std::string& job_id, const std::string& device, std::int64_t now_ms) const {
    v1::Execution e;
    e.set_job_id(job_id);
    e.set_device_id(device);
    e.set_state(v1::EXECUTION_QUEUED);
    e.set_attempt(1);
    e.set_queued_at_ms(now_ms);
    e.set_updated_at_ms(now_ms);
    return e;
  }

  void add_execution(ActiveJob& job, v1::Execution e, Batch& batch) {
    adjust(*job.record.mutable_counts(), v1::EXECUTION_QUEUED, +1);
    enqueue(job, e);
    put_execution(job, e, batch);
    job.executions.emplace(e.device_id(), std::move(e));
    job.dirty = true;
  }

  void advance(ActiveJob& job, std::int64_t now_ms, Batch& batch);
};

JobEngine::JobEngine(JobEngineOptions options, DeviceDirectory directory) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  impl_->directory = std::move(directory);
}
JobEngine::JobEngine(JobEngine&&) noexcept = default;
JobEngine& JobEngine::operator=(JobEngine&&) noexcept = default;
JobEngine::~JobEngine() = default;

Status JobEngine::load(const Store& store, std::int64_t now_ms) {
  auto& s = *impl_;
  Status bad;
  auto scanned = store.scan(Space::jobs, "j/", [&](std::string_view key, std::string_view value) {
    v1::JobRecord record;
    if (!record.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      bad = make_error(Errc::corruption, "job record {} does not decode", key);
      return false;
    }
    const std::string id = record.job_id();
    const bool unfinished = !job_finished(record.state()) || record.counts().in_progress() > 0;
    if (unfinished) {
      ActiveJob job;
      job.record = record;
      s.active.emplace(id, std::move(job));
    }
    record.mutable_spec()->clear_signed_();
    record.mutable_spec()->clear_device_signatures();
    s.jobs.emplace(id, std::move(record));
    return true;
  });
  if (!scanned) return scanned;
  if (!bad) return bad;
  for (auto& entry : s.active) {
    const std::string& id = entry.first;
    ActiveJob& job = entry.second;
    if (!job.document.ParseFromString(job.record.spec().signed_().document())) {
      return make_error(Errc::corruption, "document of job {} does not decode", id);
    }
    for (const auto& w : job.record.spec().windows()) {
      auto window = MaintenanceWindow::parse(w);
      if (!window) return make_error(Errc::corruption, "job {}: window {:?}: {}", id, w, window.error().message);
      job.windows.push_back(std::move(window).value());
    }
    // Counts are recomputed from the executions: they are the truth.
    job.record.clear_counts();
    auto execs = store.scan(Space::jobs, execution_key(id, ""), [&](std::string_view key, std::string_view value) {
      v1::Execution e;
      if (!e.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
        bad = make_error(Errc::corruption, "execution {} does not decode", key);
        return false;
      }
      adjust(*job.record.mutable_counts(), e.state(), +1);
      if (e.state() == v1::EXECUTION_QUEUED) s.enqueue(job, e);
      if (e.state() == v1::EXECUTION_IN_PROGRESS) {
        // Asked again right away: the answer may have been lost with the previous process.
        job.in_flight[e.device_id()] = ActiveJob::Flight{e.dispatched_at_ms() + s.timeout_ms(job), now_ms, 0};
      }
      job.executions.emplace(e.device_id(), std::move(e));
      return true;
    });
    if (!execs) return execs;
    if (!bad) return bad;
  }
  // Audit keys are numbered per process; continue after the newest one.
  return {};
}

Result<v1::JobRecord> JobEngine::create(const v1::JobSpec& spec, const std::string& actor, std::int64_t now_ms,
                                        Batch& batch) {
  auto& s = *impl_;
  const auto& signed_job = spec.signed_();
  if (signed_job.document().empty()) return make_error(Errc::invalid_argument, "the job has no document");
  if (signed_job.document().size() > s.options.max_document_bytes) {
    return make_error(Errc::invalid_argument, "the job document is {} bytes; at most {}", signed_job.document().size(),
                      s.options.max_document_bytes);
  }
  v1::JobDocument doc;
  if (!doc.ParseFromString(signed_job.document())) {
    return make_error(Errc::invalid_argument, "the job document does not decode");
  }
  if (!valid_job_id(doc.job_id())) {
    return make_error(Errc::invalid_argument, "job id {:?} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}",
                      doc.job_id().substr(0, 80));
  }
  if (s.jobs.contains(doc.job_id())) return make_error(Errc::already_exists, "job {} already exists", doc.job_id());
  if (doc.type().empty() || doc.type().size() > 64) return make_error(Errc::invalid_argument, "the job has no type");
  if (doc.expires_at_ms() <= now_ms) return make_error(Errc::invalid_argument, "the job document has expired");
  if (doc.expires_at_ms() - now_ms > s.options.max_lifetime.count()) {
    return make_error(Errc::invalid_argument, "the job document expires in more than {} days",
                      s.options.max_lifetime.count() / 86'400'000);
  }
  if (doc.max_attempts() != spec.retries() + 1) {
    return make_error(Errc::invalid_argument, "the document allows {} attempts but the job asks for {} retries",
                      doc.max_attempts(), spec.retries());
  }
  if (signed_job.key_id().empty() || (signed_job.signature().empty() && spec.device_signatures().empty())) {
    return make_error(Errc::invalid_argument, "the job is not signed");
  }
  const bool scoped = signed_job.target() == "*";
  if (scoped && doc.scope_tenant().empty()) {
    return make_error(Errc::invalid_argument, "a \"*\" signature needs a document scoped to a tenant");
  }
  const auto& target = spec.target();
  const int kinds = (target.device_ids_size() > 0 ? 1 : 0) + (target.group().empty() ? 0 : 1) +
                    (target.query().empty() ? 0 : 1);
  if (kinds != 1) return make_error(Errc::invalid_argument, "name exactly one target: device ids, a group or a query");
  if (target.continuous() && target.device_ids_size() > 0) {
    return make_error(Errc::invalid_argument, "a continuous job targets a group or a query, not device ids");
  }
  if (target.continuous() && !scoped) {
    return make_error(Errc::invalid_argument,
                      "a continuous job needs a \"*\" signature over a tenant-scoped document (devices that join "
                      "later have no per-device signature)");
  }
  std::vector<AbortRule> rules;
  for (const auto& r : spec.abort_rules()) {
    auto rule = from_proto(r);
    if (auto st = validate(rule); !st) return std::move(st).error();
  }
  if (auto st = validate(spec.rollout()); !st) return std::move(st).error();
  std::vector<MaintenanceWindow> windows;
  for (const auto& w : spec.windows()) {
    auto window = MaintenanceWindow::parse(w);
    if (!window) return make_error(Errc::invalid_argument, "window {:?}: {}", w, window.error().message);
    windows.push_back(std::move(window).value());
  }
  if (spec.end_at_ms() != 0 && spec.end_at_ms() <= std::max(now_ms, spec.start_at_ms())) {
    return make_error(Errc::invalid_argument, "the job ends before it starts");
  }

  auto devices = s.directory.resolve(target);
  if (!devices) return std::move(devices).error();
  if (devices->size() > s.options.max_targets) {
    return make_error(Errc::invalid_argument, "the target has {} devices; a job reaches at most {}", devices->size(),
                      s.options.max_targets);
  }
  std::vector<std::string> unsigned_devices;
  if (!scoped) {
    for (const auto& d : *devices) {
      if (!spec.device_signatures().contains(d)) unsigned_devices.push_back(d);
    }
  }

  ActiveJob job;
  job.document = doc;
  job.windows = std::move(windows);
  auto& r = job.record;
  r.set_job_id(doc.job_id());
  *r.mutable_spec() = spec;
  const bool approval = s.approval_required(spec, doc.type());
  r.set_state(spec.start_at_ms() > now_ms || approval ? v1::JOB_SCHEDULED : v1::JOB_IN_PROGRESS);
  r.set_awaiting_approval(approval);
  r.set_created_by(signed_job.key_id());
  r.set_requested_by(actor);
  r.set_created_at_ms(now_ms);
  r.set_type(doc.type());
  r.set_expires_at_ms(doc.expires_at_ms());
  *r.mutable_pacer() = initial_pacer(spec.rollout(), now_ms);
  r.mutable_spec()->clear_device_signatures();  // each one lives in its execution
  std::sort(unsigned_devices.begin(), unsigned_devices.end());
  for (const auto& d : *devices) {
    if (!scoped && std::binary_search(unsigned_devices.begin(), unsigned_devices.end(), d)) continue;
    auto e = s.new_execution(r.job_id(), d, now_ms);
    if (!scoped) e.set_signature(spec.device_signatures().at(d));
    s.add_execution(job, std::move(e), batch);
  }
  if (!unsigned_devices.empty()) {
    r.set_state_reason(fmt::format("{} targeted devices had no signature and were left out (first: {})",
                                   unsigned_devices.size(), unsigned_devices.front()));
  } else if (approval) {
    r.set_state_reason("awaiting approval");
  }
  const std::string id = r.job_id();
  s.audit_entry(batch, now_ms, actor, signed_job.key_id(), "job.create", id,
                fmt::format("type {} on {} devices{}{}", doc.type(), job.executions.size(),
                            target.continuous() ? " (continuous)" : "", approval ? ", awaiting approval" : ""));
  auto [it, inserted] = s.active.emplace(id, std::move(job));
  s.advance(it->second, now_ms, batch);
  if (it->second.dirty) s.put_job(it->second, now_ms, batch);
  (void)inserted;
  return s.jobs.at(id);
}

Result<v1::JobRecord> JobEngine::cancel(std::string_view job_id, const std::string& actor, const std::string& reason,
                                        std::int64_t now_ms, Batch& batch) {
  auto& s = *impl_;
  auto it = s.active.find(job_id);
  if (it == s.active.end()) {
    auto done = s.jobs.find(job_id);
    if (done == s.jobs.end()) return make_error(Errc::not_found, "no job {}", job_id);
    return make_error(Errc::invalid_argument, "job {} already ended ({})", job_id,
                      job_state_name(done->second.state()));
  }
  auto& job = it->second;
  if (job_finished(job.record.state())) {
    return make_error(Errc::invalid_argument, "job {} already ended ({})", job_id, job_state_name(job.record.state()));
  }
  const std::string why = reason.empty() ? fmt::format("canceled by {}", actor) : bounded(reason, kMaxStatusBytes);
  job.record.set_state(v1::JOB_CANCELED);
  job.record.set_state_reason(why);
  job.record.set_finished_at_ms(now_ms);
  s.cancel_queued(job, v1::EXECUTION_CANCELED, why, now_ms, batch);
  s.audit_entry(batch, now_ms, actor, "", "job.cancel", std::string(job_id), why);
  s.put_job(job, now_ms, batch);
  auto record = job.record;
  if (job.in_flight.empty()) s.active.erase(it);
  return s.jobs.at(std::string(job_id));
}

Result<v1::JobRecord> JobEngine::approve(std::string_view job_id, const std::string& actor, const std::string& note,
                                         std::int64_t now_ms, Batch& batch) {
  auto& s = *impl_;
  auto it = s.active.find(job_id);
  if (it == s.active.end() || job_finished(it->second.record.state())) {
    auto done = s.jobs.find(job_id);
    if (done == s.jobs.end()) return make_error(Errc::not_found, "no job {}", job_id);
    return make_error(Errc::invalid_argument, "job {} already ended ({})", job_id,
                      job_state_name(done->second.state()));
  }
  auto& job = it->second;
  auto& r = job.record;
  if (!r.awaiting_approval()) return make_error(Errc::invalid_argument, "job {} does not await approval", job_id);
  if (actor.empty() || actor == "unknown") {
    return make_error(Errc::permission_denied, "an approval needs the approving operator's name (FLOTILLA_ACTOR)");
  }
  if (actor == r.requested_by()) {
    return make_error(Errc::permission_denied, "job {} was requested by {}; another operator must approve it", job_id,
                      actor);
  }
  r.set_awaiting_approval(false);
  r.set_approved_by(actor);
  r.set_approved_at_ms(now_ms);
  if (r.state_reason() == "awaiting approval") r.clear_state_reason();
  // The pacer starts with the approval: time spent waiting earns no rollout budget.
  *r.mutable_pacer() = initial_pacer(r.spec().rollout(), now_ms);
  job.dirty = true;
  // A continuous job reaches the devices that match its target now.
  if (r.spec().target().continuous()) {
    if (auto devices = s.directory.resolve(r.spec().target()); devices) {
      for (const auto& d : *devices) {
        if (!job.executions.contains(d) && s.directory.matches(r, job.document, d)) {
          s.add_execution(job, s.new_execution(r.job_id(), d, now_ms), batch);
        }
      }
    }
  }
  s.audit_entry(batch, now_ms, actor, "", "job.approve", std::string(job_id), bounded(note, kMaxStatusBytes));
  s.advance(job, now_ms, batch);
  if (job.dirty) s.put_job(job, now_ms, batch);
  return s.jobs.at(std::string(job_id));
}

void JobEngine::on_result(const std::string& device_id, const v1::CommandResult& result, std::int64_t now_ms,
                          Batch& batch) {
  auto& s = *impl_;
  if (result.job_id().empty()) return;
  auto it = s.active.find(result.job_id());
  if (it == s.active.end()) return;  // a job that ended: a late duplicate
  auto& job = it->second;
  auto e_it = job.executions.find(device_id);
  if (e_it == job.executions.end()) return;
  auto& e = e_it->second;
  if (e.state() != v1::EXECUTION_IN_PROGRESS || result.attempt() != e.attempt()) return;  // stale or duplicate
  e.set_updated_at_ms(now_ms);
  e.set_status(bounded(result.message(), kMaxStatusBytes));
  e.clear_output();
  std::size_t bytes = 0;
  for (const auto& [k, v] : result.output()) {
    if (bytes + k.size() + v.size() > kMaxOutputBytes) break;
    bytes += k.size() + v.size();
    (*e.mutable_output())[k] = v;
  }
  switch (result.status()) {
    case v1::CommandResult::STATUS_IN_PROGRESS: {
      e.set_progress_percent(std::min<std::uint32_t>(result.progress_percent(), 100));
      if (auto f = job.in_flight.find(device_id); f != job.in_flight.end()) f->second.resend_ms = kNever;
      break;
    }
    case v1::CommandResult::STATUS_SUCCEEDED:
      e.set_progress_percent(100);
      s.transition(job, e, v1::EXECUTION_SUCCEEDED, now_ms);
      break;
    case v1::CommandResult::STATUS_REJECTED: s.transition(job, e, v1::EXECUTION_REJECTED, now_ms); break;
    case v1::CommandResult::STATUS_FAILED:
      s.fail_attempt(job, e, v1::EXECUTION_FAILED, result.message(), now_ms);
      break;
    default: return;
  }
  s.put_execution(job, e, batch);
  s.check_abort(job, now_ms, batch);
  s.check_complete(job, now_ms);
  if (job.dirty) s.put_job(job, now_ms, batch);
  if (job_finished(job.record.state()) && job.in_flight.empty()) s.active.erase(it);
}

void JobEngine::on_birth(const std::string& device_id, std::int64_t now_ms) {
  auto& s = *impl_;
  for (auto& [id, job] : s.active) {
    if (auto w = job.waiting.find(device_id); w != job.waiting.end()) {
      job.waiting.erase(w);
      job.ready.push_back(device_id);
      job.jitter_until_ms = 0;
    }
    if (auto f = job.in_flight.find(device_id); f != job.in_flight.end()) {
      // A new session: whatever the broker held for the old one may be gone. Ask again; the
      // agent answers a duplicate with its stored outcome.
      auto& e = job.executions.at(device_id);
      s.outgoing.push_back(s.command_for(job, e, now_ms));
    }
  }
}

void JobEngine::on_offline(const std::string& device_id) {
  for (auto& [id, job] : impl_->active) {
    auto e = job.executions.find(device_id);
    if (e != job.executions.end() && e->second.state() == v1::EXECUTION_QUEUED) job.waiting.insert(device_id);
  }
}

void JobEngine::on_devices_changed(const std::vector<std::string>& ids, std::int64_t now_ms, Batch& batch) {
  auto& s = *impl_;
  for (auto& [job_id, job] : s.active) {
    if (!job.record.spec().target().continuous() || job.record.state() != v1::JOB_IN_PROGRESS) continue;
    if (now_ms >= s.end_ms(job)) continue;
    for (const auto& id : ids) {
      const bool match = s.directory.matches(job.record, job.document, id);
      auto e = job.executions.find(id);
      if (e == job.executions.end()) {
        if (match) s.add_execution(job, s.new_execution(job_id, id, now_ms), batch);
      } else if (!match && e->second.state() == v1::EXECUTION_QUEUED) {
        e->second.set_status("left the target before it was notified");
        s.transition(job, e->second, v1::EXECUTION_REMOVED, now_ms);
        s.put_execution(job, e->second, batch);
      }
    }
    if (job.dirty) s.put_job(job, now_ms, batch);
  }
}

void JobEngine::on_device_deleted(const std::string& device_id, std::int64_t now_ms, Batch& batch) {
  auto& s = *impl_;
  for (auto it = s.active.begin(); it != s.active.end();) {
    auto& job = it->second;
    auto e = job.executions.find(device_id);
    if (e != job.executions.end() && !is_final(e->second.state())) {
      e->second.set_status("device deleted");
      s.transition(job, e->second, v1::EXECUTION_REMOVED, now_ms);
      s.put_execution(job, e->second, batch);
      s.check_complete(job, now_ms);
      s.put_job(job, now_ms, batch);
    }
    if (job_finished(job.record.state()) && job.in_flight.empty()) {
      it = s.active.erase(it);
    } else {
      ++it;
    }
  }
}

void JobEngine::on_reconnect() { impl_->resend_all = true; }

void JobEngine::Impl::advance(ActiveJob& job, std::int64_t now_ms, Batch& batch) {
  auto& r = job.record;
  if (r.state() == v1::JOB_SCHEDULED && r.awaiting_approval()) {
    if (now_ms >= end_ms(job)) {
      const std::string why = fmt::format(
          "not approved before {}", now_ms >= r.expires_at_ms() ? "the job document expired" : "the job's end time");
      r.set_state(v1::JOB_CANCELED);
      r.set_state_reason(why);
      r.set_finished_at_ms(now_ms);
      cancel_queued(job, v1::EXECUTION_CANCELED, why, now_ms, batch);
      audit_entry(batch, now_ms, "manager", "", "job.cancel", r.job_id(), why);
      job.dirty = true;
    }
    if (job.dirty) put_job(job, now_ms, batch);
    return;
  }
  if (r.state() == v1::JOB_SCHEDULED && now_ms >= r.spec().start_at_ms()) {
    r.set_state(v1::JOB_IN_PROGRESS);
    job.dirty = true;
  }
  // Executions that never reported back.
  std::vector<std::string> expired;
  for (auto& [device, f] : job.in_flight) {
    if (now_ms >= f.deadline_ms) {
      expired.push_back(device);
    } else if (f.resend_ms != kNever && (now_ms >= f.resend_ms || resend_all) && directory.online(device)) {
      auto& e = job.executions.at(device);
      send(job, e, now_ms);
    }
  }
  for (const auto& device : expired) {
    auto& e = job.executions.at(device);
    fail_attempt(job, e, v1::EXECUTION_TIMED_OUT,
                 fmt::format("no outcome {} s after the notification", timeout_ms(job) / 1000), now_ms);
    put_execution(job, e, batch);
  }
  if (!expired.empty()) check_abort(job, now_ms, batch);
  if (r.state() == v1::JOB_IN_PROGRESS && now_ms >= end_ms(job)) {
    cancel_queued(job, v1::EXECUTION_CANCELED,
                  now_ms >= r.expires_at_ms() ? "the job document expired" : "the job's end time passed", now_ms,
                  batch);
    if (r.spec().target().continuous()) job.dirty = true;
  }
  const bool open = in_any_window(job.windows, now_ms);
  if (r.state() == v1::JOB_IN_PROGRESS && !open) {
    // Closed: time outside the window earns no rollout budget.
    pacer_pause(r.spec().rollout(), *r.mutable_pacer(), now_ms);
  }
  if (r.state() == v1::JOB_IN_PROGRESS && !job.ready.empty() && open) {
    const auto allowed = std::min<std::uint64_t>(
        pacer_allowance(r.spec().rollout(), *r.mutable_pacer(), now_ms, r.notified(), r.counts().succeeded()),
        options.max_dispatch_per_tick);
    std::uint64_t sent = 0;
    std::deque<std::string> later;
    std::int64_t first_due = kNever;
    while (!job.ready.empty() && sent < allowed) {
      std::string device = std::move(job.ready.front());
      job.ready.pop_front();
      auto it = job.executions.find(device);
      if (it == job.executions.end() || it->second.state() != v1::EXECUTION_QUEUED) continue;  // stale entry
      if (!directory.online(device)) {
        job.waiting.insert(device);
        continue;
      }
      const auto jitter = device_jitter_ms(r.job_id(), device, r.spec().rollout().jitter_ms());
      if (now_ms < it->second.queued_at_ms() + jitter) {
        first_due = std::min(first_due, it->second.queued_at_ms() + jitter);
        later.push_back(std::move(device));
        continue;
      }
      dispatch(job, it->second, now_ms, batch);
      put_execution(job, it->second, batch);
      ++sent;
    }
    // Only devices still in their jitter are left: nothing to do before the first is due.
    job.jitter_until_ms = sent < allowed && !later.empty() ? first_due : 0;
    for (auto& d : later) job.ready.push_front(std::move(d));
    if (sent > 0) {
      pacer_consume(*r.mutable_pacer(), sent);
      job.dirty = true;
    }
  }
  check_complete(job, now_ms);
  if (job.dirty) put_job(job, now_ms, batch);
}

void JobEngine::tick(std::int64_t now_ms, Batch& batch) {
  auto& s = *impl_;
  for (auto it = s.active.begin(); it != s.active.end();) {
    s.advance(it->second, now_ms, batch);
    if (job_finished(it->second.record.state()) && it->second.in_flight.empty()) {
      it = s.active.erase(it);
    } else {
      ++it;
    }
  }
  s.resend_all = false;
}

std::vector<Message> JobEngine::take_outgoing() { return std::exchange(impl_->outgoing, {}); }

std::int64_t JobEngine::next_deadline(std::int64_t now_ms) const {
  std::int64_t next = kNever;
  for (const auto& [id, job] : impl_->active) {
    const auto& r = job.record;
    if (r.state() == v1::JOB_SCHEDULED) {
      next = std::min(next, r.awaiting_approval() ? impl_->end_ms(job) : r.spec().start_at_ms());
    }
    if (r.state() == v1::JOB_IN_PROGRESS && !job.ready.empty()) {
      const auto at = std::max(
          {next_open(job.windows, now_ms), job.jitter_until_ms,
           pacer_next_ms(r.spec().rollout(), r.pacer(), now_ms, r.notified(), r.counts().succeeded())});
      next = std::min(next, at);
    }
    for (const auto& [device, f] : job.in_flight) next = std::min({next, f.deadline_ms, f.resend_ms});
  }
  return next;
}

const v1::JobRecord* JobEngine::find(std::string_view job_id) const {
  auto it = impl_->jobs.find(job_id);
  return it == impl_->jobs.end() ? nullptr : &it->second;
}

std::vector<const v1::JobRecord*> JobEngine::list(bool active_only, std::size_t limit) const {
  std::vector<const v1::JobRecord*> out;
  for (const auto& [id, r] : impl_->jobs) {
    if (!active_only || !job_finished(r.state())) out.push_back(&r);
  }
  std::sort(out.begin(), out.end(), [](const auto* a, const auto* b) {
    return std::make_pair(b->created_at_ms(), b->job_id()) < std::make_pair(a->created_at_ms(), a->job_id());
  });
  if (out.size() > limit) out.resize(limit);
  return out;
}

Result<std::vector<v1::Execution>> JobEngine::executions(const Store& store, std::string_view job_id,
                                                         v1::ExecutionState state, std::string_view start_after,
                                                         std::size_t limit) const {
  if (find(job_id) == nullptr) return make_error(Errc::not_found, "no job {}", job_id);
  std::vector<v1::Execution> out;
  Status bad;
  const auto prefix = execution_key(job_id, "");
  auto scanned = store.scan(Space::jobs, prefix, [&](std::string_view key, std::string_view value) {
    if (!start_after.empty() && key.substr(prefix.size()) <= start_after) return true;
    v1::Execution e;
    if (!e.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      bad = make_error(Errc::corruption, "execution {} does not decode", key);
      return false;
    }
    if (state != v1::EXECUTION_STATE_UNSPECIFIED && e.state() != state) return true;
    e.clear_signature();
    out.push_back(std::move(e));
    return out.size() < limit;
  });
  if (!scanned) return std::move(scanned).error();
  if (!bad) return std::move(bad).error();
  return out;
}

std::size_t JobEngine::active_count() const { return impl_->active.size(); }

void JobEngine::audit(Batch& batch, std::int64_t now_ms, const std::string& actor, const std::string& key_id,
                      const std::string& action, const std::string& subject, const std::string& detail) {
  impl_->audit_entry(batch, now_ms, actor, key_id, action, subject, detail);
}

Result<std::vector<v1::AuditEntry>> read_audit(const Store& store, std::size_t limit) {
  std::vector<v1::AuditEntry> newest;
  if (limit == 0) return newest;
  Status bad;
  // Keys are "{unix_ms:020}/{seq:010}": reverse key order is newest first, and only `limit`
  // entries are read whatever the size of the log.
  auto scanned = store.scan_reverse(Space::audit, "", [&](std::string_view key, std::string_view value) {
    v1::AuditEntry e;
    if (!e.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      bad = make_error(Errc::corruption, "audit entry {} does not decode", key);
      return false;
    }
    newest.push_back(std::move(e));
    return newest.size() < limit;
  });
  if (!scanned) return std::move(scanned).error();
  if (!bad) return std::move(bad).error();
  return newest;
}

}  // namespace flotilla::manager
