#include "flotilla/manager/index.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>

#include <fmt/format.h>

namespace flotilla::manager {

using query::FieldType;
using query::Node;
using query::Op;
using query::Predicate;

void SlotSet::set(std::uint32_t slot) {
  const std::size_t w = slot / 64;
  if (w >= words_.size()) words_.resize(w + 1, 0);
  words_[w] |= std::uint64_t{1} << (slot % 64);
}

void SlotSet::reset(std::uint32_t slot) {
  const std::size_t w = slot / 64;
  if (w < words_.size()) words_[w] &= ~(std::uint64_t{1} << (slot % 64));
}

bool SlotSet::test(std::uint32_t slot) const {
  const std::size_t w = slot / 64;
  return w < words_.size() && ((words_[w] >> (slot % 64)) & 1u) != 0;
}

std::uint64_t SlotSet::count() const {
  std::uint64_t n = 0;
  for (auto w : words_) n += static_cast<std::uint64_t>(__builtin_popcountll(w));
  return n;
}

void SlotSet::and_with(const SlotSet& other) {
  const std::size_t n = std::min(words_.size(), other.words_.size());
  for (std::size_t i = 0; i < n; ++i) words_[i] &= other.words_[i];
  for (std::size_t i = n; i < words_.size(); ++i) words_[i] = 0;
}

void SlotSet::or_with(const SlotSet& other) {
  if (other.words_.size() > words_.size()) words_.resize(other.words_.size(), 0);
  for (std::size_t i = 0; i < other.words_.size(); ++i) words_[i] |= other.words_[i];
}

void SlotSet::and_not(const SlotSet& other) {
  const std::size_t n = std::min(words_.size(), other.words_.size());
  for (std::size_t i = 0; i < n; ++i) words_[i] &= ~other.words_[i];
}

namespace {

// Distinct values past which a text column keeps no postings (ids, serials, hostnames).
constexpr std::size_t kMaxPostingValues = 4096;
// A posting stays a sorted vector until it would be larger than a dense bitset of the fleet.
constexpr std::size_t kSparseFactor = 32;
constexpr double kAbsent = std::numeric_limits<double>::quiet_NaN();

// The slots holding one value: sorted vector while sparse, dense bitset past that.
class Posting {
 public:
  void add(std::uint32_t slot, std::size_t slots) {
    ++count_;
    if (dense_) {
      dense_->set(slot);
      return;
    }
    sparse_.insert(std::lower_bound(sparse_.begin(), sparse_.end(), slot), slot);
    if (sparse_.size() > std::max<std::size_t>(64, slots / kSparseFactor)) {
      dense_ = std::make_unique<SlotSet>();
      dense_->resize(slots);
      for (auto s : sparse_) dense_->set(s);
      sparse_.clear();
      sparse_.shrink_to_fit();
    }
  }
  void remove(std::uint32_t slot) {
    if (dense_) {
      if (dense_->test(slot)) --count_;
      dense_->reset(slot);
      return;
    }
    auto it = std::lower_bound(sparse_.begin(), sparse_.end(), slot);
    if (it != sparse_.end() && *it == slot) {
      sparse_.erase(it);
      --count_;
    }
  }
  void add_to(SlotSet& out) const {
    if (dense_) {
      out.or_with(*dense_);
      return;
    }
    for (auto s : sparse_) out.set(s);
  }
  std::uint64_t count() const { return count_; }
  std::size_t bytes() const { return dense_ ? dense_->bytes() : sparse_.capacity() * sizeof(std::uint32_t); }

 private:
  std::vector<std::uint32_t> sparse_;
  std::unique_ptr<SlotSet> dense_;
  std::uint64_t count_ = 0;
};

// Single-valued text, version and boolean fields: dictionary-encoded.
struct TextColumn {
  FieldType type = FieldType::text;
  std::vector<std::uint32_t> value_of;  // slot -> value id + 1; 0: absent
  std::vector<std::string> values;
  std::unordered_map<std::string, std::uint32_t> ids;
  std::vector<std::uint64_t> counts;
  std::vector<Posting> postings;  // parallel to values while postings_on
  bool postings_on = true;

