// The fleet index against the reference evaluator: random fleets, random queries, every answer
// (members, counts, group-by, statistics, sort order, pagination) compared with brute force,
// also after partial updates, re-upserts, deletions, heavy churn of number columns and a restart
// from a RocksDB store through the manager's start-up path (load_index).

#include <doctest/doctest.h>

#include <stdlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <set>

#include <fmt/format.h>

#include "flotilla/core/codec.hpp"
#include "flotilla/manager/facts.hpp"
#include "flotilla/manager/groups.hpp"
#include "flotilla/manager/index.hpp"
#include "flotilla/manager/index_load.hpp"
#include "flotilla/manager/query.hpp"
#include "flotilla/manager/query_eval.hpp"
#include "flotilla/manager/registry.hpp"
#include "flotilla/manager/store.hpp"

using namespace flotilla;
using namespace flotilla::manager;

namespace {

namespace fs = std::filesystem;
using query::FieldType;

constexpr std::int64_t kNow = 1'800'000'000'000;
constexpr std::int64_t kMinute = 60'000;

const std::vector<std::string> kKinds{"computer", "printer", "sensor"};
const std::vector<std::string> kSites{"hq", "building-7", "warehouse", "branch-2", "lab"};
const std::vector<std::string> kFirmware{"1.2.0", "1.2.3", "1.2.10", "1.3.0", "2.0.1", "1.2.3-rc1", "0:1.2.3"};
const std::vector<std::string> kOs{"Debian GNU/Linux", "Ubuntu", "Rocky Linux"};
const std::vector<std::string> kOsVersions{"11", "12", "22.04", "24.04", "9.4"};
const std::vector<std::string> kKernels{"5.10.0-28", "5.15.0-122", "6.1.0-26", "6.8.0-45"};
const std::vector<std::string> kTags{"lab", "prod", "vip", "retired"};
const std::vector<std::string> kOwners{"alice", "bob", "carol"};
const std::vector<std::string> kGroups{"finance", "finance-east", "ops"};
const std::vector<std::string> kPackages{"openssl", "openssh-server", "curl", "nginx", "python3"};
const std::vector<std::string> kVersions{"3.0.9-1", "3.0.11-1~deb12u2", "3.0.11-1", "3.0.13-1", "1:9.2p1-2"};

template <typename T>
const T& pick(const std::vector<T>& v, std::mt19937_64& rng) {
  return v[rng() % v.size()];
}

// Number text the way facts.cpp writes it.
std::string number_text(double v) {
  if (v == std::floor(v) && std::fabs(v) < 9e15) return fmt::format("{}", static_cast<std::int64_t>(v));
  return fmt::format("{}", v);
}

DeviceFacts record_part(const std::string& id, std::mt19937_64& rng) {
  DeviceFacts f;
  f.id = id;
  f.values.emplace_back("kind", pick(kKinds, rng));
  f.values.emplace_back("site", pick(kSites, rng));
  f.values.emplace_back("online", rng() % 3 == 0 ? "false" : "true");
  f.values.emplace_back("last_seen", std::to_string(kNow - static_cast<std::int64_t>(rng() % 3'600'000)));
  if (rng() % 4 != 0)
    f.values.emplace_back("first_seen", std::to_string(kNow - static_cast<std::int64_t>(rng() % 20) * 86'400'000));
  for (const auto& t : kTags) {
    if (rng() % 4 == 0) f.values.emplace_back("tag", t);
  }
  if (rng() % 3 == 0) f.values.emplace_back("attr.owner", pick(kOwners, rng));
  if (rng() % 4 == 0) f.values.emplace_back("group", pick(kGroups, rng));
  return f;
}

DeviceFacts inventory_part(const std::string& id, std::mt19937_64& rng) {
  DeviceFacts f;
  f.id = id;
  if (rng() % 10 != 0) f.values.emplace_back("firmware.version", pick(kFirmware, rng));
  f.values.emplace_back("os.name", pick(kOs, rng));
  f.values.emplace_back("os.version", pick(kOsVersions, rng));
  f.values.emplace_back("os.kernel", pick(kKernels, rng));
  f.values.emplace_back("cpu.cores", std::to_string(1 << (rng() % 5)));
  if (rng() % 2 == 0) f.values.emplace_back("memory.total", std::to_string((std::int64_t{1} << 33) << (rng() % 4)));
  int packages = 0;
  for (const auto& p : kPackages) {
    if (rng() % 2 == 0) {
      f.values.emplace_back("software." + p, pick(kVersions, rng));
      ++packages;
      // Now and then a second version of the same package.
      if (rng() % 12 == 0) f.values.emplace_back("software." + p, pick(kVersions, rng));
    }
  }
  f.values.emplace_back("software.count", std::to_string(packages));
  return f;
}

DeviceFacts telemetry_part(const std::string& id, std::mt19937_64& rng) {
  DeviceFacts f;
  f.id = id;
  // Halves: many ties.
  if (rng() % 8 != 0) f.values.emplace_back("telemetry.cpu", number_text(static_cast<double>(rng() % 200) / 2.0));
  if (rng() % 3 == 0) f.values.emplace_back("telemetry.cpu.temp", std::to_string(30 + rng() % 60));
  f.values.emplace_back("telemetry.disk.free", std::to_string(rng() % 1000000));
  // Negative values and fractions, on a third of the fleet.
  if (rng() % 3 == 0) {
    f.values.emplace_back("telemetry.humidity_percent",
                          number_text(static_cast<double>(static_cast<int>(rng() % 1000) - 200) / 10.0));
  }
  return f;
}

DeviceFacts merge(const std::array<DeviceFacts, 3>& parts) {
  DeviceFacts f;
  f.id = parts[0].id;
  for (const auto& part : parts) f.values.insert(f.values.end(), part.values.begin(), part.values.end());
  return f;
}

std::string random_predicate(std::mt19937_64& rng, const std::vector<std::string>& ids) {
  switch (rng() % 34) {
    case 0: return "kind:" + pick(kKinds, rng);
    case 1: return "site:" + pick(kSites, rng);
    case 2: return "firmware.version:1.2.*";
    case 3: return "firmware.version<" + pick(kFirmware, rng);
    case 4: return fmt::format("os.kernel:[5.10 TO {}]", pick(kKernels, rng));
    case 5: return "online:" + std::string(rng() % 2 ? "true" : "false");
    case 6: return "tag:" + pick(kTags, rng);
    case 7: return fmt::format("telemetry.cpu>{}", rng() % 100);
    case 8: return fmt::format("telemetry.cpu.temp>={}", 30 + rng() % 60);
    case 9: return "software." + pick(kPackages, rng) + "<3.0.11";
    case 10: return "software." + pick(kPackages, rng) + ":*";
    case 11: return "software.name:open*";
    case 12: return "_exists_:firmware.version";
    case 13: return fmt::format("last_seen<-{}m", rng() % 60);
    case 14: return fmt::format("cpu.cores:{{1 TO {}]", 2 << (rng() % 4));
    case 15: return "os.name:\"" + pick(kOs, rng) + "\"";
    case 16: return fmt::format("telemetry.cpu:{}", number_text(static_cast<double>(rng() % 200) / 2.0));
    case 17: return fmt::format("telemetry.cpu:[{} TO {}}}", rng() % 50, 50 + rng() % 50);
    case 18: return fmt::format("telemetry.cpu:{{{} TO *]", rng() % 100);
    case 19: return fmt::format("telemetry.humidity_percent<{}", static_cast<int>(rng() % 80) - 20);
    case 20: return "telemetry.humidity_percent:*";
    case 21: return fmt::format("last_seen:[-{}m TO -{}m]", 30 + rng() % 30, rng() % 30);
    case 22: return "memory.total>=16e9";
    case 23: return "firmware.version:1.2.3";  // also 0:1.2.3 by version order
    case 24: {
      auto a = pick(kSites, rng), b = pick(kSites, rng);
      if (a == b) return "site:[* TO " + a + "}";
      if (b < a) std::swap(a, b);
      return fmt::format("site:[{} TO {}}}", a, b);
    }
    case 25: return "attr.owner:" + pick(kOwners, rng);
    case 26: return "attr.owner:*";
    case 27: return "group:" + pick(kGroups, rng);
    case 28: return ids.empty() ? "id:none" : "id:" + pick(ids, rng);
    case 29: return "id:dev-0001*";
    case 30: return "telemetry.nosuch>5";
    case 31: return fmt::format("first_seen>=-{}d", rng() % 20);
    case 32: return fmt::format("telemetry.disk.free<={}", rng() % 1000000);
    default: return "software.name:curl";
  }
}

std::string random_query(std::mt19937_64& rng, const std::vector<std::string>& ids, int depth = 0) {
  const auto r = rng() % 10;
  if (depth > 2 || r < 4) return random_predicate(rng, ids);
  if (r < 5) return "NOT " + random_query(rng, ids, depth + 1);
  if (r < 8) {
    // Up to four terms: the planner orders them.
    std::string out = "(" + random_query(rng, ids, depth + 1);
    for (auto n = 1 + rng() % 3; n > 0; --n) out += " AND " + random_query(rng, ids, depth + 1);
    return out + ")";
  }
  return "(" + random_query(rng, ids, depth + 1) + " OR " + random_query(rng, ids, depth + 1) + ")";
}

// Brute force over the facts of every device.
class Reference {
 public:
  explicit Reference(const std::map<std::string, DeviceFacts>& devices) : devices_(devices) {}

