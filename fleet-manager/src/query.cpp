#include "flotilla/manager/query.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <limits>
#include <utility>

#include <fmt/format.h>

namespace flotilla::manager::query {
namespace {

constexpr std::size_t kMaxQueryBytes = 4096;
constexpr int kMaxDepth = 32;
constexpr int kMaxPredicates = 256;
// Relative times reach back at most this far (about 31,700 years), so now - offset never
// overflows.
constexpr std::int64_t kMaxRelativeMs = 1'000'000'000'000'000;

constexpr FieldInfo plain(std::string_view name, FieldType type, std::string_view help) {
  return FieldInfo{name, type, false, false, true, help};
}
constexpr FieldInfo multi(std::string_view name, FieldType type, std::string_view help) {
  return FieldInfo{name, type, true, false, false, help};
}
constexpr FieldInfo family(std::string_view name, FieldType type, std::string_view help) {
  return FieldInfo{name, type, false, true, true, help};
}

constexpr std::array kFields{
    plain("id", FieldType::text, "device id"),
    plain("kind", FieldType::text, "device kind: computer, printer, sensor, gateway or unknown"),
    plain("tenant", FieldType::text, "tenant the device belongs to"),
    plain("site", FieldType::text, "site (building, branch) the device is assigned to"),
    plain("gateway", FieldType::text, "id of the gateway the device reports through"),
    plain("hardware.vendor", FieldType::text, "hardware vendor, e.g. Dell Inc."),
    plain("hardware.model", FieldType::text, "hardware model"),
    plain("hardware.serial", FieldType::text, "hardware serial number"),
    plain("os.name", FieldType::text, "operating system name, e.g. Debian"),
    plain("os.id", FieldType::text, "operating system id (os-release ID), e.g. debian"),
    plain("cpu.model", FieldType::text, "CPU model name"),
    plain("firmware.version", FieldType::version, "firmware (BIOS or device firmware) version"),
    plain("os.version", FieldType::version, "operating system version, e.g. 12.5"),
    plain("os.kernel", FieldType::version, "kernel release, e.g. 6.1.0-18-amd64"),
    plain("agent.version", FieldType::version, "Flotilla agent version"),
    plain("cpu.cores", FieldType::number, "logical CPU cores"),
    plain("memory.total", FieldType::number, "installed memory in bytes"),
    plain("software.count", FieldType::number, "number of installed packages"),
    plain("telemetry.cpu", FieldType::number, "CPU use in percent"),
    plain("telemetry.load1", FieldType::number, "1-minute load average"),
    plain("telemetry.memory.used_pct", FieldType::number, "memory in use, percent"),
    plain("telemetry.memory.available", FieldType::number, "available memory in bytes"),
    plain("telemetry.disk.free", FieldType::number, "bytes free on / or else the largest mount"),
    plain("telemetry.disk.used_pct", FieldType::number, "percent used of / or else the largest mount"),
    plain("telemetry.uptime", FieldType::number, "seconds since boot"),
    plain("telemetry.cpu.temp", FieldType::number, "highest temperature reading in degrees Celsius"),
    plain("telemetry.battery", FieldType::number, "lowest battery charge in percent"),
    plain("online", FieldType::boolean, "connected to the broker now: true or false"),
    plain("last_seen", FieldType::time, "time of the last message from the device (Unix ms)"),
    plain("first_seen", FieldType::time, "time of the first message from the device (Unix ms)"),
    plain("connected_since", FieldType::time, "start of the current connection (Unix ms)"),
    plain("config.desired", FieldType::text, "version of the desired configuration published to the device"),
    plain("config.applied", FieldType::text, "version of the desired configuration the device reports applying"),
    plain("config.drift", FieldType::boolean, "true while the applied configuration differs from the desired one"),
    plain("patch.pending", FieldType::number, "updates available at the last patch.scan"),
    plain("patch.security_pending", FieldType::number, "security updates available at the last patch.scan"),
    plain("patch.scanned_at", FieldType::time, "time of the last patch.scan (Unix ms)"),
    multi("tag", FieldType::text, "operator tags; matches if any tag matches"),
    multi("group", FieldType::text, "groups the device belongs to; matches if any group matches"),
    multi("software.name", FieldType::text, "names of installed packages; matches if any name matches"),
    family("software.", FieldType::version, "software.<package>: installed version of a package"),
    family("attr.", FieldType::text, "attr.<key>: operator attribute"),
    family("telemetry.", FieldType::number, "telemetry.<metric>: any other metric of the telemetry map"),
};

constexpr std::array<std::string_view, 5> kKinds{"computer", "printer", "sensor", "gateway", "unknown"};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_lower(char c) { return c >= 'a' && c <= 'z'; }
bool is_alpha(char c) { return is_lower(c) || (c >= 'A' && c <= 'Z'); }
bool is_alnum(char c) { return is_alpha(c) || is_digit(c); }
bool is_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0U) == 0x80U; }
bool is_control(char c) { return static_cast<unsigned char>(c) < 0x20U || c == 0x7F; }