  std::uint32_t get(std::uint32_t slot) const { return slot < value_of.size() ? value_of[slot] : 0; }

  void put(std::uint32_t slot, const std::string& value, std::size_t slots) {
    auto [it, inserted] = ids.try_emplace(value, static_cast<std::uint32_t>(values.size()));
    if (inserted) {
      values.push_back(value);
      counts.push_back(0);
      if (postings_on) postings.emplace_back();
      if (values.size() > kMaxPostingValues && postings_on) {
        postings_on = false;
        postings.clear();
        postings.shrink_to_fit();
      }
    }
    if (slot >= value_of.size()) value_of.resize(std::max<std::size_t>(slots, slot + 1), 0);
    value_of[slot] = it->second + 1;
    ++counts[it->second];
    if (postings_on) postings[it->second].add(slot, slots);
  }

  void clear(std::uint32_t slot) {
    const std::uint32_t v = get(slot);
    if (v == 0) return;
    value_of[slot] = 0;
    --counts[v - 1];
    if (postings_on) postings[v - 1].remove(slot);
  }

  std::size_t bytes() const {
    std::size_t n = value_of.capacity() * sizeof(std::uint32_t) + counts.capacity() * sizeof(std::uint64_t);
    for (const auto& v : values) n += v.capacity() + sizeof(std::string) + 32;
    for (const auto& p : postings) n += p.bytes() + sizeof(Posting);
    return n;
  }
};

// Numbers and times.
struct NumberColumn {
  std::vector<double> value_of;
  double get(std::uint32_t slot) const { return slot < value_of.size() ? value_of[slot] : kAbsent; }
  void put(std::uint32_t slot, double v, std::size_t slots) {
    if (slot >= value_of.size()) value_of.resize(std::max<std::size_t>(slots, slot + 1), kAbsent);
    value_of[slot] = v;
  }
  void clear(std::uint32_t slot) {
    if (slot < value_of.size()) value_of[slot] = kAbsent;
  }
};

// Multi-valued fields and the versions of one installed package: a posting per value.
struct MultiColumn {
  std::string package;  // for software columns: the package whose versions these are
  std::vector<std::string> values;
  std::unordered_map<std::string, std::uint32_t> ids;
  std::vector<Posting> postings;
  std::uint32_t put(std::uint32_t slot, const std::string& value, std::size_t slots) {
    auto [it, inserted] = ids.try_emplace(value, static_cast<std::uint32_t>(values.size()));
    if (inserted) {
      values.push_back(value);
      postings.emplace_back();
    }
    postings[it->second].add(slot, slots);
    return it->second;
  }
  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& v : values) n += v.capacity() + sizeof(std::string) + 32;
    for (const auto& p : postings) n += p.bytes() + sizeof(Posting);
    return n;
  }
};

// The numeric value of a predicate operand for a number or time field.
std::optional<double> operand(FieldType type, std::string_view text, std::int64_t now_ms) {
  if (type == FieldType::time) {
    auto ms = query::resolve_time(text, now_ms);
    if (!ms) return std::nullopt;
    return static_cast<double>(*ms);
  }
  return query::parse_number(text);
}

// A predicate on a number or time column, with its operands parsed once.
struct NumericTest {
  Op op = Op::eq;
  double value = 0;
  std::optional<double> low, high;
  bool low_inclusive = true, high_inclusive = true;
  bool valid = true;