  std::vector<std::string> ids() const {
    std::vector<std::string> out;
    for (const auto& [id, f] : devices_) out.push_back(id);
    return out;
  }

  std::vector<std::string> members(const query::Node& q) const {
    std::vector<std::string> out;
    for (const auto& [id, f] : devices_) {
      if (query::matches(q, FactsView(f), kNow)) out.push_back(id);
    }
    return out;
  }

  std::vector<std::string> values(const std::string& id, const std::string& field) const {
    std::vector<std::string> out;
    FactsView(devices_.at(id)).values(field, out);
    return out;
  }

  // Count per value; a device counts once per distinct value, under "" when it has none.
  std::map<std::string, std::uint64_t> count_by(const std::vector<std::string>& members, const std::string& field,
                                                bool numeric) const {
    std::map<std::string, std::uint64_t> out;
    for (const auto& id : members) {
      std::set<std::string> distinct;
      for (auto v : values(id, field)) {
        if (numeric) {
          const auto n = query::parse_number(v);
          if (!n) continue;
          v = number_text(*n);
        }
        distinct.insert(v);
      }
      if (distinct.empty()) ++out[""];
      for (const auto& v : distinct) ++out[v];
    }
    return out;
  }

  // Members in the order of a sort key (devices without a value last; ties by id).
  std::vector<std::string> sorted(std::vector<std::string> members, const std::string& field, bool descending) const {
    const auto info = query::find_field(field);
    REQUIRE(info);
    auto key = [&](const std::string& id) -> std::optional<std::string> {
      if (field == "id") return id;
      auto v = values(id, field);
      if (v.empty()) return std::nullopt;
      return v.front();
    };
    auto cmp = [&](const std::string& a, const std::string& b) {
      if (info->type == FieldType::number || info->type == FieldType::time) {
        const double x = *query::parse_number(a), y = *query::parse_number(b);
        return (x > y) - (x < y);
      }
      if (info->type == FieldType::version) return query::compare_versions(a, b);
      return a.compare(b);
    };
    std::stable_sort(members.begin(), members.end(), [&](const std::string& a, const std::string& b) {
      const auto ka = key(a), kb = key(b);
      if (ka.has_value() != kb.has_value()) return ka.has_value();
      if (ka) {
        const int c = cmp(*ka, *kb);
        if (c != 0) return descending ? c > 0 : c < 0;
      }
      return a < b;
    });
    return members;
  }

