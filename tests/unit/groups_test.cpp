#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "flotilla/manager/config.hpp"
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

namespace {

// Forwards to another store and counts the entries its scans visit.
class CountingStore final : public Store {
 public:
  explicit CountingStore(Store& inner) : inner_(inner) {}
  Result<std::string> get(Space space, std::string_view key) const override { return inner_.get(space, key); }
  Status write(const Batch& batch, bool sync) override { return inner_.write(batch, sync); }
  Status scan(Space space, std::string_view prefix,
              const std::function<bool(std::string_view, std::string_view)>& visit) const override {
    return inner_.scan(space, prefix, [&](std::string_view k, std::string_view v) {
      ++visited;
      return visit(k, v);
    });
  }
  Status scan_reverse(Space space, std::string_view prefix,
                      const std::function<bool(std::string_view, std::string_view)>& visit) const override {
    return inner_.scan_reverse(space, prefix, [&](std::string_view k, std::string_view v) {
      ++visited;
      return visit(k, v);
    });
  }
  std::uint64_t disk_bytes() const override { return 0; }
  mutable std::uint64_t visited = 0;

 private:
  Store& inner_;
};

// `n` events, one per call: devices d-{first}, d-{first + 1}, ... join static group `name` (created
// empty when missing), each at `now_ms` + its number.
void add_members(Fixture& f, const std::string& name, std::size_t n, std::int64_t now_ms, std::size_t first = 0) {
  Batch b;
  if (f.groups.find(name) == nullptr) f.apply(f.groups.create(fixed(name, {}), f.index, now_ms, b), b);
  for (std::size_t i = first; i < first + n; ++i) {
    f.apply(f.groups.change_members(name, {"d-" + std::to_string(i)}, false, now_ms + static_cast<std::int64_t>(i), b),
            b);
  }
}

std::vector<std::uint64_t> seqs_of(const std::vector<v1::MembershipEvent>& events) {
  std::vector<std::uint64_t> out;
  out.reserve(events.size());
  for (const auto& e : events) out.push_back(e.seq());
  return out;
}

}  // namespace

TEST_CASE("a deleted device leaves its static and dynamic groups with one event each; the change is stored") {
  Fixture f;
  Batch b;
  f.apply(f.groups.create(fixed("lab", {"s1", "s2"}), f.index, kNow, b), b);
  f.apply(f.groups.create(dynamic("b7", "site:b7"), f.index, kNow, b), b);
  f.apply(f.groups.create(fixed("acme", {}), f.index, kNow, b), b);
  f.apply(f.groups.create(dynamic("sensors", "kind:sensor", "acme"), f.index, kNow, b), b);
  REQUIRE(f.groups.groups_of("s1") == std::vector<std::string>{"acme", "b7", "lab", "sensors"});

  auto left = f.groups.forget_device("s1", kNow + 1, b);
  REQUIRE(f.store->write(b, true));
  b.clear();
  REQUIRE(left.size() == 3);  // direct memberships only: not the ancestor acme
  std::vector<std::string> names;
  for (const auto& e : left) {
    names.push_back(e.group());
    CHECK(e.device_id() == "s1");
    CHECK_FALSE(e.joined());
    CHECK(e.reason() == "device deleted");
    CHECK(e.at_ms() == kNow + 1);
  }
  CHECK(names == std::vector<std::string>{"b7", "lab", "sensors"});
  CHECK(left[1].seq() == left[0].seq() + 1);
  CHECK(f.groups.groups_of("s1").empty());
  CHECK(f.groups.members("lab") == std::vector<std::string>{"s2"});
  CHECK(f.groups.find("lab")->members_size() == 1);
  CHECK(f.groups.members("acme") == std::vector<std::string>{"s2", "s3"});
  CHECK(f.groups.forget_device("s1", kNow + 2, b).empty());  // nothing left to leave
  CHECK(b.empty());

  auto reloaded = Groups::load(*f.store);
  REQUIRE(reloaded);
  CHECK(reloaded->groups_of("s1").empty());
  CHECK(reloaded->members("lab") == std::vector<std::string>{"s2"});
  CHECK(reloaded->members("b7") == std::vector<std::string>{"p1", "s2"});
  auto stored = reloaded->read_events(*f.store, EventQuery{.device_id = "s1", .limit = 10});
  REQUIRE(stored);
  REQUIRE(stored->events.size() == 6);  // joined lab, b7 and sensors when they were created; left them
  CHECK(stored->events[0].reason() == "device deleted");
  CHECK(stored->events[0].seq() == left.back().seq());
}

