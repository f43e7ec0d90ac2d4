// Integration tests of the broker configuration (deploy/mosquitto): listeners, credentials,
// ACLs and persistence, exercised with mosquitto_pub/mosquitto_sub over MQTT 5 against a
// real mosquitto per test.

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "support/mosquitto.hpp"
#include "support/process.hpp"

namespace {

using flotilla::testing::ChildProcess;
using flotilla::testing::CommandResult;
using flotilla::testing::MosquittoBroker;
using flotilla::testing::MosquittoOptions;
using flotilla::testing::run_command;
using flotilla::testing::SpawnOptions;
using namespace std::chrono_literals;

constexpr const char* kManager = "flotilla-manager";
constexpr const char* kOperator = "flotilla-operator";

MosquittoOptions fleet_options() {
  MosquittoOptions options;
  options.users = {{kManager, "manager-secret"},
                   {kOperator, "operator-secret"},
                   {"dev-a", "dev-a-secret"},
                   {"dev-b", "dev-b-secret"}};
  return options;
}

// Who connects, where. An empty user connects anonymously.
struct Identity {
  std::uint16_t port;
  std::string user;
  std::string password;
};

Identity device(const MosquittoBroker& broker, const std::string& user) {
  return {broker.device_port(), user, broker.password(user)};
}

Identity service(const MosquittoBroker& broker, const std::string& user) {
  return {broker.service_port(), user, broker.password(user)};
}

std::vector<std::string> client_argv(const char* tool, const Identity& who) {
  std::vector<std::string> argv = {tool, "-V", "mqttv5", "-h", MosquittoBroker::host(), "-p", std::to_string(who.port)};
  if (!who.user.empty()) argv.insert(argv.end(), {"-u", who.user, "-P", who.password});
  return argv;
}

std::filesystem::path client_log(const MosquittoBroker& broker) {
  static int counter = 0;
  const auto dir = broker.work_dir() / "clients";
  std::filesystem::create_directories(dir);
  return dir / ("client-" + std::to_string(++counter) + ".log");
}

// mosquitto_pub: connect, publish one message, disconnect. With QoS 1 it waits for the
// PUBACK, so by the time it exits the broker has routed (or refused) the message.
CommandResult publish(const MosquittoBroker& broker, const Identity& who, const std::string& topic,
                      const std::string& payload, int qos = 1, std::vector<std::string> extra = {}) {
  auto argv = client_argv("mosquitto_pub", who);
  argv.insert(argv.end(), {"-t", topic, "-m", payload, "-q", std::to_string(qos)});
  argv.insert(argv.end(), extra.begin(), extra.end());
  return run_command(std::move(argv), client_log(broker), 20s);
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
}

// mosquitto_sub in the background; construction returns once the broker acknowledged every
// subscription (its -d output), so publishes that follow cannot race the subscribe.
class Subscriber {
 public:
  enum class Wait { suback, none };

  Subscriber(const MosquittoBroker& broker, const Identity& who, const std::vector<std::string>& filters, int count,
             std::vector<std::string> extra = {}, Wait wait = Wait::suback)
      : process_(spawn(broker, who, filters, count, std::move(extra))) {
    if (wait == Wait::none) return;
    // One SUBSCRIBE carries every filter, so one SUBACK line covers them all.
    const auto acked = [&] { return process_.log_text().find("Subscribed (mid:") != std::string::npos; };
    wait_until([&] { return acked() || !process_.running(); }, 10s);
    REQUIRE_MESSAGE(acked(), process_.log_text());
  }

  // Waits for mosquitto_sub to exit (-C count reached, or -W timeout: status 27).
  CommandResult finish() {
    auto status = process_.wait_exit(15s);
    REQUIRE_MESSAGE(status.has_value(), process_.log_text());
    return {*status, process_.log_text()};
  }