 private:
  const std::map<std::string, DeviceFacts>& devices_;
};

// Every answer of the index for random queries, against brute force.
void check_index(const FleetIndex& index, const std::map<std::string, DeviceFacts>& devices, std::mt19937_64& rng,
                 int queries) {
  const Reference ref(devices);
  const auto ids = ref.ids();
  REQUIRE(index.size() == devices.size());
  for (int i = 0; i < queries; ++i) {
    const auto text = i == 0 ? std::string() : random_query(rng, ids);
    CAPTURE(text);
    auto q = query::parse(text);
    REQUIRE(q);
    const auto members = ref.members(*q);
    CHECK(index.count(*q, kNow) == members.size());

    // Every member, by id, through pages of a random size.
    QueryOptions o;
    o.limit = static_cast<std::uint32_t>(1 + rng() % 40);
    o.fields = {"id"};
    std::vector<std::string> got;
    for (int page = 0; page < 1000; ++page) {
      auto p = index.query(*q, o, kNow);
      REQUIRE(p);
      CHECK(p->total == members.size());
      for (const auto& row : p->rows) got.push_back(row.id);
      if (p->next_cursor.empty()) break;
      o.cursor = p->next_cursor;
    }
    CHECK(got == members);

    // Group-by.
    for (const std::string field : {"kind", "firmware.version", "tag", "group", "attr.owner", "software.openssl",
                                    "software.name", "online", "telemetry.cpu", "cpu.cores", "telemetry.nosuch"}) {
      CAPTURE(field);
      const auto info = query::find_field(field);
      const auto expected = ref.count_by(members, field, info->type == FieldType::number);
      auto by = index.count_by(field, *q, kNow);
      REQUIRE(by);
      CHECK(std::map<std::string, std::uint64_t>(by->begin(), by->end()) == expected);
      CHECK(std::is_sorted(by->begin(), by->end(), [](const auto& a, const auto& b) {
        return a.second != b.second ? a.second > b.second : a.first < b.first;
      }));
    }

    // Statistics, exact but for the floating-point sum.
    for (const std::string field : {"telemetry.cpu", "telemetry.humidity_percent", "last_seen", "cpu.cores"}) {
      CAPTURE(field);
      std::vector<double> v;
      for (const auto& id : members) {
        for (const auto& x : ref.values(id, field)) v.push_back(*query::parse_number(x));
      }
      std::sort(v.begin(), v.end());
      auto st = index.stats(field, *q, kNow);
      REQUIRE(st);
      CHECK(st->count == v.size());
      if (v.empty()) continue;
      double sum = 0;
      for (double x : v) sum += x;
      auto rank = [&](double p) {
        const auto r = static_cast<std::size_t>(std::ceil(p * static_cast<double>(v.size())));
        return v[std::max<std::size_t>(1, r) - 1];
      };
      CHECK(st->min == v.front());
      CHECK(st->max == v.back());
      CHECK(st->sum == doctest::Approx(sum));
      CHECK(st->avg == doctest::Approx(sum / static_cast<double>(v.size())));
      CHECK(st->p50 == rank(0.50));
      CHECK(st->p90 == rank(0.90));
      CHECK(st->p99 == rank(0.99));
      CHECK(st->distinct == static_cast<std::uint64_t>(std::unique(v.begin(), v.end()) - v.begin()));
    }
    {
      auto st = index.stats("kind", *q, kNow);
      REQUIRE(st);
      const auto by = ref.count_by(members, "kind", false);
      CHECK(st->count == members.size() - (by.contains("") ? by.at("") : 0));
      CHECK(st->distinct == by.size() - (by.contains("") ? 1 : 0));
    }

    // Two random sort orders, read through pages of a random size; also the first page alone.
    const std::vector<std::string> keys{"telemetry.cpu",
                                        "last_seen",
                                        "firmware.version",
                                        "site",
                                        "cpu.cores",
                                        "telemetry.humidity_percent",
                                        "telemetry.nosuch",
                                        "attr.owner",
                                        "id",
                                        "online",
                                        "telemetry.disk.free"};
    for (int k = 0; k < 2; ++k) {
      QueryOptions s;
      s.sort = SortKey{pick(keys, rng), rng() % 2 == 0};
      s.limit = static_cast<std::uint32_t>(1 + rng() % 60);
      s.fields = {s.sort->field};
      CAPTURE(s.sort->field);
      CAPTURE(s.sort->descending);
      const auto expected = ref.sorted(members, s.sort->field, s.sort->descending);
      std::vector<std::string> order;
      for (int page = 0; page < 1000; ++page) {
        auto p = index.query(*q, s, kNow);
        REQUIRE(p);
        for (const auto& row : p->rows) order.push_back(row.id);
        if (p->next_cursor.empty()) break;
        s.cursor = p->next_cursor;
      }
      CHECK(order == expected);
    }
  }
}

// A fleet of plain facts, changed part by part.
struct Fixture {
  std::mt19937_64 rng{12345};
  std::map<std::string, std::array<DeviceFacts, 3>> fleet;
  FleetIndex index;

