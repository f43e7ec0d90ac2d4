#pragma once
// Desired configuration: policy documents attached at tenant, site, group and device level, and
// the effective document of each device computed by inheritance (docs/policies.md): levels are
// applied from the farthest (tenant) to the closest (device), a closer level overrides a farther
// one, and a value marked enforced cannot be overridden below it. Owned by the reactor thread.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flotilla/core/result.hpp"
#include "flotilla/manager/store.hpp"
#include "flotilla/v1/job.pb.h"

namespace flotilla::manager {

// Where a device sits: what its policies inherit along.
struct PolicyScope {
  std::string device_id;
  std::string tenant;
  std::string site;
  // Groups the device belongs to, each with its depth in the hierarchy (0 = a root group),
  // directly or through a subgroup.
  std::vector<std::pair<std::string, int>> groups;
};

class Policies {
 public:
  // Errors: the store's, corruption.
  static Result<Policies> load(const Store& store);

  // Validates one key and value (docs/policies.md lists the keys). Errors: invalid_argument.
  static Status check(std::string_view key, std::string_view value);
  static bool valid_level(std::string_view level);

  // Merges (or replaces) values and removes `unset` keys. Errors: invalid_argument.
  Result<v1::Policy> set(const v1::Policy& change, const std::vector<std::string>& unset, bool replace,
                         const std::string& actor, std::int64_t now_ms, Batch& batch);
  // Errors: not_found.
  Result<v1::Policy> erase(std::string_view level, std::string_view name, Batch& batch);
  const v1::Policy* find(std::string_view level, std::string_view name) const;
  std::vector<const v1::Policy*> list(std::string_view level) const;  // empty level: all

  // The effective configuration of a device.
  v1::DesiredConfig effective(const PolicyScope& scope, std::int64_t now_ms) const;

 private:
  std::map<std::string, v1::Policy, std::less<>> policies_;  // "{level}/{name}"
};

// Digest of a configuration's values: equal values, equal version.
std::string config_version(const v1::DesiredConfig& config);

}  // namespace flotilla::manager
