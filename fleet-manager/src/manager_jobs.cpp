// The manager's side of jobs and scripts: the device directory the job engine sees, and the RPC
// methods of docs/jobs.md.
#include <fmt/format.h>

#include <regex>

#include "flotilla/core/clock.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/log.hpp"
#include "flotilla/core/signing.hpp"
#include "flotilla/manager/facts.hpp"
#include "flotilla/manager/manager.hpp"

namespace flotilla::manager {
namespace {

constexpr std::size_t kMaxScriptBytes = 128 * 1024;
constexpr std::uint32_t kQueryPage = 5000;
constexpr std::size_t kMaxExecutionPageBytes = 512 * 1024;
// Job commands handed to the MQTT client and not yet acknowledged by the broker, at most: half
// the broker's receive maximum (max_inflight_messages 1000), so an RPC answer published now waits
// behind a few hundred commands, never behind a whole dispatch.
constexpr std::size_t kCommandWindow = 500;

v1::RpcResponse failure(v1::RpcResponse::Code code, std::string message) {
  v1::RpcResponse r;
  r.set_schema_version(codec::schema_version);
  r.set_code(code);
  r.set_error(std::move(message));
  return r;
}

v1::RpcResponse failure(const Error& e) {
  switch (e.code) {
    case Errc::not_found: return failure(v1::RpcResponse::CODE_NOT_FOUND, e.message);
    case Errc::invalid_argument:
    case Errc::already_exists:
    case Errc::permission_denied:
    case Errc::too_large: return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, e.message);
    default: return failure(v1::RpcResponse::CODE_INTERNAL, e.message);
  }
}

bool valid_script_name(std::string_view name) {
  static const std::regex pattern("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$");
  return std::regex_match(name.begin(), name.end(), pattern);
}

std::string actor_of(const v1::RpcRequest& request) {
  std::string actor = request.actor().substr(0, 64);
  return actor.empty() ? std::string("unknown") : actor;
}

// config.set documents set desired-configuration keys: at least one, each valid as a policy value.
Status check_config_set(const v1::JobSpec& spec) {
  v1::JobDocument doc;
  if (!doc.ParseFromString(spec.signed_().document()) || doc.type() != "config.set") return {};
  if (doc.params().empty()) {
    return make_error(Errc::invalid_argument, "config.set needs at least one KEY=VALUE parameter (docs/policies.md)");
  }
  for (const auto& [k, v] : doc.params()) {
    if (auto st = Policies::check(k, v); !st)
      return make_error(Errc::invalid_argument, "config.set: {}", st.error().message);
  }
  return {};
}

}  // namespace

JobEngineOptions Manager::job_options(const ManagerConfig& config) {
  JobEngineOptions o;
  o.default_timeout = config.job_timeout;
  o.redrive_interval = config.job_redrive_interval;
  o.require_approval = config.job_require_approval;
  return o;
}