  std::string new_id() { return fmt::format("dev-{:05}", fleet.size() + static_cast<std::size_t>(rng() % 100000) * 7); }

  void add(int n) {
    for (int i = 0; i < n; ++i) {
      const auto id = new_id();
      if (fleet.contains(id)) continue;
      fleet[id] = {record_part(id, rng), inventory_part(id, rng), telemetry_part(id, rng)};
      index.upsert(merge(fleet[id]));
    }
  }

  std::map<std::string, DeviceFacts> facts() const {
    std::map<std::string, DeviceFacts> out;
    for (const auto& [id, parts] : fleet) out[id] = merge(parts);
    return out;
  }

  std::vector<std::string> ids() const {
    std::vector<std::string> out;
    for (const auto& [id, parts] : fleet) out.push_back(id);
    return out;
  }

  void check(int queries) { check_index(index, facts(), rng, queries); }

  // Random part updates, whole re-upserts, deletions, then new devices (reusing freed slots).
  void churn(int updates, int upserts, int erasures, int additions) {
    auto ids_now = ids();
    for (int i = 0; i < updates; ++i) {
      const auto& id = pick(ids_now, rng);
      const auto part = static_cast<int>(rng() % 3);
      auto& slot = fleet[id][static_cast<std::size_t>(part)];
      slot = part == 0 ? record_part(id, rng) : part == 1 ? inventory_part(id, rng) : telemetry_part(id, rng);
      index.update(slot, static_cast<FactPart>(part));
    }
    for (int i = 0; i < upserts; ++i) {
      const auto& id = pick(ids_now, rng);
      fleet[id] = {record_part(id, rng), inventory_part(id, rng), telemetry_part(id, rng)};
      index.upsert(merge(fleet[id]));
    }
    for (int i = 0; i < erasures; ++i) {
      const auto& id = pick(ids_now, rng);
      if (!fleet.contains(id)) continue;
      fleet.erase(id);
      index.erase(id);
    }
    index.erase("dev-no-such-device");
    add(additions);
  }
};

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "flotilla-index-test.XXXXXX").string();
    const char* made = ::mkdtemp(tmpl.data());
    REQUIRE(made != nullptr);
    path_ = made;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A device as the manager stores it.
