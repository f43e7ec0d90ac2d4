// End-to-end scenarios over a real broker, manager, agents, simulator and CLI (support/fleet.hpp).

#include <doctest/doctest.h>

#include <sys/statvfs.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>

#include <google/protobuf/util/json_util.h>

#include "flotilla/core/codec.hpp"
#include "flotilla/core/config.hpp"
#include "flotilla/core/queue.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/manager/registry.hpp"
#include "flotilla/manager/store.hpp"
#include "flotilla/v1/command.pb.h"
#include "support/fleet.hpp"

using namespace flotilla;
using namespace flotilla::testing;
using namespace std::chrono_literals;

namespace {

// Waits until the manager's registry holds exactly `n` devices.
bool registered(Fleet& fleet, std::size_t n) {
  return Fleet::wait_until(
      [&] {
        auto all = fleet.devices();
        return all && all->size() == n;
      },
      30s, 200ms);
}

std::uint64_t host_mem_total_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kb = 0;
  while (in >> key >> kb) {
    if (key == "MemTotal:") return kb * 1024;
    in.ignore(1 << 10, '\n');
  }
  return 0;
}

std::map<std::string, std::string> host_os_release() {
  std::map<std::string, std::string> out;
  std::ifstream in("/etc/os-release");
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string v = line.substr(eq + 1);
    if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'')) v = v.substr(1, v.size() - 2);
    out[line.substr(0, eq)] = v;
  }
  return out;
}

std::size_t host_installed_packages() {
  FILE* p = ::popen("dpkg-query -W -f='${Status}\\n' 2>/dev/null", "r");
  REQUIRE(p != nullptr);
  std::size_t n = 0;
  char buf[256];
  while (std::fgets(buf, sizeof buf, p) != nullptr) {
    std::istringstream words(buf);
    std::string want, error, status;
    words >> want >> error >> status;
    if (status == "installed") ++n;
  }
  ::pclose(p);
  return n;
}

template <typename M>
M parse_json(const std::string& text) {
  M m;
  const auto st = google::protobuf::util::JsonStringToMessage(text, &m);
  INFO(text);
  REQUIRE(st.ok());
  return m;
}

// A raw MQTT 5 client for tests that must publish what no Flotilla component would.
struct RawClient {
  BoundedQueue<TransportEvent> events{100000};
  std::unique_ptr<Transport> transport;

  RawClient(const std::string& uri, const std::string& user, const std::string& password) {
    TransportOptions o;
    o.broker_uri = uri;
    o.client_id = user;
    o.username = user;
    o.password = password;
    o.clean_start = true;
    o.session_expiry = 0s;
    auto t = make_mqtt_transport(o, [this](TransportEvent&& e) { events.push(std::move(e)); });
    REQUIRE(t);
    transport = std::move(t).value();
    REQUIRE(transport->connect(std::nullopt));
    auto e = events.pop(10s);
    REQUIRE(e.has_value());
    REQUIRE(std::holds_alternative<event::Connected>(*e));
  }

  void subscribe(const std::string& filter) {
    REQUIRE(transport->subscribe({{filter, 1}}));
    while (true) {
      auto e = events.pop(10s);
      REQUIRE(e.has_value());
      if (auto* s = std::get_if<event::Subscribed>(&*e)) {
        REQUIRE(s->status.ok());
        return;
      }
    }
  }

  // The next message received on `topic` within `timeout`.
  std::optional<Message> next_on(const std::string& topic, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto e = events.pop(200ms);
      if (!e) continue;
      if (auto* r = std::get_if<event::Received>(&*e); r != nullptr && r->message.topic == topic) return r->message;
    }
    return std::nullopt;
  }

  // Publishes every message at QoS 1, at most 50 awaiting PUBACK at once (the broker's receive
  // maximum bounds that), and waits for all PUBACKs; returns how many succeeded.
  std::size_t publish_all(const std::vector<Message>& messages) {
    std::size_t ok = 0, done = 0, sent = 0;
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (done < messages.size() && std::chrono::steady_clock::now() < deadline) {
      while (sent < messages.size() && sent - done < 50) {
        auto id = transport->publish(messages[sent]);
        INFO((id ? std::string() : id.error().message));
        REQUIRE(id);
        ++sent;
      }
      auto e = events.pop(1s);
      if (!e) continue;
      if (auto* d = std::get_if<event::Delivered>(&*e)) {
        ++done;
        ok += d->status.ok() ? 1 : 0;
      }
    }
    return ok;
  }
};

std::uint64_t total(const google::protobuf::Map<std::string, std::uint64_t>& counters) {
  std::uint64_t n = 0;
  for (const auto& [k, v] : counters) n += v;
  return n;
}

}  // namespace