TEST_CASE("stored events read back newest first, filtered by group, device and time, paged by cursor") {
  Fixture f;
  add_members(f, "big", 2500, kNow);
  add_members(f, "small", 3, kNow, 5000);
  // Seq 1..2500: big (d-0 .. d-2499); 2501..2503: small (d-5000 .. d-5002).
  CHECK(f.groups.first_event_seq() == 1);
  CHECK(f.groups.last_event_seq() == 2503);

  auto page = f.groups.read_events(*f.store, EventQuery{.limit = 4});
  REQUIRE(page);
  CHECK(seqs_of(page->events) == std::vector<std::uint64_t>{2503, 2502, 2501, 2500});
  CHECK(page->next_cursor == 2500);
  CHECK(page->events[0].group() == "small");
  CHECK(page->events[3].device_id() == "d-2499");

  // Paging with the cursor visits every event once, across blocks of 1,000 numbers.
  std::vector<std::uint64_t> all;
  std::uint64_t cursor = 0;
  for (int pages = 0; pages < 100; ++pages) {
    auto p = f.groups.read_events(*f.store, EventQuery{.before_seq = cursor, .limit = 333});
    REQUIRE(p);
    auto s = seqs_of(p->events);
    all.insert(all.end(), s.begin(), s.end());
    if (p->next_cursor == 0) break;
    CHECK((cursor == 0 || p->next_cursor < cursor));
    cursor = p->next_cursor;
  }
  REQUIRE(all.size() == 2503);
  for (std::size_t i = 0; i < all.size(); ++i) CHECK(all[i] == 2503 - i);

  // Filters.
  auto small = f.groups.read_events(*f.store, EventQuery{.group = "small", .limit = 10});
  REQUIRE(small);
  CHECK(seqs_of(small->events) == std::vector<std::uint64_t>{2503, 2502, 2501});
  CHECK(small->next_cursor == 0);  // the oldest was reached
  auto one = f.groups.read_events(*f.store, EventQuery{.device_id = "d-7", .limit = 10});
  REQUIRE(one);
  REQUIRE(one->events.size() == 1);
  CHECK(one->events[0].seq() == 8);
  auto recent = f.groups.read_events(*f.store, EventQuery{.since_ms = kNow + 2498, .limit = 100});
  REQUIRE(recent);
  CHECK(seqs_of(recent->events) == std::vector<std::uint64_t>{2503, 2502, 2501, 2500, 2499});
  CHECK(recent->next_cursor == 0);
  auto none = f.groups.read_events(*f.store, EventQuery{.group = "nope", .limit = 10});
  REQUIRE(none);
  CHECK(none->events.empty());
  CHECK(none->next_cursor == 0);
  auto below = f.groups.read_events(*f.store, EventQuery{.before_seq = 1, .limit = 10});
  REQUIRE(below);
  CHECK(below->events.empty());

  // A bounded examination ends a page early, with a cursor below what it examined.
  auto rare = f.groups.read_events(*f.store, EventQuery{.device_id = "d-3", .limit = 10, .max_examined = 1000});
  REQUIRE(rare);
  CHECK(rare->events.empty());
  CHECK(rare->next_cursor == 1000);  // blocks 2000-2503 and 1000-1999 examined
  std::size_t requests = 1;
  while (rare->next_cursor != 0 && requests < 10) {
    rare = f.groups.read_events(
        *f.store, EventQuery{.device_id = "d-3", .before_seq = rare->next_cursor, .limit = 10, .max_examined = 1000});
    REQUIRE(rare);
    ++requests;
    if (!rare->events.empty()) break;
  }
  REQUIRE(rare->events.size() == 1);
  CHECK(rare->events[0].seq() == 4);
  CHECK(requests == 2);
}

