#include "flotilla/manager/query_eval.hpp"

#include <charconv>
#include <optional>
#include <system_error>

namespace flotilla::manager::query {
namespace {

// Index just past the UTF-8 character at `i` (a stray byte counts as one character).
std::size_t next_char(std::string_view s, std::size_t i) {
  ++i;
  while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0U) == 0x80U) ++i;
  return i;
}

// '*' matches any run of characters, '?' exactly one character; everything else itself.
bool glob_match(std::string_view pattern, std::string_view value) {
  std::size_t p = 0;
  std::size_t v = 0;
  std::size_t star = std::string_view::npos;  // pattern index of the last '*'
  std::size_t star_v = 0;                     // value index that '*' resumes from
  while (v < value.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_v = v;
    } else if (p < pattern.size() && pattern[p] == '?') {
      ++p;
      v = next_char(value, v);
    } else if (p < pattern.size() && pattern[p] == value[v]) {
      ++p;
      ++v;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      star_v = next_char(value, star_v);
      v = star_v;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

int sign(int v) { return (v > 0) - (v < 0); }

// Stored times are decimal Unix ms.
std::optional<std::int64_t> stored_time(std::string_view value) {
  std::int64_t ms = 0;
  const char* end = value.data() + value.size();
  const auto [ptr, ec] = std::from_chars(value.data(), end, ms);
  if (ec != std::errc{} || ptr != end) return std::nullopt;
  return ms;
}

// Order of a stored value against a predicate operand; nullopt when either is not a value of
// the field's type (a non-numeric stored number, a malformed time).
std::optional<int> compare(FieldType type, std::string_view stored, std::string_view operand, std::int64_t now_ms) {
  switch (type) {
    case FieldType::text: return sign(stored.compare(operand));
    case FieldType::version: return sign(compare_versions(stored, operand));
    case FieldType::number: {
      const auto a = parse_number(stored);
      const auto b = parse_number(operand);
      if (!a || !b) return std::nullopt;
      return (*a > *b) - (*a < *b);
    }
    case FieldType::time: {
      const auto a = stored_time(stored);
      const auto b = resolve_time(operand, now_ms);
      if (!a || !b) return std::nullopt;
      return (*a > *b) - (*a < *b);
    }
    case FieldType::boolean: return std::nullopt;  // unordered; equality is handled by the caller
  }
  return std::nullopt;
}

bool well_formed(FieldType type, std::string_view stored) {
  switch (type) {
    case FieldType::text:
    case FieldType::version: return true;
    case FieldType::number: return parse_number(stored).has_value();
    case FieldType::time: return stored_time(stored).has_value();
    case FieldType::boolean: return false;  // booleans have no ranges
  }
  return false;
}

bool predicate_matches(const Predicate& predicate, const DeviceView& device, std::int64_t now_ms,
                       std::vector<std::string>& values) {
  values.clear();
  device.values(predicate.field, values);
  for (const std::string& value : values) {
    if (value_matches(predicate, value, now_ms)) return true;
  }
  return false;
}

bool evaluate(const Node& node, const DeviceView& device, std::int64_t now_ms, std::vector<std::string>& scratch) {
  switch (node.kind) {
    case Node::Kind::all: return true;
    case Node::Kind::predicate: return predicate_matches(node.predicate, device, now_ms, scratch);
    case Node::Kind::not_: return node.children.empty() || !evaluate(node.children.front(), device, now_ms, scratch);
    case Node::Kind::and_:
      for (const Node& child : node.children) {
        if (!evaluate(child, device, now_ms, scratch)) return false;
      }
      return true;
    case Node::Kind::or_:
      for (const Node& child : node.children) {
        if (evaluate(child, device, now_ms, scratch)) return true;
      }
      return false;
  }
  return false;
}

// Like evaluate() but visits every predicate (no short cut) and records a line for each.
bool trace(const Node& node, const DeviceView& device, std::int64_t now_ms, Trace& out) {
  switch (node.kind) {
    case Node::Kind::all: return true;
    case Node::Kind::predicate: {
      TraceLine line;
      line.predicate = to_string(node);
      line.matched = predicate_matches(node.predicate, device, now_ms, line.values);
      out.lines.push_back(std::move(line));
      return out.lines.back().matched;
    }
    case Node::Kind::not_: return node.children.empty() || !trace(node.children.front(), device, now_ms, out);
    case Node::Kind::and_:
    case Node::Kind::or_: {
      const bool is_and = node.kind == Node::Kind::and_;
      bool result = is_and;
      for (const Node& child : node.children) {
        const bool matched = trace(child, device, now_ms, out);
        result = is_and ? (result && matched) : (result || matched);
      }
      return result;
    }
  }
  return false;
}

}  // namespace

bool value_matches(const Predicate& predicate, std::string_view value, std::int64_t now_ms) {
  const FieldType type = predicate.info.type;
  const auto order = [&](std::string_view operand) { return compare(type, value, operand, now_ms); };
  switch (predicate.op) {
    case Op::exists: return true;
    case Op::wildcard: return glob_match(predicate.value, value);
    case Op::eq: {
      if (type == FieldType::boolean) return value == predicate.value && (value == "true" || value == "false");
      const auto c = order(predicate.value);
      return c && *c == 0;
    }
    case Op::lt: {
      const auto c = order(predicate.value);
      return c && *c < 0;
    }
    case Op::le: {
      const auto c = order(predicate.value);
      return c && *c <= 0;
    }
    case Op::gt: {
      const auto c = order(predicate.value);
      return c && *c > 0;
    }
    case Op::ge: {
      const auto c = order(predicate.value);
      return c && *c >= 0;
    }
    case Op::range: {
      if (!well_formed(type, value)) return false;
      if (predicate.low) {
        const auto c = order(*predicate.low);
        if (!c || *c < 0 || (*c == 0 && !predicate.low_inclusive)) return false;
      }
      if (predicate.high) {
        const auto c = order(*predicate.high);
        if (!c || *c > 0 || (*c == 0 && !predicate.high_inclusive)) return false;
      }
      return true;
    }
  }
  return false;
}

bool matches(const Node& query, const DeviceView& device, std::int64_t now_ms) {
  std::vector<std::string> scratch;
  return evaluate(query, device, now_ms, scratch);
}

Trace explain(const Node& query, const DeviceView& device, std::int64_t now_ms) {
  Trace out;
  out.matched = trace(query, device, now_ms, out);
  return out;
}

}  // namespace flotilla::manager::query