struct StoredDevice {
  v1::DeviceRecord record;
  std::optional<v1::Inventory> inventory;
  std::optional<v1::Telemetry> telemetry;
  std::optional<v1::DeviceLabels> labels;
  std::set<std::string> groups;  // direct memberships
};

StoredDevice stored_device(const std::string& id, std::mt19937_64& rng) {
  StoredDevice d;
  auto& r = d.record;
  r.set_device_id(id);
  r.set_kind(static_cast<v1::DeviceKind>(1 + rng() % 3));
  r.set_tenant(rng() % 2 == 0 ? "acme" : "globex");
  r.set_site(pick(kSites, rng));
  if (rng() % 3 == 0) r.set_gateway_id(fmt::format("gw-{}", rng() % 3));
  r.set_agent_version(rng() % 2 == 0 ? "1.0.0" : "1.1.0");
  r.set_online(rng() % 3 != 0);
  r.set_last_seen_ms(kNow - static_cast<std::int64_t>(rng() % 60) * kMinute);
  r.set_first_seen_ms(kNow - static_cast<std::int64_t>(rng() % 30) * 86'400'000);
  if (r.online()) r.set_connected_since_ms(r.last_seen_ms() - static_cast<std::int64_t>(rng() % 600) * kMinute);
  for (const auto& t : kTags) {
    if (rng() % 4 == 0) r.add_tags(t);
  }
  if (rng() % 6 != 0) {
    v1::Inventory inv;
    inv.mutable_hardware()->set_vendor(rng() % 2 == 0 ? "Dell Inc." : "HP");
    inv.mutable_hardware()->set_model(fmt::format("model-{}", rng() % 4));
    inv.mutable_hardware()->set_serial(fmt::format("SN{:06}", rng() % 1000000));
    if (rng() % 10 != 0) inv.mutable_hardware()->set_firmware_version(pick(kFirmware, rng));
    inv.mutable_os()->set_name(pick(kOs, rng));
    inv.mutable_os()->set_id(rng() % 2 == 0 ? "debian" : "ubuntu");
    inv.mutable_os()->set_version(pick(kOsVersions, rng));
    inv.mutable_os()->set_kernel(pick(kKernels, rng));
    inv.mutable_cpu()->set_model("cpu");
    inv.mutable_cpu()->set_logical_cores(static_cast<std::uint32_t>(rng() % 3) * 4);
    inv.set_memory_total_bytes((std::uint64_t{1} << 33) << (rng() % 4));
    for (const auto& p : kPackages) {
      if (rng() % 2 != 0) continue;
      auto* pkg = inv.add_packages();
      pkg->set_name(p);
      if (rng() % 8 != 0) pkg->set_version(pick(kVersions, rng));  // no version: "0"
      if (rng() % 12 == 0) {
        auto* second = inv.add_packages();
        second->set_name(p);
        second->set_version(pick(kVersions, rng));
      }
    }
    d.inventory = std::move(inv);
  }
  if (rng() % 5 != 0) {
    v1::Telemetry t;
    if (rng() % 4 != 0) {
      t.set_cpu_percent(static_cast<double>(rng() % 200) / 2.0);
      t.set_load1(static_cast<double>(rng() % 400) / 100.0);
      t.set_memory_total_bytes(16ull << 30);
      t.set_memory_available_bytes((rng() % 16) << 30);
      auto* m = t.add_mounts();
      m->set_mount_point("/");
      m->set_total_bytes(1000000);
      m->set_used_bytes(rng() % 1000000);
      m->set_available_bytes(1000000 - m->used_bytes());
    }
    if (rng() % 2 == 0) t.set_uptime_s(rng() % 100000);
    if (rng() % 3 == 0) t.add_temperatures()->set_celsius(30 + static_cast<double>(rng() % 60));
    if (rng() % 3 == 0) {
      (*t.mutable_metrics())["humidity_percent"] = static_cast<double>(static_cast<int>(rng() % 1000) - 200) / 10.0;
    }
    d.telemetry = std::move(t);
  }
  if (rng() % 3 == 0) {
    v1::DeviceLabels l;
    // Sometimes a tag the device reports itself: one value of `tag`.
    l.add_tags(pick(kTags, rng));
    if (rng() % 2 == 0) (*l.mutable_attributes())["owner"] = pick(kOwners, rng);
    d.labels = std::move(l);
  }
  if (rng() % 3 == 0) d.groups.insert(pick(kGroups, rng));
  return d;
}

