#include <doctest/doctest.h>

#include "flotilla/agent/protocol.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/topics.hpp"

using namespace flotilla;
using namespace flotilla::agent;

namespace {

Identity ident() {
  return Identity{.id = DeviceId::parse("dev-1").value(), .kind = v1::DEVICE_KIND_COMPUTER, .agent_version = "0.1.0"};
}

Message command_for(const std::string& device, const std::string& id, const std::string& type, std::int64_t expires) {
  v1::Command c;
  *c.mutable_header() = codec::make_header(DeviceId::parse(device).value(), 0, 1, 0);
  c.set_command_id(id);
  c.set_type(type);
  c.set_expires_at_ms(expires);
  return Message{
      topics::device(DeviceId::parse(device).value(), topics::Channel::cmd), codec::encode(c), 1, false, {}, {}};
}

}  // namespace

TEST_CASE("births and deaths carry the epoch; readings carry the durable stream seq across sessions") {
  DeviceProtocol p(ident());
  p.set_stream(42, 100);
  p.begin_session(1000);
  auto will = codec::decode<v1::Death>(p.will(1).payload, codec::max_small_bytes).value();
  CHECK(will.header().session_epoch() == 1000);
  CHECK(will.header().seq() == 0);
  CHECK(will.reason() == v1::Death::REASON_CONNECTION_LOST);
  auto birth = codec::decode<v1::Birth>(p.birth({}, 97, 4, 2).payload, codec::max_inventory_bytes).value();
  CHECK(birth.header().seq() == 0);
  CHECK(birth.stream_id() == 42);
  CHECK(birth.stream_acked_seq() == 97);
  CHECK(birth.outbox_dropped() == 4);
  CHECK(birth.inventory().header().session_epoch() == 1000);
  auto t1 = codec::decode<v1::Telemetry>(p.telemetry({}, 3).payload, codec::max_telemetry_bytes).value();
  auto t2 = codec::decode<v1::Inventory>(p.inventory({}, 4).payload, codec::max_inventory_bytes).value();
  CHECK(t1.header().seq() == 100);
  CHECK(t2.header().seq() == 101);
  p.begin_session(1001);
  auto t3 = codec::decode<v1::Telemetry>(p.telemetry({}, 5).payload, codec::max_telemetry_bytes).value();
  CHECK(t3.header().seq() == 102);
  CHECK(t3.header().session_epoch() == 1001);
  auto death = codec::decode<v1::Death>(p.graceful_death(6).payload, codec::max_small_bytes).value();
  CHECK(death.header().seq() == 0);
  CHECK(death.reason() == v1::Death::REASON_GRACEFUL);
  CHECK(p.next_seq() == 103);
}

TEST_CASE("commands: duplicates answered from memory, expired rejected, foreign or garbage ignored") {
  DeviceProtocol p(ident());
  p.begin_session(1);
  auto first = p.on_command(command_for("dev-1", "c-1", "ping", 0), 100);
  REQUIRE(std::holds_alternative<DeviceProtocol::Execute>(first));
  auto result = p.result(std::get<DeviceProtocol::Execute>(first).command, v1::CommandResult::STATUS_SUCCEEDED, "pong",
                         {}, 101);
  auto again = p.on_command(command_for("dev-1", "c-1", "ping", 0), 102);
  REQUIRE(std::holds_alternative<DeviceProtocol::Reply>(again));
  auto replayed = codec::decode<v1::CommandResult>(std::get<DeviceProtocol::Reply>(again).result.payload,
                                                   codec::max_command_bytes)
                      .value();
  CHECK(replayed.command_id() == "c-1");
  CHECK(replayed.status() == v1::CommandResult::STATUS_SUCCEEDED);
  CHECK(replayed.message() == "pong");

  auto expired = p.on_command(command_for("dev-1", "c-2", "ping", 50), 100);
  REQUIRE(std::holds_alternative<DeviceProtocol::Reply>(expired));
  auto rejected = codec::decode<v1::CommandResult>(std::get<DeviceProtocol::Reply>(expired).result.payload,
                                                   codec::max_command_bytes)
                      .value();
  CHECK(rejected.status() == v1::CommandResult::STATUS_REJECTED);

  CHECK(std::holds_alternative<DeviceProtocol::Ignore>(p.on_command(command_for("dev-2", "c-3", "ping", 0), 100)));
  CHECK(std::holds_alternative<DeviceProtocol::Ignore>(
      p.on_command(Message{"flotilla/v1/dev/dev-1/cmd", "\x01\x02garbage", 1, false, {}, {}}, 100)));
  (void)result;
}