DeviceDirectory Manager::job_directory() {
  DeviceDirectory d;
  d.known = [this](const std::string& id) { return registry_.find(id) != nullptr; };
  d.online = [this](const std::string& id) {
    const auto* r = registry_.find(id);
    return r != nullptr && r->online();
  };
  d.resolve = [this](const v1::JobTarget& target) -> Result<std::vector<std::string>> {
    std::vector<std::string> ids;
    if (target.device_ids_size() > 0) {
      std::vector<std::string> unknown;
      for (const auto& raw : target.device_ids()) {
        auto id = DeviceId::parse(raw);
        if (!id)
          return make_error(Errc::invalid_argument, "target device {:?}: {}", raw.substr(0, 80), id.error().message);
        if (registry_.find(id->str()) == nullptr) unknown.push_back(id->str());
        ids.push_back(id->str());
      }
      if (!unknown.empty()) {
        return make_error(
            Errc::not_found, "{} target devices are not known: {}{}", unknown.size(),
            fmt::join(unknown.begin(), unknown.begin() + std::min<std::ptrdiff_t>(5, unknown.size()), ", "),
            unknown.size() > 5 ? ", ..." : "");
      }
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      return ids;
    }
    std::string text = target.query();
    if (!target.group().empty()) {
      if (groups_.find(target.group()) == nullptr) return make_error(Errc::not_found, "no group {}", target.group());
      text = fmt::format("group:\"{}\"", target.group());
    }
    auto where = query::parse(text);
    if (!where) return make_error(Errc::invalid_argument, "target query: {}", where.error().message);
    QueryOptions options;
    options.limit = kQueryPage;
    options.fields = {"id"};
    const auto now = unix_now_ms();
    while (true) {
      auto page = index_.query(*where, options, now);
      if (!page) return std::move(page).error();
      for (auto& row : page->rows) ids.push_back(std::move(row.id));
      if (page->next_cursor.empty()) break;
      options.cursor = page->next_cursor;
    }
    return ids;
  };
  d.matches = [this](const v1::JobRecord& job, const v1::JobDocument& document, const std::string& id) {
    const auto* r = registry_.find(id);
    if (r == nullptr) return false;
    if (!document.scope_tenant().empty() && r->tenant() != document.scope_tenant()) return false;
    if (!document.scope_site().empty() && r->site() != document.scope_site()) return false;
    const auto& target = job.spec().target();
    if (!target.group().empty()) {
      for (const auto& g : groups_.groups_of(id)) {
        if (g == target.group()) return true;
      }
      // groups_of lists direct groups; a member of a subgroup is a member of the group too.
      auto facts = index_.facts(id);
      if (!facts) return false;
      std::vector<std::string> values;
      FactsView(*facts).values("group", values);
      return std::find(values.begin(), values.end(), target.group()) != values.end();
    }
    auto it = job_queries_.find(job.job_id());
    if (it == job_queries_.end()) {
      auto parsed = query::parse(target.query());
      if (!parsed) return false;
      it = job_queries_.emplace(job.job_id(), std::move(parsed).value()).first;
    }
    auto facts = index_.facts(id);
    return facts && query::matches(it->second, FactsView(*facts), unix_now_ms());
  };
  // config.set: the job's values become the device's device-level policy as its execution is
  // dispatched (so the change rolls out at the job's pace), and each command carries the
  // resulting effective configuration for the agent to apply.
  d.before_dispatch = [this](const v1::JobRecord& job, const v1::JobDocument& document, const std::string& id,
                             std::int64_t now_ms, Batch& batch) {
    if (document.type() != "config.set") return;
    v1::Policy change;
    change.set_level("device");
    change.set_name(id);
    for (const auto& [k, v] : document.params()) (*change.mutable_values())[k].set_value(v);
    auto policy = policies_.set(change, {}, false, fmt::format("job {}", job.job_id()), now_ms, batch);
    if (!policy) {
      // Checked when the job was created; the device's command carries its configuration as it is
      // and the agent rejects it for the missing values.
      log::warn("job {}: device policy of {} not set: {}", job.job_id(), id, policy.error().message);
      return;
    }
    refresh_configs({id}, now_ms);
  };
  d.complete_command = [this](const v1::JobDocument& document, const std::string& id, v1::Command& command) {
    if (document.type() != "config.set") return;
    *command.mutable_config() = policies_.effective(policy_scope(id), unix_now_ms());
  };
  return d;
}

void Manager::publish_job_commands() {
  for (auto& m : jobs_.take_outgoing()) command_backlog_.push_back(std::move(m));
  while (!command_backlog_.empty() && commands_in_flight_.size() < kCommandWindow) {
    const Message& m = command_backlog_.front();
    if (auto id = transport_->publish(m); id) {
      commands_in_flight_.insert(*id);
    } else {
      // Re-sent by the engine's re-drive (or the device's next birth).
      count_drop("job_command_not_sent", m.topic, id.error().message);
    }
    command_backlog_.pop_front();
  }
}

void Manager::on_delivered(OperationId id) {
  if (commands_in_flight_.erase(id) > 0 && !command_backlog_.empty()) publish_job_commands();
}

Result<v1::Script> Manager::add_script(const v1::Script& in, const std::string& actor, std::int64_t now_ms,
                                       Batch& batch) {
  if (!valid_script_name(in.name())) {
    return make_error(Errc::invalid_argument, "script name {:?} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}",
                      in.name().substr(0, 80));
  }
  if (in.interpreter() != "sh" && in.interpreter() != "bash" && in.interpreter() != "python3") {
    return make_error(Errc::invalid_argument, "interpreter {:?}: use sh, bash or python3", in.interpreter());
  }
  if (in.body().empty() || in.body().size() > kMaxScriptBytes) {
    return make_error(Errc::invalid_argument, "the script body must have 1 to {} bytes", kMaxScriptBytes);
  }
  if (in.key_id().empty() || in.signature().empty())
    return make_error(Errc::invalid_argument, "the script is not signed");
  v1::Script script = in;
  script.set_sha256(signing::sha256_hex(in.body()));
  script.set_added_by(in.key_id());
  script.set_added_at_ms(now_ms);
  std::uint32_t version = 1;
  if (auto old = store_->get(Space::scripts, in.name()); old) {
    v1::Script previous;
    if (previous.ParseFromString(*old)) version = previous.version() + 1;
  } else if (old.error().code != Errc::not_found) {
    return std::move(old).error();
  }
  script.set_version(version);
  batch.put(Space::scripts, script.name(), codec::encode(script));
  jobs_.audit(batch, now_ms, actor, in.key_id(), "script.add", script.name(),
              fmt::format("version {}, {} {} bytes, sha256 {}", version, script.interpreter(), script.body().size(),
                          script.sha256()));
  return script;
}

