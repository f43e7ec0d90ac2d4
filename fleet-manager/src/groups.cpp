#include "flotilla/manager/groups.hpp"

#include <algorithm>
#include <functional>
#include <limits>

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
constexpr std::size_t kMaxGroups = 10000;
constexpr int kMaxDepth = 8;

bool uses_group_field(const query::Node& n) {
  if (n.kind == query::Node::Kind::predicate) return n.predicate.field == "group";
  return std::any_of(n.children.begin(), n.children.end(), uses_group_field);
}

std::string member_key(std::string_view group, std::string_view id) {
  return fmt::format("{}{}/{}", kMemberPrefix, group, id);
}

}  // namespace

Result<Groups> Groups::load(const Store& store) {
  Groups g;
  Status bad;
  auto st = store.scan(Space::groups, "", [&](std::string_view key, std::string_view value) {
    if (key.starts_with(kGroupPrefix)) {
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
    } else if (key.starts_with(kMemberPrefix)) {
      const auto rest = key.substr(kMemberPrefix.size());
      const auto slash = rest.find('/');
      if (slash == std::string_view::npos) return true;
      const std::string group(rest.substr(0, slash)), id(rest.substr(slash + 1));
      g.direct_[group].insert(id);
      g.of_device_[id].insert(group);
    } else if (key == kSeqKey) {
      g.event_seq_ = std::strtoull(std::string(value).c_str(), nullptr, 10);
    }
    return true;
  });
  if (!st) return std::move(st).error();
  if (!bad) return std::move(bad).error();
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
  batch.put(Space::groups, fmt::format("{}{:020}", kEventPrefix, e.seq()), codec::encode(e));
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
