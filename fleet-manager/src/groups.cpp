#include "flotilla/manager/groups.hpp"

#include <algorithm>
#include <charconv>
#include <functional>
#include <limits>
#include <optional>
#include <system_error>

#include <fmt/format.h>

#include "flotilla/core/codec.hpp"
#include "flotilla/core/ids.hpp"
#include "flotilla/manager/facts.hpp"
#include "flotilla/manager/query_eval.hpp"

namespace flotilla::manager {
namespace {

constexpr std::string_view kGroupPrefix = "g/";
constexpr std::string_view kMemberPrefix = "m/";
constexpr std::string_view kEventPrefix = "e/";
constexpr std::string_view kSeqKey = "s/event_seq";
// The oldest event retention left, so that start-up finds it without walking what it erased.
constexpr std::string_view kFirstKey = "s/event_first";
// Event keys are "e/" and 20 digits: the keys of 1,000 consecutive numbers share a prefix of 17.
constexpr std::uint64_t kEventBlock = 1000;
constexpr std::size_t kMaxGroups = 10000;
constexpr int kMaxDepth = 8;

bool uses_group_field(const query::Node& n) {
  if (n.kind == query::Node::Kind::predicate) return n.predicate.field == "group";
  return std::any_of(n.children.begin(), n.children.end(), uses_group_field);
}

std::string member_key(std::string_view group, std::string_view id) {
  return fmt::format("{}{}/{}", kMemberPrefix, group, id);
}

std::string event_key(std::uint64_t seq) { return fmt::format("{}{:020}", kEventPrefix, seq); }

std::optional<std::uint64_t> parse_decimal(std::string_view text) {
  std::uint64_t n = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc{} || ptr != text.data() + text.size() || text.empty()) return std::nullopt;
  return n;
}

// Visits the stored events numbered block * 1000 to block * 1000 + 999 in order, with their seq,
// until `visit` returns false. Keys that are not an event key are skipped.
Status scan_event_block(const Store& store, std::uint64_t block,
                        const std::function<bool(std::uint64_t, std::string_view, std::string_view)>& visit) {
  return store.scan(Space::groups, fmt::format("{}{:017}", kEventPrefix, block),
                    [&](std::string_view key, std::string_view value) {
                      const auto seq = parse_decimal(key.substr(kEventPrefix.size()));
                      return !seq || key.size() != kEventPrefix.size() + 20 || visit(*seq, key, value);
                    });
}

bool event_matches(const v1::MembershipEvent& e, const EventQuery& q) {
  return (q.group.empty() || e.group() == q.group) && (q.device_id.empty() || e.device_id() == q.device_id);
}

}  // namespace

Result<Groups> Groups::load(const Store& store) {
  Groups g;
  Status bad;
  // Prefix by prefix: the events ("e/"), possibly millions, are not read at start.
  auto st = store.scan(Space::groups, kGroupPrefix, [&](std::string_view key, std::string_view value) {
    v1::Group group;
    if (!group.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      bad = make_error(Errc::corruption, "group record '{}' does not decode", key);
      return false;
    }
    if (group.type() == v1::Group::TYPE_DYNAMIC) {
      auto q = query::parse(group.query());
      if (!q) {
        bad = make_error(Errc::corruption, "query of group {} no longer parses: {}", group.name(), q.error().message);
        return false;
      }
      g.queries_.emplace(group.name(), std::move(q).value());
    } else {
      for (const auto& m : group.members()) {
        g.direct_[group.name()].insert(m);
        g.of_device_[m].insert(group.name());
      }
    }
    g.groups_.emplace(group.name(), std::move(group));
    return true;
  });
  if (!st) return std::move(st).error();
  if (!bad) return std::move(bad).error();
  st = store.scan(Space::groups, kMemberPrefix, [&](std::string_view key, std::string_view) {
    const auto rest = key.substr(kMemberPrefix.size());
    const auto slash = rest.find('/');
    if (slash == std::string_view::npos) return true;
    const std::string group(rest.substr(0, slash)), id(rest.substr(slash + 1));
    g.direct_[group].insert(id);
    g.of_device_[id].insert(group);
    return true;
  });
  if (!st) return std::move(st).error();
  std::uint64_t first_hint = 0;
  st = store.scan(Space::groups, "s/", [&](std::string_view key, std::string_view value) {
    const auto n = parse_decimal(value);
    if (key == kSeqKey || key == kFirstKey) {
      if (!n) {
        bad = make_error(Errc::corruption, "{} is {:?}, not a number", key, value);
        return false;
      }
      (key == kSeqKey ? g.event_seq_ : first_hint) = *n;
    }
    return true;
  });
  if (!st) return std::move(st).error();
  if (!bad) return std::move(bad).error();

  // The oldest stored event: the first at or after where retention left off.
  g.event_first_ = g.event_seq_ + 1;
  auto found = [&](std::uint64_t seq, std::string_view, std::string_view) {
    if (seq < first_hint) return true;
    g.event_first_ = std::min(seq, g.event_first_);
    return false;
  };
  if (first_hint == 0) {
    st = store.scan(Space::groups, kEventPrefix, [&](std::string_view key, std::string_view value) {
      const auto seq = parse_decimal(key.substr(kEventPrefix.size()));
      return !seq || found(*seq, key, value);
    });
    if (!st) return std::move(st).error();
  } else {
    for (std::uint64_t b = first_hint / kEventBlock; b <= g.event_seq_ / kEventBlock && g.event_first_ > g.event_seq_;
         ++b) {
      if (auto scanned = scan_event_block(store, b, found); !scanned) return std::move(scanned).error();
    }
  }
  return g;
}

