// The fleet index against the reference evaluator: random fleets, random queries, every answer
// (members, counts, group-by, statistics, sort order, pagination) compared with brute force,
// also after updates and deletions.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>

#include <fmt/format.h>

#include "flotilla/manager/facts.hpp"
#include "flotilla/manager/index.hpp"
#include "flotilla/manager/query.hpp"
#include "flotilla/manager/query_eval.hpp"

using namespace flotilla;
using namespace flotilla::manager;

namespace {

constexpr std::int64_t kNow = 1'800'000'000'000;

const std::vector<std::string> kKinds{"computer", "printer", "sensor"};
const std::vector<std::string> kSites{"hq", "building-7", "warehouse", "branch-2"};
const std::vector<std::string> kFirmware{"1.2.0", "1.2.3", "1.2.10", "1.3.0", "2.0.1", "1.2.3-rc1"};
const std::vector<std::string> kOs{"Debian GNU/Linux", "Ubuntu", "Rocky Linux"};
const std::vector<std::string> kOsVersions{"11", "12", "22.04", "24.04", "9.4"};
const std::vector<std::string> kKernels{"5.10.0-28", "5.15.0-122", "6.1.0-26", "6.8.0-45"};
const std::vector<std::string> kTags{"lab", "prod", "vip", "retired"};
const std::vector<std::string> kPackages{"openssl", "openssh-server", "curl", "nginx", "python3"};
const std::vector<std::string> kVersions{"3.0.9-1", "3.0.11-1~deb12u2", "3.0.11-1", "3.0.13-1", "1:9.2p1-2"};

template <typename T>
const T& pick(const std::vector<T>& v, std::mt19937_64& rng) {
  return v[rng() % v.size()];
}

DeviceFacts record_part(const std::string& id, std::mt19937_64& rng) {
  DeviceFacts f;
  f.id = id;
  f.values.emplace_back("kind", pick(kKinds, rng));
  f.values.emplace_back("site", pick(kSites, rng));
  f.values.emplace_back("online", rng() % 3 == 0 ? "false" : "true");
  f.values.emplace_back("last_seen", std::to_string(kNow - static_cast<std::int64_t>(rng() % 3'600'000)));
  for (const auto& t : kTags) {
    if (rng() % 4 == 0) f.values.emplace_back("tag", t);
  }
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
  int packages = 0;
  for (const auto& p : kPackages) {
    if (rng() % 2 == 0) {
      f.values.emplace_back("software." + p, pick(kVersions, rng));
      ++packages;
    }
  }
  f.values.emplace_back("software.count", std::to_string(packages));
  return f;
}

DeviceFacts telemetry_part(const std::string& id, std::mt19937_64& rng) {
  DeviceFacts f;
  f.id = id;
  if (rng() % 8 != 0)
    f.values.emplace_back("telemetry.cpu", fmt::format("{}", static_cast<double>(rng() % 1000) / 10.0));
  if (rng() % 3 == 0) f.values.emplace_back("telemetry.cpu.temp", std::to_string(30 + rng() % 60));
  f.values.emplace_back("telemetry.disk.free", std::to_string(rng() % 1000000));
  return f;
}

DeviceFacts merged(const std::map<std::string, std::array<DeviceFacts, 3>>& fleet, const std::string& id) {
  DeviceFacts f;
  f.id = id;
  for (const auto& part : fleet.at(id)) f.values.insert(f.values.end(), part.values.begin(), part.values.end());
  return f;
}

std::string random_predicate(std::mt19937_64& rng) {
  switch (rng() % 16) {
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
    default: return "os.name:\"" + pick(kOs, rng) + "\"";
  }
}

std::string random_query(std::mt19937_64& rng, int depth = 0) {
  const auto r = rng() % 10;
  if (depth > 2 || r < 4) return random_predicate(rng);
  if (r < 6) return "NOT " + random_query(rng, depth + 1);
  const char* op = r < 8 ? " AND " : " OR ";
  return "(" + random_query(rng, depth + 1) + op + random_query(rng, depth + 1) + ")";
}

struct Fixture {
  std::mt19937_64 rng{12345};
  std::map<std::string, std::array<DeviceFacts, 3>> fleet;
  FleetIndex index;

  void add(int n) {
    for (int i = 0; i < n; ++i) {
      const auto id = fmt::format("dev-{:05}", fleet.size() + static_cast<std::size_t>(rng() % 100000) * 7);
      if (fleet.contains(id)) continue;
      fleet[id] = {record_part(id, rng), inventory_part(id, rng), telemetry_part(id, rng)};
      index.upsert(merged(fleet, id));
    }
  }

  std::vector<std::string> brute(const query::Node& q) const {
    std::vector<std::string> out;
    for (const auto& [id, parts] : fleet) {
      const auto f = merged(fleet, id);
      if (query::matches(q, FactsView(f), kNow)) out.push_back(id);
    }
    return out;
  }