TEST_CASE("a real agent reports this host's inventory and health; the CLI shows it") {
  Fleet fleet({.devices = {"host-1"}});
  fleet.start_manager();
  fleet.start_agent("host-1");
  std::optional<v1::DeviceDetail> d;
  const bool reported = Fleet::wait_until(
      [&] {
        d = fleet.device("host-1");
        return d && d->record().online() && d->telemetry().header().seq() > 0 && d->inventory().packages_size() > 0;
      },
      20s, 200ms);
  INFO(fleet.logs());
  REQUIRE(reported);

  const auto& inv = d->inventory();
  CHECK(inv.memory_total_bytes() == host_mem_total_bytes());
  struct statvfs root {};
  REQUIRE(::statvfs("/", &root) == 0);
  bool found_root = false;
  for (const auto& m : inv.mounts()) {
    if (m.mount_point() != "/") continue;
    found_root = true;
    CHECK(m.total_bytes() == static_cast<std::uint64_t>(root.f_blocks) * root.f_frsize);
  }
  CHECK(found_root);
  const auto os = host_os_release();
  CHECK(inv.os().name() == os.at("NAME"));
  CHECK(inv.os().version() == os.at("VERSION_ID"));
  CHECK(static_cast<std::size_t>(inv.packages_size()) == host_installed_packages());
  CHECK(d->record().package_count() == static_cast<std::uint32_t>(inv.packages_size()));
  CHECK(d->record().os_name() == os.at("NAME"));
  CHECK(d->record().site() == "test-lab");
  CHECK(d->record().kind() == v1::DEVICE_KIND_COMPUTER);
  CHECK(d->telemetry().memory_total_bytes() == host_mem_total_bytes());
  CHECK(d->telemetry().cpu_percent() >= 0.0);
  CHECK(d->telemetry().cpu_percent() <= 100.0);
  CHECK(d->telemetry().uptime_s() > 0);

  // The CLI, as an ops script would drive it.
  auto list = fleet.cli({"devices", "list"});
  CHECK(list.status == 0);
  CHECK(list.output.find("host-1") != std::string::npos);
  CHECK(list.output.find("online") != std::string::npos);
  auto shown = fleet.cli({"-o", "json", "devices", "show", "host-1"});
  REQUIRE(shown.status == 0);
  const auto detail = parse_json<v1::DeviceDetail>(shown.output);
  CHECK(detail.record().device_id() == "host-1");
  CHECK(detail.inventory().memory_total_bytes() == host_mem_total_bytes());
  auto counted = fleet.cli({"-o", "json", "devices", "count", "--by", "os.version"});
  REQUIRE(counted.status == 0);
  const auto count = parse_json<v1::CountDevicesResponse>(counted.output);
  REQUIRE(count.buckets_size() == 1);
  CHECK(count.buckets(0).value() == os.at("VERSION_ID"));
  CHECK(count.buckets(0).count() == 1);
  CHECK(fleet.cli({"devices", "show", "no-such-device"}).status == 4);
  CHECK(fleet.cli({"devices", "count", "--by", "no.such.field"}).status == 5);
  CHECK(fleet.cli({"devices", "show", "bad/id"}).status == 2);

  // Commands on the device's own cmd topic, sent with the manager's credentials: each gets a
  // result; inventory.refresh also sends the inventory again; unknown types are rejected.
  RawClient ops(fleet.broker().service_uri(), "flotilla-manager", fleet.password("flotilla-manager"));
  const auto host = DeviceId::parse("host-1").value();
  ops.subscribe(topics::device(host, topics::Channel::result));
  ops.subscribe(topics::device(host, topics::Channel::inventory));
  auto command = [&](const std::string& id, const std::string& type) {
    v1::Command c;
    *c.mutable_header() = codec::make_header(host, 0, 1, 0);
    c.set_command_id(id);
    c.set_type(type);
    REQUIRE(ops.publish_all(std::vector<Message>{
                Message{topics::device(host, topics::Channel::cmd), codec::encode(c), 1, false, {}, {}}}) == 1);
    std::optional<v1::CommandResult> result;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!result && std::chrono::steady_clock::now() < deadline) {
      auto m = ops.next_on(topics::device(host, topics::Channel::result), 1s);
      if (!m) continue;
      auto decoded = codec::decode<v1::CommandResult>(m->payload, codec::max_command_bytes);
      REQUIRE(decoded);
      if (decoded->command_id() == id) result = *decoded;
    }
    REQUIRE(result.has_value());
    return *result;
  };
  auto pong = command("t-ping-1", "ping");
  CHECK(pong.status() == v1::CommandResult::STATUS_SUCCEEDED);
  CHECK(pong.message() == "pong");
  auto refreshed = command("t-inv-1", "inventory.refresh");
  CHECK(refreshed.status() == v1::CommandResult::STATUS_SUCCEEDED);
  auto rejected = command("t-bogus-1", "format.disk");
  CHECK(rejected.status() == v1::CommandResult::STATUS_REJECTED);
  // A redelivered command id is answered from memory, not executed again.
  auto again = command("t-ping-1", "ping");
  CHECK(again.status() == v1::CommandResult::STATUS_SUCCEEDED);

  // Rebirth requested through the CLI's RPC: the device answers with a result.
  v1::RpcRequest rebirth;
  rebirth.mutable_rebirth()->set_device_id("host-1");
  auto r = fleet.rpc(rebirth);
  REQUIRE(r);
  CHECK(r->code() == v1::RpcResponse::CODE_OK);
  CHECK(Fleet::wait_until(
      [&] {
        auto s = fleet.stats();
        return s && s->events().count("command_result") > 0 && s->events().at("command_result") >= 5;
      },
      10s));

  // A clean stop of the agent and the manager; with the manager gone, the CLI says so (exit 3).
  CHECK(fleet.agent("host-1").terminate(10s) == 0);
  CHECK(Fleet::wait_until(
      [&] {
        auto gone = fleet.device("host-1");
        return gone && !gone->record().online();
      },
      5s));
  CHECK(fleet.manager().terminate(10s) == 0);
  auto down = fleet.cli({"--timeout", "1s", "devices", "list"});
  CHECK(down.status == 3);
}