v1::MembershipEvent Groups::event(const std::string& group, const std::string& id, bool joined, std::string reason,
                                  std::int64_t now_ms, Batch& batch) {
  v1::MembershipEvent e;
  e.set_seq(++event_seq_);
  e.set_group(group);
  e.set_device_id(id);
  e.set_joined(joined);
  e.set_at_ms(now_ms);
  e.set_reason(std::move(reason));
  batch.put(Space::groups, event_key(e.seq()), codec::encode(e));
  batch.put(Space::groups, std::string(kSeqKey), std::to_string(event_seq_));
  return e;
}

void Groups::set_member(const std::string& group, const std::string& id, bool member, bool persist, Batch& batch) {
  if (member) {
    direct_[group].insert(id);
    of_device_[id].insert(group);
    if (persist) batch.put(Space::groups, member_key(group, id), "");
  } else {
    direct_[group].erase(id);
    if (auto it = of_device_.find(id); it != of_device_.end()) {
      it->second.erase(group);
      if (it->second.empty()) of_device_.erase(it);
    }
    if (persist) batch.erase(Space::groups, member_key(group, id));
  }
}

Result<std::vector<v1::MembershipEvent>> Groups::create(v1::Group g, const FleetIndex& index, std::int64_t now_ms,
                                                        Batch& batch) {
  if (auto st = validate_topic_level_name(g.name(), "group name"); !st) return std::move(st).error();
  if (groups_.contains(g.name())) return make_error(Errc::already_exists, "group {} already exists", g.name());
  if (groups_.size() >= kMaxGroups) return make_error(Errc::invalid_argument, "at most {} groups", kMaxGroups);
  if (!g.parent().empty()) {
    if (!groups_.contains(g.parent()))
      return make_error(Errc::invalid_argument, "parent group {} does not exist", g.parent());
    int depth = 1;
    for (const v1::Group* p = find(g.parent()); p != nullptr && !p->parent().empty(); p = find(p->parent())) ++depth;
    if (depth >= kMaxDepth) return make_error(Errc::invalid_argument, "groups nest at most {} deep", kMaxDepth);
  }
  if (g.description().size() > 1024) return make_error(Errc::invalid_argument, "description: at most 1024 bytes");
  std::vector<v1::MembershipEvent> events;
  g.set_created_ms(now_ms);
  if (g.type() == v1::Group::TYPE_DYNAMIC) {
    if (g.members_size() > 0) return make_error(Errc::invalid_argument, "a dynamic group has no explicit members");
    auto q = query::parse(g.query());
    if (!q) return make_error(Errc::invalid_argument, "query: {}", q.error().message);
    if (uses_group_field(*q)) {
      return make_error(Errc::invalid_argument, "query: a dynamic group's query cannot use the group field");
    }
    QueryOptions all;
    all.limit = std::numeric_limits<std::uint32_t>::max();
    all.fields = {"id"};
    auto page = index.query(*q, all, now_ms);
    if (!page) return std::move(page).error();
    groups_.emplace(g.name(), g);
    for (const auto& row : page->rows) {
      set_member(g.name(), row.id, true, true, batch);
      events.push_back(event(g.name(), row.id, true, "query", now_ms, batch));
    }
    queries_.emplace(g.name(), std::move(q).value());
  } else {
    if (!g.query().empty()) return make_error(Errc::invalid_argument, "a static group has no query");
    std::set<std::string> members;
    for (const auto& m : g.members()) {
      if (auto st = DeviceId::parse(m); !st)
        return make_error(Errc::invalid_argument, "member: {}", st.error().message);
      members.insert(m);
    }
    g.clear_members();
    for (const auto& m : members) g.add_members(m);
    groups_.emplace(g.name(), g);
    for (const auto& m : members) {
      set_member(g.name(), m, true, false, batch);
      events.push_back(event(g.name(), m, true, "added", now_ms, batch));
    }
  }
  batch.put(Space::groups, fmt::format("{}{}", kGroupPrefix, g.name()), codec::encode(g));
  return events;
}

