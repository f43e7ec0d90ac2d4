// Desired configuration: validation, inheritance (closer wins), enforcement, versions, and
// persistence through the store.
#include <doctest/doctest.h>

#include "flotilla/manager/policies.hpp"

using namespace flotilla;
using namespace flotilla::manager;

namespace {

constexpr std::int64_t kNow = 1'800'000'000'000;

v1::Policy policy(const std::string& level, const std::string& name,
                  const std::vector<std::tuple<std::string, std::string, bool>>& values) {
  v1::Policy p;
  p.set_level(level);
  p.set_name(name);
  for (const auto& [k, v, enforced] : values) {
    auto& pv = (*p.mutable_values())[k];
    pv.set_value(v);
    pv.set_enforced(enforced);
  }
  return p;
}

PolicyScope scope(std::vector<std::pair<std::string, int>> groups = {}) {
  return PolicyScope{"dev-1", "acme", "berlin", std::move(groups)};
}

}  // namespace

TEST_CASE("policies: keys and values are validated") {
  CHECK(Policies::check("telemetry.interval", "30s"));
  CHECK_FALSE(Policies::check("telemetry.interval", "0s"));
  CHECK_FALSE(Policies::check("telemetry.interval", "soon"));
  CHECK(Policies::check("jobs.allowed_types", "script.run,inventory.refresh"));
  CHECK(Policies::check("jobs.allowed_types", "*"));
  CHECK_FALSE(Policies::check("jobs.allowed_types", "script.run;rm -rf"));
  CHECK(Policies::check("maintenance.window", "0 2 * * sat 4h Europe/Berlin"));
  CHECK_FALSE(Policies::check("maintenance.window", "0 25 * * * 1h"));
  CHECK(Policies::check("reboot.allowed", "false"));
  CHECK_FALSE(Policies::check("reboot.allowed", "maybe"));
  CHECK(Policies::check("alert.telemetry.cpu.temp.above", "80"));
  CHECK_FALSE(Policies::check("alert.cpu", "80"));
  CHECK(Policies::check("custom.owner", "ops team"));
  CHECK_FALSE(Policies::check("Telemetry.Interval", "30s"));
  auto unknown = Policies::check("telemetry.intervall", "30s");
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().message.find("unknown key") != std::string::npos);
  CHECK_FALSE(Policies::check("custom.big", std::string(2000, 'x')));
}

TEST_CASE("policies: closer levels win unless a farther level enforces the key") {
  Policies p;
  Batch batch;
  REQUIRE(
      p.set(policy("tenant", "acme",
                   {{"telemetry.interval", "60s", false}, {"reboot.allowed", "false", true}, {"custom.a", "t", false}}),
            {}, false, "ops", kNow, batch));
  REQUIRE(p.set(policy("site", "berlin", {{"telemetry.interval", "30s", false}, {"custom.b", "s", false}}), {}, false,
                "ops", kNow, batch));
  REQUIRE(p.set(policy("group", "servers", {{"telemetry.interval", "10s", false}, {"reboot.allowed", "true", false}}),
                {}, false, "ops", kNow, batch));
  REQUIRE(p.set(policy("group", "db", {{"telemetry.interval", "5s", false}}), {}, false, "ops", kNow, batch));
  REQUIRE(p.set(policy("device", "dev-1", {{"custom.b", "d", false}}), {}, false, "ops", kNow, batch));

  // Not in any group: tenant, site, device.
  auto e = p.effective(scope(), kNow);
  CHECK(e.values().at("telemetry.interval") == "30s");
  CHECK(e.sources().at("telemetry.interval") == "site/berlin");
  CHECK(e.values().at("custom.a") == "t");
  CHECK(e.values().at("custom.b") == "d");
  CHECK(e.sources().at("custom.b") == "device/dev-1");
  CHECK(e.values().at("reboot.allowed") == "false");

  // In servers (depth 0) and its subgroup db (depth 1): the subgroup is closer.
  e = p.effective(scope({{"db", 1}, {"servers", 0}}), kNow);
  CHECK(e.values().at("telemetry.interval") == "5s");
  CHECK(e.sources().at("telemetry.interval") == "group/db");
  // The tenant enforces reboot.allowed=false: the group cannot override it.
  CHECK(e.values().at("reboot.allowed") == "false");
  CHECK(e.sources().at("reboot.allowed") == "tenant/acme");

  // Versions follow the values, not the time or the order of computation.
  const auto v1 = p.effective(scope({{"db", 1}, {"servers", 0}}), kNow).version();
  const auto v2 = p.effective(scope({{"servers", 0}, {"db", 1}}), kNow + 1000).version();
  CHECK(v1 == v2);
  CHECK(v1 != p.effective(scope(), kNow).version());
}

TEST_CASE("policies: set merges, replace replaces, unset removes, and it all survives a reload") {
  auto store = make_memory_store();
  Policies p;
  Batch batch;
  REQUIRE(p.set(policy("tenant", "acme", {{"custom.a", "1", false}, {"custom.b", "2", false}}), {}, false, "ops", kNow,
                batch));
  auto merged = p.set(policy("tenant", "acme", {{"custom.c", "3", false}}), {"custom.a"}, false, "ops", kNow, batch);
  REQUIRE(merged);
  CHECK(merged->values_size() == 2);
  CHECK(merged->values().contains("custom.b"));
  CHECK(merged->revision() == 2);
  auto replaced = p.set(policy("site", "x", {{"custom.z", "9", false}}), {}, true, "ops", kNow, batch);
  REQUIRE(replaced);
  REQUIRE(store->write(batch, true));

  auto loaded = Policies::load(*store);
  REQUIRE(loaded);
  const auto* t = loaded->find("tenant", "acme");
  REQUIRE(t != nullptr);
  CHECK(t->values().at("custom.c").value() == "3");
  CHECK_FALSE(t->values().contains("custom.a"));
  CHECK(loaded->list("").size() == 2);
  CHECK(loaded->list("site").size() == 1);

  Batch erase;
  REQUIRE(loaded->erase("site", "x", erase));
  CHECK_FALSE(loaded->erase("site", "x", erase));
  CHECK_FALSE(p.set(policy("planet", "earth", {}), {}, false, "ops", kNow, erase));
  CHECK_FALSE(p.set(policy("tenant", "acme", {{"bogus", "1", false}}), {}, false, "ops", kNow, erase));
}

TEST_CASE("policies: an empty configuration still has a version") {
  Policies p;
  auto e = p.effective(scope(), kNow);
  CHECK(e.values().empty());
  CHECK(e.version() == "none");
  CHECK(e.device_id() == "dev-1");
}