TEST_CASE("kill -9 of the agent: offline within 1.5x keepalive; a restart brings it back online") {
  Fleet fleet({.devices = {"host-2"}});
  fleet.start_manager();
  fleet.start_agent("host-2", {.keepalive = "2s", .telemetry_interval = "1s"});
  std::uint64_t first_epoch = 0;
  REQUIRE(Fleet::wait_until(
      [&] {
        auto d = fleet.device("host-2");
        if (!d || !d->record().online()) return false;
        first_epoch = d->record().session_epoch();
        return true;
      },
      20s, 100ms));

  fleet.agent("host-2").kill();
  const auto killed = std::chrono::steady_clock::now();
  // The broker publishes the Will at the latest 1.5 x keepalive (3 s) after the last packet;
  // 1 s more covers the manager's own processing and this poll.
  const bool offline = Fleet::wait_until(
      [&] {
        auto d = fleet.device("host-2");
        return d && !d->record().online();
      },
      4s, 100ms);
  INFO(fleet.logs());
  REQUIRE(offline);
  MESSAGE("offline after ",
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed).count(),
          " ms");

  fleet.start_agent("host-2", {.keepalive = "2s", .telemetry_interval = "1s"});
  REQUIRE(Fleet::wait_until(
      [&] {
        auto d = fleet.device("host-2");
        return d && d->record().online() && d->record().session_epoch() > first_epoch;
      },
      20s, 100ms));
  auto s = fleet.stats();
  REQUIRE(s);
  CHECK(s->devices_online() == 1);
}

TEST_CASE("broker restart: agent and manager recover by themselves and no buffered reading is lost") {
  Fleet fleet({.devices = {"host-3"}});
  fleet.start_manager();
  fleet.start_agent("host-3", {.keepalive = "5s", .telemetry_interval = "1s"});
  REQUIRE(Fleet::wait_until(
      [&] {
        auto d = fleet.device("host-3");
        return d && d->record().online() && d->record().readings() >= 2;
      },
      20s, 100ms));
  const auto before = fleet.device("host-3").value().record();

  fleet.broker().stop();
  std::this_thread::sleep_for(4s);  // the agent keeps sampling into its outbox meanwhile
  fleet.broker().restart();

  // Back online in a new session, with the readings taken during the outage delivered late.
  std::optional<v1::DeviceDetail> d;
  const bool recovered = Fleet::wait_until(
      [&] {
        d = fleet.device("host-3");
        return d && d->record().online() && d->record().session_epoch() > before.session_epoch() &&
               d->record().readings() >= before.readings() + 6;
      },
      30s, 200ms);
  INFO(fleet.logs());
  REQUIRE(recovered);
  const auto& r = d->record();
  // Stream accounting: every reading between the first and the last one received is there.
  CHECK(r.seq_gaps() == 0);
  CHECK(r.readings() == r.last_seq() - before.last_seq() + before.readings());
  auto s = fleet.stats();
  REQUIRE(s);
  CHECK(s->events().count("late") == 1);
  CHECK(s->events().at("late") >= 3);  // readings sampled while the broker was down
  CHECK(s->devices_online() == 1);
}

TEST_CASE("1,000 malformed or oversized payloads are all counted while good traffic keeps being indexed") {
  Fleet fleet({.devices = {"host-4", "attacker-1"}});
  fleet.start_manager();
  fleet.start_agent("host-4", {.keepalive = "5s", .telemetry_interval = "1s"});
  REQUIRE(Fleet::wait_until(
      [&] {
        auto d = fleet.device("host-4");
        return d && d->record().readings() >= 1;
      },
      20s, 100ms));

  const auto attacker = DeviceId::parse("attacker-1").value();
  const auto victim = DeviceId::parse("host-4").value();
  std::mt19937_64 rng(7);
  std::vector<Message> bad;
  for (int i = 0; i < 1000; ++i) {
    Message m;
    m.qos = 1;
    switch (i % 4) {
      case 0:  // larger than the manager accepts for the channel, smaller than the broker limit
        m.topic = topics::device(attacker, i % 8 == 0 ? topics::Channel::inventory : topics::Channel::telemetry);
        m.payload.assign(i % 8 == 0 ? codec::max_inventory_bytes + 1 : codec::max_telemetry_bytes + 1, 'x');
        break;
      case 1: {  // random bytes
        m.topic = topics::device(attacker, topics::Channel::telemetry);
        m.payload.resize(1 + rng() % 200);
        for (auto& c : m.payload) c = static_cast<char>(rng());
        m.payload[0] = '\xff';
        break;
      }
      case 2: {  // a valid message claiming to be another device
        v1::Telemetry t;
        *t.mutable_header() = codec::make_header(victim, 1, 1000000 + static_cast<std::uint64_t>(i), 0);
        m.topic = topics::device(attacker, topics::Channel::birth);
        v1::Birth b;
        *b.mutable_header() = t.header();
        m.payload = codec::encode(b);
        break;
      }
      default: {  // an empty or future-schema message
        v1::Death dth;
        *dth.mutable_header() = codec::make_header(attacker, 1, 0, 0);
        dth.mutable_header()->set_schema_version(i % 8 == 3 ? 0 : 99);
        m.topic = topics::device(attacker, topics::Channel::death);
        m.payload = codec::encode(dth);
        break;
      }
    }
    bad.push_back(std::move(m));
  }
  RawClient client(fleet.broker().device_uri(), "attacker-1", fleet.password("attacker-1"));
  REQUIRE(client.publish_all(bad) == 1000);

  std::optional<v1::ManagerStats> s;
  const bool counted = Fleet::wait_until(
      [&] {
        s = fleet.stats();
        return s && total(s->dropped()) >= 1000;
      },
      30s, 200ms);
  INFO(fleet.logs());
  REQUIRE(counted);
  CHECK(total(s->dropped()) == 1000);
  CHECK(s->dropped().at("oversized") == 250);
  CHECK(s->dropped().at("parse_error") == 250);
  CHECK(s->dropped().at("bad_header") == 500);
  // Nothing was indexed for the attacker, and the good device kept streaming without a gap.
  CHECK_FALSE(fleet.device("attacker-1").has_value());
  const auto before = fleet.device("host-4").value().record().readings();
  REQUIRE(Fleet::wait_until(
      [&] {
        auto d = fleet.device("host-4");
        return d && d->record().readings() >= before + 2;
      },
      10s, 100ms));
  CHECK(fleet.device("host-4")->record().seq_gaps() == 0);
  CHECK(fleet.manager().running());
}

