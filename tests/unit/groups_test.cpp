#include <doctest/doctest.h>

#include "flotilla/manager/groups.hpp"

using namespace flotilla;
using namespace flotilla::manager;

namespace {

constexpr std::int64_t kNow = 1'800'000'000'000;

DeviceFacts device(const std::string& id, const std::string& kind, const std::string& site, const std::string& fw) {
  return DeviceFacts{id, {{"kind", kind}, {"site", site}, {"firmware.version", fw}, {"online", "true"}}};
}

v1::Group dynamic(const std::string& name, const std::string& query, const std::string& parent = {}) {
  v1::Group g;
  g.set_name(name);
  g.set_type(v1::Group::TYPE_DYNAMIC);
  g.set_query(query);
  g.set_parent(parent);
  return g;
}

v1::Group fixed(const std::string& name, const std::vector<std::string>& members, const std::string& parent = {}) {
  v1::Group g;
  g.set_name(name);
  g.set_parent(parent);
  for (const auto& m : members) g.add_members(m);
  return g;
}

struct Fixture {
  std::unique_ptr<Store> store = make_memory_store();
  FleetIndex index;
  Groups groups = Groups::load(*store).value();

  Fixture() {
    index.upsert(device("s1", "sensor", "b7", "1.2.3"));
    index.upsert(device("s2", "sensor", "b7", "1.3.0"));
    index.upsert(device("s3", "sensor", "hq", "1.2.9"));
    index.upsert(device("p1", "printer", "b7", "2.0.0"));
  }
  std::vector<v1::MembershipEvent> apply(Result<std::vector<v1::MembershipEvent>> r, Batch& b) {
    REQUIRE(r);
    REQUIRE(store->write(b, true));
    b.clear();
    return std::move(r).value();
  }
};

}  // namespace

TEST_CASE("dynamic groups follow device state; every change is an event; state survives a reload") {
  Fixture f;
  Batch b;
  auto events = f.apply(f.groups.create(dynamic("old-fw", "kind:sensor AND firmware.version:1.2.*"), f.index, kNow, b),
                        b);
  CHECK(events.size() == 2);
  CHECK(f.groups.members("old-fw") == std::vector<std::string>{"s1", "s3"});

  // s1 upgrades: it leaves; s2 is downgraded: it joins. Exactly the changes become events.
  f.index.update(DeviceFacts{"s1", {{"firmware.version", "1.3.0"}}}, FactPart::inventory);
  f.index.update(DeviceFacts{"s2", {{"firmware.version", "1.2.0"}}}, FactPart::inventory);
  auto changes = f.groups.reevaluate({"s1", "s2", "p1"}, f.index, kNow, b);
  REQUIRE(f.store->write(b, true));
  b.clear();
  REQUIRE(changes.size() == 2);
  CHECK(changes[0].device_id() == "s1");
  CHECK_FALSE(changes[0].joined());
  CHECK(changes[1].device_id() == "s2");
  CHECK(changes[1].joined());
  CHECK(changes[1].seq() > changes[0].seq());
  CHECK(f.groups.members("old-fw") == std::vector<std::string>{"s2", "s3"});

  auto reloaded = Groups::load(*f.store);
  REQUIRE(reloaded);
  CHECK(reloaded->members("old-fw") == std::vector<std::string>{"s2", "s3"});
  // Event sequence numbers continue after a reload.
  auto more = reloaded->change_members("old-fw", {"p1"}, false, kNow, b);
  CHECK_FALSE(more);  // a dynamic group has no explicit members
}

TEST_CASE("hierarchy: members of subgroups belong to their ancestors; the group field lists them all") {
  Fixture f;
  Batch b;
  f.apply(f.groups.create(fixed("acme", {}), f.index, kNow, b), b);
  f.apply(f.groups.create(fixed("building-7", {"s1"}, "acme"), f.index, kNow, b), b);
  f.apply(f.groups.create(dynamic("b7-printers", "kind:printer AND site:b7", "building-7"), f.index, kNow, b), b);
  CHECK(f.groups.members("acme") == std::vector<std::string>{"p1", "s1"});
  CHECK(f.groups.groups_of("p1") == std::vector<std::string>{"acme", "b7-printers", "building-7"});
  bool member = false;
  auto why = f.groups.explain("acme", "p1", f.index, kNow, member);
  CHECK(member);
  CHECK(why.back().find("subgroup building-7") != std::string::npos);
  why = f.groups.explain("b7-printers", "s2", f.index, kNow, member);
  CHECK_FALSE(member);
  CHECK(why.at(0).find("did not match") != std::string::npos);
  CHECK(why.at(1).find("kind:printer failed") != std::string::npos);
  // A parent with subgroups cannot be deleted; a leaf can, and its members leave.
  CHECK_FALSE(f.groups.erase("building-7", kNow, b));
  auto gone = f.apply(f.groups.erase("b7-printers", kNow, b), b);
  REQUIRE(gone.size() == 1);
  CHECK_FALSE(gone[0].joined());
  CHECK(f.groups.members("acme") == std::vector<std::string>{"s1"});
}

TEST_CASE("group definitions are validated") {
  Fixture f;
  Batch b;
  CHECK_FALSE(f.groups.create(fixed("bad/name", {}), f.index, kNow, b));
  CHECK_FALSE(f.groups.create(fixed("orphan", {}, "no-such-parent"), f.index, kNow, b));
  CHECK_FALSE(f.groups.create(dynamic("broken", "kind:sensor AND ("), f.index, kNow, b));
  CHECK_FALSE(f.groups.create(dynamic("loop", "group:anything"), f.index, kNow, b));
  CHECK_FALSE(f.groups.create(fixed("bad-member", {"not/an/id"}), f.index, kNow, b));
  REQUIRE(f.groups.create(fixed("ok", {"s1"}), f.index, kNow, b));
  CHECK(f.groups.create(fixed("ok", {}), f.index, kNow, b).error().code == Errc::already_exists);
}

TEST_CASE("reconcile catches membership that moves with time alone") {
  Fixture f;
  f.index.update(DeviceFacts{"s1", {{"last_seen", std::to_string(kNow - 60'000)}}}, FactPart::record);
  Batch b;
  f.apply(f.groups.create(dynamic("stale", "last_seen<-5m"), f.index, kNow, b), b);
  CHECK(f.groups.members("stale").empty());
  auto later = f.groups.reconcile(f.index, kNow + 10 * 60'000, b);
  REQUIRE(later.size() == 1);
  CHECK(later[0].device_id() == "s1");
  CHECK(later[0].joined());
}
