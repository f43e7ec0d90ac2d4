// Unit tests of the fleet query language (docs/query.md): field catalog, parser and its errors,
// canonical form, dpkg version order, the reference evaluator and explain.

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/manager/query.hpp"
#include "flotilla/manager/query_eval.hpp"

using namespace flotilla::manager::query;

namespace {

constexpr std::int64_t kNow = 1'700'000'000'000;
constexpr std::int64_t kMinute = 60'000;

std::string canon(std::string_view text) {
  auto node = parse(text);
  REQUIRE_MESSAGE(node.ok(), (node.ok() ? std::string() : node.error().message));
  return to_string(*node);
}

Node parsed(std::string_view text) {
  auto node = parse(text);
  REQUIRE_MESSAGE(node.ok(), (node.ok() ? std::string() : node.error().message));
  return std::move(node).value();
}

std::string error_message(std::string_view text) {
  auto node = parse(text);
  REQUIRE_MESSAGE(!node.ok(), "parsed: ", to_string(*node));
  CHECK(node.error().code == flotilla::Errc::invalid_argument);
  return node.error().message;
}

// The N of "position N: ...".
std::size_t error_position(const std::string& message) {
  REQUIRE(message.starts_with("position "));
  return std::stoul(message.substr(9));
}

class MapDevice final : public DeviceView {
 public:
  MapDevice(std::string id, std::map<std::string, std::vector<std::string>, std::less<>> fields)
      : fields_(std::move(fields)) {
    fields_["id"] = {std::move(id)};
  }
  void values(std::string_view field, std::vector<std::string>& out) const override {
    const auto it = fields_.find(field);
    if (it != fields_.end()) out.insert(out.end(), it->second.begin(), it->second.end());
  }
  std::string id() const { return fields_.at("id").front(); }

 private:
  std::map<std::string, std::vector<std::string>, std::less<>> fields_;
};

std::string ms(std::int64_t v) { return std::to_string(v); }

std::vector<MapDevice> sample_fleet() {
  return {
      MapDevice("sensor-1", {{"kind", {"sensor"}},
                             {"site", {"building-7"}},
                             {"firmware.version", {"1.2.3"}},
                             {"online", {"true"}},
                             {"tag", {"lab", "floor-2"}},
                             {"telemetry.humidity_percent", {"41.5"}}}),
      MapDevice("sensor-2", {{"kind", {"sensor"}}, {"site", {"building-7"}}, {"firmware.version", {"1.3.0"}}}),
      MapDevice("sensor-3", {{"kind", {"sensor"}}, {"site", {"building-8"}}, {"firmware.version", {"1.2.10"}}}),
      MapDevice("pc-1", {{"kind", {"computer"}},
                         {"os.name", {"Debian"}},
                         {"software.openssl", {"3.0.11-1~deb12u2"}},
                         {"online", {"true"}},
                         {"telemetry.cpu.temp", {"72.5"}},
                         {"os.kernel", {"6.1.0-18-amd64"}},
                         {"last_seen", {ms(kNow - 10 * kMinute)}}}),
      MapDevice("pc-2", {{"kind", {"computer"}},
                         {"os.name", {"Debian"}},
                         {"software.openssl", {"3.0.9-1"}},
                         {"online", {"true"}},
                         {"telemetry.cpu.temp", {"65"}},
                         {"telemetry.battery", {"40"}},
                         {"os.kernel", {"5.10.0-28-amd64"}},
                         {"last_seen", {ms(kNow - kMinute)}}}),
      MapDevice("pc-3", {{"kind", {"computer"}},
                         {"os.name", {"Debian"}},
                         {"software.openssl", {"3.0.2"}},
                         {"online", {"false"}},
                         {"telemetry.cpu.temp", {"n/a"}},
                         {"os.kernel", {"6.1"}},
                         {"last_seen", {ms(kNow - 2 * kMinute)}}}),
      MapDevice("pc-4", {{"kind", {"computer"}},
                         {"os.name", {"Ubuntu"}},
                         {"software.openssl", {"1.1.1f-1ubuntu2.20"}},
                         {"online", {"true"}},
                         {"os.kernel", {"5.15.0-91-generic"}},
                         {"tag", {"lab"}}}),
  };
}

std::set<std::string> matching(std::string_view text) {
  const Node query = parsed(text);
  std::set<std::string> ids;
  for (const MapDevice& device : sample_fleet()) {
    if (matches(query, device, kNow)) ids.insert(device.id());
  }
  return ids;
}

Predicate predicate_of(std::string_view text) {
  const Node node = parsed(text);
  REQUIRE(node.kind == Node::Kind::predicate);
  return node.predicate;
}

bool value_ok(std::string_view query, std::string_view value) {
  return value_matches(predicate_of(query), value, kNow);
}

// Random syntax trees over the whole catalog, with values that are valid for their field.
class TreeGen {
 public:
  explicit TreeGen(std::uint32_t seed) : rng_(seed) {}

  int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
  template <typename T>
  const T& one_of(const std::vector<T>& v) {
    return v[static_cast<std::size_t>(pick(static_cast<int>(v.size())))];
  }

  Node tree(int depth) {
    const int roll = depth <= 0 ? 0 : pick(10);
    Node node;
    if (roll < 4) {
      node.kind = Node::Kind::predicate;
      node.predicate = predicate();
      return node;
    }
    if (roll < 5) {
      node.kind = Node::Kind::not_;
      node.children.push_back(tree(depth - 1));
      return node;
    }
    node.kind = roll < 8 ? Node::Kind::and_ : Node::Kind::or_;
    const int n = 2 + pick(3);
    for (int i = 0; i < n; ++i) node.children.push_back(tree(depth - 1));
    return node;
  }