// Characters of field names and keywords.
bool is_word_char(char c) { return is_alnum(c) || c == '_' || c == '.' || c == '+' || c == '-'; }
// Characters of unquoted values; bytes of UTF-8 sequences are allowed too.
bool is_bare_char(char c) {
  return static_cast<unsigned char>(c) >= 0x80U || is_alnum(c) ||
         std::string_view("._-/+*?~:@").find(c) != std::string_view::npos;
}
bool has_wildcard(std::string_view s) { return s.find_first_of("*?") != std::string_view::npos; }

bool all_of(std::string_view s, bool (*pred)(char)) { return std::all_of(s.begin(), s.end(), pred); }

bool valid_package(std::string_view s) {
  if (s.size() < 2 || !(is_lower(s[0]) || is_digit(s[0]))) return false;
  return all_of(s, [](char c) { return is_lower(c) || is_digit(c) || c == '+' || c == '.' || c == '-'; });
}
bool valid_key(std::string_view s) {
  return !s.empty() && all_of(s, [](char c) { return is_alnum(c) || c == '_' || c == '.' || c == '-'; });
}
bool valid_family_key(std::string_view family_name, std::string_view key) {
  return family_name == "software." ? valid_package(key) : valid_key(key);
}

std::string describe(char c) {
  if (c == '\'') return "\"'\"";
  if (is_control(c) || static_cast<unsigned char>(c) >= 0x80U) {
    return fmt::format("byte 0x{:02x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
  }
  return fmt::format("'{}'", c);
}

std::string_view type_name(FieldType type) {
  switch (type) {
    case FieldType::text: return "text";
    case FieldType::version: return "version";
    case FieldType::number: return "number";
    case FieldType::boolean: return "boolean";
    case FieldType::time: return "time";
  }
  return "unknown";
}

// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
// neighbours cost one each.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

std::string unknown_field_message(std::string_view name) {
  for (const FieldInfo& f : kFields) {
    if (!f.family || !name.starts_with(f.name)) continue;
    const std::string_view key = name.substr(f.name.size());
    const std::string_view what = f.name == "software." ? "package name" : f.name == "attr." ? "key" : "metric name";
    if (key.empty()) return fmt::format("expected a {} after '{}'", what, f.name);
    if (f.name == "software.") {
      std::string lower(key);
      std::transform(lower.begin(), lower.end(), lower.begin(),
                     [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; });
      std::string message = fmt::format(
          "'{}' is not a package name: Debian package names are lowercase letters, digits, '+', '-' and '.', at "
          "least 2 characters, starting with a letter or digit",
          key);
      if (lower != key && valid_package(lower)) message += fmt::format("; did you mean software.{}?", lower);
      return message;
    }
    return fmt::format("'{}' is not a valid {} after '{}': use letters, digits, '_', '.' and '-'", key, what, f.name);
  }
  for (const FieldInfo& f : kFields) {
    if (f.family && name.size() + 1 == f.name.size() && f.name.starts_with(name)) {
      return fmt::format("'{}' is a field family: write {}<{}>", name, f.name,
                         f.name == "software." ? "package"
                         : f.name == "attr."   ? "key"
                                               : "metric");
    }
  }
  std::vector<std::pair<std::size_t, std::string>> near;
  for (const FieldInfo& f : kFields) {
    if (f.family) {
      const std::size_t dot = name.find('.');
      if (dot == std::string_view::npos) continue;
      const std::string_view head = name.substr(0, dot + 1);
      const std::string_view key = name.substr(dot + 1);
      const std::size_t d = edit_distance(head, f.name);
      if (d <= 2 && valid_family_key(f.name, key)) near.emplace_back(d, fmt::format("{}{}", f.name, key));
    } else if (const std::size_t d = edit_distance(name, f.name); d <= 2) {
      near.emplace_back(d, std::string(f.name));
    } else if (f.name.size() > name.size() && f.name.starts_with(name) && f.name[name.size()] == '.') {
      near.emplace_back(3, std::string(f.name));  // "cpu" -> cpu.cores, cpu.model
    }
  }
  std::sort(near.begin(), near.end());
  if (near.empty()) {
    return fmt::format(
        "unknown field '{}'; fields are listed in docs/query.md, families are software.<package>, attr.<key> and "
        "telemetry.<metric>",
        name);
  }
  std::string list;
  for (std::size_t i = 0; i < near.size() && i < 3; ++i) {
    if (i > 0) list += " or ";
    list += near[i].second;
  }
  return fmt::format("unknown field '{}'; did you mean {}?", name, list);
}

// The query line and a caret under byte `pos`; long queries are cut to a window around it.
std::string caret_excerpt(std::string_view text, std::size_t pos) {
  constexpr std::size_t kWindow = 60;
  std::size_t begin = 0;
  std::size_t end = text.size();
  if (text.size() > 2 * kWindow) {
    begin = pos > kWindow ? pos - kWindow : 0;
    end = std::min(text.size(), pos + kWindow);
    while (begin > 0 && is_continuation(text[begin])) --begin;
    while (end < text.size() && is_continuation(text[end])) ++end;
  }
  std::string line = "  ";
  std::string caret = "  ";
  if (begin > 0) {
    line += "...";
    caret += "   ";
  }
  for (std::size_t i = begin; i < end; ++i) {
    line += is_control(text[i]) ? ' ' : text[i];
    if (i < pos && !is_continuation(text[i])) caret += ' ';
  }
  if (end < text.size()) line += "...";
  caret += '^';
  return line + "\n" + caret;
}

int sign(int v) { return (v > 0) - (v < 0); }

// Compares two values of a field type where both are known at parse time; nullopt when they
// cannot be ordered without a clock (a relative and an absolute time) or are malformed.
std::optional<int> static_compare(FieldType type, std::string_view a, std::string_view b) {
  switch (type) {
    case FieldType::text: return sign(a.compare(b));
    case FieldType::version: return sign(compare_versions(a, b));
    case FieldType::number: {
      const auto x = parse_number(a);
      const auto y = parse_number(b);
      if (!x || !y) return std::nullopt;
      return (*x > *y) - (*x < *y);
    }
    case FieldType::time: {
      if (a.starts_with('-') != b.starts_with('-')) return std::nullopt;
      const auto x = resolve_time(a, 0);
      const auto y = resolve_time(b, 0);
      if (!x || !y) return std::nullopt;
      return (*x > *y) - (*x < *y);
    }
    case FieldType::boolean: return std::nullopt;
  }
  return std::nullopt;
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Result<Node> run() {
    if (text_.size() > kMaxQueryBytes) {
      return fail(kMaxQueryBytes, fmt::format("query is {} bytes long; the limit is {}", text_.size(), kMaxQueryBytes));
    }
    skip_ws();
    if (at_end()) return Node{};
    auto node = parse_or("");
    if (!node) return node;
    skip_ws();
    // parse_or stops only at the end or at a ')' it did not open.
    if (!at_end()) return fail(pos_, "unexpected ')' without a matching '('");
    if (const auto deep = too_deep(*node, 0)) {
      return fail(*deep, fmt::format("query nests deeper than {} levels of AND, OR and NOT", kMaxDepth));
    }
    return node;
  }

 private:
  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }
  void skip_ws() {
    while (!at_end() && is_space(peek())) ++pos_;
  }
  // End of a predicate: whitespace, ')' or the end of the query.
  bool at_term_end() const { return at_end() || is_space(peek()) || peek() == ')'; }
  std::string_view peek_word() const {
    std::size_t end = pos_;
    while (end < text_.size() && is_word_char(text_[end])) ++end;
    return text_.substr(pos_, end - pos_);
  }
  std::string_view read_word() {
    const std::string_view word = peek_word();
    pos_ += word.size();
    return word;
  }
  std::string_view read_bare() {
    const std::size_t start = pos_;
    while (!at_end() && is_bare_char(peek())) ++pos_;
    return text_.substr(start, pos_ - start);
  }

  Error fail(std::size_t pos, std::string_view message) const {
    return make_error(Errc::invalid_argument, "position {}: {}\n{}", pos, message, caret_excerpt(text_, pos));
  }

  static std::string expected_term(std::string_view after) {
    return after.empty() ? std::string("expected a term: field:value, '(' or NOT")
                         : fmt::format("expected a term {}: field:value, '(' or NOT", after);
  }

  static std::optional<std::size_t> too_deep(const Node& node, int depth) {
    if (node.kind == Node::Kind::predicate) {
      if (depth > kMaxDepth) return node.predicate.position;
      return std::nullopt;
    }
    for (const Node& child : node.children) {
      if (auto pos = too_deep(child, depth + 1)) return pos;
    }
    return std::nullopt;
  }

  static Node combine(Node::Kind kind, std::vector<Node> parts) {
    if (parts.size() == 1) return std::move(parts.front());
    Node node;
    node.kind = kind;
    for (Node& part : parts) {
      if (part.kind == kind) {
        for (Node& child : part.children) node.children.push_back(std::move(child));
      } else {
        node.children.push_back(std::move(part));
      }
    }
    return node;
  }

  Result<Node> parse_or(std::string_view after) {
    std::vector<Node> parts;
    auto first = parse_and(after);
    if (!first) return first;
    parts.push_back(std::move(first).value());
    for (;;) {
      skip_ws();
      if (peek_word() != "OR") break;
      pos_ += 2;
      auto next = parse_and("after OR");
      if (!next) return next;
      parts.push_back(std::move(next).value());
    }
    return combine(Node::Kind::or_, std::move(parts));
  }

  Result<Node> parse_and(std::string_view after) {
    std::vector<Node> parts;
    auto first = parse_unary(after, false);
    if (!first) return first;
    parts.push_back(std::move(first).value());
    for (;;) {
      skip_ws();
      if (at_end() || peek() == ')') break;
      const std::string_view word = peek_word();
      if (word == "OR") break;
      Result<Node> next = Node{};
      if (word == "AND") {
        pos_ += 3;
        next = parse_unary("after AND", false);
      } else {
        next = parse_unary("", true);  // implicit AND
      }
      if (!next) return next;
      parts.push_back(std::move(next).value());
    }
    return combine(Node::Kind::and_, std::move(parts));
  }

  // `implicit`: a term directly after another one, where AND, OR and ')' were possible too.
  Result<Node> parse_unary(std::string_view after, bool implicit) {
    skip_ws();
    const std::size_t start = pos_;
    if (at_end()) return fail(start, expected_term(after));
    const char c = peek();
    const std::string_view word = peek_word();
    if (word == "NOT") {
      if (depth_ + 1 > kMaxDepth)
        return fail(start, fmt::format("query nests deeper than {} levels of parentheses and NOT", kMaxDepth));
      pos_ += 3;
      ++depth_;
      auto child = parse_unary("after NOT", false);
      --depth_;
      if (!child) return child;
      Node node;
      node.kind = Node::Kind::not_;
      node.children.push_back(std::move(child).value());
      return node;
    }
    if (word == "AND" || word == "OR") return fail(start, fmt::format("{}, found {}", expected_term(after), word));
    if (c == '(') return parse_group();
    if (c == ')') {
      if (after.empty()) return fail(start, "unexpected ')' without a matching '('");
      return fail(start, fmt::format("{}, found ')'", expected_term(after)));
    }
    if (word.empty() || word.starts_with('-')) {
      std::string message = fmt::format("unexpected {}: ", describe(c));
      message += implicit ? "expected AND, OR, NOT, ')', '(' or a field name" : "expected a field name, '(' or NOT";
      if (c == '-' || c == '!') message += " (negate with NOT)";
      if (c == '&') message += " (write AND)";
      if (c == '|') message += " (write OR)";
      if (c == '"' || c == '*') message += " (a value needs a field: field:value)";
      return fail(start, message);
    }
    return parse_predicate();
  }

  Result<Node> parse_group() {
    const std::size_t open = pos_;
    if (depth_ + 1 > kMaxDepth)
      return fail(open, fmt::format("query nests deeper than {} levels of parentheses and NOT", kMaxDepth));
    ++pos_;
    ++depth_;
    skip_ws();
    if (!at_end() && peek() == ')') return fail(pos_, "empty parentheses: expected a term after '('");
    auto inner = parse_or("after '('");
    if (!inner) return inner;
    skip_ws();
    if (at_end()) return fail(pos_, fmt::format("expected ')' to close the '(' at position {}", open));
    ++pos_;
    --depth_;
    return inner;
  }

  Result<Node> parse_predicate() {
    const std::size_t start = pos_;
    if (++predicates_ > kMaxPredicates) {
      return fail(start, fmt::format("more than {} predicates in one query", kMaxPredicates));
    }
    const std::string_view name = read_word();
    Node node;
    node.kind = Node::Kind::predicate;
    Predicate& p = node.predicate;
    p.position = start;

    if (name == "_exists_") {
      if (at_end() || peek() != ':') return fail(pos_, "expected ':' after _exists_ (_exists_:field)");
      ++pos_;
      const std::size_t field_pos = pos_;
      const std::string_view field = read_word();
      if (field.empty()) return fail(field_pos, "expected a field name after '_exists_:'");
      const auto info = find_field(field);
      if (!info) return fail(field_pos, unknown_field_message(field));
      if (!at_term_end()) return fail(pos_, fmt::format("unexpected {} after the field name", describe(peek())));
      p.field = field;
      p.info = *info;
      p.op = Op::exists;
      return node;
    }

    const bool op_follows = !at_end() && (peek() == ':' || peek() == '<' || peek() == '>');
    if (!op_follows && (name == "and" || name == "or" || name == "not")) {
      std::string upper(name);
      for (char& c : upper) c = static_cast<char>(c - 'a' + 'A');
      return fail(start, fmt::format("unknown field '{}'; operators are uppercase: {}", name, upper));
    }
    const auto info = find_field(name);
    if (!info) return fail(start, unknown_field_message(name));
    p.field = name;
    p.info = *info;

    if (at_end() || (peek() != ':' && peek() != '<' && peek() != '>')) {
      if (!at_end() && peek() == '=') return fail(pos_, "use ':' for equality (field:value), not '='");
      return fail(pos_, fmt::format("expected ':', '<', '<=', '>' or '>=' after '{}'", name));
    }
    const char op = peek();
    ++pos_;
    if (op == ':') {
      if (auto st = parse_match(p); !st) return st.error();
      return node;
    }
    const bool equal = !at_end() && peek() == '=';
    if (equal) ++pos_;
    p.op = op == '<' ? (equal ? Op::le : Op::lt) : (equal ? Op::ge : Op::gt);
    const std::size_t value_pos = pos_;
    const std::string_view op_text = text_.substr(value_pos - (equal ? 2 : 1), equal ? 2 : 1);
    if (at_term_end()) return fail(value_pos, fmt::format("expected a value after '{}'", op_text));
    if (peek() == '"') {
      auto value = read_quoted();
      if (!value) return value.error();
      p.value = std::move(value).value();
      if (!at_term_end()) return fail(pos_, fmt::format("unexpected {} after the quoted value", describe(peek())));
    } else if (is_bare_char(peek())) {
      const std::string_view value = read_bare();
      if (has_wildcard(value)) {
        return fail(value_pos, "wildcards are not allowed in comparisons; use field:value* for a wildcard");
      }
      if (!at_term_end()) {
        return fail(pos_,
                    fmt::format("unexpected {} in the value; put such values in double quotes", describe(peek())));
      }
      p.value = value;
    } else {
      return fail(value_pos, fmt::format("unexpected {}: expected a value after '{}'", describe(peek()), op_text));
    }
    if (p.info.type == FieldType::boolean) {
      return fail(value_pos,
                  fmt::format("'{}' is a boolean field: use {}:true or {}:false", p.field, p.field, p.field));
    }
    if (auto st = check_value(p, p.value, value_pos); !st) return st.error();
    return node;
  }

  // After `field:`.
  Status parse_match(Predicate& p) {
    const std::size_t value_pos = pos_;
    if (at_term_end()) return fail(value_pos, "expected a value after ':'");
    const char c = peek();
    if (c == '[' || c == '{') return parse_range(p);
    if (c == '"') {
      auto value = read_quoted();
      if (!value) return value.error();
      if (!at_term_end()) return fail(pos_, fmt::format("unexpected {} after the quoted value", describe(peek())));
      p.op = Op::eq;
      p.value = std::move(value).value();
      return check_value(p, p.value, value_pos);
    }
    if (!is_bare_char(c)) {
      std::string message = fmt::format("unexpected {} after ':': expected a value", describe(c));
      if (c == '<' || c == '>') message += fmt::format(" (write {}{}value, not {}:{}value)", p.field, c, p.field, c);
      if (c == '\'') message += " (quote values with double quotes)";
      return fail(value_pos, message);
    }
    const std::string_view value = read_bare();
    if (!at_term_end()) {
      return fail(pos_, fmt::format("unexpected {} in the value; put such values in double quotes", describe(peek())));
    }
    if (value == "*") {
      p.op = Op::exists;
      return {};
    }
    p.value = value;
    if (!has_wildcard(value)) {
      p.op = Op::eq;
      return check_value(p, value, value_pos);
    }
    p.op = Op::wildcard;
    if (p.info.type != FieldType::text && p.info.type != FieldType::version) {
      return fail(value_pos, fmt::format("wildcards apply to text and version fields; '{}' is a {} field", p.field,
                                         type_name(p.info.type)));
    }
    return {};
  }

  // At '[' or '{'.
  Status parse_range(Predicate& p) {
    const std::size_t open = pos_;
    p.op = Op::range;
    p.low_inclusive = peek() == '[';
    ++pos_;
    skip_ws();
    const std::size_t low_pos = pos_;
    auto low = parse_bound("low");
    if (!low) return low.error();
    const bool low_is_to = *low && **low == "TO" && text_[low_pos] != '"';
    skip_ws();
    if (peek_word() != "TO") {
      if (low_is_to) return fail(low_pos, "expected a low bound before 'TO' (a value, or * for an open end)");
      if (at_end()) return fail(pos_, "expected 'TO' between the range bounds");
      return fail(pos_, fmt::format("expected 'TO' between the range bounds, found {}", describe(peek())));
    }
    pos_ += 2;
    if (at_end() || peek() == ']' || peek() == '}') {
      return fail(pos_, "expected a high bound after 'TO' (a value, or * for an open end)");
    }
    if (!is_space(peek())) return fail(pos_, "expected a space after 'TO'");
    skip_ws();
    const std::size_t high_pos = pos_;
    auto high = parse_bound("high");
    if (!high) return high.error();
    skip_ws();
    if (at_end() || (peek() != ']' && peek() != '}')) return fail(pos_, "expected ']' or '}' to close the range");
    p.high_inclusive = peek() == ']';
    ++pos_;
    if (!at_term_end()) return fail(pos_, fmt::format("unexpected {} after the range", describe(peek())));
    p.low = std::move(*low);
    p.high = std::move(*high);

    if (p.info.type == FieldType::boolean) {
      return fail(open, fmt::format("'{}' is a boolean field: use {}:true or {}:false", p.field, p.field, p.field));
    }
    if (p.low) {
      if (auto st = check_value(p, *p.low, low_pos); !st) return st;
    }
    if (p.high) {
      if (auto st = check_value(p, *p.high, high_pos); !st) return st;
    }
    if (p.low && p.high) {
      const auto order = static_compare(p.info.type, *p.low, *p.high);
      if (order && (*order > 0 || (*order == 0 && !(p.low_inclusive && p.high_inclusive)))) {
        return fail(open, fmt::format("empty range: no value lies between {} and {}", *p.low, *p.high));
      }
    }
    return {};
  }

  // A range bound; nullopt for the open end '*'. Leaves pos_ after the bound.
  Result<std::optional<std::string>> parse_bound(std::string_view which) {
    const std::size_t start = pos_;
    if (at_end() || peek() == ']' || peek() == '}') {
      return fail(start, fmt::format("expected a {} bound (a value, or * for an open end)", which));
    }
    std::optional<std::string> bound;
    if (peek() == '"') {
      auto value = read_quoted();
      if (!value) return value.error();
      bound = std::move(value).value();
    } else if (is_bare_char(peek())) {
      const std::string_view value = read_bare();
      if (value != "*") {
        if (has_wildcard(value)) return fail(start, "wildcards are not allowed in range bounds");
        bound = std::string(value);
      }
    } else {
      return fail(start, fmt::format("unexpected {}: expected a {} bound", describe(peek()), which));
    }
    if (!at_end() && !is_space(peek()) && peek() != ']' && peek() != '}') {
      return fail(pos_,
                  fmt::format("unexpected {} in the range bound; put such values in double quotes", describe(peek())));
    }
    return bound;
  }

  // At '"'. Escapes: \" and \\ only.
  Result<std::string> read_quoted() {
    const std::size_t open = pos_;
    ++pos_;
    std::string out;
    for (;;) {
      if (at_end()) return fail(pos_, fmt::format("expected '\"' to close the string opened at position {}", open));
      const char c = peek();
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c == '\\') {
        if (pos_ + 1 >= text_.size() || (text_[pos_ + 1] != '"' && text_[pos_ + 1] != '\\')) {
          return fail(pos_, "unknown escape: only \\\" and \\\\ are allowed in quoted values");
        }
        out += text_[pos_ + 1];
        pos_ += 2;
        continue;
      }
      out += c;
      ++pos_;
    }
  }

  // Type check of one value (eq, comparison operand or range bound) at `pos`.
  Status check_value(const Predicate& p, std::string_view value, std::size_t pos) const {
    switch (p.info.type) {
      case FieldType::text:
        if (p.op == Op::eq && p.field == "kind" && std::find(kKinds.begin(), kKinds.end(), value) == kKinds.end()) {
          return fail(
              pos, fmt::format("unknown kind '{}'; kinds are computer, printer, sensor, gateway and unknown", value));
        }
        return {};
      case FieldType::version: return {};
      case FieldType::number:
        if (!parse_number(value)) {
          return fail(pos, fmt::format("expected a number for '{}', found '{}'", p.field, value));
        }
        return {};
      case FieldType::boolean:
        if (value != "true" && value != "false") {
          return fail(pos, fmt::format("expected true or false for '{}', found '{}'", p.field, value));
        }
        return {};
      case FieldType::time:
        if (!resolve_time(value, 0)) {
          return fail(pos, fmt::format("expected a time for '{}': Unix ms (1700000000000), ISO-8601 UTC "
                                       "(2026-11-20T10:00:00Z) or relative (-5m; units ms, s, m, h, d), found '{}'",
                                       p.field, value));
        }
        return {};
    }
    return {};
  }

  std::string_view text_;
  std::size_t pos_ = 0;
  int depth_ = 0;
  int predicates_ = 0;
};