  NumericTest(const Predicate& p, std::int64_t now_ms) : op(p.op) {
    if (op == Op::range) {
      low_inclusive = p.low_inclusive;
      high_inclusive = p.high_inclusive;
      if (p.low) {
        low = operand(p.info.type, *p.low, now_ms);
        valid = valid && low.has_value();
      }
      if (p.high) {
        high = operand(p.info.type, *p.high, now_ms);
        valid = valid && high.has_value();
      }
    } else if (op != Op::exists && op != Op::wildcard) {
      auto v = operand(p.info.type, p.value, now_ms);
      valid = v.has_value();
      value = v.value_or(0);
    }
  }
  bool operator()(double v) const {
    if (std::isnan(v) || !valid) return false;
    switch (op) {
      case Op::eq: return v == value;
      case Op::lt: return v < value;
      case Op::le: return v <= value;
      case Op::gt: return v > value;
      case Op::ge: return v >= value;
      case Op::exists: return true;
      case Op::range:
        if (low && (low_inclusive ? v < *low : v <= *low)) return false;
        if (high && (high_inclusive ? v > *high : v >= *high)) return false;
        return true;
      case Op::wildcard: return false;
    }
    return false;
  }
};

std::string format_number(double v) {
  if (std::isnan(v)) return {};
  if (std::floor(v) == v && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<std::int64_t>(v));
  return fmt::format("{}", v);
}

bool is_number(FieldType t) { return t == FieldType::number || t == FieldType::time; }

const std::vector<std::string> kDefaultProjection{"kind",       "online",           "os.name",
                                                  "os.version", "firmware.version", "last_seen"};

}  // namespace

FactPart part_of(std::string_view field) {
  if (field.starts_with("telemetry.")) return FactPart::telemetry;
  for (std::string_view p : {"software.", "hardware.", "os.", "cpu.", "memory.", "firmware."}) {
    if (field.starts_with(p)) return FactPart::inventory;
  }
  return FactPart::record;
}

struct FleetIndex::Impl {
  std::vector<std::string> slot_id;
  std::unordered_map<std::string, std::uint32_t> slot_of;
  std::vector<std::uint32_t> free_slots;
  SlotSet live;
  std::map<std::string, TextColumn, std::less<>> text;
  std::map<std::string, NumberColumn, std::less<>> numbers;
  std::map<std::string, MultiColumn, std::less<>> multi;     // tag, group
  std::map<std::string, MultiColumn, std::less<>> software;  // package -> its versions
  // Per slot: the multi-valued entries it holds, to remove them on update.
  struct MultiEntry {
    MultiColumn* column;
    std::uint32_t value;
    FactPart part;
  };
  std::vector<std::vector<MultiEntry>> slot_multi;

  std::size_t slots() const { return slot_id.size(); }

  void clear_slot(std::uint32_t slot, std::optional<FactPart> part) {
    for (auto& [name, c] : text) {
      if (!part || (part_of(name) == *part && name != "id")) c.clear(slot);
    }
    for (auto& [name, c] : numbers) {
      if (!part || part_of(name) == *part) c.clear(slot);
    }
    if (slot < slot_multi.size()) {
      auto& entries = slot_multi[slot];
      std::erase_if(entries, [&](const MultiEntry& e) {
        if (part && e.part != *part) return false;
        e.column->postings[e.value].remove(slot);
        return true;
      });
      if (entries.empty()) entries.shrink_to_fit();
    }
  }

  std::uint32_t slot_for(const std::string& id) {
    if (auto it = slot_of.find(id); it != slot_of.end()) return it->second;
    std::uint32_t slot = 0;
    if (!free_slots.empty()) {
      slot = free_slots.back();
      free_slots.pop_back();
      slot_id[slot] = id;
    } else {
      slot = static_cast<std::uint32_t>(slot_id.size());
      slot_id.push_back(id);
    }
    slot_of.emplace(id, slot);
    live.set(slot);
    insert(slot, "id", id);
    return slot;
  }

