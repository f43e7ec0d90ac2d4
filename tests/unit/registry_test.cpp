// Registry ingest over the in-memory store: what a message does to the record and which writes
// it produces, and that a reload from the store gives back the same registry.

#include <doctest/doctest.h>

#include "flotilla/agent/protocol.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/manager/registry.hpp"

using namespace flotilla;
using namespace flotilla::manager;

namespace {

struct Fixture {
  std::unique_ptr<Store> store = make_memory_store();
  Registry registry = Registry::load(*store).value();
  agent::DeviceProtocol device{agent::Identity{
      DeviceId::parse("dev-1").value(), v1::DEVICE_KIND_SENSOR, "0.1.0", "acme", "hq", {"lab"}, {}, 30, 10}};

  IngestOutcome feed(const Message& m, std::int64_t now = 1000) {
    auto topic = topics::parse_device_topic(m.topic);
    REQUIRE(topic);
    Batch batch;
    auto outcome = registry.ingest(*topic, m.payload, now, batch);
    registry.flush(batch);
    REQUIRE(store->write(batch, true));
    return outcome;
  }
  IngestOutcome feed_raw(std::string_view topic, const std::string& payload) {
    auto t = topics::parse_device_topic(topic);
    REQUIRE(t);
    Batch batch;
    auto outcome = registry.ingest(*t, payload, 1000, batch);
    registry.flush(batch);
    CHECK(batch.empty());
    return outcome;
  }
};

v1::Inventory inventory(const std::string& firmware) {
  v1::Inventory inv;
  inv.mutable_hardware()->set_firmware_version(firmware);
  inv.mutable_os()->set_name("Zephyr");
  inv.add_packages()->set_name("pkg");
  return inv;
}

}  // namespace

TEST_CASE("birth, telemetry and death update the record and the store") {
  Fixture f;
  f.device.begin_session(100);
  auto out = f.feed(f.device.birth(inventory("1.2.3"), 0, 0, 1000));
  CHECK(out.dropped.empty());
  const auto* r = f.registry.find("dev-1");
  REQUIRE(r != nullptr);
  CHECK(r->online());
  CHECK(r->kind() == v1::DEVICE_KIND_SENSOR);
  CHECK(r->firmware_version() == "1.2.3");
  CHECK(r->tenant() == "acme");
  CHECK(r->package_count() == 1);
  CHECK(f.store->get(Space::inventory, "dev-1"));

  v1::Telemetry t;
  t.set_cpu_percent(42);
  out = f.feed(f.device.telemetry(t, 2000), 2000);
  CHECK(out.events.empty());
  CHECK(r->last_seen_ms() == 2000);
  CHECK(r->last_telemetry_ms() == 2000);
  auto stored = f.store->get(Space::telemetry, "dev-1");
  REQUIRE(stored);
  v1::Telemetry back;
  REQUIRE(back.ParseFromString(*stored));
  CHECK(back.cpu_percent() == 42);

  out = f.feed(f.device.will(3000), 3000);
  CHECK_FALSE(f.registry.find("dev-1")->online());

  auto reloaded = Registry::load(*f.store);
  REQUIRE(reloaded);
  const auto* again = reloaded->find("dev-1");
  REQUIRE(again != nullptr);
  CHECK_FALSE(again->online());
  CHECK(again->messages() == 3);
  CHECK(again->readings() == 1);
  CHECK(again->session_epoch() == 100);
}

TEST_CASE("late readings from the outbox do not overwrite newer telemetry") {
  Fixture f;
  f.device.begin_session(100);
  f.feed(f.device.birth(inventory("1.0"), 0, 0, 1000));
  v1::Telemetry newer;
  newer.set_cpu_percent(1);
  f.feed(f.device.telemetry(newer, 5000));
  // A reading taken earlier in an older session arrives now.
  agent::DeviceProtocol old = f.device;
  old.begin_session(99);
  v1::Telemetry older;
  older.set_cpu_percent(99);
  auto out = f.feed(old.telemetry(older, 4000));
  CHECK(out.dropped.empty());
  CHECK(std::find(out.events.begin(), out.events.end(), "late") != out.events.end());
  v1::Telemetry stored;
  REQUIRE(stored.ParseFromString(f.store->get(Space::telemetry, "dev-1").value()));
  CHECK(stored.cpu_percent() == 1);
}

TEST_CASE("a duplicate reading is not applied twice") {
  Fixture f;
  f.device.begin_session(3);
  f.feed(f.device.birth(inventory("1.0"), 0, 0, 1000));
  v1::Telemetry t;
  t.set_cpu_percent(10);
  const auto m = f.device.telemetry(t, 2000);
  f.feed(m);
  auto again = f.feed(m);
  CHECK(std::find(again.events.begin(), again.events.end(), "duplicate") != again.events.end());
  CHECK(f.registry.find("dev-1")->readings() == 1);
}

TEST_CASE("a sequence gap is counted and asks for a rebirth; unknown devices too") {
  Fixture f;
  f.device.begin_session(7);
  f.feed(f.device.birth(inventory("1.0"), 0, 0, 1000));
  (void)f.device.telemetry({}, 1100);  // lost on the way
  (void)f.device.telemetry({}, 1200);  // lost on the way
  auto out = f.feed(f.device.telemetry({}, 1300));
  CHECK(std::find(out.events.begin(), out.events.end(), "seq_gap") != out.events.end());
  CHECK(f.registry.find("dev-1")->seq_gaps() == 2);

  agent::DeviceProtocol stranger{agent::Identity{.id = DeviceId::parse("dev-2").value()}};
  stranger.begin_session(1);
  out = f.feed(stranger.telemetry({}, 1000));
  CHECK(out.request_rebirth);
  CHECK(std::find(out.events.begin(), out.events.end(), "unknown_device") != out.events.end());
}

TEST_CASE("malformed, oversized and out-of-contract payloads are dropped with a reason and write nothing") {
  Fixture f;
  CHECK(f.feed_raw("flotilla/v1/dev/dev-1/telemetry", "\xff\xff\xff garbage").dropped == "parse_error");
  CHECK(f.feed_raw("flotilla/v1/dev/dev-1/telemetry", std::string(codec::max_telemetry_bytes + 1, 'x')).dropped ==
        "oversized");
  // A payload naming another device than its topic.
  agent::DeviceProtocol other{agent::Identity{.id = DeviceId::parse("dev-9").value()}};
  other.begin_session(1);
  CHECK(f.feed_raw("flotilla/v1/dev/dev-1/telemetry", other.telemetry({}, 1).payload).dropped == "bad_header");
  // Wrong schema version.
  v1::Telemetry t;
  *t.mutable_header() = codec::make_header(DeviceId::parse("dev-1").value(), 1, 1, 1);
  t.mutable_header()->set_schema_version(99);
  CHECK(f.feed_raw("flotilla/v1/dev/dev-1/telemetry", codec::encode(t)).dropped == "bad_header");
  CHECK(f.feed_raw("flotilla/v1/dev/dev-1/cmd", "").dropped == "unexpected_channel");
  CHECK(f.registry.devices().empty());
}

TEST_CASE("a stale birth does not change presence or inventory") {
  Fixture f;
  f.device.begin_session(50);
  f.feed(f.device.birth(inventory("2.0"), 0, 0, 1000));
  agent::DeviceProtocol old = f.device;
  old.begin_session(40);
  auto out = f.feed(old.birth(inventory("1.0"), 0, 0, 900));
  CHECK(out.dropped == "stale_birth");
  CHECK(f.registry.find("dev-1")->firmware_version() == "2.0");
}