// Whether a value can be written without quotes and read back as the same value.
bool can_be_bare(std::string_view value, bool bound) {
  return !value.empty() && all_of(value, is_bare_char) && !has_wildcard(value) && !(bound && value == "TO");
}

void append_value(std::string& out, std::string_view value, bool bound) {
  if (can_be_bare(value, bound)) {
    out += value;
    return;
  }
  out += '"';
  for (char c : value) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
}

void append_predicate(std::string& out, const Predicate& p) {
  out += p.field;
  switch (p.op) {
    case Op::eq:
      out += ':';
      append_value(out, p.value, false);
      return;
    case Op::wildcard:
      out += ':';
      out += p.value;
      return;
    case Op::lt: out += '<'; break;
    case Op::le: out += "<="; break;
    case Op::gt: out += '>'; break;
    case Op::ge: out += ">="; break;
    case Op::exists: out += ":*"; return;
    case Op::range:
      out += p.low_inclusive ? ":[" : ":{";
      if (p.low) {
        append_value(out, *p.low, true);
      } else {
        out += '*';
      }
      out += " TO ";
      if (p.high) {
        append_value(out, *p.high, true);
      } else {
        out += '*';
      }
      out += p.high_inclusive ? ']' : '}';
      return;
  }
  append_value(out, p.value, false);
}

