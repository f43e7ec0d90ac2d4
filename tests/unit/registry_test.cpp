// Registry ingest over the in-memory store: what a message does to the record and which writes
// it produces, and that a reload from the store gives back the same registry; and device deletion,
// in the registry and through the manager over the in-memory broker.

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <iterator>
#include <map>
#include <thread>

#include "flotilla/agent/protocol.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/memory_transport.hpp"
#include "flotilla/core/queue.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/manager/manager.hpp"
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

TEST_CASE("erase forgets a device: record, inventory and telemetry are erased in the caller's batch") {
  Fixture f;
  f.device.begin_session(100);
  f.feed(f.device.birth(inventory("1.2.3"), 0, 0, 1000));
  v1::Telemetry t;
  t.set_cpu_percent(5);
  f.feed(f.device.telemetry(t, 2000), 2000);
  REQUIRE(f.store->get(Space::telemetry, "dev-1"));

  // A change not flushed yet goes with the device.
  REQUIRE(f.registry.set_config_desired("dev-1", "v2"));
  Batch batch;
  auto erased = f.registry.erase("dev-1", batch);
  REQUIRE(erased);
  CHECK(erased->device_id() == "dev-1");
  CHECK(erased->online());
  CHECK(erased->readings() == 1);
  CHECK(erased->config_desired() == "v2");
  CHECK(batch.ops.size() == 3);
  CHECK(f.registry.find("dev-1") == nullptr);
  CHECK(f.registry.devices().empty());
  CHECK(f.registry.flush(batch).empty());
  REQUIRE(f.store->write(batch, true));
  for (const auto space : {Space::devices, Space::inventory, Space::telemetry}) {
    CHECK(f.store->get(space, "dev-1").error().code == Errc::not_found);
  }
  CHECK(Registry::load(*f.store)->devices().empty());

  Batch nothing;
  CHECK_FALSE(f.registry.erase("dev-1", nothing));
  CHECK(nothing.empty());

  // Its next message makes it a new device, as a first contact does.
  auto out = f.feed(f.device.telemetry(t, 3000), 3000);
  CHECK(std::find(out.events.begin(), out.events.end(), "unknown_device") != out.events.end());
  REQUIRE(f.registry.find("dev-1") != nullptr);
  CHECK(f.registry.find("dev-1")->first_seen_ms() == 3000);
}

namespace {

// One client of the in-memory broker, with its events.
struct Client {
  BoundedQueue<TransportEvent> events{10000};
  std::unique_ptr<Transport> transport;

  Client(MemoryBroker& broker, const std::string& id) {
    TransportOptions o;
    o.client_id = id;
    transport = broker.make_transport(o, [this](TransportEvent&& e) { events.push(std::move(e)); }).value();
    REQUIRE(transport->connect(std::nullopt));
  }
  void subscribe(const std::string& filter) { REQUIRE(transport->subscribe({{filter, 1}})); }
  // The messages received until `enough` says so or `timeout` passes (the in-memory broker
  // delivers synchronously, so what was published before the call is there at once).
  std::vector<Message> drain(std::chrono::milliseconds timeout,
                             const std::function<bool(const std::vector<Message>&)>& enough = {}) {
    std::vector<Message> out;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline && !(enough && enough(out))) {
      auto e = events.pop(std::chrono::milliseconds(10));
      if (auto* r = e ? std::get_if<event::Received>(&*e) : nullptr) out.push_back(r->message);
    }
    return out;
  }
};

std::vector<Message> on(const std::vector<Message>& messages, const std::string& topic) {
  std::vector<Message> out;
  std::copy_if(messages.begin(), messages.end(), std::back_inserter(out),
               [&](const Message& m) { return m.topic == topic; });
  return out;
}

// The operator's side: one request, its reply (other messages are left aside).
struct Operator {
  Client client;
  std::vector<Message> other;
  int n = 0;

  explicit Operator(MemoryBroker& broker) : client(broker, "op") { client.subscribe("flotilla/v1/cli/op/#"); }
  v1::RpcResponse call(v1::RpcRequest request) {
    request.set_actor("alice");
    const std::string correlation = "c" + std::to_string(++n);
    REQUIRE(client.transport->publish(
        Message{topics::manager_rpc(), codec::encode(request), 1, false, "flotilla/v1/cli/op/r", correlation}));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (std::chrono::steady_clock::now() < deadline) {
      auto e = client.events.pop(std::chrono::milliseconds(50));
      if (!e) continue;
      auto* r = std::get_if<event::Received>(&*e);
      if (r == nullptr || r->message.correlation_data != correlation) continue;
      auto reply = codec::decode<v1::RpcResponse>(r->message.payload, codec::max_rpc_reply_bytes);
      REQUIRE(reply);
      return *reply;
    }
    FAIL("no reply");
    return {};
  }
};

v1::RpcRequest delete_request(const std::vector<std::string>& ids, bool force = false) {
  v1::RpcRequest r;
  for (const auto& id : ids) r.mutable_delete_device()->add_device_ids(id);
  r.mutable_delete_device()->set_force(force);
  return r;
}

}  // namespace