Result<std::vector<v1::MembershipEvent>> Groups::erase(std::string_view name, std::int64_t now_ms, Batch& batch) {
  auto it = groups_.find(name);
  if (it == groups_.end()) return make_error(Errc::not_found, "group {} does not exist", name);
  if (auto kids = children(name); !kids.empty()) {
    return make_error(Errc::invalid_argument, "group {} has subgroups ({}); delete them first", name,
                      fmt::join(kids, ", "));
  }
  const std::string group(name);
  const bool dynamic = it->second.type() == v1::Group::TYPE_DYNAMIC;
  std::vector<v1::MembershipEvent> events;
  const auto members = direct_[group];
  for (const auto& id : members) {
    set_member(group, id, false, dynamic, batch);
    events.push_back(event(group, id, false, "group deleted", now_ms, batch));
  }
  direct_.erase(group);
  queries_.erase(group);
  groups_.erase(it);
  batch.erase(Space::groups, fmt::format("{}{}", kGroupPrefix, group));
  return events;
}

Result<std::vector<v1::MembershipEvent>> Groups::change_members(std::string_view name,
                                                                const std::vector<std::string>& ids, bool remove,
                                                                std::int64_t now_ms, Batch& batch) {
  auto it = groups_.find(name);
  if (it == groups_.end()) return make_error(Errc::not_found, "group {} does not exist", name);
  if (it->second.type() != v1::Group::TYPE_STATIC) {
    return make_error(Errc::invalid_argument, "group {} is dynamic: its members follow its query", name);
  }
  for (const auto& id : ids) {
    if (auto st = DeviceId::parse(id); !st) return make_error(Errc::invalid_argument, "{}", st.error().message);
  }
  const std::string group(name);
  std::vector<v1::MembershipEvent> events;
  auto& members = direct_[group];
  for (const auto& id : ids) {
    if (members.contains(id) != remove) continue;  // already as asked
    set_member(group, id, !remove, false, batch);
    events.push_back(event(group, id, !remove, remove ? "removed" : "added", now_ms, batch));
  }
  it->second.clear_members();
  for (const auto& m : direct_[group]) it->second.add_members(m);
  batch.put(Space::groups, fmt::format("{}{}", kGroupPrefix, group), codec::encode(it->second));
  return events;
}

std::vector<v1::MembershipEvent> Groups::forget_device(const std::string& id, std::int64_t now_ms, Batch& batch) {
  std::vector<v1::MembershipEvent> events;
  auto it = of_device_.find(id);
  if (it == of_device_.end()) return events;
  const std::set<std::string> direct_groups = it->second;  // set_member() changes it
  for (const auto& name : direct_groups) {
    auto g = groups_.find(name);
    const bool is_static = g != groups_.end() && g->second.type() == v1::Group::TYPE_STATIC;
    set_member(name, id, false, !is_static, batch);
    if (g == groups_.end()) continue;  // a member row left behind by a group that is gone
    if (is_static) {
      g->second.clear_members();
      for (const auto& m : direct_[name]) g->second.add_members(m);
      batch.put(Space::groups, fmt::format("{}{}", kGroupPrefix, name), codec::encode(g->second));
    }
    events.push_back(event(name, id, false, "device deleted", now_ms, batch));
  }
  return events;
}