// Children of an and_/or_ node with nested nodes of the same kind flattened into it.
void collect_operands(const Node& node, Node::Kind kind, std::vector<const Node*>& out) {
  for (const Node& child : node.children) {
    if (child.kind == kind) {
      collect_operands(child, kind, out);
    } else {
      out.push_back(&child);
    }
  }
}

void append_node(std::string& out, const Node& node) {
  switch (node.kind) {
    case Node::Kind::all: return;
    case Node::Kind::predicate: append_predicate(out, node.predicate); return;
    case Node::Kind::not_:
      out += "NOT ";
      if (!node.children.empty()) append_node(out, node.children.front());
      return;
    case Node::Kind::and_:
    case Node::Kind::or_: {
      std::vector<const Node*> operands;
      collect_operands(node, node.kind, operands);
      if (operands.size() == 1) {
        append_node(out, *operands.front());
        return;
      }
      out += '(';
      for (std::size_t i = 0; i < operands.size(); ++i) {
        if (i > 0) out += node.kind == Node::Kind::and_ ? " AND " : " OR ";
        append_node(out, *operands[i]);
      }
      out += ')';
      return;
    }
  }
}

// dpkg's order of a character in the non-digit parts: '~' before the end, the end and digits,
// then letters, then everything else.
int order(unsigned char c) {
  if (is_digit(static_cast<char>(c))) return 0;
  if (is_alpha(static_cast<char>(c))) return c;
  if (c == '~') return -1;
  return c + 256;
}