 private:
  static ChildProcess spawn(const MosquittoBroker& broker, const Identity& who, const std::vector<std::string>& filters,
                            int count, std::vector<std::string> extra) {
    // mosquitto_sub does not flush its -d lines when stdout is a file; stdbuf (coreutils)
    // makes them line-buffered so the SUBACK is visible while it runs.
    auto argv = client_argv("mosquitto_sub", who);
    argv.insert(argv.begin(), {"stdbuf", "-oL", "-eL"});
    argv.insert(argv.end(), {"-d", "-v", "-q", "1", "-C", std::to_string(count), "-W", "5"});
    for (const auto& filter : filters) argv.insert(argv.end(), {"-t", filter});
    argv.insert(argv.end(), extra.begin(), extra.end());
    return ChildProcess::spawn(std::move(argv), SpawnOptions{{}, client_log(broker)});
  }

  ChildProcess process_;
};

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace

TEST_SUITE("integration/broker") {

TEST_CASE("broker starts on two free ports and keeps them across a restart") {
  MosquittoBroker broker(fleet_options());
  broker.start();
  INFO(broker.log_text());

  const auto device_port = broker.device_port();
  const auto service_port = broker.service_port();
  CHECK(device_port != 0);
  CHECK(service_port != 0);
  CHECK(device_port != service_port);
  CHECK(broker.device_uri() == "mqtt://127.0.0.1:" + std::to_string(device_port));
  CHECK(broker.service_uri() == "mqtt://127.0.0.1:" + std::to_string(service_port));
  CHECK(publish(broker, service(broker, kManager), "flotilla/v1/mgr/state", "online").status == 0);

  const auto first_pid = broker.pid();
  broker.restart();
  CHECK(broker.running());
  CHECK(broker.pid() != first_pid);
  CHECK(broker.device_port() == device_port);
  CHECK(broker.service_port() == service_port);
  CHECK(publish(broker, device(broker, "dev-a"), "flotilla/v1/dev/dev-a/birth", "hello").status == 0);

  broker.stop();
  CHECK_FALSE(broker.running());
}

TEST_CASE("device telemetry reaches the manager on the service listener") {
  MosquittoBroker broker(fleet_options());
  broker.start();
  INFO(broker.log_text());

  Subscriber manager(broker, service(broker, kManager), {"flotilla/v1/dev/+/telemetry"}, 1);
  const auto pub = publish(broker, device(broker, "dev-a"), "flotilla/v1/dev/dev-a/telemetry", "cpu=42");
  INFO(pub.output);
  CHECK(pub.status == 0);

  const auto sub = manager.finish();
  INFO(sub.output);
  CHECK(sub.status == 0);
  CHECK(contains(sub.output, "flotilla/v1/dev/dev-a/telemetry cpu=42"));
}

TEST_CASE("a device cannot publish into another device's subtree") {
  MosquittoBroker broker(fleet_options());
  broker.start();
  INFO(broker.log_text());

  Subscriber manager(broker, service(broker, kManager), {"flotilla/v1/dev/#"}, 1);

  // MQTT 5: the broker answers the QoS 1 publish with PUBACK reason 0x87, which
  // mosquitto_pub 2.0.11 reports as "Warning: Publish 1 failed: Not authorized." while still
  // exiting 0.
  const auto denied = publish(broker, device(broker, "dev-a"), "flotilla/v1/dev/dev-b/telemetry", "forged");
  INFO(denied.output);
  CHECK(contains(denied.output, "Not authorized"));

  // The broker handled the denied publish before its PUBACK; a marker published afterwards
  // must therefore be the first message the manager sees. No sleep needed to prove absence.
  const auto marker = publish(broker, device(broker, "dev-a"), "flotilla/v1/dev/dev-a/telemetry", "marker");
  CHECK(marker.status == 0);

  const auto sub = manager.finish();
  INFO(sub.output);
  CHECK(sub.status == 0);
  CHECK(contains(sub.output, "flotilla/v1/dev/dev-a/telemetry marker"));
  CHECK_FALSE(contains(sub.output, "forged"));
}

TEST_CASE("a device cannot read another device's commands") {
  MosquittoBroker broker(fleet_options());
  broker.start();
  INFO(broker.log_text());

  // Mosquitto 2.0 grants the SUBACK for a foreign filter but filters each delivery by ACL.
  Subscriber dev_a(broker, device(broker, "dev-a"), {"flotilla/v1/dev/dev-b/#", "flotilla/v1/dev/dev-a/cmd"}, 1);
  CHECK(publish(broker, service(broker, kManager), "flotilla/v1/dev/dev-b/cmd", "for-b-only").status == 0);
  CHECK(publish(broker, service(broker, kManager), "flotilla/v1/dev/dev-a/cmd", "for-a").status == 0);

  const auto sub = dev_a.finish();
  INFO(sub.output);
  CHECK(sub.status == 0);
  CHECK(contains(sub.output, "flotilla/v1/dev/dev-a/cmd for-a"));
  CHECK_FALSE(contains(sub.output, "for-b-only"));
}

TEST_CASE("the device listener replaces the client id with the username") {
  MosquittoBroker broker(fleet_options());
  broker.start();

  const auto pub = publish(broker, device(broker, "dev-a"), "flotilla/v1/dev/dev-a/telemetry", "x", 1,
                           {"-i", "spoofed-client-id"});
  INFO(pub.output);
  CHECK(pub.status == 0);
  const bool logged = wait_until([&] { return contains(broker.log_text(), " as dev-a (p5"); }, 5s);
  INFO(broker.log_text());
  CHECK(logged);
  CHECK_FALSE(contains(broker.log_text(), "as spoofed-client-id"));
}

TEST_CASE("a queued message for a persistent manager session survives a broker restart") {
  MosquittoBroker broker(fleet_options());
  broker.start();
  INFO(broker.log_text());

  const std::vector<std::string> session = {"-c", "-x", "3600", "-i", "flotilla-manager-test"};
  {
    // -E: exit as soon as the subscription is acknowledged, leaving the session behind.
    auto args = session;
    args.emplace_back("-E");
    Subscriber subscribe_only(broker, service(broker, kManager), {"flotilla/v1/dev/+/result"}, 1, args);
    CHECK(subscribe_only.finish().status == 0);
  }
  CHECK(publish(broker, device(broker, "dev-a"), "flotilla/v1/dev/dev-a/result", "job-7-done").status == 0);

  broker.restart();

  // The resumed session delivers the queued message right after CONNACK, possibly before
  // the SUBACK of the repeated subscription: nothing to wait for here.
  Subscriber manager(broker, service(broker, kManager), {"flotilla/v1/dev/+/result"}, 1, session,
                     Subscriber::Wait::none);
  const auto sub = manager.finish();
  INFO(sub.output);
  CHECK(sub.status == 0);
  CHECK(contains(sub.output, "flotilla/v1/dev/dev-a/result job-7-done"));
}

TEST_CASE("a wrong password is refused") {
  MosquittoBroker broker(fleet_options());
  broker.start();

  for (const Identity& who : {Identity{broker.device_port(), "dev-a", "not-the-password"},
                              Identity{broker.service_port(), kManager, "not-the-password"}}) {
    const auto pub = publish(broker, who, "flotilla/v1/dev/dev-a/telemetry", "x");
    INFO(who.user, " on port ", who.port, ": ", pub.output);
    CHECK(pub.status != 0);
    CHECK(contains(pub.output, "Not authorized"));
  }
}

TEST_CASE("anonymous clients are refused on both listeners") {
  MosquittoBroker broker(fleet_options());
  broker.start();

  for (const std::uint16_t port : {broker.device_port(), broker.service_port()}) {
    const auto pub = publish(broker, Identity{port, "", ""}, "flotilla/v1/mgr/state", "x");
    INFO("port ", port, ": ", pub.output);
    CHECK(pub.status != 0);
    CHECK(contains(pub.output, "Not authorized"));
  }
}

}  // TEST_SUITE("integration/broker")