// The facts of a stored device, computed independently of load_index.
DeviceFacts expected_facts(const StoredDevice& d, const std::map<std::string, std::string>& parent) {
  DeviceFacts f = facts_of(d.record, d.inventory ? &*d.inventory : nullptr, d.telemetry ? &*d.telemetry : nullptr);
  if (d.labels) {
    for (const auto& t : d.labels->tags()) {
      if (std::find(d.record.tags().begin(), d.record.tags().end(), t) == d.record.tags().end()) {
        f.values.emplace_back("tag", t);
      }
    }
    for (const auto& [k, v] : d.labels->attributes()) f.values.emplace_back("attr." + k, v);
  }
  std::set<std::string> groups;
  for (auto g : d.groups) {
    for (;;) {
      groups.insert(g);
      auto it = parent.find(g);
      if (it == parent.end() || it->second.empty()) break;
      g = it->second;
    }
  }
  for (const auto& g : groups) f.values.emplace_back("group", g);
  return f;
}

}  // namespace

TEST_CASE("index answers random queries exactly like the reference evaluator") {
  Fixture f;
  f.add(400);
  f.check(150);
}

TEST_CASE("index stays exact through partial updates, re-upserts and deletions") {
  Fixture f;
  f.add(300);
  for (int round = 0; round < 4; ++round) {
    CAPTURE(round);
    f.churn(60, 15, 25, 30);
    CHECK(f.index.size() == f.fleet.size());
    f.check(25);
  }
  // Every device erased, then a new fleet in the freed slots.
  for (const auto& id : f.ids()) f.index.erase(id);
  f.fleet.clear();
  CHECK(f.index.size() == 0);
  f.check(5);
  f.add(120);
  f.check(25);
}

TEST_CASE("value orders of number columns stay exact through heavy churn") {
  // Enough devices for many chunks per value order, few distinct values (long runs of ties).
  std::mt19937_64 rng(7);
  FleetIndex index;
  std::map<std::string, double> cpu, temp;
  auto put = [&](const std::string& id) {
    DeviceFacts f;
    f.id = id;
    if (rng() % 10 != 0) {
      cpu[id] = static_cast<double>(rng() % 50);
      f.values.emplace_back("telemetry.cpu", number_text(cpu[id]));
    } else {
      cpu.erase(id);
    }
    temp[id] = static_cast<double>(rng() % 5000) / 10.0;
    f.values.emplace_back("telemetry.cpu.temp", number_text(temp[id]));
    index.update(f, FactPart::telemetry);
  };
  for (int i = 0; i < 6000; ++i) put(fmt::format("d{:05}", i));
  auto check = [&](int round) {
    CAPTURE(round);
    for (int i = 0; i < 20; ++i) {
      const double lo = static_cast<double>(rng() % 55);
      const auto text = fmt::format("telemetry.cpu:[{} TO {}}}", lo, lo + static_cast<double>(1 + rng() % 20));
      CAPTURE(text);
      auto q = query::parse(text);
      REQUIRE(q);
      std::uint64_t expected = 0;
      for (const auto& [id, v] : cpu) {
        if (q->predicate.low && v >= *query::parse_number(*q->predicate.low) &&
            v < *query::parse_number(*q->predicate.high)) {
          ++expected;
        }
      }
      CHECK(index.count(*q, kNow) == expected);
    }
    // Top 50 by temperature, descending, ties by id.
    std::vector<std::pair<double, std::string>> by_temp;
    by_temp.reserve(temp.size());
    for (const auto& [id, v] : temp) by_temp.emplace_back(-v, id);
    std::sort(by_temp.begin(), by_temp.end());
    QueryOptions o;
    o.sort = SortKey{"telemetry.cpu.temp", true};
    o.limit = 50;
    o.fields = {"id"};
    auto page = index.query(query::Node{}, o, kNow);
    REQUIRE(page);
    REQUIRE(page->rows.size() == 50);
    for (std::size_t r = 0; r < 50; ++r) CHECK(page->rows[r].id == by_temp[r].second);
    auto st = index.stats("telemetry.cpu", query::Node{}, kNow);
    REQUIRE(st);
    CHECK(st->count == cpu.size());
  };
  check(0);  // builds the value orders; from here on they are maintained
  for (int round = 1; round <= 6; ++round) {
    for (int i = 0; i < 3000; ++i) {
      const auto id = fmt::format("d{:05}", rng() % 7000);
      if (rng() % 6 == 0 && temp.contains(id)) {
        index.erase(id);
        cpu.erase(id);
        temp.erase(id);
      } else {
        put(id);
      }
    }
    check(round);
  }
}