// dpkg's verrevcmp: alternating non-digit runs (compared with order()) and digit runs
// (compared numerically, any length).
int verrevcmp(std::string_view a, std::string_view b) {
  std::size_t i = 0;
  std::size_t j = 0;
  const auto at = [](std::string_view s, std::size_t k) { return k < s.size() ? static_cast<unsigned char>(s[k]) : 0; };
  const auto digit = [](unsigned char c) { return c >= '0' && c <= '9'; };
  while (i < a.size() || j < b.size()) {
    int first_diff = 0;
    while ((i < a.size() && !digit(at(a, i))) || (j < b.size() && !digit(at(b, j)))) {
      const int ac = i < a.size() ? order(at(a, i)) : 0;
      const int bc = j < b.size() ? order(at(b, j)) : 0;
      if (ac != bc) return ac - bc;
      ++i;
      ++j;
    }
    while (at(a, i) == '0') ++i;
    while (at(b, j) == '0') ++j;
    while (digit(at(a, i)) && digit(at(b, j))) {
      if (first_diff == 0) first_diff = at(a, i) - at(b, j);
      ++i;
      ++j;
    }
    if (digit(at(a, i))) return 1;
    if (digit(at(b, j))) return -1;
    if (first_diff != 0) return first_diff;
  }
  return 0;
}