std::optional<v1::RpcResponse> Manager::dispatch_jobs(const v1::RpcRequest& request) {
  v1::RpcResponse r;
  r.set_schema_version(codec::schema_version);
  const auto now = unix_now_ms();
  switch (request.method_case()) {
    case v1::RpcRequest::kCreateJob: {
      if (auto st = check_config_set(request.create_job().spec()); !st) return failure(st.error());
      Batch batch;
      auto job = jobs_.create(request.create_job().spec(), actor_of(request), now, batch);
      if (!job) return failure(job.error());
      commit(batch, registry_.flush(batch), {});
      log::info("job {} created by {} ({}): {} devices", job->job_id(), actor_of(request), job->type(),
                job->counts().queued() + job->counts().in_progress());
      *r.mutable_job() = std::move(job).value();
      return r;
    }
    case v1::RpcRequest::kCancelJob: {
      Batch batch;
      auto job = jobs_.cancel(request.cancel_job().job_id(), actor_of(request), request.cancel_job().reason(), now,
                              batch);
      if (!job) return failure(job.error());
      commit(batch, {}, {});
      *r.mutable_job() = std::move(job).value();
      return r;
    }
    case v1::RpcRequest::kApproveJob: {
      Batch batch;
      auto job = jobs_.approve(request.approve_job().job_id(), actor_of(request), request.approve_job().reason(), now,
                               batch);
      if (!job) return failure(job.error());
      commit(batch, registry_.flush(batch), {});
      log::info("job {} approved by {}", job->job_id(), actor_of(request));
      *r.mutable_job() = std::move(job).value();
      return r;
    }
    case v1::RpcRequest::kShowJob: {
      const auto* job = jobs_.find(request.show_job().job_id());
      if (job == nullptr)
        return failure(v1::RpcResponse::CODE_NOT_FOUND, fmt::format("no job {}", request.show_job().job_id()));
      *r.mutable_job() = *job;
      return r;
    }
    case v1::RpcRequest::kListJobs: {
      const auto& q = request.list_jobs();
      const std::size_t limit = q.limit() == 0 ? 100 : std::min<std::size_t>(q.limit(), 5000);
      for (const auto* job : jobs_.list(q.active_only(), limit)) *r.mutable_jobs()->add_jobs() = *job;
      return r;
    }
    case v1::RpcRequest::kJobExecutions: {
      const auto& q = request.job_executions();
      const std::size_t limit = q.limit() == 0 ? 100 : std::min<std::size_t>(q.limit(), 5000);
      auto list = jobs_.executions(*store_, q.job_id(), q.state(), q.start_after(), limit);
      if (!list) return failure(list.error());
      auto* out = r.mutable_executions();
      // A page ends at `limit` executions or about half the broker's packet bound, whichever
      // comes first (each execution may carry up to 192 KiB of output).
      std::size_t bytes = 0;
      for (auto& e : *list) {
        if (out->executions_size() > 0 && bytes + e.ByteSizeLong() > kMaxExecutionPageBytes) break;
        bytes += e.ByteSizeLong();
        *out->add_executions() = std::move(e);
      }
      const bool more = static_cast<std::size_t>(out->executions_size()) < list->size() || list->size() == limit;
      if (more && out->executions_size() > 0) out->set_next_cursor(out->executions().rbegin()->device_id());
      return r;
    }
    case v1::RpcRequest::kAddScript: {
      Batch batch;
      auto script = add_script(request.add_script().script(), actor_of(request), now, batch);
      if (!script) return failure(script.error());
      commit(batch, {}, {});
      *r.mutable_script() = std::move(script).value();
      return r;
    }
    case v1::RpcRequest::kGetScript: {
      auto bytes = store_->get(Space::scripts, request.get_script().name());
      if (!bytes) return failure(bytes.error());
      if (!r.mutable_script()->ParseFromString(*bytes)) {
        return failure(v1::RpcResponse::CODE_INTERNAL, "stored script does not decode");
      }
      return r;
    }
    case v1::RpcRequest::kListScripts: {
      auto* out = r.mutable_scripts();
      Status bad;
      auto scanned = store_->scan(Space::scripts, "", [&](std::string_view key, std::string_view value) {
        auto* s = out->add_scripts();
        if (!s->ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          bad = make_error(Errc::corruption, "script {} does not decode", key);
          return false;
        }
        s->clear_body();
        s->clear_signature();
        return true;
      });
      if (!scanned) return failure(scanned.error());
      if (!bad) return failure(bad.error());
      return r;
    }
    case v1::RpcRequest::kAuditLog: {
      const std::size_t limit = request.audit_log().limit() == 0
                                    ? 50
                                    : std::min<std::size_t>(request.audit_log().limit(), 5000);
      auto entries = read_audit(*store_, limit);
      if (!entries) return failure(entries.error());
      for (auto& e : *entries) *r.mutable_audit()->add_entries() = std::move(e);
      return r;
    }
    default: return std::nullopt;
  }
}

}  // namespace flotilla::manager