TEST_CASE("kill -9 of the manager during ingest: everything it had written is there after restart") {
  Fleet fleet({.sim_devices = 60});
  fleet.start_manager();
  fleet.start_sim(60, "200ms");
  const bool all_seen = registered(fleet, 60);
  INFO(fleet.last_rpc_error());
  INFO(fleet.logs());
  REQUIRE(all_seen);

  // Replies are sent only after the batch they depend on is durable, so each snapshot is a
  // lower bound of what RocksDB holds. Take the last one right before the kill.
  std::vector<v1::DeviceRecord> snapshot;
  for (int i = 0; i < 5; ++i) {
    auto all = fleet.devices();
    REQUIRE(all);
    snapshot = std::move(*all);
  }
  fleet.manager().kill();
  fleet.sim().terminate();

  std::uint64_t readings_at_snapshot = 0;
  {
    auto store = manager::open_rocksdb_store(fleet.manager_data_dir() / "db");
    REQUIRE(store);
    auto registry = manager::Registry::load(**store);
    REQUIRE(registry);
    REQUIRE(registry->devices().size() == snapshot.size());
    for (const auto& seen : snapshot) {
      const auto* durable = registry->find(seen.device_id());
      REQUIRE(durable != nullptr);
      CHECK(durable->readings() >= seen.readings());
      CHECK(durable->last_seq() >= seen.last_seq());
      CHECK(durable->first_seen_ms() == seen.first_seen_ms());
      readings_at_snapshot += seen.readings();
    }
  }
  CHECK(readings_at_snapshot > 60);

  fleet.start_manager();
  std::vector<v1::DeviceRecord> after;
  REQUIRE(Fleet::wait_until(
      [&] {
        auto all = fleet.devices();
        if (!all) return false;
        after = std::move(*all);
        return after.size() == 60;
      },
      20s, 200ms));
  std::uint64_t readings_after = 0;
  for (const auto& r : after) readings_after += r.readings();
  CHECK(readings_after >= readings_at_snapshot);
}

TEST_CASE("the simulator brings up a mixed fleet the manager indexes by kind") {
  Fleet fleet({.sim_devices = 30});
  fleet.start_manager();
  fleet.start_sim(30, "1s");
  std::optional<v1::CountDevicesResponse> by_kind;
  const bool all = Fleet::wait_until(
      [&] {
        auto out = fleet.cli({"-o", "json", "devices", "count", "--by", "kind"});
        if (out.status != 0) return false;
        by_kind = parse_json<v1::CountDevicesResponse>(out.output);
        return by_kind->total() == 30;
      },
      30s, 300ms);
  INFO(fleet.logs());
  REQUIRE(all);
  std::map<std::string, std::uint64_t> counts;
  for (const auto& b : by_kind->buckets()) counts[b.value()] = b.count();
  CHECK(counts["computer"] == 10);
  CHECK(counts["printer"] == 10);
  CHECK(counts["sensor"] == 10);
  auto online = fleet.cli({"-o", "json", "devices", "count", "--by", "online"});
  REQUIRE(online.status == 0);
  CHECK(online.output.find("\"true\"") != std::string::npos);
}