struct VersionParts {
  std::string_view epoch;  // digits without leading zeros; empty = 0
  std::string_view upstream;
  std::string_view revision;
};

// epoch:upstream-revision. A prefix before the first ':' is an epoch only when it is all
// digits; the revision follows the last '-'. Strings dpkg would reject still get an order.
VersionParts split_version(std::string_view v) {
  VersionParts parts;
  const std::size_t colon = v.find(':');
  if (colon != std::string_view::npos && colon > 0 && all_of(v.substr(0, colon), is_digit)) {
    parts.epoch = v.substr(0, colon);
    while (parts.epoch.starts_with('0')) parts.epoch.remove_prefix(1);
    v.remove_prefix(colon + 1);
  }
  const std::size_t hyphen = v.rfind('-');
  if (hyphen != std::string_view::npos) {
    parts.revision = v.substr(hyphen + 1);
    v = v.substr(0, hyphen);
  }
  parts.upstream = v;
  return parts;
}

}  // namespace

std::span<const FieldInfo> fields() { return kFields; }

std::optional<FieldInfo> find_field(std::string_view name) {
  for (const FieldInfo& f : kFields) {
    if (!f.family && f.name == name) return f;
  }
  for (const FieldInfo& f : kFields) {
    if (f.family && name.starts_with(f.name) && valid_family_key(f.name, name.substr(f.name.size()))) return f;
  }
  return std::nullopt;
}