  Predicate predicate() {
    const auto all = fields();
    const FieldInfo& info = all[static_cast<std::size_t>(pick(static_cast<int>(all.size())))];
    Predicate p;
    p.info = info;
    p.field = std::string(info.name);
    if (info.name == "software.") p.field += one_of<std::string>({"openssl", "openssh-server", "libstdc++6", "g++-12"});
    if (info.name == "attr.") p.field += one_of<std::string>({"room", "Owner", "cost_center", "rack.unit"});
    if (info.name == "telemetry.") p.field += one_of<std::string>({"humidity_percent", "fan-rpm", "Power.W"});
    const bool text_like = info.type == FieldType::text || info.type == FieldType::version;
    switch (pick(6)) {
      case 0: p.op = Op::exists; return p;
      case 1:
        if (text_like && p.field != "kind") {
          p.op = Op::wildcard;
          p.value = one_of<std::string>({"1.2.*", "*lab*", "b?ilding-7", "Z*rich", "**", "?", "*:9.*"});
          return p;
        }
        break;
      case 2:
        if (info.type != FieldType::boolean) {
          p.op = one_of<Op>({Op::lt, Op::le, Op::gt, Op::ge});
          p.value = value(info, p.field);
          return p;
        }
        break;
      case 3:
        if (info.type != FieldType::boolean) {
          range(p);
          return p;
        }
        break;
      default: break;
    }
    p.op = Op::eq;
    p.value = value(info, p.field);
    return p;
  }

  std::string value(const FieldInfo& info, std::string_view field) {
    if (field == "kind") return one_of<std::string>({"computer", "printer", "sensor", "gateway", "unknown"});
    switch (info.type) {
      case FieldType::text:
        return one_of<std::string>({"building-7", "a b",    "q\"uote", "back\\slash", "TO",        "*",     "x*y",
                                    "",           "Zürich", "AND",     "OR",          "NOT",       "(",     ")",
                                    "[x]",        "-5m",    "=",       "a:b",         "user@host", "~tilde"});
      case FieldType::version:
        return one_of<std::string>({"1.2.3", "1:9.2p1-2", "3.0.11-1~deb12u2", "2.36-9+deb12u8", "6.1", "1.0~rc1"});
      case FieldType::number: return one_of<std::string>({"42", "-1.5", "1e9", "0.25", "16000000000"});
      case FieldType::boolean: return one_of<std::string>({"true", "false"});
      case FieldType::time:
        return one_of<std::string>(
            {"-5m", "-2h", "-1d", "-250ms", "1700000000000", "2026-11-20T10:00:00Z", "2026-01-01"});
    }
    return "x";
  }

  // A non-empty range: bounds in order, or one or both ends open.
  void range(Predicate& p) {
    p.op = Op::range;
    p.low_inclusive = pick(2) == 0;
    p.high_inclusive = pick(2) == 0;
    std::string a = value(p.info, p.field);
    std::string b = value(p.info, p.field);
    if (p.info.type == FieldType::time && a.starts_with('-') != b.starts_with('-')) b = a;
    if (less(p.info.type, b, a)) std::swap(a, b);
    if (!less(p.info.type, a, b)) p.low_inclusive = p.high_inclusive = true;
    if (pick(4) != 0) p.low = a;
    if (pick(4) != 0) p.high = b;
  }

  static bool less(FieldType type, const std::string& a, const std::string& b) {
    switch (type) {
      case FieldType::version: return compare_versions(a, b) < 0;
      case FieldType::number: return *parse_number(a) < *parse_number(b);
      case FieldType::time: return *resolve_time(a, kNow) < *resolve_time(b, kNow);
      default: return a < b;
    }
  }

  // Random device with values for a few fields the generator uses.
  MapDevice device(int n) {
    std::map<std::string, std::vector<std::string>, std::less<>> f;
    const auto maybe = [&](const char* field, const std::vector<std::string>& pool) {
      if (pick(3) != 0) f[field] = {one_of(pool)};
    };
    maybe("kind", {"computer", "sensor", "printer"});
    maybe("site", {"building-7", "Zürich", "a b", "TO"});
    maybe("online", {"true", "false"});
    maybe("firmware.version", {"1.2.3", "1.2.10", "1.0~rc1", "6.1"});
    maybe("os.kernel", {"6.1.0-18-amd64", "5.10", "6.1"});
    maybe("memory.total", {"16000000000", "8e9", "abc", "42"});
    maybe("telemetry.cpu.temp", {"70", "-1.5", "0.25"});
    maybe("last_seen", {ms(kNow), ms(kNow - 3 * kMinute), "1700000000000", "garbage"});
    maybe("software.openssl", {"3.0.11-1~deb12u2", "1:9.2p1-2"});
    maybe("attr.room", {"x*y", "*", ""});
    if (pick(2) == 0) f["tag"] = {"lab", "building-7"};
    return MapDevice("dev-" + std::to_string(n), std::move(f));
  }

  // The tree as text with as few parentheses as precedence allows, implicit ANDs and random
  // whitespace: parsing it must give the canonical form of the tree.
  std::string loose(const Node& node, int parent_prec) {
    switch (node.kind) {
      case Node::Kind::all: return "";
      case Node::Kind::predicate: return to_string(node);
      case Node::Kind::not_: return "NOT" + space(true) + loose(node.children.front(), 3);
      case Node::Kind::and_:
      case Node::Kind::or_: {
        const int prec = node.kind == Node::Kind::or_ ? 1 : 2;
        std::string out;
        for (std::size_t i = 0; i < node.children.size(); ++i) {
          if (i > 0) {
            if (node.kind == Node::Kind::or_) {
              out += space(true) + "OR" + space(true);
            } else {
              out += pick(2) == 0 ? space(true) + "AND" + space(true) : space(true);
            }
          }
          out += loose(node.children[i], prec);
        }
        if (prec < parent_prec || pick(5) == 0) return "(" + space(false) + out + space(false) + ")";
        return out;
      }
    }
    return "";
  }

  std::string space(bool required) {
    const std::string options[] = {" ", "  ", "\t", "\n ", ""};
    return options[pick(required ? 4 : 5)];
  }

 private:
  std::mt19937 rng_;
};

}  // namespace