  void insert(std::uint32_t slot, const std::string& field, const std::string& value) {
    auto info = query::find_field(field);
    if (!info) return;
    if (field == "software.name") return;  // derived from the software.<package> entries
    if (slot >= slot_multi.size()) slot_multi.resize(slot + 1);
    if (info->family && field.starts_with("software.")) {
      auto& column = software[field.substr(9)];
      if (column.package.empty()) column.package = field.substr(9);
      slot_multi[slot].push_back({&column, column.put(slot, value, slots()), FactPart::inventory});
      return;
    }
    if (info->multi) {
      auto& column = multi[field];
      slot_multi[slot].push_back({&column, column.put(slot, value, slots()), part_of(field)});
      return;
    }
    if (is_number(info->type)) {
      if (auto v = query::parse_number(value)) numbers[field].put(slot, *v, slots());
      return;
    }
    auto [it, inserted] = text.try_emplace(field);
    if (inserted) {
      it->second.type = info->type;
      if (field == "id") {
        it->second.postings_on = false;  // one value per device: the slot map answers id:X
      }
    }
    it->second.put(slot, value, slots());
  }

  // Slots matching one predicate, evaluated over all live slots or only `candidates`.
  SlotSet eval_predicate(const Predicate& p, std::int64_t now_ms, const SlotSet* candidates, std::string* how) const {
    SlotSet out;
    out.resize(slots());
    const std::string& field = p.field;
    auto note = [&](std::string what) {
      if (how != nullptr) *how = std::move(what);
    };
    if (field == "id" && p.op == Op::eq) {
      if (auto it = slot_of.find(p.value); it != slot_of.end()) out.set(it->second);
      note("slot map lookup");
      return out;
    }
    if (field == "software.name" || (p.info.family && field.starts_with("software."))) {
      const bool by_name = field == "software.name";
      std::size_t used = 0;
      auto visit = [&](const std::string& package, const MultiColumn& versions) {
        if (by_name && !query::value_matches(p, package, now_ms)) return;
        for (std::size_t v = 0; v < versions.values.size(); ++v) {
          if (by_name || query::value_matches(p, versions.values[v], now_ms)) {
            versions.postings[v].add_to(out);
            ++used;
          }
        }
      };
      if (by_name) {
        for (const auto& [package, versions] : software) visit(package, versions);
      } else if (auto it = software.find(std::string_view(field).substr(9)); it != software.end()) {
        visit(it->first, it->second);
      }
      note(fmt::format("software postings: {} version sets", used));
      return out;
    }
    if (auto it = multi.find(field); it != multi.end()) {
      std::size_t used = 0;
      for (std::size_t v = 0; v < it->second.values.size(); ++v) {
        if (query::value_matches(p, it->second.values[v], now_ms)) {
          it->second.postings[v].add_to(out);
          ++used;
        }
      }
      note(fmt::format("postings: {} of {} values", used, it->second.values.size()));
      return out;
    }
    if (auto it = numbers.find(field); it != numbers.end()) {
      const NumericTest test(p, now_ms);
      const auto& col = it->second;
      if (candidates != nullptr) {
        candidates->for_each([&](std::uint32_t s) {
          if (test(col.get(s))) out.set(s);
        });
        note(fmt::format("filtered scan of {} candidates", candidates->count()));
      } else {
        for (std::uint32_t s = 0; s < col.value_of.size(); ++s) {
          if (test(col.value_of[s])) out.set(s);
        }
        note(fmt::format("column scan of {} slots", col.value_of.size()));
      }
      return out;
    }
    if (auto it = text.find(field); it != text.end()) {
      const auto& col = it->second;
      // Decide each distinct value once.
      std::vector<char> hit(col.values.size(), 0);
      std::size_t used = 0;
      if (p.op == Op::eq && col.type == FieldType::text) {
        if (auto v = col.ids.find(p.value); v != col.ids.end()) {
          hit[v->second] = 1;
          used = 1;
        }
      } else {
        for (std::size_t v = 0; v < col.values.size(); ++v) {
          if (col.counts[v] > 0 && query::value_matches(p, col.values[v], now_ms)) {
            hit[v] = 1;
            ++used;
          }
        }
      }
      if (col.postings_on && candidates == nullptr) {
        for (std::size_t v = 0; v < hit.size(); ++v) {
          if (hit[v] != 0) col.postings[v].add_to(out);
        }
        note(fmt::format("postings: {} of {} values", used, col.values.size()));
      } else if (candidates != nullptr) {
        candidates->for_each([&](std::uint32_t s) {
          const auto v = col.get(s);
          if (v != 0 && hit[v - 1] != 0) out.set(s);
        });
        note(fmt::format("filtered scan of {} candidates", candidates->count()));
      } else {
        for (std::uint32_t s = 0; s < col.value_of.size(); ++s) {
          const auto v = col.value_of[s];
          if (v != 0 && hit[v - 1] != 0) out.set(s);
        }
        note(fmt::format("column scan: {} of {} values", used, col.values.size()));
      }
      return out;
    }
    note("no device has this field");
    return out;  // a field no device has: nothing matches
  }