std::vector<v1::MembershipEvent> Groups::reevaluate(const std::vector<std::string>& ids, const FleetIndex& index,
                                                    std::int64_t now_ms, Batch& batch) {
  std::vector<v1::MembershipEvent> events;
  if (queries_.empty()) return events;
  for (const auto& id : ids) {
    auto facts = index.facts(id);
    for (const auto& [name, q] : queries_) {
      const bool now_member = facts && query::matches(q, FactsView(*facts), now_ms);
      const bool was_member = direct_[name].contains(id);
      if (now_member == was_member) continue;
      set_member(name, id, now_member, true, batch);
      events.push_back(event(name, id, now_member, "query", now_ms, batch));
    }
  }
  return events;
}

std::vector<v1::MembershipEvent> Groups::reconcile(const FleetIndex& index, std::int64_t now_ms, Batch& batch) {
  std::vector<v1::MembershipEvent> events;
  for (const auto& [name, q] : queries_) {
    QueryOptions all;
    all.limit = std::numeric_limits<std::uint32_t>::max();
    all.fields = {"id"};
    auto page = index.query(q, all, now_ms);
    if (!page) continue;
    std::set<std::string> now_members;
    for (const auto& row : page->rows) now_members.insert(row.id);
    const auto before = direct_[name];
    for (const auto& id : before) {
      if (!now_members.contains(id)) {
        set_member(name, id, false, true, batch);
        events.push_back(event(name, id, false, "query", now_ms, batch));
      }
    }
    for (const auto& id : now_members) {
      if (!before.contains(id)) {
        set_member(name, id, true, true, batch);
        events.push_back(event(name, id, true, "query", now_ms, batch));
      }
    }
  }
  return events;
}

Result<EventPage> Groups::read_events(const Store& store, const EventQuery& query) const {
  EventPage page;
  if (query.limit == 0 || event_first_ > event_seq_ || query.before_seq == 1) return page;
  std::uint64_t top = query.before_seq == 0 ? event_seq_ : std::min(query.before_seq - 1, event_seq_);
  if (top < event_first_) return page;
  std::size_t examined = 0;
  std::vector<std::pair<std::uint64_t, std::string>> block;
  // Newest first: the blocks downwards from the one holding `top`, each read in key order and
  // walked backwards.
  for (std::uint64_t b = top / kEventBlock;; --b) {
    block.clear();
    auto scanned = scan_event_block(store, b, [&](std::uint64_t seq, std::string_view, std::string_view value) {
      if (seq > top) return false;
      if (seq >= event_first_) block.emplace_back(seq, value);
      return true;
    });
    if (!scanned) return std::move(scanned).error();
    for (auto it = block.rbegin(); it != block.rend(); ++it) {
      v1::MembershipEvent e;
      if (!e.ParseFromString(it->second)) {
        return make_error(Errc::corruption, "membership event {} does not decode", it->first);
      }
      ++examined;
      if (query.since_ms > 0 && e.at_ms() < query.since_ms) return page;
      if (!event_matches(e, query)) continue;
      page.events.push_back(std::move(e));
      if (page.events.size() >= query.limit) {
        if (it->first > event_first_) page.next_cursor = it->first;
        return page;
      }
    }
    const std::uint64_t block_start = b * kEventBlock;
    if (block_start <= event_first_) return page;
    if (examined >= query.max_examined) {
      page.next_cursor = block_start;
      return page;
    }
    top = block_start - 1;
  }
}