TEST_CASE("load_index rebuilds the index from a RocksDB store after a restart") {
  TempDir dir;
  std::mt19937_64 rng(2024);
  std::map<std::string, StoredDevice> stored;
  for (int i = 0; i < 350; ++i) {
    const auto id = fmt::format("dev-{:05}", rng() % 100000);
    stored[id] = stored_device(id, rng);
  }
  // Groups: finance-east is a subgroup of finance; ops is dynamic (its members are stored keys).
  const std::map<std::string, std::string> parent{{"finance", ""}, {"finance-east", "finance"}, {"ops", ""}};
  {
    auto store = open_rocksdb_store(dir.path() / "store");
    REQUIRE(store);
    Batch batch;
    for (const auto& [id, d] : stored) {
      batch.put(Space::devices, id, codec::encode(d.record));
      if (d.inventory) batch.put(Space::inventory, id, codec::encode(*d.inventory));
      if (d.telemetry) batch.put(Space::telemetry, id, codec::encode(*d.telemetry));
      if (d.labels) batch.put(Space::labels, id, codec::encode(*d.labels));
      if (d.groups.contains("ops")) batch.put(Space::groups, "m/ops/" + id, "");
    }
    for (const auto& [name, up] : parent) {
      v1::Group g;
      g.set_name(name);
      g.set_parent(up);
      if (name == "ops") {
        g.set_type(v1::Group::TYPE_DYNAMIC);
        g.set_query("kind:sensor");
      } else {
        for (const auto& [id, d] : stored) {
          if (d.groups.contains(name)) g.add_members(id);
        }
      }
      batch.put(Space::groups, "g/" + name, codec::encode(g));
    }
    // Inventory and telemetry of a device the registry does not know: not indexed.
    batch.put(Space::inventory, "dev-orphan", codec::encode(v1::Inventory()));
    batch.put(Space::telemetry, "zzz-orphan", codec::encode(v1::Telemetry()));
    REQUIRE((*store)->write(batch, true));
  }

  // The restart: reopen the store, then the manager's start-up path.
  auto store = open_rocksdb_store(dir.path() / "store");
  REQUIRE(store);
  auto registry = Registry::load(**store);
  REQUIRE(registry);
  auto groups = Groups::load(**store);
  REQUIRE(groups);
  auto loaded = load_index(**store, *registry, *groups);
  REQUIRE(loaded);
  std::size_t with_labels = 0, with_inventory = 0, with_telemetry = 0;
  std::map<std::string, DeviceFacts> expected;
  for (const auto& [id, d] : stored) {
    expected[id] = expected_facts(d, parent);
    with_labels += d.labels ? 1 : 0;
    with_inventory += d.inventory ? 1 : 0;
    with_telemetry += d.telemetry ? 1 : 0;
  }
  CHECK(loaded->labels.size() == with_labels);
  CHECK(loaded->inventories == with_inventory);
  CHECK(loaded->telemetries == with_telemetry);
  CHECK_FALSE(loaded->index.facts("dev-orphan").has_value());
  check_index(loaded->index, expected, rng, 120);

  // The loaded index keeps answering exactly through updates and deletions.
  std::vector<std::string> ids;
  ids.reserve(stored.size());
  for (const auto& [id, d] : stored) ids.push_back(id);
  for (int i = 0; i < 80; ++i) {
    const auto& id = pick(ids, rng);
    if (!expected.contains(id)) continue;
    if (i % 8 == 0) {
      loaded->index.erase(id);
      expected.erase(id);
      continue;
    }
    auto fresh = stored_device(id, rng);
    fresh.groups = stored.at(id).groups;
    DeviceFacts next = expected_facts(fresh, parent);
    const auto part = static_cast<FactPart>(rng() % 3);
    DeviceFacts update;
    update.id = id;
    DeviceFacts merged;
    merged.id = id;
    for (const auto& kv : expected.at(id).values) {
      if (part_of(kv.first) != part) merged.values.push_back(kv);
    }
    for (const auto& kv : next.values) {
      if (part_of(kv.first) == part) {
        update.values.push_back(kv);
        merged.values.push_back(kv);
      }
    }
    loaded->index.update(update, part);
    expected[id] = merged;
  }
  check_index(loaded->index, expected, rng, 40);
}