  // Whether a predicate is answered from postings (cheap regardless of fleet size).
  bool has_postings(const Predicate& p) const {
    if (p.field == "id" && p.op == Op::eq) return true;
    if (p.field == "software.name" || (p.info.family && p.field.starts_with("software.")) || multi.contains(p.field)) {
      return true;
    }
    auto it = text.find(p.field);
    return it != text.end() && it->second.postings_on;
  }

  SlotSet eval(const Node& n, std::int64_t now_ms, const SlotSet* candidates, int depth,
               std::vector<std::string>* plan) const {
    auto line = [&](const std::string& what, const SlotSet& result) {
      if (plan != nullptr) plan->push_back(fmt::format("{:{}}{} -> {} devices", "", depth * 2, what, result.count()));
    };
    switch (n.kind) {
      case Node::Kind::all: {
        SlotSet out = live;
        if (candidates != nullptr) out.and_with(*candidates);
        line("ALL", out);
        return out;
      }
      case Node::Kind::predicate: {
        std::string how;
        SlotSet out = eval_predicate(n.predicate, now_ms, candidates, &how);
        out.and_with(live);
        line(fmt::format("{} [{}]", query::to_string(n), how), out);
        return out;
      }
      case Node::Kind::not_: {
        std::vector<std::string> sub;
        SlotSet inner = eval(n.children.front(), now_ms, candidates, depth + 1, plan != nullptr ? &sub : nullptr);
        SlotSet out = live;
        if (candidates != nullptr) out.and_with(*candidates);
        out.and_not(inner);
        line("NOT", out);
        if (plan != nullptr) plan->insert(plan->end(), sub.begin(), sub.end());
        return out;
      }
      case Node::Kind::or_: {
        std::vector<std::string> sub;
        SlotSet out;
        out.resize(slots());
        for (const auto& c : n.children)
          out.or_with(eval(c, now_ms, candidates, depth + 1, plan != nullptr ? &sub : nullptr));
        line("OR", out);
        if (plan != nullptr) plan->insert(plan->end(), sub.begin(), sub.end());
        return out;
      }
      case Node::Kind::and_: {
        // Children answered from postings first; the rest only look at what survived them.
        std::vector<const Node*> order;
        for (const auto& c : n.children) order.push_back(&c);
        std::stable_partition(order.begin(), order.end(), [&](const Node* c) {
          return c->kind == Node::Kind::predicate && has_postings(c->predicate);
        });
        std::vector<std::string> sub;
        std::optional<SlotSet> acc;
        if (candidates != nullptr) acc = *candidates;
        for (const Node* c : order) {
          const bool indexed = c->kind == Node::Kind::predicate && has_postings(c->predicate);
          SlotSet part = eval(*c, now_ms, indexed || !acc ? candidates : &*acc, depth + 1,
                              plan != nullptr ? &sub : nullptr);
          if (acc) acc->and_with(part);
          else acc = std::move(part);
        }
        line("AND", *acc);
        if (plan != nullptr) plan->insert(plan->end(), sub.begin(), sub.end());
        return std::move(*acc);
      }
    }
    return {};
  }