TEST_SUITE("query") {
TEST_CASE("the field catalog lists every field with its type and flags") {
  struct Expected {
    std::string_view name;
    FieldType type;
    bool multi;
    bool family;
  };
  const std::vector<Expected> expected{
      {"id", FieldType::text, false, false},
      {"kind", FieldType::text, false, false},
      {"tenant", FieldType::text, false, false},
      {"site", FieldType::text, false, false},
      {"gateway", FieldType::text, false, false},
      {"hardware.vendor", FieldType::text, false, false},
      {"hardware.model", FieldType::text, false, false},
      {"hardware.serial", FieldType::text, false, false},
      {"os.name", FieldType::text, false, false},
      {"os.id", FieldType::text, false, false},
      {"cpu.model", FieldType::text, false, false},
      {"firmware.version", FieldType::version, false, false},
      {"os.version", FieldType::version, false, false},
      {"os.kernel", FieldType::version, false, false},
      {"agent.version", FieldType::version, false, false},
      {"cpu.cores", FieldType::number, false, false},
      {"memory.total", FieldType::number, false, false},
      {"software.count", FieldType::number, false, false},
      {"telemetry.cpu", FieldType::number, false, false},
      {"telemetry.load1", FieldType::number, false, false},
      {"telemetry.memory.used_pct", FieldType::number, false, false},
      {"telemetry.memory.available", FieldType::number, false, false},
      {"telemetry.disk.free", FieldType::number, false, false},
      {"telemetry.disk.used_pct", FieldType::number, false, false},
      {"telemetry.uptime", FieldType::number, false, false},
      {"telemetry.cpu.temp", FieldType::number, false, false},
      {"telemetry.battery", FieldType::number, false, false},
      {"online", FieldType::boolean, false, false},
      {"last_seen", FieldType::time, false, false},
      {"first_seen", FieldType::time, false, false},
      {"connected_since", FieldType::time, false, false},
      {"tag", FieldType::text, true, false},
      {"group", FieldType::text, true, false},
      {"software.name", FieldType::text, true, false},
      {"software.", FieldType::version, false, true},
      {"attr.", FieldType::text, false, true},
      {"telemetry.", FieldType::number, false, true},
  };
  const auto all = fields();
  REQUIRE(all.size() == expected.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    CAPTURE(all[i].name);
    CHECK(all[i].name == expected[i].name);
    CHECK(all[i].type == expected[i].type);
    CHECK(all[i].multi == expected[i].multi);
    CHECK(all[i].family == expected[i].family);
    CHECK(all[i].sortable == !all[i].multi);
    CHECK(all[i].name.ends_with('.') == all[i].family);
    CHECK(!all[i].help.empty());
  }
}

TEST_CASE("find_field resolves names and family keys") {
  CHECK(find_field("firmware.version")->type == FieldType::version);
  CHECK(find_field("telemetry.cpu")->name == "telemetry.cpu");
  CHECK(!find_field("telemetry.cpu")->family);
  CHECK(find_field("telemetry.humidity_percent")->name == "telemetry.");
  CHECK(find_field("telemetry.humidity_percent")->type == FieldType::number);
  CHECK(find_field("software.openssl")->name == "software.");
  CHECK(find_field("software.libstdc++6")->type == FieldType::version);
  CHECK(find_field("software.count")->type == FieldType::number);
  CHECK(find_field("software.name")->multi);
  CHECK(find_field("attr.Cost_Center-2")->type == FieldType::text);
  CHECK(!find_field("software.OpenSSL"));
  CHECK(!find_field("software.a"));   // Debian package names have two or more characters
  CHECK(!find_field("software.-x"));  // and start with a letter or digit
  CHECK(!find_field("attr.a+b"));
  CHECK(!find_field("software."));
  CHECK(!find_field("attr."));
  CHECK(!find_field("firmware"));
  CHECK(!find_field(""));
}

TEST_CASE("each predicate form parses into its operator") {
  Predicate p = predicate_of("kind:sensor");
  CHECK(p.field == "kind");
  CHECK(p.op == Op::eq);
  CHECK(p.value == "sensor");
  CHECK(p.position == 0);

  p = predicate_of("firmware.version:1.2.*");
  CHECK(p.op == Op::wildcard);
  CHECK(p.value == "1.2.*");
  CHECK(predicate_of("site:b?ilding-7").op == Op::wildcard);

  CHECK(predicate_of("memory.total>8e9").op == Op::gt);
  CHECK(predicate_of("memory.total>=8e9").op == Op::ge);
  CHECK(predicate_of("memory.total<8e9").op == Op::lt);
  p = predicate_of("memory.total<=8e9");
  CHECK(p.op == Op::le);
  CHECK(p.value == "8e9");

  p = predicate_of("os.kernel:[5.10 TO 6.1]");
  CHECK(p.op == Op::range);
  CHECK(p.low == "5.10");
  CHECK(p.high == "6.1");
  CHECK(p.low_inclusive);
  CHECK(p.high_inclusive);
  p = predicate_of("os.kernel:{5.10 TO 6.1}");
  CHECK(!p.low_inclusive);
  CHECK(!p.high_inclusive);
  p = predicate_of("os.kernel:[5.10 TO 6.1}");
  CHECK(p.low_inclusive);
  CHECK(!p.high_inclusive);
  p = predicate_of("telemetry.cpu:{ *   TO 50 ]");
  CHECK(!p.low);
  CHECK(p.high == "50");
  CHECK(!p.low_inclusive);
  CHECK(p.high_inclusive);
  p = predicate_of("telemetry.cpu:[50 TO *]");
  CHECK(p.low == "50");
  CHECK(!p.high);
  p = predicate_of("site:[\"*\" TO \"TO\"]");
  CHECK(p.low == "*");
  CHECK(p.high == "TO");
  CHECK(to_string(parsed("site:[\"*\" TO \"TO\"]")) == "site:[\"*\" TO \"TO\"]");

  p = predicate_of("site:*");
  CHECK(p.op == Op::exists);
  p = predicate_of("_exists_:telemetry.battery");
  CHECK(p.op == Op::exists);
  CHECK(p.field == "telemetry.battery");
  CHECK(p.position == 0);
  CHECK(to_string(parsed("_exists_:telemetry.battery")) == "telemetry.battery:*");

  p = parsed("  NOT   online:true").children.front().predicate;
  CHECK(p.position == 8);
  CHECK(p.info.type == FieldType::boolean);
}

TEST_CASE("values: bare, quoted, colons, families, times") {
  Predicate p = predicate_of("software.openssh-server:1:9.2p1-2");
  CHECK(p.field == "software.openssh-server");
  CHECK(p.info.name == "software.");
  CHECK(p.op == Op::eq);
  CHECK(p.value == "1:9.2p1-2");
  CHECK(canon("software.openssh-server:1:9.2p1-2") == "software.openssh-server:1:9.2p1-2");
  CHECK(canon("(software.openssh-server:1:9.2p1-2)") == "software.openssh-server:1:9.2p1-2");

  p = predicate_of(R"q(hardware.vendor:"Dell \"Inc.\" \\ (x)")q");
  CHECK(p.op == Op::eq);
  CHECK(p.value == R"q(Dell "Inc." \ (x))q");
  CHECK(to_string(parsed(R"q(hardware.vendor:"Dell \"Inc.\" \\ (x)")q")) ==
        R"q(hardware.vendor:"Dell \"Inc.\" \\ (x)")q");

  p = predicate_of("site:\"*\"");  // quoted: never a wildcard
  CHECK(p.op == Op::eq);
  CHECK(p.value == "*");
  CHECK(to_string(parsed("site:\"*\"")) == "site:\"*\"");
  CHECK(predicate_of("site:\"b?ilding\"").op == Op::eq);
  CHECK(predicate_of("site:\"\"").value.empty());
  CHECK(canon("site:\"building-7\"") == "site:building-7");  // quotes dropped where not needed

  CHECK(predicate_of("site:Zürich").value == "Zürich");
  CHECK(predicate_of("tag:AND").value == "AND");
  CHECK(predicate_of("attr.Owner:alice@example.com").value == "alice@example.com");
  CHECK(predicate_of("software.libstdc++6:*").field == "software.libstdc++6");
  CHECK(predicate_of("telemetry.humidity_percent>60").info.name == "telemetry.");
  CHECK(predicate_of("telemetry.cpu.temp>70").info.name == "telemetry.cpu.temp");

  CHECK(predicate_of("last_seen<-5m").value == "-5m");
  CHECK(predicate_of("last_seen<-250ms").value == "-250ms");
  CHECK(predicate_of("first_seen>2026-11-20T10:00:00Z").value == "2026-11-20T10:00:00Z");
  CHECK(predicate_of("first_seen>2026-11-20").value == "2026-11-20");
  CHECK(predicate_of("first_seen>=1700000000000").value == "1700000000000");
  CHECK(predicate_of("last_seen:[-1d TO -1h]").low == "-1d");
  CHECK(predicate_of("online:false").value == "false");
  CHECK(predicate_of("memory.total:\"16e9\"").value == "16e9");  // quoted numbers are numbers
}

TEST_CASE("precedence: NOT binds tighter than AND, AND tighter than OR") {
  CHECK(canon("tag:a OR tag:b AND tag:c") == "(tag:a OR (tag:b AND tag:c))");
  CHECK(canon("tag:a AND tag:b OR tag:c") == "((tag:a AND tag:b) OR tag:c)");
  CHECK(canon("(tag:a OR tag:b) AND tag:c") == "((tag:a OR tag:b) AND tag:c)");
  CHECK(canon("NOT tag:a AND tag:b") == "(NOT tag:a AND tag:b)");
  CHECK(canon("NOT tag:a OR tag:b") == "(NOT tag:a OR tag:b)");
  CHECK(canon("NOT (tag:a OR tag:b)") == "NOT (tag:a OR tag:b)");
  CHECK(canon("NOT(tag:a)") == "NOT tag:a");
  CHECK(canon("NOT NOT tag:a") == "NOT NOT tag:a");
  CHECK(canon("tag:a OR NOT tag:b AND tag:c") == "(tag:a OR (NOT tag:b AND tag:c))");

  const Node tree = parsed("tag:a OR tag:b AND tag:c");
  REQUIRE(tree.kind == Node::Kind::or_);
  REQUIRE(tree.children.size() == 2);
  CHECK(tree.children[0].kind == Node::Kind::predicate);
  CHECK(tree.children[1].kind == Node::Kind::and_);
  CHECK(tree.children[1].children.size() == 2);
}

TEST_CASE("implicit AND, flattening, whitespace and the empty query") {
  CHECK(canon("tag:a tag:b") == "(tag:a AND tag:b)");
  CHECK(canon("tag:a tag:b OR tag:c") == "((tag:a AND tag:b) OR tag:c)");
  CHECK(canon("tag:a NOT tag:b") == "(tag:a AND NOT tag:b)");
  CHECK(canon("(tag:a)(tag:b)") == "(tag:a AND tag:b)");
  CHECK(canon("tag:a AND (tag:b AND tag:c) tag:d") == "(tag:a AND tag:b AND tag:c AND tag:d)");
  CHECK(canon("tag:a OR (tag:b OR tag:c)") == "(tag:a OR tag:b OR tag:c)");
  CHECK(canon("((((tag:a))))") == "tag:a");
  CHECK(canon("\t(\ntag:a\r\nOR   tag:b )  ") == "(tag:a OR tag:b)");
  CHECK(parsed("tag:a tag:b tag:c").children.size() == 3);

  CHECK(parsed("").kind == Node::Kind::all);
  CHECK(parsed("  \t\n ").kind == Node::Kind::all);
  CHECK(to_string(Node{}).empty());
}

TEST_CASE("errors name the position, show a caret and say what was expected") {
  CHECK(error_message("os.name:Debian AND") ==
        "position 18: expected a term after AND: field:value, '(' or NOT\n"
        "  os.name:Debian AND\n"
        "                    ^");
  CHECK(error_message("lsat_seen<-5m") ==
        "position 0: unknown field 'lsat_seen'; did you mean last_seen?\n"
        "  lsat_seen<-5m\n"
        "  ^");

  struct Case {
    std::string query;
    std::size_t position;
    std::string_view says;
  };
  const std::vector<Case> cases{
      {"(kind:sensor", 12, "expected ')' to close the '(' at position 0"},
      {"kind:sensor)", 11, "unexpected ')' without a matching '('"},
      {")", 0, "unexpected ')' without a matching '('"},
      {"os.name:", 8, "expected a value after ':'"},
      {"os.name: Debian", 8, "expected a value after ':'"},
      {"memory.total>", 13, "expected a value after '>'"},
      {"memory.total>= 5", 14, "expected a value after '>='"},
      {"kind:sensor OR", 14, "expected a term after OR"},
      {"NOT", 3, "expected a term after NOT"},
      {"AND tag:a", 0, "expected a term: field:value, '(' or NOT, found AND"},
      {"tag:a AND OR tag:b", 10, "found OR"},
      {"()", 1, "empty parentheses"},
      {"tag:a ( )", 8, "empty parentheses"},
      {"firmwre.version:1", 0, "did you mean firmware.version?"},
      {"softwre.openssl:*", 0, "did you mean software.openssl?"},
      {"software.OpenSSL:*", 0, "did you mean software.openssl?"},
      {"software:openssl", 0, "'software' is a field family: write software.<package>"},
      {"cpu:5", 0, "did you mean cpu.cores or cpu.model?"},
      {"tag:'x'", 4, "(quote values with double quotes)"},
      {"colour:red", 0, "families are software.<package>, attr.<key> and telemetry.<metric>"},
      {"tag:a and tag:b", 6, "operators are uppercase: AND"},
      {"tag:a && tag:b", 6, "(write AND)"},
      {"!tag:a", 0, "(negate with NOT)"},
      {"-tag:a", 0, "(negate with NOT)"},
      {"site=x", 4, "use ':' for equality"},
      {"site", 4, "expected ':', '<', '<=', '>' or '>=' after 'site'"},
      {"memory.total:>5", 13, "write memory.total>value"},
      {"os.kernel:[5.10 6.1]", 16, "expected 'TO' between the range bounds"},
      {"os.kernel:[5.10 TO", 18, "expected a high bound after 'TO'"},
      {"os.kernel:[5.10 TO]", 18, "expected a high bound after 'TO'"},
      {"os.kernel:[5.10 TO 6.1", 22, "expected ']' or '}' to close the range"},
      {"os.kernel:[ TO 6.1]", 12, "expected a low bound before 'TO'"},
      {"os.kernel:[] ", 11, "expected a low bound"},
      {"os.kernel:[5.* TO 6]", 11, "wildcards are not allowed in range bounds"},
      {"os.kernel:[5 TO 6]x", 18, "unexpected 'x' after the range"},
      {"memory.total:[10 TO 5]", 13, "empty range"},
      {"memory.total:{5 TO 5]", 13, "empty range"},
      {"last_seen:[-1h TO -1d]", 10, "empty range"},
      {"online:maybe", 7, "expected true or false for 'online', found 'maybe'"},
      {"online:[true TO false]", 7, "'online' is a boolean field"},
      {"online>true", 7, "'online' is a boolean field"},
      {"online:t*", 7, "wildcards apply to text and version fields; 'online' is a boolean field"},
      {"memory.total>abc", 13, "expected a number for 'memory.total', found 'abc'"},
      {"memory.total:[1 TO abc]", 19, "expected a number"},
      {"memory.total:16*", 13, "wildcards apply to text and version fields"},
      {"memory.total:inf", 13, "expected a number"},
      {"last_seen<5m", 10, "expected a time for 'last_seen'"},
      {"last_seen<-5", 10, "expected a time"},
      {"last_seen<-5y", 10, "expected a time"},
      {"first_seen>2026-02-30", 11, "expected a time"},
      {"first_seen>2026-11-20T24:00:00Z", 11, "expected a time"},
      {"kind:sensors", 5, "unknown kind 'sensors'"},
      {"firmware.version>1.*", 17, "wildcards are not allowed in comparisons"},
      {"tag:\"abc", 8, "expected '\"' to close the string opened at position 4"},
      {"tag:\"a\\nb\"", 6, "unknown escape"},
      {"tag:\"a\"b", 7, "unexpected 'b' after the quoted value"},
      {"tag:a=b", 5, "unexpected '=' in the value; put such values in double quotes"},
      {"tag:a(b)", 5, "unexpected '(' in the value"},
      {"tag:a ]", 6, "expected AND, OR, NOT, ')', '(' or a field name"},
      {"\"x\"", 0, "a value needs a field"},
      {"_exists_:", 9, "expected a field name after '_exists_:'"},
      {"_exists_:colour", 9, "unknown field 'colour'"},
      {"_exists_ tag", 8, "expected ':' after _exists_"},
      {"attr.a+b:1", 0, "'a+b' is not a valid key after 'attr.'"},
      {"telemetry.:1", 0, "expected a metric name after 'telemetry.'"},
      {"software.:1", 0, "expected a package name after 'software.'"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.query);
    const std::string message = error_message(c.query);
    CAPTURE(message);
    CHECK(error_position(message) == c.position);
    CHECK(message.find(c.says) != std::string::npos);
    // The caret sits under the position (ASCII queries: one column per byte).
    const std::size_t caret_line = message.rfind('\n');
    CHECK(message.substr(caret_line + 1) == std::string(2 + c.position, ' ') + "^");
  }
}

TEST_CASE("limits: length, depth and number of predicates") {
  std::string deep = std::string(33, '(') + "tag:a" + std::string(33, ')');
  std::string message = error_message(deep);
  CHECK(error_position(message) == 32);
  CHECK(message.find("deeper than 32 levels") != std::string::npos);
  CHECK(canon(std::string(32, '(') + "tag:a" + std::string(32, ')')) == "tag:a");

  std::string nots;
  for (int i = 0; i < 33; ++i) nots += "NOT ";
  message = error_message(nots + "tag:a");
  CHECK(error_position(message) == 32 * 4);
  CHECK(parse(nots.substr(4) + "tag:a").ok());

  // Precedence makes the tree deeper than the parentheses: each level adds an OR and an AND.
  std::string nested = "tag:x";
  for (int i = 0; i < 17; ++i) nested = "tag:a OR tag:b AND (" + std::move(nested) + ")";
  message = error_message(nested);
  CHECK(message.find("levels of AND, OR and NOT") != std::string::npos);

  std::string many = "tag:a";
  for (int i = 1; i < 256; ++i) many += " OR tag:a";
  CHECK(parse(many).ok());
  const std::size_t next = many.size() + 4;
  many += " OR tag:a";
  message = error_message(many);
  CHECK(error_position(message) == next);
  CHECK(message.find("more than 256 predicates") != std::string::npos);

  std::string longest = "site:" + std::string(4091, 'x');
  CHECK(longest.size() == 4096);
  CHECK(parse(longest).ok());
  message = error_message(longest + "x");
  CHECK(error_position(message) == 4096);
  CHECK(message.find("query is 4097 bytes long; the limit is 4096") != std::string::npos);
  // Long queries are shown as a window around the position.
  const std::size_t first_break = message.find('\n');
  const std::string line = message.substr(first_break + 1, message.rfind('\n') - first_break - 1);
  const std::string caret = message.substr(message.rfind('\n') + 1);
  CHECK(line.starts_with("  ..."));
  CHECK(line.size() < 140);
  CHECK(caret.size() == line.size());  // the caret sits under the last byte shown
}

TEST_CASE("the caret counts characters, not bytes, and control characters become spaces") {
  const std::string message = error_message("site:Zürich\tfoo");
  CHECK(error_position(message) == 13);
  CHECK(message.ends_with("  site:Zürich foo\n              ^"));
}

TEST_CASE("canonical form is a fixed point for random trees") {
  TreeGen gen(20261120);
  std::vector<MapDevice> devices;
  devices.reserve(40);
  for (int i = 0; i < 40; ++i) devices.push_back(gen.device(i));
  for (int i = 0; i < 400; ++i) {
    const Node tree = gen.tree(1 + gen.pick(5));
    const std::string text = to_string(tree);
    CAPTURE(text);
    auto again = parse(text);
    REQUIRE_MESSAGE(again.ok(), again.error().message);
    CHECK(to_string(*again) == text);
    // The parsed tree means the same as the generated one.
    for (const MapDevice& device : devices) {
      CHECK(matches(*again, device, kNow) == matches(tree, device, kNow));
      const Trace trace = explain(tree, device, kNow);
      CHECK(trace.matched == matches(tree, device, kNow));
    }
    // So does the tree written loosely: minimal parentheses, implicit AND, odd whitespace.
    const std::string loose = gen.loose(tree, 0);
    CAPTURE(loose);
    auto from_loose = parse(loose);
    REQUIRE_MESSAGE(from_loose.ok(), from_loose.error().message);
    CHECK(to_string(*from_loose) == text);
  }
}

TEST_CASE("mangled queries never crash the parser; whatever parses has a canonical fixed point") {
  TreeGen gen(7);
  std::mt19937 rng(99);
  const std::string alphabet = "()[]{}\":*?\\ -TOANDORNOT<>=!a1.~\xC3\xBC\t";
  for (int i = 0; i < 3000; ++i) {
    std::string text = to_string(gen.tree(gen.pick(4)));
    const int edits = 1 + gen.pick(4);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = text.empty() ? 0 : std::uniform_int_distribution<std::size_t>(0, text.size() - 1)(rng);
      const char c = alphabet[std::uniform_int_distribution<std::size_t>(0, alphabet.size() - 1)(rng)];
      switch (gen.pick(3)) {
        case 0:
          if (!text.empty()) text.erase(at, 1);
          break;
        case 1: text.insert(at, 1, c); break;
        default:
          if (!text.empty()) text[at] = c;
          break;
      }
    }
    CAPTURE(text);
    auto node = parse(text);
    if (node.ok()) {
      const std::string canonical = to_string(*node);
      auto again = parse(canonical);
      REQUIRE_MESSAGE(again.ok(), again.error().message);
      CHECK(to_string(*again) == canonical);
    } else {
      CHECK(error_position(node.error().message) <= text.size());
    }
  }
}

TEST_CASE("compare_versions follows dpkg") {
  struct Pair {
    std::string_view a;
    std::string_view b;
    int order;
  };
  // Each checked with `dpkg --compare-versions`, except the empty version dpkg refuses.
  const std::vector<Pair> pairs{
      {"1.0~rc1", "1.0", -1},
      {"1:0.1", "2.0", 1},
      {"3.0.11-1~deb12u2", "3.0.11-1", -1},
      {"3.0.11-1~deb12u2", "3.0.11", 1},
      {"1.2.10", "1.2.9", 1},
      {"2.36-9+deb12u8", "2.36-9", 1},
      {"1.0", "1.0-0", 0},
      {"0:1.0", "1.0", 0},
      {"1.01", "1.1", 0},
      {"1.0~~", "1.0~", -1},
      {"1.0~", "1.0", -1},
      {"1.0", "1.0a", -1},
      {"1.0a", "1.0+", -1},
      {"1.0a", "1.0.1", -1},
      {"1.0+", "1.0.1", -1},
      {"9.2p1-2", "9.2p1-10", -1},
      {"1:9.2p1-2", "9.9", 1},
      {"10:1", "9:99", 1},
      {"1.99999999999999999999", "1.99999999999999999998", 1},
      {"6.1.0-18-amd64", "6.1", 1},
      {"5.10.0-28-amd64", "5.10", 1},
      {"1.1.1f-1ubuntu2.20", "3.0.11", -1},
      {"3.0.2-0ubuntu1.10", "3.0.11", -1},
      {"2.0-1", "2.0-1", 0},
      {"a", "b", -1},
      {"", "0", 0},
  };
  for (const Pair& p : pairs) {
    CAPTURE(p.a);
    CAPTURE(p.b);
    CHECK(compare_versions(p.a, p.b) == p.order);
    CHECK(compare_versions(p.b, p.a) == -p.order);
  }
  std::vector<std::string> chain{"1.0~~", "1.0~~a", "1.0~", "1.0", "1.0-1", "1.0a", "1.0+", "1.0.1", "1.1", "1:0.1"};
  std::vector<std::string> shuffled = chain;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937(3));
  std::sort(shuffled.begin(), shuffled.end(),
            [](const std::string& a, const std::string& b) { return compare_versions(a, b) < 0; });
  CHECK(shuffled == chain);
}

