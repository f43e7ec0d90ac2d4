#pragma once
// Groups of devices: static (explicit members) and dynamic (a query), in a hierarchy where a
// device in a group is also in every ancestor. Owns the definitions and direct memberships,
// loaded from the Store and changed only through the functions below, which append their writes
// to a Batch and return the membership events to publish once that batch is durable. Owned by the
// manager's reactor thread; not thread-safe.

#include <chrono>
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

// Which stored membership events Groups::read_events() returns, newest first.
struct EventQuery {
  std::string group{};           // only this group's events; empty: every group
  std::string device_id{};       // only this device's events; empty: every device
  std::int64_t since_ms = 0;     // stop at the first event older than this (Unix ms); 0: no bound
  std::uint64_t before_seq = 0;  // only events with a smaller seq (a page's next_cursor); 0: from the newest
  std::size_t limit = 100;
  // Stored events examined at most (matching or not), so that a rare group or device over millions
  // of events is answered quickly; the page then ends early with a cursor to go on from.
  std::size_t max_examined = 100'000;
};

struct EventPage {
  std::vector<v1::MembershipEvent> events;  // newest first
  std::uint64_t next_cursor = 0;            // before_seq of the next page; 0: no older event left to read
};

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
  // The device leaves every group it is a direct member of (a static group's member list, a dynamic
  // group's member row), with one event "device deleted" each, in group name order.
  std::vector<v1::MembershipEvent> forget_device(const std::string& id, std::int64_t now_ms, Batch& batch);
  // Re-decides every dynamic group for these devices (after their facts changed in `index`).
  std::vector<v1::MembershipEvent> reevaluate(const std::vector<std::string>& ids, const FleetIndex& index,
                                              std::int64_t now_ms, Batch& batch);
  // Re-decides every dynamic group for the whole fleet (queries on time move without events).
  std::vector<v1::MembershipEvent> reconcile(const FleetIndex& index, std::int64_t now_ms, Batch& batch);

  // Stored events matching `query`, newest first, read from `store` in blocks of 1,000 sequence
  // numbers (every event key of a block shares a prefix). Errors: the store's; corruption for an
  // event that does not decode.
  Result<EventPage> read_events(const Store& store, const EventQuery& query) const;
  // Retention: appends to `batch` the erasure of the oldest stored events that are older than
  // `max_age` before `now_ms` (0: no age bound; the first younger event ends it) or not among the
  // newest `max_events` (0: no bound), at most `budget` of them, and returns how many. Errors: the
  // store's; corruption for an event that does not decode (only read when `max_age` is set).
  Result<std::size_t> prune_events(const Store& store, std::int64_t now_ms, std::chrono::milliseconds max_age,
                                   std::uint64_t max_events, std::size_t budget, Batch& batch);
  // The oldest stored event's seq (0 when none is stored) and the newest seq produced (0: none).
  std::uint64_t first_event_seq() const { return event_first_ > event_seq_ ? 0 : event_first_; }
  std::uint64_t last_event_seq() const { return event_seq_; }

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
  // The oldest stored event; event_seq_ + 1 when none is stored (so the next event is the oldest).
  std::uint64_t event_first_ = 1;
};

}  // namespace flotilla::manager