  std::string value_text(std::uint32_t slot, const std::string& field) const {
    if (field == "id") return slot_id[slot];
    if (auto it = text.find(field); it != text.end()) {
      const auto v = it->second.get(slot);
      return v == 0 ? std::string() : it->second.values[v - 1];
    }
    if (auto it = numbers.find(field); it != numbers.end()) return format_number(it->second.get(slot));
    std::string joined;
    auto add = [&](const std::string& v) {
      if (!joined.empty()) joined += ',';
      joined += v;
    };
    if (slot < slot_multi.size()) {
      std::string last_package;
      for (const auto& e : slot_multi[slot]) {
        if (field == "software.name" && !e.column->package.empty() && e.column->package != last_package) {
          add(e.column->package);
          last_package = e.column->package;
        }
        if (auto it = multi.find(field); it != multi.end() && e.column == &it->second) add(e.column->values[e.value]);
        if (field.starts_with("software.")) {
          if (auto it = software.find(std::string_view(field).substr(9));
              it != software.end() && e.column == &it->second) {
            add(e.column->values[e.value]);
          }
        }
      }
    }
    return joined;
  }
};

FleetIndex::FleetIndex() : impl_(std::make_unique<Impl>()) {}
FleetIndex::~FleetIndex() = default;
FleetIndex::FleetIndex(FleetIndex&&) noexcept = default;
FleetIndex& FleetIndex::operator=(FleetIndex&&) noexcept = default;

std::size_t FleetIndex::size() const { return impl_->slot_of.size(); }

void FleetIndex::upsert(const DeviceFacts& facts) {
  auto& m = *impl_;
  const std::uint32_t slot = m.slot_for(facts.id);
  m.clear_slot(slot, std::nullopt);
  m.insert(slot, "id", facts.id);
  for (const auto& [field, value] : facts.values) m.insert(slot, field, value);
}

void FleetIndex::update(const DeviceFacts& facts, FactPart part) {
  auto& m = *impl_;
  const std::uint32_t slot = m.slot_for(facts.id);
  m.clear_slot(slot, part);
  for (const auto& [field, value] : facts.values) {
    if (part_of(field) == part) m.insert(slot, field, value);
  }
}

void FleetIndex::erase(std::string_view id) {
  auto& m = *impl_;
  auto it = m.slot_of.find(std::string(id));
  if (it == m.slot_of.end()) return;
  const auto slot = it->second;
  m.clear_slot(slot, std::nullopt);
  m.live.reset(slot);
  m.slot_id[slot].clear();
  m.free_slots.push_back(slot);
  m.slot_of.erase(it);
}

std::uint64_t FleetIndex::count(const Node& where, std::int64_t now_ms) const {
  if (where.kind == Node::Kind::all) return size();
  return impl_->eval(where, now_ms, nullptr, 0, nullptr).count();
}

std::string FleetIndex::explain(const Node& where, std::int64_t now_ms) const {
  std::vector<std::string> plan;
  (void)impl_->eval(where, now_ms, nullptr, 0, &plan);
  std::string out;
  for (const auto& l : plan) out += l + "\n";
  return out;
}

Result<std::vector<std::pair<std::string, std::uint64_t>>> FleetIndex::count_by(std::string_view field,
                                                                                const Node& where,
                                                                                std::int64_t now_ms) const {
  const auto& m = *impl_;
  auto info = query::find_field(field);
  if (!info) return make_error(Errc::invalid_argument, "unknown field '{}'", field);
  const SlotSet matching = m.eval(where, now_ms, nullptr, 0, nullptr);
  std::map<std::string, std::uint64_t> counts;
  if (auto it = m.text.find(field); it != m.text.end()) {
    std::vector<std::uint64_t> by_value(it->second.values.size() + 1, 0);
    matching.for_each([&](std::uint32_t s) { ++by_value[it->second.get(s)]; });
    for (std::size_t v = 0; v < by_value.size(); ++v) {
      if (by_value[v] > 0) counts[v == 0 ? std::string() : it->second.values[v - 1]] += by_value[v];
    }
  } else if (field == "id") {
    matching.for_each([&](std::uint32_t s) { ++counts[m.slot_id[s]]; });
  } else {
    matching.for_each([&](std::uint32_t s) {
      std::string v = m.value_text(s, std::string(field));
      if (info->multi || info->family) {
        if (v.empty()) {
          ++counts[""];
          return;
        }
        std::string_view rest = v;
        while (!rest.empty()) {
          const auto comma = rest.find(',');
          ++counts[std::string(rest.substr(0, comma))];
          rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
        }
        return;
      }
      ++counts[v];
    });
  }
  std::vector<std::pair<std::string, std::uint64_t>> out(counts.begin(), counts.end());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  return out;
}