TEST_CASE("manager: device deletion is all or nothing, needs force for online devices, and removes what it held") {
  using namespace std::chrono_literals;
  MemoryBroker broker;
  auto factory = [&broker](TransportOptions o, EventSink s) {
    return broker.make_transport(std::move(o), std::move(s));
  };
  auto mgr = Manager::create(ManagerConfig{}, make_memory_store(), factory);
  REQUIRE(mgr);
  std::jthread reactor([&](std::stop_token st) { (*mgr)->run(st); });
  Operator op(broker);
  Client watcher(broker, "watcher");
  watcher.subscribe("flotilla/v1/dev/+/config");
  watcher.subscribe("flotilla/v1/mgr/groups/+/events");
  // The manager is subscribed once it announced itself.
  for (int i = 0; i < 100 && broker.published() == 0; ++i) std::this_thread::sleep_for(20ms);
  std::this_thread::sleep_for(50ms);

  // dev-1 and dev-2 connect and leave; dev-3 stays online.
  std::map<std::string, agent::DeviceProtocol> devices;
  std::vector<std::unique_ptr<Client>> links;
  for (const std::string& id : std::vector<std::string>{"dev-1", "dev-2", "dev-3"}) {
    auto& p = devices.emplace(id, agent::Identity{.id = DeviceId::parse(id).value(), .kind = v1::DEVICE_KIND_SENSOR})
                  .first->second;
    p.begin_session(10);
    links.push_back(std::make_unique<Client>(broker, id));
    REQUIRE(links.back()->transport->publish(p.birth(inventory("1.0"), 0, 0, 1000)));
    if (id != "dev-3") REQUIRE(links.back()->transport->publish(p.graceful_death(1100)));
  }
  v1::RpcRequest get;
  get.mutable_get_device()->set_device_id("dev-2");
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = op.call(get);
    if (r.code() == v1::RpcResponse::CODE_OK && !r.device().record().online()) break;
    std::this_thread::sleep_for(20ms);
  }
  v1::RpcRequest tag;
  tag.mutable_label_device()->set_device_id("dev-1");
  tag.mutable_label_device()->add_add_tags("vip");
  REQUIRE(op.call(tag).code() == v1::RpcResponse::CODE_OK);
  v1::RpcRequest lab;
  lab.mutable_create_group()->mutable_group()->set_name("lab");
  lab.mutable_create_group()->mutable_group()->add_members("dev-1");
  lab.mutable_create_group()->mutable_group()->add_members("dev-3");
  REQUIRE(op.call(lab).code() == v1::RpcResponse::CODE_OK);
  v1::RpcRequest sensors;
  sensors.mutable_create_group()->mutable_group()->set_name("sensors");
  sensors.mutable_create_group()->mutable_group()->set_type(v1::Group::TYPE_DYNAMIC);
  sensors.mutable_create_group()->mutable_group()->set_query("kind:sensor");
  REQUIRE(op.call(sensors).group().members() == 3);

  // Refused, and nothing changes: an unknown device, an online one, a malformed id, no id.
  auto unknown = op.call(delete_request({"dev-1", "nope"}));
  CHECK(unknown.code() == v1::RpcResponse::CODE_NOT_FOUND);
  CHECK(unknown.error().find("nope") != std::string::npos);
  auto online = op.call(delete_request({"dev-1", "dev-3"}));
  CHECK(online.code() == v1::RpcResponse::CODE_INVALID_ARGUMENT);
  CHECK(online.error().find("dev-3") != std::string::npos);
  CHECK(op.call(delete_request({"dev-1", "dev-*"})).code() == v1::RpcResponse::CODE_INVALID_ARGUMENT);
  CHECK(op.call(delete_request({})).code() == v1::RpcResponse::CODE_INVALID_ARGUMENT);
  get.mutable_get_device()->set_device_id("dev-1");
  CHECK(op.call(get).code() == v1::RpcResponse::CODE_OK);
  (void)watcher.drain(50ms);  // what came before

  auto done = op.call(delete_request({"dev-1", "dev-1"}));
  REQUIRE(done.code() == v1::RpcResponse::CODE_OK);
  REQUIRE(done.deleted_devices().devices_size() == 1);
  const auto& gone = done.deleted_devices().devices(0);
  CHECK(gone.record().device_id() == "dev-1");
  CHECK(std::vector<std::string>(gone.groups().begin(), gone.groups().end()) ==
        std::vector<std::string>{"lab", "sensors"});
  CHECK(gone.had_labels());
  CHECK(op.call(get).code() == v1::RpcResponse::CODE_NOT_FOUND);

  v1::RpcRequest members;
  members.mutable_group_members()->set_name("lab");
  auto lab_members = op.call(members).group_members();
  CHECK(std::vector<std::string>(lab_members.device_ids().begin(), lab_members.device_ids().end()) ==
        std::vector<std::string>{"dev-3"});
  v1::RpcRequest count;
  count.mutable_count_devices()->set_by("kind");
  count.mutable_count_devices()->set_where("tag:vip OR group:sensors");
  CHECK(op.call(count).count_devices().total() == 2);

  // Its events, newest first, with the reason; published like any other.
  v1::RpcRequest history;
  history.mutable_group_events()->set_device_id("dev-1");
  auto events = op.call(history).group_events();
  REQUIRE(events.events_size() == 4);  // joined sensors and lab, then left both
  CHECK(events.events(0).reason() == "device deleted");
  CHECK(events.events(1).reason() == "device deleted");
  CHECK_FALSE(events.events(0).joined());
  CHECK(events.events(2).joined());
  CHECK(events.events(0).seq() > events.events(3).seq());
  CHECK(events.next_cursor() == 0);
  CHECK(events.last_seq() >= events.events(0).seq());
  const auto seen = watcher.drain(2s, [](const std::vector<Message>& m) {
    return on(m, "flotilla/v1/mgr/groups/lab/events").size() + on(m, "flotilla/v1/mgr/groups/sensors/events").size() +
               on(m, "flotilla/v1/dev/dev-1/config").size() >=
           3;
  });
  CHECK(on(seen, "flotilla/v1/mgr/groups/lab/events").size() == 1);
  CHECK(on(seen, "flotilla/v1/mgr/groups/sensors/events").size() == 1);

  // The retained desired configuration is cleared: an empty publish, and nothing for a new
  // subscriber, while another device's stays.
  const auto cleared = on(seen, "flotilla/v1/dev/dev-1/config");
  REQUIRE(cleared.size() == 1);
  CHECK(cleared[0].payload.empty());
  Client late(broker, "late");
  late.subscribe("flotilla/v1/dev/+/config");
  const auto retained = late.drain(50ms);
  CHECK(on(retained, "flotilla/v1/dev/dev-1/config").empty());
  CHECK(on(retained, "flotilla/v1/dev/dev-2/config").size() == 1);

  v1::RpcRequest audit;
  audit.mutable_audit_log()->set_limit(5);
  auto log = op.call(audit).audit();
  REQUIRE(log.entries_size() >= 1);
  CHECK(log.entries(0).action() == "device.delete");
  CHECK(log.entries(0).subject() == "dev-1");
  CHECK(log.entries(0).actor() == "alice");

  // An online device goes with force, and registers again with its next message.
  auto forced = op.call(delete_request({"dev-3"}, true));
  REQUIRE(forced.code() == v1::RpcResponse::CODE_OK);
  CHECK(forced.deleted_devices().devices(0).record().online());
  get.mutable_get_device()->set_device_id("dev-3");
  CHECK(op.call(get).code() == v1::RpcResponse::CODE_NOT_FOUND);
  REQUIRE(links.back()->transport->publish(devices.at("dev-3").telemetry({}, 5000)));
  bool back = false;
  for (int i = 0; i < 100 && !back; ++i) {
    back = op.call(get).code() == v1::RpcResponse::CODE_OK;
    if (!back) std::this_thread::sleep_for(20ms);
  }
  CHECK(back);
  reactor.request_stop();
}

