#include <doctest/doctest.h>

#include <thread>

#include "flotilla/core/backoff.hpp"
#include "flotilla/core/ids.hpp"
#include "flotilla/core/log.hpp"
#include "flotilla/core/queue.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/core/transport.hpp"

using namespace flotilla;

TEST_CASE("device ids: the strict pattern is enforced at every edge") {
  CHECK(DeviceId::parse("sim-pc-00001"));
  CHECK(DeviceId::parse("a"));
  CHECK(DeviceId::parse("0f3a9c.host_1-b"));
  CHECK(DeviceId::parse(std::string(64, 'x')));
  for (const std::string& bad :
       std::vector<std::string>{"", "a/b", "a+b", "a#", "$SYS", "-lead", ".hidden", "sp ace", "tab\tid", "colon:id",
                                std::string("nul\0id", 6), std::string(65, 'x'), "ütf8"}) {
    auto id = DeviceId::parse(bad);
    CAPTURE(bad);
    CHECK_FALSE(id);
    if (!id) CHECK(id.error().code == Errc::invalid_argument);
  }
}

TEST_CASE("topic scheme builds and parses device topics") {
  auto id = DeviceId::parse("dev-1").value();
  CHECK(topics::device(id, topics::Channel::birth) == "flotilla/v1/dev/dev-1/birth");
  CHECK(topics::device(id, topics::Channel::cmd) == "flotilla/v1/dev/dev-1/cmd");
  CHECK(topics::all_devices(topics::Channel::telemetry) == "flotilla/v1/dev/+/telemetry");
  CHECK(topics::manager_state() == "flotilla/v1/mgr/state");
  CHECK(topics::manager_rpc() == "flotilla/v1/mgr/rpc");
  CHECK(topics::cli_reply("flotilla-operator", "abc123").value() == "flotilla/v1/cli/flotilla-operator/abc123");
  CHECK_FALSE(topics::cli_reply("op/x", "s"));

  for (auto ch : {topics::Channel::birth, topics::Channel::death, topics::Channel::telemetry,
                  topics::Channel::inventory, topics::Channel::result, topics::Channel::cmd, topics::Channel::config}) {
    auto parsed = topics::parse_device_topic(topics::device(id, ch));
    REQUIRE(parsed);
    CHECK(parsed->device == id);
    CHECK(parsed->channel == ch);
  }
  CHECK_FALSE(topics::parse_device_topic("flotilla/v1/dev/dev-1"));
  CHECK_FALSE(topics::parse_device_topic("flotilla/v1/dev/dev-1/unknown"));
  CHECK_FALSE(topics::parse_device_topic("flotilla/v1/dev/bad id/birth"));
  CHECK_FALSE(topics::parse_device_topic("flotilla/v1/dev/dev-1/birth/extra"));
  CHECK_FALSE(topics::parse_device_topic("other/v1/dev/dev-1/birth"));
  CHECK_FALSE(topics::parse_device_topic("flotilla/v1/dev//birth"));
}

TEST_CASE("broker URIs") {
  auto a = parse_broker_uri("mqtt://127.0.0.1:18830");
  REQUIRE(a);
  CHECK_FALSE(a->tls);
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 18830);
  auto b = parse_broker_uri("mqtts://broker.example");
  REQUIRE(b);
  CHECK(b->tls);
  CHECK(b->port == 8883);
  auto c = parse_broker_uri("mqtt://[::1]:1884");
  REQUIRE(c);
  CHECK(c->host == "[::1]");
  CHECK(c->port == 1884);
  for (const char* bad : {"tcp://x:1", "mqtt://", "mqtt://:1", "mqtt://h:0", "mqtt://h:65536", "mqtt://h:12a",
                          "mqtt://user@h:1", "http://h"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_broker_uri(bad));
  }
}

TEST_CASE("full-jitter backoff stays under a growing, capped ceiling") {
  Backoff b(std::chrono::milliseconds(100), std::chrono::milliseconds(5000), 42);
  CHECK(b.ceiling_for(0).count() == 100);
  CHECK(b.ceiling_for(3).count() == 800);
  CHECK(b.ceiling_for(40).count() == 5000);
  std::int64_t max_seen = 0;
  for (int i = 0; i < 200; ++i) {
    const auto ceiling = b.ceiling_for(b.attempts());
    const auto d = b.next();
    CHECK(d.count() >= 0);
    CHECK(d <= ceiling);
    max_seen = std::max<std::int64_t>(max_seen, d.count());
  }
  CHECK(max_seen > 2500);  // jitter spreads across the whole window, not just its start
  b.reset();
  CHECK(b.attempts() == 0);
  CHECK(b.next().count() <= 100);
}

TEST_CASE("bounded queue: order, batching, blocking when full, close") {
  BoundedQueue<int> q(4);
  for (int i = 0; i < 4; ++i) CHECK(q.try_push(i));
  CHECK_FALSE(q.try_push(99));
  std::thread producer([&] { CHECK(q.push(4)); });  // blocks until the drain below makes room
  std::vector<int> out;
  CHECK(q.drain(out, 3, std::chrono::milliseconds(100)) == 3);
  producer.join();
  CHECK(q.drain(out, 10, std::chrono::milliseconds(100)) == 2);
  CHECK(out == std::vector<int>{0, 1, 2, 3, 4});
  CHECK(q.drain(out, 10, std::chrono::milliseconds(10)) == 0);
  q.close();
  CHECK_FALSE(q.push(5));
  CHECK_FALSE(q.pop(std::chrono::milliseconds(10)).has_value());
}

TEST_CASE("rate limiter lets a burst through per key and counts the rest") {
  log::RateLimiter limiter(2, std::chrono::seconds(60));
  const auto t0 = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  std::uint64_t suppressed = 0;
  CHECK(limiter.allow("oversized", t0, suppressed));
  CHECK(limiter.allow("oversized", t0, suppressed));
  CHECK_FALSE(limiter.allow("oversized", t0, suppressed));
  CHECK_FALSE(limiter.allow("oversized", t0, suppressed));
  CHECK(limiter.allow("parse_error", t0, suppressed));
  CHECK(limiter.allow("oversized", t0 + std::chrono::seconds(61), suppressed));
  CHECK(suppressed == 2);
}