Result<Stats> FleetIndex::stats(std::string_view field, const Node& where, std::int64_t now_ms) const {
  const auto& m = *impl_;
  auto info = query::find_field(field);
  if (!info) return make_error(Errc::invalid_argument, "unknown field '{}'", field);
  const SlotSet matching = m.eval(where, now_ms, nullptr, 0, nullptr);
  Stats st;
  if (!is_number(info->type)) {
    auto by = count_by(field, where, now_ms);
    if (!by) return std::move(by).error();
    for (const auto& [v, n] : *by) {
      if (v.empty()) continue;
      st.count += n;
      ++st.distinct;
    }
    return st;
  }
  std::vector<double> values;
  if (auto it = m.numbers.find(field); it != m.numbers.end()) {
    matching.for_each([&](std::uint32_t s) {
      const double v = it->second.get(s);
      if (!std::isnan(v)) values.push_back(v);
    });
  }
  st.count = values.size();
  if (values.empty()) return st;
  std::sort(values.begin(), values.end());
  st.min = values.front();
  st.max = values.back();
  for (double v : values) st.sum += v;
  st.avg = st.sum / static_cast<double>(values.size());
  auto rank = [&](double q) {
    const auto i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::min(values.size() - 1, i == 0 ? 0 : i - 1)];
  };
  st.p50 = rank(0.50);
  st.p90 = rank(0.90);
  st.p99 = rank(0.99);
  st.distinct = static_cast<std::uint64_t>(std::unique(values.begin(), values.end()) - values.begin());
  return st;
}

