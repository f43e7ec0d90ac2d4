// The manager's side of desired configuration: which devices a policy change reaches, the
// effective document of each device, its retained publication, and the policy RPC methods
// (docs/policies.md).
#include <fmt/format.h>

#include <set>

#include "flotilla/core/clock.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/log.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/manager/facts.hpp"
#include "flotilla/manager/manager.hpp"

namespace flotilla::manager {
namespace {

v1::RpcResponse policy_failure(const Error& e) {
  v1::RpcResponse r;
  r.set_schema_version(codec::schema_version);
  r.set_code(e.code == Errc::not_found          ? v1::RpcResponse::CODE_NOT_FOUND
             : e.code == Errc::invalid_argument ? v1::RpcResponse::CODE_INVALID_ARGUMENT
                                                : v1::RpcResponse::CODE_INTERNAL);
  r.set_error(e.message);
  return r;
}

}  // namespace

PolicyScope Manager::policy_scope(const std::string& id) const {
  PolicyScope scope;
  scope.device_id = id;
  if (const auto* r = registry_.find(id)) {
    scope.tenant = r->tenant();
    scope.site = r->site();
  }
  // Every group the device is in, directly or through a subgroup, with its depth.
  std::set<std::string> seen;
  for (const auto& direct : groups_.groups_of(id)) {
    for (std::string g = direct; !g.empty() && seen.insert(g).second;) {
      const auto* group = groups_.find(g);
      if (group == nullptr) break;
      int depth = 0;
      for (const auto* p = groups_.find(group->parent()); p != nullptr && depth < 64; p = groups_.find(p->parent())) {
        ++depth;
      }
      scope.groups.emplace_back(g, depth);
      g = group->parent();
    }
  }
  return scope;
}

void Manager::refresh_configs(const std::vector<std::string>& ids, std::int64_t now_ms, bool republish_drift) {
  for (const auto& id : ids) {
    const auto* record = registry_.find(id);
    if (record == nullptr) continue;
    auto desired = policies_.effective(policy_scope(id), now_ms);
    const bool drift = republish_drift && record->config_applied() != desired.version();
    if (desired.version() == record->config_desired() && !drift) continue;
    auto device = DeviceId::parse(id);
    if (!device) continue;
    registry_.set_config_desired(id, desired.version());
    config_outgoing_.push_back(
        Message{topics::device(*device, topics::Channel::config), codec::encode(desired), 1, true, {}, {}});
  }
}

void Manager::publish_configs() {
  for (auto& m : std::exchange(config_outgoing_, {})) {
    if (auto st = transport_->publish(m); !st) count_drop("config_not_published", m.topic, st.error().message);
  }
}

std::optional<v1::RpcResponse> Manager::dispatch_policies(const v1::RpcRequest& request) {
  v1::RpcResponse r;
  r.set_schema_version(codec::schema_version);
  const auto now = unix_now_ms();
  // The devices a policy at (level, name) reaches.
  auto reached = [&](const std::string& level, const std::string& name) {
    std::vector<std::string> ids;
    if (level == "device") {
      if (registry_.find(name) != nullptr) ids.push_back(name);
    } else if (level == "group") {
      ids = groups_.members(name);
    } else {
      for (const auto& [id, rec] : registry_.devices()) {
        if ((level == "tenant" ? rec.tenant() : rec.site()) == name) ids.push_back(id);
      }
    }
    return ids;
  };
  auto apply = [&](Batch& batch, const std::vector<std::string>& ids) {
    refresh_configs(ids, now);
    const auto changed = registry_.flush(batch);
    commit(batch, changed, {});  // published after the answer (Manager::answer)
  };
  const std::string actor = request.actor().empty() ? std::string("unknown") : request.actor().substr(0, 64);
  switch (request.method_case()) {
    case v1::RpcRequest::kSetPolicy: {
      const auto& q = request.set_policy();
      Batch batch;
      std::vector<std::string> unset(q.unset().begin(), q.unset().end());
      auto policy = policies_.set(q.policy(), unset, q.replace(), actor, now, batch);
      if (!policy) return policy_failure(policy.error());
      jobs_.audit(batch, now, actor, "", "policy.set", fmt::format("{}/{}", policy->level(), policy->name()),
                  fmt::format("revision {}, {} keys", policy->revision(), policy->values_size()));
      apply(batch, reached(policy->level(), policy->name()));
      *r.mutable_policy() = std::move(policy).value();
      return r;
    }
    case v1::RpcRequest::kDeletePolicy: {
      const auto& q = request.delete_policy();
      Batch batch;
      auto policy = policies_.erase(q.level(), q.name(), batch);
      if (!policy) return policy_failure(policy.error());
      jobs_.audit(batch, now, actor, "", "policy.delete", fmt::format("{}/{}", q.level(), q.name()), "");
      apply(batch, reached(q.level(), q.name()));
      *r.mutable_policy() = std::move(policy).value();
      return r;
    }
    case v1::RpcRequest::kShowPolicy: {
      const auto& q = request.show_policy();
      const auto* p = policies_.find(q.level(), q.name());
      if (p == nullptr) return policy_failure(make_error(Errc::not_found, "no {} policy {}", q.level(), q.name()));
      *r.mutable_policy() = *p;
      return r;
    }
    case v1::RpcRequest::kListPolicies: {
      for (const auto* p : policies_.list(request.list_policies().level())) *r.mutable_policies()->add_policies() = *p;
      return r;
    }
    case v1::RpcRequest::kEffectiveConfig: {
      const auto& id = request.effective_config().device_id();
      const auto* rec = registry_.find(id);
      if (rec == nullptr)
        return policy_failure(make_error(Errc::not_found, "device {} is not known", id.substr(0, 80)));
      auto* out = r.mutable_effective_config();
      *out->mutable_desired() = policies_.effective(policy_scope(id), now);
      out->set_applied_version(rec->config_applied());
      out->set_drift(rec->config_applied() != out->desired().version());
      return r;
    }
    default: return std::nullopt;
  }
}

}  // namespace flotilla::manager
