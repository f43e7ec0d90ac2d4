#pragma once
// Groups of devices: static (explicit members) and dynamic (a query), in a hierarchy where a
// device in a group is also in every ancestor. Owns the definitions and direct memberships,
// loaded from the Store and changed only through the functions below, which append their writes
// to a Batch and return the membership events to publish once that batch is durable. Owned by the
// manager's reactor thread; not thread-safe.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"
#include "flotilla/manager/index.hpp"
#include "flotilla/manager/query.hpp"
#include "flotilla/manager/store.hpp"
#include "flotilla/v1/record.pb.h"

namespace flotilla::manager {

class Groups {
 public:
  // Errors: the store's; corruption for an undecodable record.
  static Result<Groups> load(const Store& store);

  // Errors: invalid_argument (name, unknown parent, query that does not parse or uses the group
  // field, members of a dynamic group), already_exists.
  Result<std::vector<v1::MembershipEvent>> create(v1::Group group, const FleetIndex& index, std::int64_t now_ms,
                                                  Batch& batch);
  // Errors: not_found; invalid_argument while the group has subgroups.
  Result<std::vector<v1::MembershipEvent>> erase(std::string_view name, std::int64_t now_ms, Batch& batch);
  // Adds or removes explicit members of a static group. Errors: not_found, invalid_argument.
  Result<std::vector<v1::MembershipEvent>> change_members(std::string_view name, const std::vector<std::string>& ids,
                                                          bool remove, std::int64_t now_ms, Batch& batch);
  // Re-decides every dynamic group for these devices (after their facts changed in `index`).
  std::vector<v1::MembershipEvent> reevaluate(const std::vector<std::string>& ids, const FleetIndex& index,
                                              std::int64_t now_ms, Batch& batch);
  // Re-decides every dynamic group for the whole fleet (queries on time move without events).
  std::vector<v1::MembershipEvent> reconcile(const FleetIndex& index, std::int64_t now_ms, Batch& batch);

  const v1::Group* find(std::string_view name) const;
  std::vector<const v1::Group*> list() const;
  std::vector<std::string> children(std::string_view name) const;
  // Direct members of the group and of all its descendants, sorted.
  std::vector<std::string> members(std::string_view name) const;
  std::size_t direct_member_count(std::string_view name) const;
  // Every group the device is in, ancestors included, sorted: the values of its `group` field.
  std::vector<std::string> groups_of(const std::string& id) const;
  // Why the device is or is not a member, one line per reason.
  std::vector<std::string> explain(std::string_view name, const std::string& id, const FleetIndex& index,
                                   std::int64_t now_ms, bool& member) const;

 private:
  v1::MembershipEvent event(const std::string& group, const std::string& id, bool joined, std::string reason,
                            std::int64_t now_ms, Batch& batch);
  void set_member(const std::string& group, const std::string& id, bool member, bool persist, Batch& batch);

  std::map<std::string, v1::Group, std::less<>> groups_;
  std::map<std::string, query::Node, std::less<>> queries_;              // parsed queries of dynamic groups
  std::map<std::string, std::set<std::string>, std::less<>> direct_;     // group -> devices
  std::map<std::string, std::set<std::string>, std::less<>> of_device_;  // device -> groups (direct)
  std::uint64_t event_seq_ = 0;
};

}  // namespace flotilla::manager
