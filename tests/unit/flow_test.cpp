// Flows over the in-memory broker: no sockets, no broker process, real agent and manager code.

#include <doctest/doctest.h>

#include <thread>

#include "flotilla/agent/agent.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/memory_transport.hpp"
#include "flotilla/core/queue.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/manager/manager.hpp"

using namespace flotilla;
using namespace std::chrono_literals;

namespace {

struct Probe {
  BoundedQueue<TransportEvent> events{10000};
  std::unique_ptr<Transport> transport;

  Probe(MemoryBroker& broker, const std::string& client_id, bool persistent = false) {
    TransportOptions o;
    o.client_id = client_id;
    o.session_expiry = persistent ? 60s : 0s;
    transport = broker.make_transport(o, [this](TransportEvent&& e) { events.push(std::move(e)); }).value();
  }
  template <typename E>
  std::optional<E> next(std::chrono::milliseconds timeout = 2s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto e = events.pop(50ms);
      if (e && std::holds_alternative<E>(*e)) return std::get<E>(std::move(*e));
    }
    return std::nullopt;
  }
};

std::optional<v1::DeviceDetail> get_device(Probe& client, const std::string& id) {
  v1::RpcRequest req;
  req.mutable_get_device()->set_device_id(id);
  static int n = 0;
  const std::string correlation = "c" + std::to_string(++n);
  REQUIRE(client.transport->publish(
      Message{topics::manager_rpc(), codec::encode(req), 1, false, "flotilla/v1/cli/op/flow", correlation}));
  const auto deadline = std::chrono::steady_clock::now() + 2s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = client.next<event::Received>(200ms);
    if (!r || r->message.correlation_data != correlation) continue;
    auto resp = codec::decode<v1::RpcResponse>(r->message.payload, codec::max_rpc_reply_bytes);
    REQUIRE(resp);
    if (resp->code() != v1::RpcResponse::CODE_OK) return std::nullopt;
    return resp->device();
  }
  return std::nullopt;
}

template <typename Pred>
bool eventually(Pred p, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (p()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

}  // namespace

TEST_CASE("memory broker: filters, retained, persistent sessions, Wills on drop and takeover") {
  CHECK(MemoryBroker::matches("a/+/c", "a/b/c"));
  CHECK(MemoryBroker::matches("a/#", "a/b/c"));
  CHECK(MemoryBroker::matches("a/#", "a"));
  CHECK_FALSE(MemoryBroker::matches("a/+", "a/b/c"));
  CHECK_FALSE(MemoryBroker::matches("a/b", "a/c"));

  MemoryBroker broker;
  Probe sub(broker, "sub", true);
  REQUIRE(sub.transport->connect(std::nullopt));
  REQUIRE(sub.next<event::Connected>());
  REQUIRE(sub.transport->subscribe({{"t/#", 1}}));
  REQUIRE(sub.next<event::Subscribed>());

  Probe pub(broker, "pub");
  REQUIRE(pub.transport->connect(Message{"t/will", "gone", 1, false, {}, {}}));
  REQUIRE(pub.transport->publish(Message{"t/retained", "r", 1, true, {}, {}}));
  CHECK(sub.next<event::Received>()->message.topic == "t/retained");

  // A persistent session queues QoS 1 messages while its client is away.
  REQUIRE(sub.transport->disconnect(100ms));
  REQUIRE(pub.transport->publish(Message{"t/x", "queued", 1, false, {}, {}}));
  REQUIRE(sub.transport->connect(std::nullopt));
  auto resumed = sub.next<event::Connected>();
  REQUIRE(resumed);
  CHECK(resumed->session_present);
  CHECK(sub.next<event::Received>()->message.payload == "queued");

  // A network failure publishes the Will; so does a takeover of the session.
  CHECK(broker.drop("pub"));
  CHECK(sub.next<event::Received>()->message.topic == "t/will");
  REQUIRE(pub.transport->connect(Message{"t/will", "first", 1, false, {}, {}}));
  Probe thief(broker, "pub");
  REQUIRE(thief.transport->connect(std::nullopt));
  CHECK(pub.next<event::ConnectionLost>().has_value());
  CHECK(sub.next<event::Received>()->message.payload == "first");

  // A late subscriber gets the retained message.
  Probe late(broker, "late");
  REQUIRE(late.transport->connect(std::nullopt));
  REQUIRE(late.transport->subscribe({{"t/retained", 1}}));
  CHECK(late.next<event::Received>()->message.payload == "r");
}

TEST_CASE("flow: real agent and manager over the in-memory broker, through a network failure") {
  MemoryBroker broker;
  auto factory = [&broker](TransportOptions o, EventSink s) {
    return broker.make_transport(std::move(o), std::move(s));
  };

  manager::ManagerConfig mc;
  auto mgr = manager::Manager::create(mc, manager::make_memory_store(), factory);
  REQUIRE(mgr);
  std::jthread manager_thread([&](std::stop_token st) { (*mgr)->run(st); });

  Probe ops(broker, "ops");
  REQUIRE(ops.transport->connect(std::nullopt));
  REQUIRE(ops.transport->subscribe({{"flotilla/v1/cli/op/flow", 1}}));
  REQUIRE(ops.next<event::Subscribed>());
  // The manager subscribes before the agent starts, as in a real deployment.
  REQUIRE(eventually([&] { return broker.published() > 0; }, 2s));

  const auto state_dir = std::filesystem::temp_directory_path() / ("flotilla-flow-" + std::to_string(::getpid()));
  agent::AgentConfig ac;
  ac.device_id = "flow-1";
  ac.state_dir = state_dir;
  ac.mqtt.reconnect_min = 50ms;
  ac.mqtt.reconnect_max = 200ms;
  auto a = agent::Agent::create(ac, agent::make_host_collectors(), factory);
  REQUIRE(a);
  std::jthread agent_thread([&](std::stop_token st) { (*a)->run(st); });

  std::optional<v1::DeviceDetail> d;
  REQUIRE(eventually(
      [&] {
        d = get_device(ops, "flow-1");
        return d && d->record().online() && d->record().readings() >= 1 && d->inventory().packages_size() > 0;
      },
      5s));
  const auto first_epoch = d->record().session_epoch();
  CHECK(d->record().seq_gaps() == 0);

  // Network failure: the Will takes the device offline, the agent reconnects in a new session.
  REQUIRE(broker.drop("flow-1"));
  REQUIRE(eventually(
      [&] {
        d = get_device(ops, "flow-1");
        return d && d->record().online() && d->record().session_epoch() > first_epoch;
      },
      5s));
  CHECK(d->record().disconnected_at_ms() > 0);
  CHECK(d->record().seq_gaps() == 0);

  agent_thread.request_stop();
  agent_thread.join();
  REQUIRE(eventually(
      [&] {
        d = get_device(ops, "flow-1");
        return d && !d->record().online();
      },
      3s));
  manager_thread.request_stop();
  manager_thread.join();
  std::filesystem::remove_all(state_dir);
}