TEST_CASE("retention deletes the oldest events in bounded batches; a reload starts from what is left") {
  Fixture f;
  add_members(f, "big", 2500, kNow);
  Batch b;

  // By count: keep the newest 1,000, at most 600 deletions per call.
  std::vector<std::size_t> erased;
  for (int i = 0; i < 10; ++i) {
    auto n = f.groups.prune_events(*f.store, kNow, {}, 1000, 600, b);
    REQUIRE(n);
    REQUIRE(f.store->write(b, true));
    CHECK(b.ops.size() <= 601);  // the deletions and the new oldest number
    b.clear();
    if (*n == 0) break;
    erased.push_back(*n);
  }
  CHECK(erased == std::vector<std::size_t>{600, 600, 300});
  CHECK(f.groups.first_event_seq() == 1501);
  CHECK_FALSE(f.store->get(Space::groups, "e/00000000000000001500"));
  CHECK(f.store->get(Space::groups, "e/00000000000000001501"));
  auto oldest = f.groups.read_events(*f.store, EventQuery{.before_seq = 1510, .limit = 100});
  REQUIRE(oldest);
  CHECK(oldest->events.size() == 9);
  CHECK(oldest->events.back().seq() == 1501);
  CHECK(oldest->next_cursor == 0);

  // A reload finds the oldest stored event without reading the others, and numbering goes on.
  CountingStore counting(*f.store);
  auto reloaded = Groups::load(counting);
  REQUIRE(reloaded);
  CHECK(counting.visited < 10);  // the group, the counters and the oldest event
  CHECK(reloaded->first_event_seq() == 1501);
  CHECK(reloaded->last_event_seq() == 2500);

  // By age: events older than 2,200 ms before "now" go; the first younger one ends the run.
  auto n = f.groups.prune_events(*f.store, kNow + 4000, std::chrono::milliseconds(2200), 0, 10000, b);
  REQUIRE(n);
  CHECK(*n == 300);  // seq 1501..1800, at kNow + 1500 .. kNow + 1799 < kNow + 1800
  REQUIRE(f.store->write(b, true));
  b.clear();
  CHECK(f.groups.first_event_seq() == 1801);

  // Everything expired: none is left; the next event is the oldest again.
  n = f.groups.prune_events(*f.store, kNow + 1'000'000, std::chrono::milliseconds(1000), 0, 10000, b);
  REQUIRE(n);
  CHECK(*n == 700);
  REQUIRE(f.store->write(b, true));
  b.clear();
  CHECK(f.groups.first_event_seq() == 0);
  CHECK(f.groups.last_event_seq() == 2500);
  auto empty = f.groups.read_events(*f.store, EventQuery{});
  REQUIRE(empty);
  CHECK(empty->events.empty());
  auto again = Groups::load(*f.store);
  REQUIRE(again);
  CHECK(again->first_event_seq() == 0);
  add_members(f, "big", 1, kNow, 9000);
  CHECK(f.groups.first_event_seq() == 2501);
  auto fresh = f.groups.read_events(*f.store, EventQuery{});
  REQUIRE(fresh);
  CHECK(seqs_of(fresh->events) == std::vector<std::uint64_t>{2501});

  // No retention configured: nothing happens.
  n = f.groups.prune_events(*f.store, kNow, {}, 0, 100, b);
  REQUIRE(n);
  CHECK(*n == 0);
  CHECK(b.empty());
}

TEST_CASE("loading groups does not read the stored events") {
  Fixture f;
  add_members(f, "big", 3000, kNow);
  CountingStore counting(*f.store);
  auto loaded = Groups::load(counting);
  REQUIRE(loaded);
  CHECK(counting.visited < 10);  // the group record, the counter and the first event
  CHECK(loaded->members("big").size() == 3000);
  CHECK(loaded->first_event_seq() == 1);
  CHECK(loaded->last_event_seq() == 3000);
}

TEST_CASE("[groups] event_retention and event_max are read from the file and validated") {
  namespace fs = std::filesystem;
  const auto path = fs::temp_directory_path() / ("flotilla-groups-config-" + std::to_string(::getpid()) + ".toml");
  auto load = [&](const std::string& text) {
    std::ofstream(path) << text;
    auto c = load_config(&path);
    fs::remove(path);
    return c;
  };
  const ManagerConfig defaults;
  CHECK(defaults.event_retention.count() == 0);  // kept forever unless configured
  CHECK(defaults.event_max == 0);

  auto c = load("[groups]\nevent_retention = \"30d\"\nevent_max = 1000000\n");
  REQUIRE(c);
  CHECK(c->event_retention == std::chrono::hours(24 * 30));
  CHECK(c->event_max == 1'000'000);
  CHECK(validate(*c));

  c->event_retention = std::chrono::seconds(30);
  auto refused = validate(*c);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message.find("groups.event_retention") != std::string::npos);
  c->event_retention = {};
  c->event_max = 2'000'000'000'000ULL;
  CHECK_FALSE(validate(*c));

  CHECK_FALSE(load("[groups]\nevent_retention = \"forever\"\n"));
  CHECK_FALSE(load("[groups]\nevent_max = -1\n"));
  auto typo = load("[groups]\nevent_maximum = 5\n");
  REQUIRE_FALSE(typo);
  CHECK(typo.error().message.find("groups.event_maximum") != std::string::npos);
}
