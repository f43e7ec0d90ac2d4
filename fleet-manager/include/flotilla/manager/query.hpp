#pragma once
// The fleet query language: syntax tree, parser and the field catalog. docs/query.md is the
// contract this file implements. Pure: no I/O, no index; the planner and the reference
// evaluator both work on this tree.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"

namespace flotilla::manager::query {

// How values of a field compare.
enum class FieldType {
  text,     // exact text; wildcards with * and ?; ranges compare bytes
  version,  // dpkg-style version ordering: 1.2.10 > 1.2.9, 3.0.11-1~deb12u2 < 3.0.11-1
  number,   // double; ranges numeric
  boolean,  // true / false
  time,     // Unix ms; values as integers or relative "-5m" (now minus five minutes)
};

struct FieldInfo {
  std::string_view name;  // e.g. "firmware.version"; families end in '.' (e.g. "software.")
  FieldType type;
  bool multi = false;   // several values per device (tags, group membership): any one matches
  bool family = false;  // name is a prefix: software.<package>, attr.<key>, telemetry.<metric>
  bool sortable = true;
  std::string_view help;
};

// Every queryable field and field family.
std::span<const FieldInfo> fields();
// Resolves a field name (exact, or a family prefix followed by a key). nullopt when unknown.
std::optional<FieldInfo> find_field(std::string_view name);

enum class Op {
  eq,        // field:value
  wildcard,  // field:val*ue (* any run, ? one character)
  lt,
  le,
  gt,
  ge,
  range,   // field:[low TO high] inclusive, field:{low TO high} exclusive; * for an open end
  exists,  // field:* or _exists_:field
};

struct Predicate {
  std::string field;  // as written, e.g. "software.openssl"
  FieldInfo info;
  Op op = Op::eq;
  std::string value;                     // eq, wildcard, lt..ge
  std::optional<std::string> low, high;  // range; nullopt = open end
  bool low_inclusive = true, high_inclusive = true;
  std::size_t position = 0;  // byte offset of the field in the query text
};

struct Node {
  enum class Kind { all, predicate, and_, or_, not_ };  // NOLINT(readability-identifier-naming): keywords
  Kind kind = Kind::all;                                // `all`: the empty query, every device
  Predicate predicate;                                  // kind == predicate
  std::vector<Node> children;                           // and_/or_: two or more; not_: exactly one
};

// Parses a query. Errors: invalid_argument whose message names the byte position, shows the
// query with a caret under it, and says what was expected, e.g.
//   "position 17: expected a value after ':'\n  os.name:Debian AND\n                  ^".
Result<Node> parse(std::string_view text);

// Canonical text of a tree (fully parenthesised), for explain output and tests.
std::string to_string(const Node& node);

// dpkg ordering of version strings (epoch:upstream-revision, ~ sorts before everything).
// Negative, zero or positive like strcmp.
int compare_versions(std::string_view a, std::string_view b);

// A number value of the language: decimal as std::from_chars reads it (42, -1.5, 1e9); nullopt
// when malformed or not finite.
std::optional<double> parse_number(std::string_view text);

// A time value of the language as Unix ms: an integer of Unix ms, ISO-8601 UTC
// (2026-11-20, 2026-11-20T10:00:00Z, 2026-11-20T10:00:00.250Z) or relative to `now_ms`
// (-5m; units ms, s, m, h, d). nullopt when malformed.
std::optional<std::int64_t> resolve_time(std::string_view text, std::int64_t now_ms);

}  // namespace flotilla::manager::query