Result<std::size_t> Groups::prune_events(const Store& store, std::int64_t now_ms, std::chrono::milliseconds max_age,
                                         std::uint64_t max_events, std::size_t budget, Batch& batch) {
  if (event_first_ > event_seq_ || budget == 0 || (max_age.count() <= 0 && max_events == 0)) return 0;
  // Every event up to this number is beyond the newest max_events.
  const std::uint64_t beyond_count = max_events > 0 && event_seq_ > max_events ? event_seq_ - max_events : 0;
  const std::int64_t cutoff = max_age.count() > 0 ? now_ms - max_age.count() : std::numeric_limits<std::int64_t>::min();
  std::uint64_t first = event_first_;
  std::size_t erased = 0;
  bool younger_found = false;
  Status bad;
  for (std::uint64_t b = first / kEventBlock; !younger_found && erased < budget && b <= event_seq_ / kEventBlock; ++b) {
    auto scanned = scan_event_block(store, b, [&](std::uint64_t seq, std::string_view key, std::string_view value) {
      if (seq < first) return true;
      bool expired = seq <= beyond_count;
      if (!expired && max_age.count() > 0) {
        v1::MembershipEvent e;
        if (!e.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          bad = make_error(Errc::corruption, "membership event {} does not decode", seq);
          return false;
        }
        expired = e.at_ms() < cutoff;
      }
      if (!expired) {
        younger_found = true;
        return false;
      }
      batch.erase(Space::groups, std::string(key));
      first = seq + 1;
      return ++erased < budget;
    });
    if (!scanned) return std::move(scanned).error();
    if (!bad) return std::move(bad).error();
  }
  // Every block was walked without meeting an event to keep: none is left.
  if (!younger_found && erased < budget) first = event_seq_ + 1;
  if (first != event_first_) {
    event_first_ = first;
    batch.put(Space::groups, std::string(kFirstKey), std::to_string(first));
  }
  return erased;
}

const v1::Group* Groups::find(std::string_view name) const {
  auto it = groups_.find(name);
  return it == groups_.end() ? nullptr : &it->second;
}

std::vector<const v1::Group*> Groups::list() const {
  std::vector<const v1::Group*> out;
  for (const auto& [name, g] : groups_) out.push_back(&g);
  return out;
}

std::vector<std::string> Groups::children(std::string_view name) const {
  std::vector<std::string> out;
  for (const auto& [n, g] : groups_) {
    if (g.parent() == name) out.push_back(n);
  }
  return out;
}

std::size_t Groups::direct_member_count(std::string_view name) const {
  auto it = direct_.find(name);
  return it == direct_.end() ? 0 : it->second.size();
}

std::vector<std::string> Groups::members(std::string_view name) const {
  std::set<std::string> out;
  std::function<void(std::string_view)> collect = [&](std::string_view g) {
    if (auto it = direct_.find(g); it != direct_.end()) out.insert(it->second.begin(), it->second.end());
    for (const auto& child : children(g)) collect(child);
  };
  collect(name);
  return {out.begin(), out.end()};
}

std::vector<std::string> Groups::groups_of(const std::string& id) const {
  std::set<std::string> out;
  auto it = of_device_.find(id);
  if (it == of_device_.end()) return {};
  for (const auto& g : it->second) {
    for (const v1::Group* p = find(g); p != nullptr; p = p->parent().empty() ? nullptr : find(p->parent())) {
      if (!out.insert(p->name()).second) break;
    }
  }
  return {out.begin(), out.end()};
}

std::vector<std::string> Groups::explain(std::string_view name, const std::string& id, const FleetIndex& index,
                                         std::int64_t now_ms, bool& member) const {
  std::vector<std::string> lines;
  member = false;
  const v1::Group* g = find(name);
  if (g == nullptr) return lines;
  const bool direct = direct_member_count(name) > 0 && direct_.at(std::string(name)).contains(id);
  if (g->type() == v1::Group::TYPE_STATIC) {
    lines.push_back(direct ? fmt::format("{} is listed as a member of static group {}", id, name)
                           : fmt::format("{} is not listed in static group {}", id, name));
  } else {
    const auto& q = queries_.at(std::string(name));
    auto facts = index.facts(id);
    if (!facts) {
      lines.push_back(fmt::format("{} is not a known device, so no query can match it", id));
    } else {
      const auto trace = query::explain(q, FactsView(*facts), now_ms);
      lines.push_back(fmt::format("query of dynamic group {}: {} -> {}", name, query::to_string(q),
                                  trace.matched ? "matched" : "did not match"));
      for (const auto& l : trace.lines) {
        lines.push_back(
            fmt::format("  {} {} (device has: {})", l.predicate, l.matched ? "matched" : "failed",
                        l.values.empty() ? std::string("no value") : fmt::format("{}", fmt::join(l.values, ", "))));
      }
    }
  }
  member = direct;
  for (const auto& child : children(name)) {
    bool in_child = false;
    (void)explain(child, id, index, now_ms, in_child);
    if (in_child) {
      lines.push_back(fmt::format("member through subgroup {}", child));
      member = true;
    }
  }
  return lines;
}

}  // namespace flotilla::manager