TEST_CASE("manager: group changes and device labels are audited; a group records who created it") {
  using namespace std::chrono_literals;
  MemoryBroker broker;
  auto factory = [&broker](TransportOptions o, EventSink s) {
    return broker.make_transport(std::move(o), std::move(s));
  };
  auto mgr = Manager::create(ManagerConfig{}, make_memory_store(), factory);
  REQUIRE(mgr);
  std::jthread reactor([&](std::stop_token st) { (*mgr)->run(st); });
  Operator op(broker);
  for (int i = 0; i < 100 && broker.published() == 0; ++i) std::this_thread::sleep_for(20ms);
  std::this_thread::sleep_for(50ms);

  v1::RpcRequest create;
  auto* g = create.mutable_create_group()->mutable_group();
  g->set_name("lab");
  g->add_members("dev-9");
  g->set_created_by("mallory");  // the manager records who asks, not what the request claims
  auto created = op.call(create);
  REQUIRE(created.code() == v1::RpcResponse::CODE_OK);
  CHECK(created.group().group().created_by() == "alice");
  v1::RpcRequest add;
  add.mutable_change_members()->set_name("lab");
  add.mutable_change_members()->add_device_ids("dev-8");
  REQUIRE(op.call(add).code() == v1::RpcResponse::CODE_OK);
  v1::RpcRequest drop;
  drop.mutable_delete_group()->set_name("lab");
  REQUIRE(op.call(drop).code() == v1::RpcResponse::CODE_OK);
  // A refused change is not audited.
  REQUIRE(op.call(drop).code() == v1::RpcResponse::CODE_NOT_FOUND);

  v1::RpcRequest audit;
  audit.mutable_audit_log()->set_limit(10);
  auto log = op.call(audit).audit();
  REQUIRE(log.entries_size() == 3);
  CHECK(log.entries(0).action() == "group.delete");
  CHECK(log.entries(0).detail() == "2 members");
  CHECK(log.entries(1).action() == "group.add");
  CHECK(log.entries(1).detail() == "1 devices: dev-8");
  CHECK(log.entries(2).action() == "group.create");
  CHECK(log.entries(2).subject() == "lab");
  for (const auto& e : log.entries()) CHECK(e.actor() == "alice");
  reactor.request_stop();
}