Result<Node> parse(std::string_view text) { return Parser(text).run(); }

std::string to_string(const Node& node) {
  std::string out;
  append_node(out, node);
  return out;
}

int compare_versions(std::string_view a, std::string_view b) {
  const VersionParts x = split_version(a);
  const VersionParts y = split_version(b);
  if (x.epoch.size() != y.epoch.size()) return x.epoch.size() < y.epoch.size() ? -1 : 1;
  if (const int c = x.epoch.compare(y.epoch); c != 0) return sign(c);
  if (const int c = verrevcmp(x.upstream, y.upstream); c != 0) return sign(c);
  return sign(verrevcmp(x.revision, y.revision));
}

std::optional<double> parse_number(std::string_view text) {
  double value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc{} || ptr != end || !std::isfinite(value)) return std::nullopt;
  return value;
}

namespace {

std::optional<std::int64_t> parse_int(std::string_view text) {
  if (text.empty() || !all_of(text, is_digit)) return std::nullopt;
  std::int64_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

// YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.fraction]Z, always UTC.
std::optional<std::int64_t> parse_iso8601(std::string_view s) {
  const auto digits = [&](std::size_t at, std::size_t count) -> std::optional<int> {
    if (at + count > s.size()) return std::nullopt;
    int v = 0;
    for (std::size_t k = at; k < at + count; ++k) {
      if (!is_digit(s[k])) return std::nullopt;
      v = v * 10 + (s[k] - '0');
    }
    return v;
  };
  const auto year = digits(0, 4);
  const auto month = digits(5, 2);
  const auto day = digits(8, 2);
  if (!year || !month || !day || s[4] != '-' || s[7] != '-') return std::nullopt;
  const std::chrono::year_month_day date{std::chrono::year{*year}, std::chrono::month{static_cast<unsigned>(*month)},
                                         std::chrono::day{static_cast<unsigned>(*day)}};
  if (!date.ok()) return std::nullopt;
  std::int64_t ms = std::int64_t{std::chrono::sys_days{date}.time_since_epoch().count()} * 86'400'000;
  if (s.size() == 10) return ms;
  if (s[10] != 'T' || s.size() < 20) return std::nullopt;
  const auto hour = digits(11, 2);
  const auto minute = digits(14, 2);
  const auto second = digits(17, 2);
  if (!hour || !minute || !second || s[13] != ':' || s[16] != ':') return std::nullopt;
  if (*hour > 23 || *minute > 59 || *second > 59) return std::nullopt;
  ms += std::int64_t{*hour} * 3'600'000 + std::int64_t{*minute} * 60'000 + std::int64_t{*second} * 1000;
  std::size_t k = 19;
  if (s[k] == '.') {
    const std::size_t first = ++k;
    int fraction_ms = 0;
    while (k < s.size() && is_digit(s[k])) {
      if (k - first < 3) fraction_ms = fraction_ms * 10 + (s[k] - '0');
      ++k;
    }
    const std::size_t count = k - first;
    if (count == 0 || count > 9) return std::nullopt;
    for (std::size_t pad = count; pad < 3; ++pad) fraction_ms *= 10;
    ms += fraction_ms;
  }
  if (k + 1 != s.size() || s[k] != 'Z') return std::nullopt;
  return ms;
}

}  // namespace

std::optional<std::int64_t> resolve_time(std::string_view text, std::int64_t now_ms) {
  if (text.starts_with('-')) {
    std::string_view rest = text.substr(1);
    std::size_t n = 0;
    while (n < rest.size() && is_digit(rest[n])) ++n;
    const auto amount = parse_int(rest.substr(0, n));
    const std::string_view unit = rest.substr(n);
    std::int64_t scale = 0;
    if (unit == "ms") scale = 1;
    if (unit == "s") scale = 1000;
    if (unit == "m") scale = 60'000;
    if (unit == "h") scale = 3'600'000;
    if (unit == "d") scale = 86'400'000;
    if (!amount || scale == 0 || *amount > kMaxRelativeMs / scale) return std::nullopt;
    const std::int64_t offset = *amount * scale;
    if (now_ms < std::numeric_limits<std::int64_t>::min() + offset) return std::nullopt;
    return now_ms - offset;
  }
  if (const auto ms = parse_int(text)) return ms;
  return parse_iso8601(text);
}

}  // namespace flotilla::manager::query