  void check_queries(int n) {
    for (int i = 0; i < n; ++i) {
      const auto text = random_query(rng);
      CAPTURE(text);
      auto q = query::parse(text);
      REQUIRE(q);
      const auto expected = brute(*q);
      CHECK(index.count(*q, kNow) == expected.size());
      // All members, by id, through pagination.
      QueryOptions o;
      o.limit = 7;
      std::vector<std::string> got;
      for (int page = 0; page < 1000; ++page) {
        auto p = index.query(*q, o, kNow);
        REQUIRE(p);
        CHECK(p->total == expected.size());
        for (const auto& row : p->rows) got.push_back(row.id);
        if (p->next_cursor.empty()) break;
        o.cursor = p->next_cursor;
      }
      CHECK(got == expected);
    }
  }
};

}  // namespace

TEST_CASE("index answers random queries exactly like the reference evaluator") {
  Fixture f;
  f.add(400);
  f.check_queries(300);
}

TEST_CASE("index stays exact through partial updates and deletions") {
  Fixture f;
  f.add(300);
  for (int round = 0; round < 5; ++round) {
    std::vector<std::string> ids;
    for (const auto& [id, parts] : f.fleet) ids.push_back(id);
    for (int i = 0; i < 60; ++i) {
      const auto& id = ids[f.rng() % ids.size()];
      const auto part = static_cast<int>(f.rng() % 3);
      auto& slot = f.fleet[id][static_cast<std::size_t>(part)];
      slot = part == 0 ? record_part(id, f.rng) : part == 1 ? inventory_part(id, f.rng) : telemetry_part(id, f.rng);
      f.index.update(slot, static_cast<FactPart>(part));
    }
    for (int i = 0; i < 20; ++i) {
      const auto& id = ids[f.rng() % ids.size()];
      if (!f.fleet.contains(id)) continue;
      f.fleet.erase(id);
      f.index.erase(id);
    }
    f.add(30);  // reuses freed slots
    CHECK(f.index.size() == f.fleet.size());
    f.check_queries(40);
  }
}

TEST_CASE("group-by, statistics and sorting agree with brute force") {
  Fixture f;
  f.add(500);
  std::mt19937_64 rng(99);
  for (int i = 0; i < 40; ++i) {
    const auto text = i == 0 ? std::string() : random_query(rng);
    CAPTURE(text);
    auto q = query::parse(text);
    REQUIRE(q);
    const auto members = f.brute(*q);

    for (const std::string field : {"firmware.version", "kind", "tag", "software.openssl", "software.name", "online"}) {
      CAPTURE(field);
      std::map<std::string, std::uint64_t> expected;
      for (const auto& id : members) {
        std::vector<std::string> values;
        FactsView(merged(f.fleet, id)).values(field, values);
        if (values.empty()) ++expected[""];
        for (const auto& v : values) ++expected[v];
      }
      auto got = f.index.count_by(field, *q, kNow);
      REQUIRE(got);
      std::map<std::string, std::uint64_t> got_map(got->begin(), got->end());
      CHECK(got_map == expected);
    }

    std::vector<double> cpu;
    for (const auto& id : members) {
      std::vector<std::string> values;
      FactsView(merged(f.fleet, id)).values("telemetry.cpu", values);
      for (const auto& v : values) cpu.push_back(std::stod(v));
    }
    auto st = f.index.stats("telemetry.cpu", *q, kNow);
    REQUIRE(st);
    CHECK(st->count == cpu.size());
    if (!cpu.empty()) {
      std::sort(cpu.begin(), cpu.end());
      double sum = 0;
      for (double v : cpu) sum += v;
      CHECK(st->min == doctest::Approx(cpu.front()));
      CHECK(st->max == doctest::Approx(cpu.back()));
      CHECK(st->sum == doctest::Approx(sum));
      const auto p50 =
          cpu[std::max<std::size_t>(1, static_cast<std::size_t>(std::ceil(0.5 * static_cast<double>(cpu.size())))) - 1];
      CHECK(st->p50 == doctest::Approx(p50));
    }

    // Top 20 by free disk, ascending (the least free first), ties by id.
    QueryOptions o;
    o.sort = SortKey{"telemetry.disk.free", false};
    o.limit = 20;
    auto page = f.index.query(*q, o, kNow);
    REQUIRE(page);
    std::vector<std::pair<double, std::string>> expected;
    for (const auto& id : members) {
      std::vector<std::string> values;
      FactsView(merged(f.fleet, id)).values("telemetry.disk.free", values);
      expected.emplace_back(std::stod(values.at(0)), id);
    }
    std::sort(expected.begin(), expected.end());
    expected.resize(std::min<std::size_t>(20, expected.size()));
    REQUIRE(page->rows.size() == expected.size());
    for (std::size_t r = 0; r < expected.size(); ++r) CHECK(page->rows[r].id == expected[r].second);
  }
}

TEST_CASE("explain names the strategy of every node") {
  Fixture f;
  f.add(100);
  auto q = query::parse("kind:sensor AND telemetry.cpu>50");
  REQUIRE(q);
  const auto plan = f.index.explain(*q, kNow);
  CAPTURE(plan);
  CHECK(plan.find("AND") != std::string::npos);
  CHECK(plan.find("postings") != std::string::npos);
  CHECK(plan.find("filtered scan") != std::string::npos);
}