TEST_CASE("a clean manager restart under load loses no reading: its session queues, its queue drains") {
  Fleet fleet({.sim_devices = 30});
  fleet.start_manager();
  fleet.start_sim(30, "200ms");
  REQUIRE(registered(fleet, 30));
  std::this_thread::sleep_for(1s);
  REQUIRE(fleet.manager().terminate(10s) == 0);
  std::this_thread::sleep_for(2s);  // readings keep flowing into the manager's broker session
  fleet.start_manager();
  std::this_thread::sleep_for(2s);
  auto all = fleet.devices();
  INFO(fleet.logs());
  REQUIRE(all);
  std::uint64_t gaps = 0, readings = 0;
  for (const auto& r : *all) {
    gaps += r.seq_gaps();
    readings += r.readings();
  }
  CHECK(readings > 30 * 10);
  CHECK(gaps == 0);
}

TEST_CASE("queries through the CLI: filter, sort, project, page, count with a filter, stats, errors") {
  Fleet fleet({.sim_devices = 30});
  fleet.start_manager();
  fleet.start_sim(30, "1s");
  REQUIRE(Fleet::wait_until(
      [&] {
        const std::string reporting =
            "_exists_:telemetry.cpu OR _exists_:telemetry.battery OR _exists_:telemetry.toner_percent";
        auto out = fleet.cli({"-o", "json", "devices", "query", reporting});
        return out.status == 0 && parse_json<v1::QueryDevicesResponse>(out.output).total() == 30;
      },
      30s, 300ms));

  auto sensors = fleet.cli({"-o", "json", "devices", "query", "kind:sensor AND online:true", "--limit", "4"});
  REQUIRE(sensors.status == 0);
  auto page = parse_json<v1::QueryDevicesResponse>(sensors.output);
  CHECK(page.total() == 10);
  CHECK(page.rows_size() == 4);
  CHECK_FALSE(page.next_cursor().empty());
  // The next page continues after the cursor.
  auto next = fleet.cli({"-o", "json", "devices", "query", "kind:sensor AND online:true", "--limit", "100", "--cursor",
                         page.next_cursor()});
  REQUIRE(next.status == 0);
  CHECK(parse_json<v1::QueryDevicesResponse>(next.output).rows_size() == 6);

  // The computers with the least free disk, with projected fields.
  auto least = fleet.cli({"-o", "json", "devices", "query", "kind:computer", "--sort", "telemetry.disk.free", "--limit",
                          "3", "--fields", "telemetry.disk.free,os.name"});
  REQUIRE(least.status == 0);
  auto rows = parse_json<v1::QueryDevicesResponse>(least.output);
  REQUIRE(rows.rows_size() == 3);
  double previous = -1;
  for (const auto& r : rows.rows()) {
    REQUIRE(r.values_size() == 2);
    CHECK(r.values(0).name() == "telemetry.disk.free");
    const double free = std::stod(r.values(0).value());
    CHECK(free >= previous);
    previous = free;
  }

  auto by_fw = fleet.cli({"-o", "json", "devices", "count", "--by", "firmware.version", "--where", "kind:computer"});
  REQUIRE(by_fw.status == 0);
  const auto counts = parse_json<v1::CountDevicesResponse>(by_fw.output);
  std::uint64_t sum = 0;
  for (const auto& b : counts.buckets()) sum += b.count();
  CHECK(sum == 10);
  CHECK(counts.total() == 10);

  auto stats = fleet.cli({"-o", "json", "devices", "stats", "telemetry.cpu", "--where", "kind:computer"});
  REQUIRE(stats.status == 0);
  const auto st = parse_json<v1::DeviceStats>(stats.output);
  CHECK(st.matched() == 10);
  CHECK(st.count() == 10);
  CHECK(st.min() >= 0.0);
  CHECK(st.max() <= 100.0);
  CHECK(st.min() <= st.p50());
  CHECK(st.p50() <= st.max());

  auto plan = fleet.cli({"devices", "query", "kind:computer AND telemetry.cpu>10", "--explain"});
  CHECK(plan.status == 0);
  CHECK(plan.output.find("Plan:") != std::string::npos);
  // The planner picks per-node strategies by cost; which one depends on the fleet's values.
  CHECK(plan.output.find("AND -> ") != std::string::npos);
  CHECK(plan.output.find("  kind:computer [") != std::string::npos);
  CHECK(plan.output.find("  telemetry.cpu>10 [") != std::string::npos);

  // A malformed query is rejected by the manager with the position (exit 5).
  auto bad = fleet.cli({"devices", "query", "kind:computer AND (online:true"});
  CHECK(bad.status == 5);
  CHECK(bad.output.find("position") != std::string::npos);
  CHECK(fleet.cli({"devices", "count", "--by", "no.such.field"}).status == 5);
}

