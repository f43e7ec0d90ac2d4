#include "flotilla/manager/policies.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <regex>

#include "flotilla/core/codec.hpp"
#include "flotilla/core/config.hpp"
#include "flotilla/core/signing.hpp"
#include "flotilla/manager/query.hpp"
#include "flotilla/manager/schedule.hpp"

namespace flotilla::manager {
namespace {

constexpr std::size_t kMaxValueBytes = 1024;
constexpr std::size_t kMaxKeys = 256;
constexpr std::array<std::string_view, 4> kLevels = {"tenant", "site", "group", "device"};

std::string policy_key(std::string_view level, std::string_view name) { return fmt::format("{}/{}", level, name); }

Status check_duration(std::string_view key, std::string_view value, std::chrono::milliseconds min,
                      std::chrono::milliseconds max) {
  auto d = config::parse_duration(value);
  if (!d) return make_error(Errc::invalid_argument, "{}: {}", key, d.error().message);
  if (*d < min || *d > max) {
    return make_error(Errc::invalid_argument, "{}: must be between {} s and {} s", key,
                      std::chrono::duration_cast<std::chrono::seconds>(min).count(),
                      std::chrono::duration_cast<std::chrono::seconds>(max).count());
  }
  return {};
}

Status check_bool(std::string_view key, std::string_view value) {
  if (value == "true" || value == "false") return {};
  return make_error(Errc::invalid_argument, "{}: must be true or false", key);
}

}  // namespace

bool Policies::valid_level(std::string_view level) {
  return std::find(kLevels.begin(), kLevels.end(), level) != kLevels.end();
}

Status Policies::check(std::string_view key, std::string_view value) {
  static const std::regex key_pattern("^[a-z0-9][a-z0-9_.-]{0,127}$");
  if (!std::regex_match(key.begin(), key.end(), key_pattern)) {
    return make_error(Errc::invalid_argument, "key {:?}: lower-case letters, digits, '.', '_', '-', at most 128",
                      key.substr(0, 140));
  }
  if (value.size() > kMaxValueBytes) {
    return make_error(Errc::invalid_argument, "{}: at most {} bytes", key, kMaxValueBytes);
  }
  using std::chrono::hours;
  using std::chrono::seconds;
  if (key == "telemetry.interval") return check_duration(key, value, seconds(1), hours(24));
  if (key == "inventory.interval") return check_duration(key, value, seconds(10), hours(24 * 7));
  if (key == "reboot.allowed" || key == "patch.security_only") return check_bool(key, value);
  if (key == "maintenance.window") {
    auto w = MaintenanceWindow::parse(value);
    if (!w) return make_error(Errc::invalid_argument, "{}: {}", key, w.error().message);
    return {};
  }
  if (key == "jobs.allowed_types") {
    static const std::regex type_pattern("^(\\*|[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)*)$");
    std::string_view rest = value;
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      const auto item = rest.substr(0, comma);
      if (!std::regex_match(item.begin(), item.end(), type_pattern)) {
        return make_error(Errc::invalid_argument, "{}: {:?} is not a job type (e.g. script.run) or *", key, item);
      }
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
    return {};
  }
  if (key.starts_with("alert.")) {
    // alert.<metric>.above / alert.<metric>.below: a number.
    if (!key.ends_with(".above") && !key.ends_with(".below")) {
      return make_error(Errc::invalid_argument, "{}: alert keys are alert.<metric>.above or alert.<metric>.below", key);
    }
    if (!query::parse_number(value)) return make_error(Errc::invalid_argument, "{}: {:?} is not a number", key, value);
    return {};
  }
  if (key.starts_with("custom.")) return {};
  return make_error(Errc::invalid_argument,
                    "unknown key {:?}: telemetry.interval, inventory.interval, jobs.allowed_types, "
                    "maintenance.window, reboot.allowed, patch.security_only, alert.<metric>.above|below or "
                    "custom.<name>",
                    key);
}

Result<Policies> Policies::load(const Store& store) {
  Policies p;
  Status bad;
  auto scanned = store.scan(Space::policies, "", [&](std::string_view key, std::string_view value) {
    if (key.starts_with("d/")) return true;  // published versions, read by the manager
    v1::Policy policy;
    if (!policy.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      bad = make_error(Errc::corruption, "policy {} does not decode", key);
      return false;
    }
    p.policies_.emplace(std::string(key), std::move(policy));
    return true;
  });
  if (!scanned) return std::move(scanned).error();
  if (!bad) return std::move(bad).error();
  return p;
}

Result<v1::Policy> Policies::set(const v1::Policy& change, const std::vector<std::string>& unset, bool replace,
                                 const std::string& actor, std::int64_t now_ms, Batch& batch) {
  if (!valid_level(change.level())) {
    return make_error(Errc::invalid_argument, "level {:?}: tenant, site, group or device", change.level());
  }
  if (change.name().empty() || change.name().size() > 128) {
    return make_error(Errc::invalid_argument, "a {} policy needs a name of 1 to 128 characters", change.level());
  }
  for (const auto& [k, v] : change.values()) {
    if (auto st = check(k, v.value()); !st) return std::move(st).error();
  }
  const auto key = policy_key(change.level(), change.name());
  v1::Policy next;
  if (auto it = policies_.find(key); it != policies_.end() && !replace) next = it->second;
  next.set_level(change.level());
  next.set_name(change.name());
  if (replace) next.clear_values();
  for (const auto& [k, v] : change.values()) (*next.mutable_values())[k] = v;
  for (const auto& k : unset) next.mutable_values()->erase(k);
  if (next.values_size() > static_cast<int>(kMaxKeys)) {
    return make_error(Errc::invalid_argument, "a policy holds at most {} keys", kMaxKeys);
  }
  next.set_updated_at_ms(now_ms);
  next.set_updated_by(actor);
  next.set_revision(next.revision() + 1);
  batch.put(Space::policies, key, codec::encode(next));
  policies_[key] = next;
  return next;
}

Result<v1::Policy> Policies::erase(std::string_view level, std::string_view name, Batch& batch) {
  const auto key = policy_key(level, name);
  auto it = policies_.find(key);
  if (it == policies_.end()) return make_error(Errc::not_found, "no {} policy {}", level, name);
  v1::Policy old = std::move(it->second);
  policies_.erase(it);
  batch.erase(Space::policies, key);
  return old;
}

const v1::Policy* Policies::find(std::string_view level, std::string_view name) const {
  auto it = policies_.find(policy_key(level, name));
  return it == policies_.end() ? nullptr : &it->second;
}

std::vector<const v1::Policy*> Policies::list(std::string_view level) const {
  std::vector<const v1::Policy*> out;
  for (const auto& [key, p] : policies_) {
    if (level.empty() || p.level() == level) out.push_back(&p);
  }
  return out;
}

v1::DesiredConfig Policies::effective(const PolicyScope& scope, std::int64_t now_ms) const {
  // Farthest first: tenant, site, groups from the roots down (then by name), the device.
  std::vector<const v1::Policy*> chain;
  if (const auto* p = scope.tenant.empty() ? nullptr : find("tenant", scope.tenant)) chain.push_back(p);
  if (const auto* p = scope.site.empty() ? nullptr : find("site", scope.site)) chain.push_back(p);
  auto groups = scope.groups;
  std::sort(groups.begin(), groups.end(),
            [](const auto& a, const auto& b) { return std::tie(a.second, a.first) < std::tie(b.second, b.first); });
  for (const auto& [g, depth] : groups) {
    if (const auto* p = find("group", g)) chain.push_back(p);
  }
  if (const auto* p = find("device", scope.device_id)) chain.push_back(p);

  v1::DesiredConfig out;
  out.set_schema_version(codec::schema_version);
  out.set_device_id(scope.device_id);
  std::map<std::string, bool> enforced;
  for (const auto* p : chain) {
    for (const auto& [k, v] : p->values()) {
      if (enforced[k]) continue;  // a farther level enforced it
      (*out.mutable_values())[k] = v.value();
      (*out.mutable_sources())[k] = policy_key(p->level(), p->name());
      if (v.enforced()) enforced[k] = true;
    }
  }
  out.set_version(config_version(out));
  out.set_computed_at_ms(now_ms);
  return out;
}

std::string config_version(const v1::DesiredConfig& config) {
  std::map<std::string, std::string> sorted(config.values().begin(), config.values().end());
  std::string canonical;
  for (const auto& [k, v] : sorted) canonical += fmt::format("{}={}\n", k, v);
  if (canonical.empty()) return "none";
  return signing::sha256_hex(canonical).substr(0, 16);
}

}  // namespace flotilla::manager