TEST_CASE("resolve_time and parse_number read the language's value syntax") {
  CHECK(resolve_time("-5m", kNow) == kNow - 5 * kMinute);
  CHECK(resolve_time("-2h", kNow) == kNow - 120 * kMinute);
  CHECK(resolve_time("-1d", kNow) == kNow - 1440 * kMinute);
  CHECK(resolve_time("-30s", kNow) == kNow - 30'000);
  CHECK(resolve_time("-250ms", kNow) == kNow - 250);
  CHECK(resolve_time("1700000000000", 0) == 1'700'000'000'000);
  CHECK(resolve_time("1970-01-01T00:00:00Z", 0) == 0);
  CHECK(resolve_time("2023-11-14T22:13:20Z", 0) == 1'700'000'000'000);
  CHECK(resolve_time("2023-11-14T22:13:20.5Z", 0) == 1'700'000'000'500);
  CHECK(resolve_time("2023-11-14T22:13:20.123456Z", 0) == 1'700'000'000'123);
  CHECK(resolve_time("2024-02-29", 0) == 1'709'164'800'000);
  CHECK(!resolve_time("2023-02-29", 0));
  CHECK(!resolve_time("2023-11-14T22:13:20", 0));
  CHECK(!resolve_time("2023-11-14T22:13:20+01:00", 0));
  CHECK(!resolve_time("2023-11-14T22:13Z", 0));
  CHECK(!resolve_time("2023-11-14T22:13:20.Z", 0));
  CHECK(!resolve_time("-5", 0));
  CHECK(!resolve_time("5m", 0));
  CHECK(!resolve_time("-5w", 0));
  CHECK(!resolve_time("-99999999999999999999d", 0));
  CHECK(!resolve_time("", 0));

  CHECK(parse_number("42") == 42.0);
  CHECK(parse_number("-1.5") == -1.5);
  CHECK(parse_number("1e9") == 1e9);
  CHECK(!parse_number("abc"));
  CHECK(!parse_number("12abc"));
  CHECK(!parse_number("+5"));
  CHECK(!parse_number("inf"));
  CHECK(!parse_number("nan"));
  CHECK(!parse_number(""));
}

TEST_CASE("value_matches compares by field type") {
  // text: exact bytes
  CHECK(value_ok("os.name:Debian", "Debian"));
  CHECK(!value_ok("os.name:Debian", "debian"));
  CHECK(!value_ok("os.name:Debian", "Debian GNU/Linux"));
  CHECK(value_ok("site>b", "c"));
  CHECK(!value_ok("site>b", "B"));
  CHECK(value_ok("site:[a TO b]", "az"));
  CHECK(!value_ok("site:[a TO b]", "ba"));
  // version: dpkg order, equality by order
  CHECK(value_ok("firmware.version:1.2.3", "1.2.3"));
  CHECK(value_ok("firmware.version:1.2.3", "0:1.2.3"));
  CHECK(value_ok("firmware.version:1.2.3", "1.2.3-0"));
  CHECK(!value_ok("firmware.version:1.2.3", "1.2.30"));
  CHECK(value_ok("firmware.version>1.2.9", "1.2.10"));
  CHECK(value_ok("software.openssl<3.0.11", "3.0.2-0ubuntu1.10"));
  CHECK(!value_ok("software.openssl<3.0.11", "3.0.11-1~deb12u2"));
  // wildcard: on the text
  CHECK(value_ok("firmware.version:1.2.*", "1.2.10"));
  CHECK(value_ok("firmware.version:1.2.*", "1.2."));
  CHECK(!value_ok("firmware.version:1.2.*", "1.20"));
  CHECK(value_ok("site:b?ilding-*", "building-7"));
  CHECK(value_ok("site:Z?rich", "Zürich"));  // '?' is one character, not one byte
  CHECK(!value_ok("site:Z??rich", "Zürich"));
  CHECK(value_ok("site:*a*b*c*", "xxaxxbxxc"));
  CHECK(!value_ok("site:*a*b*c*", "xxaxxcxxb"));
  CHECK(value_ok("site:**", ""));
  CHECK(!value_ok("site:?", ""));
  // number: numeric, stored text that is not a number never matches
  CHECK(value_ok("memory.total:16000000000", "1.6e10"));
  CHECK(value_ok("telemetry.cpu.temp>70", "70.5"));
  CHECK(!value_ok("telemetry.cpu.temp>70", "70"));
  CHECK(value_ok("telemetry.cpu.temp>=70", "70"));
  CHECK(value_ok("telemetry.cpu.temp>70", "100"));  // not "100" < "70" as text
  CHECK(!value_ok("telemetry.cpu.temp>70", "n/a"));
  CHECK(!value_ok("telemetry.cpu.temp<70", "n/a"));
  CHECK(!value_ok("telemetry.cpu.temp:[* TO *]", "n/a"));
  CHECK(value_ok("telemetry.cpu.temp:[* TO *]", "-3"));
  CHECK(value_ok("telemetry.cpu.temp:*", "n/a"));  // exists: any value
  // ranges: inclusive and exclusive ends
  CHECK(value_ok("telemetry.cpu:[10 TO 20]", "10"));
  CHECK(value_ok("telemetry.cpu:[10 TO 20]", "20"));
  CHECK(!value_ok("telemetry.cpu:{10 TO 20]", "10"));
  CHECK(!value_ok("telemetry.cpu:[10 TO 20}", "20"));
  CHECK(value_ok("telemetry.cpu:{10 TO 20}", "10.001"));
  CHECK(!value_ok("telemetry.cpu:[10 TO *]", "9.99"));
  CHECK(value_ok("telemetry.cpu:[10 TO *]", "1e6"));
  // boolean
  CHECK(value_ok("online:true", "true"));
  CHECK(!value_ok("online:true", "false"));
  CHECK(!value_ok("online:true", "TRUE"));
  // time: stored Unix ms; relative values resolved against now
  CHECK(value_ok("last_seen<-5m", ms(kNow - 6 * kMinute)));
  CHECK(!value_ok("last_seen<-5m", ms(kNow - 4 * kMinute)));
  CHECK(!value_ok("last_seen<-5m", ms(kNow - 5 * kMinute)));
  CHECK(value_ok("last_seen<=-5m", ms(kNow - 5 * kMinute)));
  CHECK(value_ok("last_seen:[-1h TO -5m]", ms(kNow - 30 * kMinute)));
  CHECK(value_ok("first_seen<2023-11-14T22:13:20Z", "1699999999999"));
  CHECK(!value_ok("first_seen<2023-11-14T22:13:20Z", "1700000000000"));
  CHECK(value_ok("first_seen:1700000000000", "1700000000000"));
  CHECK(!value_ok("first_seen<-5m", "yesterday"));
  CHECK(value_matches(predicate_of("last_seen>-5m"), ms(kNow - kMinute), kNow));
  CHECK(!value_matches(predicate_of("last_seen>-5m"), ms(kNow - kMinute), kNow + 5 * kMinute));
}

TEST_CASE("issue examples over a small fleet") {
  using Ids = std::set<std::string>;
  CHECK(matching("kind:sensor AND site:building-7 AND firmware.version:1.2.*") == Ids{"sensor-1"});
  CHECK(matching("os.name:Debian AND software.openssl<3.0.11 AND online:true") == Ids{"pc-2"});
  CHECK(matching("telemetry.cpu.temp>70") == Ids{"pc-1"});
  // 6.1.0-18-amd64 sorts after 6.1, so the inclusive end 6.1 leaves it out; [5.10 TO 6.2} keeps it.
  CHECK(matching("os.kernel:[5.10 TO 6.1]") == Ids{"pc-2", "pc-3", "pc-4"});
  CHECK(matching("os.kernel:[5.10 TO 6.2}") == Ids{"pc-1", "pc-2", "pc-3", "pc-4"});
  CHECK(matching("NOT tag:lab") == Ids{"sensor-2", "sensor-3", "pc-1", "pc-2", "pc-3"});
  CHECK(matching("_exists_:telemetry.battery") == Ids{"pc-2"});
  CHECK(matching("telemetry.battery:*") == Ids{"pc-2"});
  CHECK(matching("last_seen<-5m") == Ids{"pc-1"});
  // NOT of a predicate on an absent field is true; a comparison on an absent field is false.
  CHECK(matching("NOT last_seen>=-5m") == Ids{"sensor-1", "sensor-2", "sensor-3", "pc-1", "pc-4"});
  CHECK(matching("telemetry.battery<50 OR NOT telemetry.battery:*").size() == 7);
  CHECK(matching("tag:floor-2") == Ids{"sensor-1"});  // any of several values
  CHECK(matching("tag:lab tag:floor-2") == Ids{"sensor-1"});
  CHECK(matching("telemetry.humidity_percent>40") == Ids{"sensor-1"});
  CHECK(matching("kind:sensor firmware.version>=1.2.10") == Ids{"sensor-2", "sensor-3"});
  CHECK(matching("").size() == 7);
  CHECK(matching("(kind:sensor OR os.name:Ubuntu) NOT site:building-8") == Ids{"sensor-1", "sensor-2", "pc-4"});
}

TEST_CASE("explain lists every predicate in query order with the device's values") {
  const auto fleet = sample_fleet();
  const auto device = [&](std::string_view id) -> const MapDevice& {
    return *std::find_if(fleet.begin(), fleet.end(), [&](const MapDevice& d) { return d.id() == id; });
  };
  const Node query = parsed("os.name:Debian AND software.openssl<3.0.11 AND online:true");

  Trace trace = explain(query, device("pc-2"), kNow);
  CHECK(trace.matched);
  REQUIRE(trace.lines.size() == 3);
  CHECK(trace.lines[0].predicate == "os.name:Debian");
  CHECK(trace.lines[0].matched);
  CHECK(trace.lines[0].values == std::vector<std::string>{"Debian"});
  CHECK(trace.lines[1].predicate == "software.openssl<3.0.11");
  CHECK(trace.lines[1].values == std::vector<std::string>{"3.0.9-1"});
  CHECK(trace.lines[2].predicate == "online:true");
  CHECK(trace.lines[2].matched);

  // Every predicate is evaluated, even after the first failure.
  trace = explain(query, device("pc-4"), kNow);
  CHECK(!trace.matched);
  REQUIRE(trace.lines.size() == 3);
  CHECK(!trace.lines[0].matched);
  CHECK(trace.lines[0].values == std::vector<std::string>{"Ubuntu"});
  CHECK(trace.lines[1].matched);
  CHECK(trace.lines[2].matched);

  // Lines report the predicate itself; NOT is applied in the overall result.
  trace = explain(parsed("NOT tag:lab OR _exists_:telemetry.battery"), device("sensor-1"), kNow);
  CHECK(!trace.matched);
  REQUIRE(trace.lines.size() == 2);
  CHECK(trace.lines[0].predicate == "tag:lab");
  CHECK(trace.lines[0].matched);
  CHECK(trace.lines[0].values == std::vector<std::string>{"lab", "floor-2"});
  CHECK(trace.lines[1].predicate == "telemetry.battery:*");
  CHECK(!trace.lines[1].matched);
  CHECK(trace.lines[1].values.empty());

  trace = explain(parsed(""), device("pc-1"), kNow);
  CHECK(trace.matched);
  CHECK(trace.lines.empty());
}
}  // TEST_SUITE("query")