TEST_CASE("groups and tags through the CLI: hierarchy, dynamic membership, events, explain, restart") {
  Fleet fleet({.sim_devices = 12});
  fleet.start_manager();
  fleet.start_sim(12, "1s");
  REQUIRE(registered(fleet, 12));

  // Membership events, read with the operator's credentials (the ACL grants them).
  RawClient watcher(fleet.broker().service_uri(), "flotilla-operator", fleet.password("flotilla-operator"));
  watcher.subscribe("flotilla/v1/mgr/groups/+/events");

  REQUIRE(fleet.cli({"groups", "create", "acme"}).status == 0);
  auto created = fleet.cli({"-o", "json", "groups", "create", "sensors", "--parent", "acme", "--query", "kind:sensor"});
  REQUIRE(created.status == 0);
  CHECK(parse_json<v1::GroupInfo>(created.output).members() == 4);
  REQUIRE(fleet
              .cli({"groups", "create", "lab", "--parent", "acme", "--members",
                    "sim-pc-00000,sim-printer-00001,not-yet-enrolled"})
              .status == 0);
  // A listed device that never connected is a member, not a device.
  auto everyone = fleet.cli({"-o", "json", "devices", "query"});
  REQUIRE(everyone.status == 0);
  CHECK(parse_json<v1::QueryDevicesResponse>(everyone.output).total() == 12);
  auto acme = fleet.cli({"-o", "json", "groups", "show", "acme"});
  REQUIRE(acme.status == 0);
  CHECK(parse_json<v1::GroupInfo>(acme.output).members() == 7);

  // group: in queries includes subgroups (devices only: not-yet-enrolled is no device).
  auto in_acme = fleet.cli({"-o", "json", "devices", "query", "group:acme"});
  REQUIRE(in_acme.status == 0);
  CHECK(parse_json<v1::QueryDevicesResponse>(in_acme.output).total() == 6);

  // An operator tag moves a device into a dynamic group at once, with an event.
  REQUIRE(fleet.cli({"groups", "create", "vip", "--query", "tag:vip"}).status == 0);
  REQUIRE(fleet.cli({"devices", "tag", "sim-pc-00003", "--add", "vip", "--set", "rack=r12"}).status == 0);
  auto vip = fleet.cli({"-o", "json", "groups", "members", "vip"});
  REQUIRE(vip.status == 0);
  CHECK(parse_json<v1::GroupMembers>(vip.output).device_ids_size() == 1);
  auto by_attr = fleet.cli({"-o", "json", "devices", "query", "attr.rack:r12"});
  CHECK(parse_json<v1::QueryDevicesResponse>(by_attr.output).total() == 1);
  bool saw_event = false;
  for (int i = 0; i < 40 && !saw_event; ++i) {
    auto m = watcher.next_on("flotilla/v1/mgr/groups/vip/events", 500ms);
    if (!m) continue;
    auto e = codec::decode<v1::MembershipEvent>(m->payload, codec::max_small_bytes);
    REQUIRE(e);
    saw_event = e->device_id() == "sim-pc-00003" && e->joined();
  }
  CHECK(saw_event);

  auto why = fleet.cli({"groups", "explain", "sensors", "sim-pc-00000"});
  CHECK(why.status == 0);
  CHECK(why.output.find("not a member") != std::string::npos);
  CHECK(why.output.find("kind:sensor failed") != std::string::npos);
  CHECK(fleet.cli({"groups", "delete", "acme"}).status == 5);  // has subgroups
  CHECK(fleet.cli({"groups", "show", "nope"}).status == 4);

  // Groups, labels and memberships survive a manager restart.
  REQUIRE(fleet.manager().terminate(10s) == 0);
  fleet.start_manager();
  auto again = fleet.cli({"-o", "json", "devices", "query", "group:vip AND attr.rack:r12"});
  REQUIRE(again.status == 0);
  CHECK(parse_json<v1::QueryDevicesResponse>(again.output).total() == 1);
  auto list = fleet.cli({"-o", "json", "groups", "list"});
  REQUIRE(list.status == 0);
  CHECK(parse_json<v1::GroupList>(list.output).groups_size() == 4);
}