TEST_CASE("an index snapshot serves the one start-up after a clean stop, and only an exact one") {
  TempDir dir;
  std::mt19937_64 rng(77);
  std::map<std::string, StoredDevice> stored;
  for (int i = 0; i < 200; ++i) {
    const auto id = fmt::format("dev-{:05}", rng() % 100000);
    stored[id] = stored_device(id, rng);
  }
  auto store = open_rocksdb_store(dir.path() / "store");
  REQUIRE(store);
  {
    Batch batch;
    for (const auto& [id, d] : stored) {
      batch.put(Space::devices, id, codec::encode(d.record));
      if (d.inventory) batch.put(Space::inventory, id, codec::encode(*d.inventory));
      if (d.telemetry) batch.put(Space::telemetry, id, codec::encode(*d.telemetry));
      if (d.labels) batch.put(Space::labels, id, codec::encode(*d.labels));
    }
    REQUIRE((*store)->write(batch, true));
  }
  std::map<std::string, DeviceFacts> expected;
  for (auto& [id, d] : stored) {
    d.groups.clear();
    expected[id] = expected_facts(d, {});
  }
  const auto snapshot = dir.path() / "index.snapshot";
  auto start = [&](Store& s) {
    auto registry = Registry::load(s);
    REQUIRE(registry);
    auto groups = Groups::load(s);
    REQUIRE(groups);
    auto loaded = load_index(s, *registry, *groups, &snapshot);
    REQUIRE(loaded);
    CHECK_FALSE(fs::exists(snapshot));  // consumed, whatever the outcome
    return std::move(loaded).value();
  };

  auto first = start(**store);
  CHECK_FALSE(first.from_snapshot);
  CHECK(first.snapshot_note == "no snapshot");
  REQUIRE(save_index_snapshot(**store, first.index, snapshot));
  REQUIRE(fs::exists(snapshot));

  // Restart: the snapshot is read instead of a rebuild, and answers exactly.
  store->reset();
  store = open_rocksdb_store(dir.path() / "store");
  REQUIRE(store);
  auto second = start(**store);
  CHECK(second.from_snapshot);
  CHECK(second.labels.size() == first.labels.size());
  check_index(second.index, expected, rng, 40);
  // It keeps working as an index: updates after a snapshot load are exact too.
  const auto in_store = expected;
  const auto some = expected.begin()->first;
  second.index.erase(some);
  expected.erase(some);
  check_index(second.index, expected, rng, 10);

  // Used once: the next start-up finds none.
  auto third = start(**store);
  CHECK_FALSE(third.from_snapshot);

  // Any write after the save makes it stale.
  REQUIRE(save_index_snapshot(**store, third.index, snapshot));
  Batch touch;
  touch.put(Space::meta, "unrelated", "1");
  REQUIRE((*store)->write(touch, true));
  auto fourth = start(**store);
  CHECK_FALSE(fourth.from_snapshot);
  CHECK(fourth.snapshot_note.find("store changed") != std::string::npos);

  // A damaged snapshot is not used: one flipped byte, or a truncated file.
  for (const bool truncate : {false, true}) {
    CAPTURE(truncate);
    REQUIRE(save_index_snapshot(**store, fourth.index, snapshot));
    const auto size = fs::file_size(snapshot);
    if (truncate) {
      fs::resize_file(snapshot, size / 2);
    } else {
      std::FILE* f = std::fopen(snapshot.c_str(), "r+b");
      REQUIRE(f != nullptr);
      std::fseek(f, static_cast<long>(size * 2 / 3), SEEK_SET);
      const int c = std::fgetc(f);
      std::fseek(f, static_cast<long>(size * 2 / 3), SEEK_SET);
      std::fputc(c ^ 0x20, f);
      std::fclose(f);
    }
    auto damaged = start(**store);
    CHECK_FALSE(damaged.from_snapshot);
    CAPTURE(damaged.snapshot_note);
    CHECK(damaged.snapshot_note.find("index snapshot") != std::string::npos);
    check_index(damaged.index, in_store, rng, 5);
  }

  // A store that cannot name its state gets no snapshot.
  auto memory = make_memory_store();
  CHECK_FALSE(save_index_snapshot(*memory, first.index, snapshot));
  CHECK_FALSE(fs::exists(snapshot));
}

TEST_CASE("load_index refuses a store whose inventory does not decode") {
  TempDir dir;
  auto store = open_rocksdb_store(dir.path() / "store");
  REQUIRE(store);
  std::mt19937_64 rng(5);
  Batch batch;
  batch.put(Space::devices, "dev-1", codec::encode(stored_device("dev-1", rng).record));
  batch.put(Space::inventory, "dev-1", std::string("\xff\xff\xff", 3));
  REQUIRE((*store)->write(batch, true));
  auto registry = Registry::load(**store);
  REQUIRE(registry);
  auto groups = Groups::load(**store);
  REQUIRE(groups);
  auto loaded = load_index(**store, *registry, *groups);
  REQUIRE_FALSE(loaded);
  CHECK(loaded.error().code == Errc::corruption);
  CHECK(loaded.error().message.find("dev-1") != std::string::npos);
}

TEST_CASE("explain names the strategy of every node") {
  Fixture f;
  f.add(100);
  auto q = query::parse("kind:sensor AND telemetry.cpu>50");
  REQUIRE(q);
  const auto plan = f.index.explain(*q, kNow);
  CAPTURE(plan);
  CHECK(plan.starts_with("AND -> "));
  CHECK(plan.find("kind:sensor [postings: 1 of 3 values]") != std::string::npos);
  CHECK(plan.find("telemetry.cpu>50 [filtered scan of") != std::string::npos);
  // Alone, a range is collected from the value order.
  auto range = query::parse("telemetry.cpu>95");
  REQUIRE(range);
  CHECK(f.index.explain(*range, kNow).find("[value order: ") != std::string::npos);
}