Result<QueryPage> FleetIndex::query(const Node& where, const QueryOptions& options, std::int64_t now_ms) const {
  const auto& m = *impl_;
  std::string sort_field = "id";
  bool descending = false;
  if (options.sort) {
    auto info = query::find_field(options.sort->field);
    if (!info) return make_error(Errc::invalid_argument, "--sort: unknown field '{}'", options.sort->field);
    if (!info->sortable || info->multi || (info->family && options.sort->field.starts_with("software."))) {
      return make_error(Errc::invalid_argument, "--sort: '{}' has several values per device", options.sort->field);
    }
    sort_field = options.sort->field;
    descending = options.sort->descending;
  }
  for (const auto& f : options.fields) {
    if (f != "id" && !query::find_field(f))
      return make_error(Errc::invalid_argument, "--fields: unknown field '{}'", f);
  }
  const SlotSet matching = m.eval(where, now_ms, nullptr, 0, nullptr);
  QueryPage page;
  page.total = matching.count();

  // Sort keys: numbers compare numerically, versions by version order, text by bytes; devices
  // without the field come last either way; ties by id.
  const auto num_it = m.numbers.find(sort_field);
  const auto text_it = m.text.find(sort_field);
  const bool numeric = num_it != m.numbers.end();
  const bool version = text_it != m.text.end() && text_it->second.type == FieldType::version;
  struct Row {
    std::uint32_t slot;
    double number;
    const std::string* text;
  };
  auto make_row = [&](std::uint32_t s) {
    Row r{s, kAbsent, nullptr};
    if (numeric) r.number = num_it->second.get(s);
    else if (sort_field == "id") r.text = &m.slot_id[s];
    else if (text_it != m.text.end()) {
      const auto v = text_it->second.get(s);
      if (v != 0) r.text = &text_it->second.values[v - 1];
    }
    return r;
  };
  auto absent = [&](const Row& r) { return numeric ? std::isnan(r.number) : r.text == nullptr; };
  auto less = [&](const Row& a, const Row& b) {
    const bool aa = absent(a), ba = absent(b);
    if (aa != ba) return ba;  // present before absent
    if (!aa) {
      int c = 0;
      if (numeric) c = a.number < b.number ? -1 : (a.number > b.number ? 1 : 0);
      else if (version) c = query::compare_versions(*a.text, *b.text);
      else c = a.text->compare(*b.text);
      if (c != 0) return descending ? c > 0 : c < 0;
    }
    return m.slot_id[a.slot] < m.slot_id[b.slot];
  };

  std::optional<Row> after;
  if (!options.cursor.empty()) {
    auto it = m.slot_of.find(options.cursor);
    if (it == m.slot_of.end()) {
      return make_error(Errc::invalid_argument, "cursor '{}' names no device (it was deleted; start again)",
                        options.cursor);
    }
    after = make_row(it->second);
  }
  std::vector<Row> rows;
  matching.for_each([&](std::uint32_t s) {
    Row r = make_row(s);
    if (!after || less(*after, r)) rows.push_back(r);
  });
  const std::size_t limit = std::max<std::uint32_t>(1, options.limit);
  const std::size_t take = std::min(limit, rows.size());
  std::partial_sort(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(take), rows.end(), less);
  const auto& projection = options.fields.empty() ? kDefaultProjection : options.fields;
  for (std::size_t i = 0; i < take; ++i) {
    QueryRow out;
    out.id = m.slot_id[rows[i].slot];
    for (const auto& f : projection) out.values.emplace_back(f, m.value_text(rows[i].slot, f));
    page.rows.push_back(std::move(out));
  }
  // The cursor is the last device of the page: keyset pagination stays correct while devices
  // change around it (as long as that device still exists).
  if (rows.size() > take) page.next_cursor = page.rows.back().id;
  return page;
}

std::optional<DeviceFacts> FleetIndex::facts(std::string_view id) const {
  const auto& m = *impl_;
  auto it = m.slot_of.find(std::string(id));
  if (it == m.slot_of.end()) return std::nullopt;
  const auto slot = it->second;
  DeviceFacts f;
  f.id = std::string(id);
  for (const auto& [name, c] : m.text) {
    if (const auto v = c.get(slot); v != 0 && name != "id") f.values.emplace_back(name, c.values[v - 1]);
  }
  for (const auto& [name, c] : m.numbers) {
    if (const double v = c.get(slot); !std::isnan(v)) f.values.emplace_back(name, format_number(v));
  }
  if (slot < m.slot_multi.size()) {
    for (const auto& e : m.slot_multi[slot]) {
      for (const auto& [name, c] : m.multi) {
        if (&c == e.column) f.values.emplace_back(name, c.values[e.value]);
      }
      for (const auto& [package, c] : m.software) {
        if (&c == e.column) f.values.emplace_back("software." + package, c.values[e.value]);
      }
    }
  }
  return f;
}

std::pair<std::size_t, std::size_t> FleetIndex::memory_bytes() const {
  const auto& m = *impl_;
  std::size_t software = 0, other = 0;
  for (const auto& [p, c] : m.software) software += c.bytes() + p.capacity() + 64;
  for (const auto& v : m.slot_multi) software += (v.capacity() + 1) * sizeof(Impl::MultiEntry);
  for (const auto& [n, c] : m.text) other += c.bytes();
  for (const auto& [n, c] : m.numbers) other += c.value_of.capacity() * sizeof(double);
  for (const auto& [n, c] : m.multi) other += c.bytes();
  for (const auto& id : m.slot_id) other += id.capacity() + sizeof(std::string);
  other += m.slot_of.size() * (sizeof(std::string) + 32 + 24) + m.live.bytes();
  return {software, other};
}

}  // namespace flotilla::manager