namespace {

std::string read_log(const Fleet& fleet) {
  std::ifstream in(fleet.dir() / "manager.log");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Whether a retained message is held for `topic`: a new subscriber gets it at once.
bool retained_on(Fleet& fleet, const std::string& topic) {
  RawClient reader(fleet.broker().service_uri(), "flotilla-manager", fleet.password("flotilla-manager"));
  reader.subscribe(topic);
  auto m = reader.next_on(topic, 1s);
  return m.has_value() && !m->payload.empty();
}

}  // namespace

TEST_CASE("devices delete through the CLI: online devices need --force, everything the manager held goes") {
  Fleet fleet({.sim_devices = 6});
  fleet.start_manager();
  fleet.start_sim(6, "1s");
  REQUIRE(registered(fleet, 6));
  REQUIRE(fleet.cli({"groups", "create", "lab", "--members", "sim-pc-00000,sim-sensor-00002"}).status == 0);
  REQUIRE(fleet.cli({"groups", "create", "pcs", "--query", "kind:computer"}).status == 0);
  REQUIRE(fleet.cli({"devices", "tag", "sim-pc-00000", "--add", "vip"}).status == 0);
  const std::string config_topic = "flotilla/v1/dev/sim-pc-00000/config";
  REQUIRE(Fleet::wait_until([&] { return retained_on(fleet, config_topic); }, 10s, 200ms));

  // Online: refused without --force; without --yes (stdin is not a terminal): refused by the CLI.
  auto online = fleet.cli({"devices", "delete", "sim-pc-00000", "--yes"});
  CHECK(online.status == 5);
  CHECK(online.output.find("online") != std::string::npos);
  CHECK(fleet.cli({"devices", "delete", "sim-pc-00000"}).status == 2);
  CHECK(fleet.cli({"devices", "delete", "sim-*", "--yes"}).status == 2);
  CHECK(fleet.cli({"devices", "delete", "sim-pc-00000", "no-such-device", "--yes"}).status == 4);
  CHECK(fleet.device("sim-pc-00000").has_value());

  // Forced: deleted while online, it registers again with its next message.
  auto forced = fleet.cli({"devices", "delete", "sim-printer-00001", "--yes", "--force"});
  INFO(forced.output);
  CHECK(forced.status == 0);
  CHECK(forced.output.find("registers again") != std::string::npos);
  CHECK(Fleet::wait_until([&] { return fleet.device("sim-printer-00001").has_value(); }, 10s, 200ms));

  // Offline: deleted with everything the manager held about it, in one request.
  REQUIRE(fleet.sim().terminate(10s) == 0);
  REQUIRE(Fleet::wait_until(
      [&] {
        auto all = fleet.devices();
        return all && std::none_of(all->begin(), all->end(), [](const auto& r) { return r.online(); });
      },
      10s, 200ms));
  auto deleted = fleet.cli({"-o", "json", "devices", "delete", "sim-pc-00000", "sim-sensor-00002", "--yes"});
  INFO(deleted.output);
  REQUIRE(deleted.status == 0);
  const auto gone = parse_json<v1::DeletedDevices>(deleted.output);
  REQUIRE(gone.devices_size() == 2);
  CHECK(gone.devices(0).record().device_id() == "sim-pc-00000");
  CHECK(std::vector<std::string>(gone.devices(0).groups().begin(), gone.devices(0).groups().end()) ==
        std::vector<std::string>{"lab", "pcs"});
  CHECK(gone.devices(0).had_labels());
  CHECK(std::vector<std::string>(gone.devices(1).groups().begin(), gone.devices(1).groups().end()) ==
        std::vector<std::string>{"lab"});

  CHECK(fleet.cli({"devices", "show", "sim-pc-00000"}).status == 4);
  CHECK(fleet.cli({"devices", "delete", "sim-pc-00000", "--yes"}).status == 4);
  auto lab = fleet.cli({"-o", "json", "groups", "show", "lab"});
  REQUIRE(lab.status == 0);
  CHECK(parse_json<v1::GroupInfo>(lab.output).members() == 0);
  auto vip = fleet.cli({"-o", "json", "devices", "query", "tag:vip OR id:sim-pc-00000"});
  REQUIRE(vip.status == 0);
  CHECK(parse_json<v1::QueryDevicesResponse>(vip.output).total() == 0);
  auto history = fleet.cli({"-o", "json", "groups", "events", "--device", "sim-pc-00000"});
  REQUIRE(history.status == 0);
  const auto events = parse_json<v1::GroupEvents>(history.output);
  REQUIRE(events.events_size() == 4);  // joined lab and pcs, left both
  CHECK(events.events(0).reason() == "device deleted");
  CHECK(events.events(1).reason() == "device deleted");
  CHECK(events.events(3).joined());
  auto audit = fleet.cli({"audit", "--limit", "5"});
  CHECK(audit.output.find("device.delete") != std::string::npos);
  CHECK(Fleet::wait_until([&] { return !retained_on(fleet, config_topic); }, 5s, 200ms));
  CHECK(retained_on(fleet, "flotilla/v1/dev/sim-pc-00003/config"));

  // Durable: still gone after a restart.
  REQUIRE(fleet.manager().terminate(10s) == 0);
  fleet.start_manager();
  CHECK(fleet.cli({"devices", "show", "sim-sensor-00002"}).status == 4);
  auto all = fleet.devices();
  REQUIRE(all);
  CHECK(all->size() == 4);
}

TEST_CASE("groups events through the CLI: newest first, filtered, paged; retention by count") {
  Fleet fleet({});
  fleet.start_manager();
  REQUIRE(fleet.cli({"groups", "create", "lab", "--members", "a-1,a-2,a-3"}).status == 0);
  REQUIRE(fleet.cli({"groups", "create", "ops"}).status == 0);
  REQUIRE(fleet.cli({"groups", "add", "ops", "a-1", "a-4"}).status == 0);
  REQUIRE(fleet.cli({"groups", "remove", "lab", "a-2"}).status == 0);
  // seq 1-3: a-1..a-3 join lab; 4-5: a-1, a-4 join ops; 6: a-2 leaves lab.

  auto newest = fleet.cli({"groups", "events", "--limit", "2"});
  INFO(newest.output);
  REQUIRE(newest.status == 0);
  auto lines = std::istringstream(newest.output);
  std::vector<std::string> rows;
  for (std::string line; std::getline(lines, line);) rows.push_back(line);
  REQUIRE(rows.size() == 4);
  CHECK(rows[1].find("lab") != std::string::npos);
  CHECK(rows[1].find("left") != std::string::npos);
  CHECK(rows[1].find("removed") != std::string::npos);
  CHECK(rows[3] == "next page: --cursor 5");

  auto lab = fleet.cli({"-o", "json", "groups", "events", "lab"});
  REQUIRE(lab.status == 0);
  auto page = parse_json<v1::GroupEvents>(lab.output);
  REQUIRE(page.events_size() == 4);
  CHECK(page.events(0).seq() == 6);
  CHECK(page.events(3).seq() == 1);
  CHECK(page.next_cursor() == 0);
  auto rest = fleet.cli({"-o", "json", "groups", "events", "--cursor", "5", "--device", "a-1"});
  REQUIRE(rest.status == 0);
  page = parse_json<v1::GroupEvents>(rest.output);
  REQUIRE(page.events_size() == 2);
  CHECK(page.events(0).group() == "ops");
  CHECK(page.events(1).group() == "lab");
  auto recent = fleet.cli({"-o", "json", "groups", "events", "--since", "10m"});
  REQUIRE(recent.status == 0);
  CHECK(parse_json<v1::GroupEvents>(recent.output).events_size() == 6);
  CHECK(fleet.cli({"groups", "events", "bad/name"}).status == 5);

  // Restarted with event_max = 4: the oldest two go, on the first reactor turn.
  REQUIRE(fleet.manager().terminate(10s) == 0);
  std::ofstream(fleet.dir() / "manager.toml", std::ios::app) << "[groups]\nevent_max = 4\n";
  fleet.start_manager();
  std::optional<v1::GroupEvents> kept;
  REQUIRE(Fleet::wait_until(
      [&] {
        auto out = fleet.cli({"-o", "json", "groups", "events"});
        if (out.status != 0) return false;
        kept = parse_json<v1::GroupEvents>(out.output);
        return kept->first_seq() == 3;
      },
      5s, 200ms));
  REQUIRE(kept->events_size() == 4);
  CHECK(kept->events(3).seq() == 3);
  CHECK(kept->last_seq() == 6);
  auto s = fleet.stats();
  REQUIRE(s);
  CHECK(s->events().at("membership_events_pruned") == 2);
  // Numbering goes on after the pruned ones.
  REQUIRE(fleet.cli({"groups", "add", "ops", "a-9"}).status == 0);
  auto after = fleet.cli({"-o", "json", "groups", "events", "--limit", "1"});
  REQUIRE(after.status == 0);
  CHECK(parse_json<v1::GroupEvents>(after.output).events(0).seq() == 7);
}

TEST_CASE("a clean stop saves the index snapshot the next start reads; after kill -9 the index is rebuilt") {
  namespace fs = std::filesystem;
  Fleet fleet({.sim_devices = 9});
  fleet.start_manager();
  fleet.start_sim(9, "1s");
  REQUIRE(Fleet::wait_until(
      [&] {
        auto out = fleet.cli(
            {"-o", "json", "devices", "query",
             "_exists_:telemetry.cpu OR _exists_:telemetry.battery OR _exists_:telemetry.toner_percent"});
        return out.status == 0 && parse_json<v1::QueryDevicesResponse>(out.output).total() == 9;
      },
      30s, 300ms));
  REQUIRE(fleet.cli({"groups", "create", "pcs", "--query", "kind:computer"}).status == 0);
  REQUIRE(fleet.cli({"devices", "tag", "sim-sensor-00002", "--add", "vip", "--set", "rack=r1"}).status == 0);
  REQUIRE(fleet.sim().terminate(10s) == 0);
  REQUIRE(Fleet::wait_until(
      [&] {
        auto all = fleet.devices();
        return all && std::none_of(all->begin(), all->end(), [](const auto& r) { return r.online(); });
      },
      10s, 200ms));

  // The same questions before the stop, after a start from the snapshot, after a rebuild.
  auto answers = [&] {
    std::vector<std::string> out;
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"-o", "json", "devices", "query", "", "--fields",
              "kind,online,os.name,firmware.version,telemetry.cpu,group,tag,attr.rack,last_seen", "--sort",
              "telemetry.cpu"},
             {"-o", "json", "devices", "count", "--by", "kind"},
             {"-o", "json", "devices", "count", "--by", "tag", "--where", "online:false"},
             {"-o", "json", "devices", "query", "group:pcs OR tag:vip", "--sort", "last_seen", "--desc"}}) {
      auto r = fleet.cli(args);
      REQUIRE(r.status == 0);
      out.push_back(r.output);
    }
    // Statistics but their sum and average, which depend on the order of the additions.
    auto r = fleet.cli({"-o", "json", "devices", "stats", "telemetry.cpu"});
    REQUIRE(r.status == 0);
    auto stats = parse_json<v1::DeviceStats>(r.output);
    stats.clear_sum();
    stats.clear_avg();
    out.push_back(stats.SerializeAsString());
    return out;
  };
  const auto before = answers();
  CHECK(before[0].find("sim-sensor-00002") != std::string::npos);

  const auto snapshot = fleet.manager_data_dir() / "index.snapshot";
  REQUIRE(fleet.manager().terminate(10s) == 0);
  CHECK(fs::exists(snapshot));
  CHECK(occurrences(read_log(fleet), "index of 9 devices saved to") == 1);

  fleet.start_manager();
  const auto log = read_log(fleet);
  INFO(log);
  CHECK(occurrences(log, "index of 9 devices read from") == 1);
  CHECK_FALSE(fs::exists(snapshot));  // one start only
  CHECK(answers() == before);

  fleet.manager().kill();
  CHECK_FALSE(fs::exists(snapshot));
  fleet.start_manager();
  const auto rebuilt = read_log(fleet);
  INFO(rebuilt);
  CHECK(occurrences(rebuilt, "index of 9 devices built in") == 1);
  CHECK(occurrences(rebuilt, "no snapshot)") == 2);  // the first start and this one
  CHECK(answers() == before);
}
