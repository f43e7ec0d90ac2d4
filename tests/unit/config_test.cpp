#include <doctest/doctest.h>

#include <sys/stat.h>

#include <fstream>

#include "flotilla/agent/config.hpp"
#include "flotilla/core/config.hpp"
#include "flotilla/manager/config.hpp"

using namespace flotilla;

TEST_CASE("durations") {
  CHECK(config::parse_duration("250ms").value() == std::chrono::milliseconds(250));
  CHECK(config::parse_duration("30s").value() == std::chrono::seconds(30));
  CHECK(config::parse_duration("30").value() == std::chrono::seconds(30));
  CHECK(config::parse_duration("5m").value() == std::chrono::minutes(5));
  CHECK(config::parse_duration("2h").value() == std::chrono::hours(2));
  for (const char* bad : {"", "s", "-1s", "10x", "1.5s", "99999999999999999999d"}) {
    CAPTURE(bad);
    CHECK_FALSE(config::parse_duration(bad));
  }
}

TEST_CASE("TOML reader: typed values, path-qualified type errors, unknown keys named") {
  auto r = config::TomlReader::parse(R"(
[mqtt]
broker = "mqtt://127.0.0.1:1999"
keepalive = "15s"
[agent]
tags = ["a", "b"]
telemetry_interval = 5
)",
                                     "agent.toml");
  REQUIRE(r);
  config::MqttConfig m;
  REQUIRE(config::read_mqtt(*r, m));
  CHECK(m.broker == "mqtt://127.0.0.1:1999");
  CHECK(m.keepalive == std::chrono::seconds(15));
  std::vector<std::string> tags;
  REQUIRE(r->read("agent.tags", tags));
  CHECK(tags == std::vector<std::string>{"a", "b"});
  auto unknown = r->reject_unknown_keys();
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().message.find("agent.telemetry_interval") != std::string::npos);

  auto bad = config::TomlReader::parse("[mqtt]\nkeepalive = true\n", "x.toml");
  REQUIRE(bad);
  config::MqttConfig m2;
  auto st = config::read_mqtt(*bad, m2);
  REQUIRE_FALSE(st);
  CHECK(st.error().message.find("x.toml: mqtt.keepalive") != std::string::npos);

  auto broken = config::TomlReader::parse("[mqtt\nbroker=", "broken.toml");
  REQUIRE_FALSE(broken);
  CHECK(broken.error().message.find("broken.toml:1:") != std::string::npos);
}

TEST_CASE("validation names the key that is wrong") {
  config::MqttConfig m;
  m.broker = "http://x";
  auto st = config::validate_mqtt(m);
  REQUIRE_FALSE(st);
  CHECK(st.error().message.starts_with("mqtt.broker:"));
  m = {};
  m.keepalive = std::chrono::seconds(0);
  CHECK(config::validate_mqtt(m).error().message.starts_with("mqtt.keepalive:"));
  m = {};
  m.tls_ca_file = "/nonexistent/ca.pem";
  CHECK(config::validate_mqtt(m).error().message.starts_with("mqtt.tls.ca_file:"));

  agent::AgentConfig a;
  a.device_id = "bad/id";
  CHECK(agent::validate(a).error().message.starts_with("agent.device_id:"));
  a.device_id = "ok-id";
  a.telemetry_interval = std::chrono::milliseconds(10);
  CHECK(agent::validate(a).error().message.starts_with("agent.telemetry_interval:"));

  manager::ManagerConfig mc;
  mc.instance_id = "a b";
  CHECK(manager::validate(mc).error().message.find("manager.instance_id") != std::string::npos);
}

TEST_CASE("secret files must not be world-readable") {
  const auto path = std::filesystem::temp_directory_path() / "flotilla-secret-test";
  std::ofstream(path) << "s3cret\n";
  ::chmod(path.c_str(), 0644);
  config::MqttConfig m;
  m.password_file = path.string();
  auto st = config::validate_mqtt(m);
  REQUIRE_FALSE(st);
  CHECK(st.error().message.find("world-readable") != std::string::npos);
  ::chmod(path.c_str(), 0600);
  CHECK(config::validate_mqtt(m));
  auto opts = config::transport_options(m);
  REQUIRE(opts);
  CHECK(opts->password == "s3cret");
  std::filesystem::remove(path);
}

TEST_CASE("environment overrides the file: FLOTILLA_MQTT_PASSWORD replaces a password_file") {
  config::MqttConfig m;
  m.password_file = "/etc/flotilla/agent.password";
  ::setenv("FLOTILLA_MQTT_PASSWORD", "from-env", 1);
  ::setenv("FLOTILLA_BROKER", "mqtt://10.1.2.3:1884", 1);
  config::apply_mqtt_env(m);
  ::unsetenv("FLOTILLA_MQTT_PASSWORD");
  ::unsetenv("FLOTILLA_BROKER");
  CHECK(m.password == "from-env");
  CHECK(m.password_file.empty());
  CHECK(m.broker == "mqtt://10.1.2.3:1884");
}
